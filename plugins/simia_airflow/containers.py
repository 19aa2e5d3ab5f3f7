"""``SimiaContainerOperator``: the base of the operators that start a level's containers
(``TrainModelOperator``, ``ServeModelOperator``, ``EvaluateTau2Operator``).

A ``DockerOperator`` (providers-docker) whose engine calls go through
:class:`~simia_airflow.hooks.SimiaDockerHook`. It owns the lifecycle the three share:

- **settings from the level's plan**: image, command, environment, mounts, user, shm
  size, network and the deterministic container name come from a spec computed by the
  ``simia`` package (:meth:`SimiaContainerOperator.use_container`);
- **deterministic labels**: ``simia.container`` (the name), ``simia.stage`` and, from the
  level's plan, ``simia.run_id`` and ``simia.level``, so a retry, a teardown or a test
  finds every container of a run;
- **clean starts**: containers left by an earlier try (same name or ``simia.container``
  label, e.g. after a worker was SIGKILLed) are removed before the start, and the
  container is removed after it on every path;
- **secrets**: declared as :class:`~simia_airflow.connections.ConnectionSecret` per
  environment variable and passed as ``DockerOperator``'s ``private_environment`` (a
  :class:`~simia_airflow.connections.SecretEnvironment` that reads the connections
  when the task runs): never templated, rendered, logged or returned;
- **logs in the task log**: a container run to completion streams through
  ``DockerOperator``; a detached one (the model server) through
  :meth:`SimiaDockerHook.following_log <simia_airflow.hooks.SimiaDockerHook.following_log>`;
- **GPU leases**: explicit device ids leased with ``flock``
  (:class:`simia.containers.gpus.GpuLease`), a server's claim checked against the engine;
- **the right host**: with ``SIMIA_GPU_HOSTS`` a plan names its host and GPUs, and
  :meth:`SimiaContainerOperator.check_host` refuses a worker whose ``SIMIA_GPU_IDS``
  differ, or a data root that is not the shared one, before any container starts.

Imported when the DAG is parsed: no ``simia`` import at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.hooks.docker import DockerHook
from airflow.providers.docker.operators.docker import DockerOperator

from simia_airflow.connections import ConnectionSecret, SecretEnvironment
from simia_airflow.hooks import CONTAINER_LABEL, LogFn, SimiaDockerHook

if TYPE_CHECKING:
    from docker.types import Healthcheck
    from simia.containers.gpus import GpuLease

#: The spec keys :meth:`SimiaContainerOperator.use_container` copies onto the operator.
CONTAINER_SETTINGS = ("image", "command", "entrypoint", "environment", "mounts", "shm_size",
                      "user", "network_mode", "container_name")
STAGE_LABEL = "simia.stage"


def run_labels(level: Any) -> dict[str, str]:
    """``simia.run_id``, ``simia.level`` and ``simia.replicate`` of a training run's plan
    (none without a plan)."""
    if not isinstance(level, Mapping) or "run_id" not in level:
        return {}
    return {"simia.run_id": level["run_id"], "simia.level": f"{level['level']:g}",
            "simia.replicate": str(level.get("replicate", 1))}


class SimiaContainerOperator(DockerOperator):
    """A ``DockerOperator`` for one of a level's containers (see the module's docstring).

    Subclasses set :attr:`stage` (the ``simia.stage`` label) and :attr:`default_image`
    (a placeholder until the level's settings are applied), and either run the container
    to completion (:meth:`run_container`) or start it detached (:meth:`start_container`),
    after :meth:`clean_start`.

    Args:
        level: The level's plan from ``plan_levels`` (templated; a mapped argument in the
            per-level task group).
        secrets: Container environment variable -> the connection secret it holds; read
            when the task runs and passed as ``private_environment``.
        Everything else: ``DockerOperator`` (by default ``auto_remove="success"``, which
            also removes a failed container, and ``mount_tmp_dir=False``).
    """

    template_fields = (*DockerOperator.template_fields, "level")
    stage: ClassVar[str] = ""
    default_image: ClassVar[str] = ""

    def __init__(self, *, level: Any = None,
                 secrets: Mapping[str, ConnectionSecret] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("image", self.default_image)  # replaced by the level's settings
        kwargs.setdefault("auto_remove", "success")
        kwargs.setdefault("mount_tmp_dir", False)
        secret_environment = SecretEnvironment(secrets)
        # DockerOperator annotates a dict, but only unpacks it into the container's env
        super().__init__(private_environment=secret_environment,  # type: ignore[arg-type]
                         **kwargs)
        self.secret_environment = secret_environment
        self.level = level

    @cached_property
    def hook(self) -> SimiaDockerHook:
        """The engine, with the operator's URL, TLS, registry connection and timeout."""
        tls = DockerHook.construct_tls_config(
            ca_cert=self.tls_ca_cert, client_cert=self.tls_client_cert,
            client_key=self.tls_client_key, verify=self.tls_verify,
            assert_hostname=self.tls_hostname, ssl_version=self.tls_ssl_version)
        return SimiaDockerHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url,
                               version=self.api_version, tls=tls, timeout=self.timeout)

    # -- the container's settings ----------------------------------------------------
    def use_container(self, spec: Mapping[str, Any]) -> None:
        """Take the container's settings (:data:`CONTAINER_SETTINGS` that ``spec`` has)
        from a spec the ``simia`` package computed for the level."""
        for key in CONTAINER_SETTINGS:
            if key in spec:
                setattr(self, key, spec[key])

    @property
    def deterministic_name(self) -> str:
        """The container's deterministic name (set by the spec or the constructor)."""
        if not self.container_name:
            raise ValueError(f"{self.task_id}: the container has no name (no container_name "
                             "and no level settings applied)")
        return self.container_name

    def add_labels(self, labels: Mapping[str, str]) -> None:
        """Add labels to the operator's own (a list of names means empty values)."""
        own = self.labels or {}
        self.labels = {**(dict.fromkeys(own, "") if isinstance(own, list) else own), **labels}

    def use_gpus(self, gpu_ids: list[str]) -> None:
        """Attach these GPUs (none: leave ``device_requests`` as it is)."""
        if gpu_ids:
            from docker.types import DeviceRequest

            self.device_requests = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]

    def gpu_lease(self, context: Any, *, lock_dir: str, gpu_ids: str | None, count: int,
                  wait_s: float) -> GpuLease:
        """A lease on ``count`` of ``gpu_ids`` for this container (0: an empty lease)."""
        from simia.containers.gpus import GpuLease, parse_gpu_ids

        return GpuLease(lock_dir, parse_gpu_ids(gpu_ids), count,
                        holder=f"{self.deterministic_name} ({context['run_id']})", wait_s=wait_s,
                        log=self.log.info, claim_alive=self.hook.container_alive)

    # -- the lifecycle ---------------------------------------------------------------
    def check_host(self) -> None:
        """Before anything starts: refuse a worker that is not the host the level's plan
        was placed on (its ``SIMIA_GPU_IDS``), and, with ``SIMIA_DATA_ROOT_ID`` set, a
        data root that is not the shared one (:mod:`simia.placement`)."""
        from simia.placement import check_shared_data_root, check_worker_gpus

        level = self.level if isinstance(self.level, Mapping) else {}
        check_worker_gpus(level)
        if level.get("data_root"):
            check_shared_data_root(level["data_root"])

    def remove_leftovers(self, log: LogFn | None = None) -> list[str]:
        """Force-remove this container's name or label holders; their ids."""
        return self.hook.remove_containers(self.deterministic_name, log or self.log.warning)

    def clean_start(self) -> None:
        """Before a start: label the container, remove what earlier tries left, and read
        the secrets (a missing connection is logged here)."""
        self.add_labels({**run_labels(self.level), CONTAINER_LABEL: self.deterministic_name,
                         STAGE_LABEL: self.stage})
        self.remove_leftovers()
        self.secret_environment.load(self.log.info)

    def run_container(self, context: Any, failed: Callable[[list[str]], Exception]) -> None:
        """Run the container to completion with ``DockerOperator`` (its log streams into
        the task log); a non-zero exit raises ``failed(log lines)``. The container is
        removed on every path."""
        try:
            super().execute(context)
        except DockerContainerFailedException as exc:
            raise failed([str(x) for x in (getattr(exc, "logs", None) or [])]) from None
        finally:
            if self.container is not None:
                self.remove_leftovers(self.log.info)

    def start_container(self, *, healthcheck: Healthcheck | None = None) -> str:
        """Create and start the container detached (for a server; ``DockerOperator``'s
        own ``execute`` waits for it to exit): the same settings, secrets and labels, and
        on ``network_mode`` its name as network alias. Returns its id."""
        from docker.types import Mount

        cli = self.hook.api_client
        host_config = cli.create_host_config(
            mounts=[Mount(**m) if isinstance(m, dict) else m for m in self.mounts],
            shm_size=self.shm_size, device_requests=self.device_requests,
            network_mode=self.network_mode)
        networking = (cli.create_networking_config({
            self.network_mode: cli.create_endpoint_config(aliases=[self.deterministic_name])})
            if self.network_mode else None)
        self.container = cli.create_container(
            image=self.image, command=self.command, entrypoint=self.entrypoint,
            environment={**self.environment, **self.secret_environment},
            name=self.deterministic_name, user=self.user, host_config=host_config,
            healthcheck=healthcheck, labels=self.labels, networking_config=networking)
        cli.start(self.container["Id"])
        return self.container["Id"]
