"""Model servers for evaluation: ``ServeModelOperator`` (setup) and
``StopModelServerOperator`` (teardown).

The server is a long-running container: ``ServeModelOperator`` is a
:class:`~simia_airflow.containers.SimiaContainerOperator` (clean starts, deterministic
names and labels, GPU leases) that starts its container detached instead of running it
to completion. The setup task creates the level's Docker network and the server
container (no published port), waits for its Docker health check while the server's
log streams into the task log, and returns the server's description for the evaluator;
the teardown removes the server, any evaluator container left on the network, the
network and the server's GPU claims, through :class:`~simia_airflow.hooks.SimiaDockerHook`.

Failure paths leave nothing behind either: a server that exits or is not healthy within
its timeout is removed by the setup task itself (a failed setup does not run its
teardown), with the server's last log lines in the error. A retry starts by removing
what an earlier try left (deterministic names and labels).

This module is imported when the DAG is parsed: no ``simia`` import at module level.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from simia_airflow.containers import SimiaContainerOperator, run_labels
from simia_airflow.hooks import ContainerNotHealthyError, HealthPoll, SimiaDockerHook

DOCKER_URL = "unix://var/run/docker.sock"
DOCKER_TIMEOUT_S = 120
NOTE_EVERY_S = 30


class ServerFailedError(RuntimeError):
    """The model server exited or did not become healthy in time."""


class ServeModelOperator(SimiaContainerOperator):
    """Start one level's model server and wait until it is healthy (a setup task).

    Args:
        level: The level's plan from ``plan_levels`` (templated; a mapped argument in the
            per-level task group): ``run_dir``, ``run_key``, ``level``, ``train_dir``,
            ``server`` (:class:`simia.containers.serving.ServerSettings` fields), GPU
            settings.
        docker_url: The Docker engine.
        docker_conn_id: Docker connection (registry login); None: none.
        gpu_wait_s: Longest wait for free GPUs.
        poll_s: Seconds between health polls (the server's log is forwarded as it comes).

    Returns the server description (:func:`simia.containers.serving.server_spec`): base URL
    on the level's network, served model name, container and network names.
    """

    template_fields = ("level",)
    ui_color = "#d8f0e0"
    stage = "serve"
    default_image = "simia/server"

    def __init__(self, *, level: Any, docker_url: str = DOCKER_URL,
                 docker_conn_id: str | None = None, gpu_wait_s: float = 6 * 3600,
                 poll_s: float = 2.0, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", DOCKER_TIMEOUT_S)
        super().__init__(level=level, docker_url=docker_url, docker_conn_id=docker_conn_id,
                         **kwargs)
        self.gpu_wait_s = gpu_wait_s
        self.poll_s = poll_s

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]
        from simia.containers.gpus import release_claims
        from simia.containers.serving import ServerSettings, server_spec, trained_model

        plan = self.level
        if not plan.get("evaluate", True):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("evaluate_models is off: no server, no evaluation")
        self.check_host()
        settings = ServerSettings(**plan["server"])
        model = trained_model(plan["train_dir"])
        spec = server_spec(settings, model=model, level=plan["level"],
                           run_key=plan["run_key"], run_dir=plan["run_dir"],
                           replicate=plan.get("replicate", 1))
        self.use_container({**spec, "network_mode": spec["network"]})
        name = self.deterministic_name
        self.clean_start()
        release_claims(plan["lock_dir"], name)
        self.hook.ensure_network(spec["network"],
                                 {**run_labels(plan), "simia.network": spec["network"]})
        lease = self.gpu_lease(context, lock_dir=plan["lock_dir"], gpu_ids=plan["gpu_ids"],
                               count=spec["gpus_per_server"], wait_s=self.gpu_wait_s)
        try:
            with lease as ids:
                self.use_gpus(ids)
                self._start(spec, ids)
                if ids:
                    lease.claim(name)
            self._wait_healthy(spec)
        except BaseException:
            self._cleanup(spec, plan)
            raise
        self.log.info("level %g %%: %s serves %s at %s", spec["level"], spec["backend"],
                      spec["served_model_name"], spec["base_url"])
        return spec

    def _start(self, spec: dict[str, Any], gpu_ids: list[str]) -> None:
        from docker.types import Healthcheck

        second = 1_000_000_000
        self.log.info("starting %s server %s for level %g %% (model %s) on %s", spec["backend"],
                      spec["container_name"], spec["level"], spec["model_path"],
                      f"GPUs {','.join(gpu_ids)}" if gpu_ids else "the CPU")
        self.log.info("command: %s", " ".join(spec["command"]))
        self.start_container(healthcheck=Healthcheck(
            test=spec["healthcheck"], interval=5 * second, timeout=10 * second, retries=3,
            start_period=0))

    def _wait_healthy(self, spec: dict[str, Any]) -> None:
        """Wait for the server's health check while its log goes to the task log as
        ``[server] ...``; a server that exits or stays unhealthy fails the task with its
        last log lines."""
        next_note = 0.0

        def note(poll: HealthPoll) -> None:
            nonlocal next_note
            if poll.elapsed_s >= next_note:
                self.log.info("waiting for %s to be healthy (%.0f s of %.0f s; health: %s)",
                              spec["container_name"], poll.elapsed_s, poll.timeout_s,
                              poll.health)
                next_note = poll.elapsed_s + NOTE_EVERY_S

        cid = self.container["Id"]
        with self.hook.following_log(cid, lambda line: self.log.info("[server] %s", line)):
            try:
                self.hook.wait_healthy(cid, timeout_s=float(spec["startup_timeout_s"]),
                                       poll_s=self.poll_s, on_poll=note)
            except ContainerNotHealthyError as exc:
                if exc.exited:
                    what = (f"exited with code {exc.exit_code} after {exc.elapsed_s:.0f} s, "
                            "before it was healthy")
                    hint = "Fix the cause (model path, image, max_model_len, GPU memory)"
                else:
                    what = (f"was not healthy after {exc.timeout_s:.0f} s (GET /v1/models "
                            "inside the container)")
                    hint = ("Raise server_startup_timeout_s if the model only loads slowly; "
                            "otherwise fix the cause")
                tail = "\n".join(exc.log_tail)
                raise ServerFailedError(
                    f"the {spec['backend']} server {spec['container_name']} {what}. Its last "
                    f"log lines:\n{tail}\n{hint} and clear this task.") from None

    def _cleanup(self, spec: dict[str, Any], plan: dict[str, Any]) -> None:
        from simia.containers.gpus import release_claims

        self.remove_leftovers()
        self.hook.remove_network(spec["network"], self.log.info)
        release_claims(plan["lock_dir"], spec["container_name"])


class StopModelServerOperator(BaseOperator):
    """Remove one level's server, evaluator leftovers, network and GPU claims (teardown).

    Idempotent: whatever is already gone is skipped, so a cleared run can repeat it.

    Args:
        level: The level's plan from ``plan_levels`` (templated).
        docker_url: The Docker engine.
        docker_conn_id: Docker connection (registry login); None: none.
    """

    template_fields = ("level",)
    ui_color = "#f0e0d8"

    def __init__(self, *, level: Any, docker_url: str = DOCKER_URL,
                 docker_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level
        self.docker_url = docker_url
        self.docker_conn_id = docker_conn_id

    @cached_property
    def hook(self) -> SimiaDockerHook:
        """The engine the servers run on."""
        return SimiaDockerHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url,
                               timeout=DOCKER_TIMEOUT_S)

    def execute(self, context: Any) -> dict[str, Any]:
        from simia.containers.gpus import release_claims
        from simia.containers.serving import network_name, server_container_name

        plan = self.level
        replicate = plan.get("replicate", 1)
        name = server_container_name(plan["run_key"], plan["level"], replicate)
        removed = self.hook.remove_containers(name, self.log.info)
        removed += self.hook.remove_containers(name.replace("simia-serve-", "simia-eval-"),
                                               self.log.info)
        net = self.hook.remove_network(network_name(plan["run_key"], plan["level"], replicate),
                                       self.log.info)
        gpus = release_claims(plan["lock_dir"], name)
        self.log.info("level %g %%: removed %d container(s), network %s, GPU claims %s",
                      plan["level"], len(removed), "yes" if net else "none left",
                      ",".join(gpus) or "none")
        return {"containers_removed": len(removed), "network_removed": net,
                "gpus_released": gpus}
