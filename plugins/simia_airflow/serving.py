"""Model servers for evaluation: ``ServeModelOperator`` (setup) and
``StopModelServerOperator`` (teardown).

The server is a long-running container, so it is not a ``DockerOperator`` (which runs a
container to completion): the setup task creates the level's Docker network and the
server container (detached, no published port), waits for its Docker health check, and
returns the server's description for the evaluator; the teardown removes the server,
any evaluator container left on the network, the network and the server's GPU claims.

Failure paths leave nothing behind either: a server that exits or is not healthy within
its timeout is removed by the setup task itself (a failed setup does not run its
teardown), with the server's last log lines in the error. A retry starts by removing
what an earlier try left (deterministic names and labels).

This module is imported when the DAG is parsed: no ``simia`` import at module level.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from airflow.providers.docker.hooks.docker import DockerHook
from airflow.sdk import BaseOperator

LOG_TAIL = 40


class ServerFailedError(RuntimeError):
    """The model server exited or did not become healthy in time."""


class _DockerMixin:
    docker_url: str
    docker_conn_id: str | None

    def _client(self):
        return DockerHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url,
                          timeout=120).api_client


def remove_containers(cli, name: str, log) -> list[str]:
    """Force-remove the container named ``name`` or labelled ``simia.container=name``."""
    found = {c["Id"]: c for c in cli.containers(all=True,
                                                filters={"label": f"simia.container={name}"})}
    for c in cli.containers(all=True, filters={"name": name}):
        if f"/{name}" in c.get("Names", []):
            found[c["Id"]] = c
    for cid, c in found.items():
        log("removing container %s (%s)", ",".join(c.get("Names", [])) or cid[:12],
            c.get("Status", "?"))
        cli.remove_container(cid, force=True)
    return list(found)


def remove_network(cli, name: str, log) -> bool:
    """Remove the network ``name`` (disconnecting whatever is still attached)."""
    nets = [n for n in cli.networks(names=[name]) if n.get("Name") == name]
    for net in nets:
        info = cli.inspect_network(net["Id"])
        for cid in (info.get("Containers") or {}):
            cli.disconnect_container_from_network(cid, net["Id"], force=True)
        cli.remove_network(net["Id"])
        log("removed network %s", name)
    return bool(nets)


def container_alive(cli, name: str) -> bool:
    """True while a container of that name exists and is not exited/dead."""
    for c in cli.containers(all=True, filters={"name": name}):
        if f"/{name}" in c.get("Names", []):
            return c.get("State") not in ("exited", "dead")
    return False


def log_tail(cli, container_id: str, lines: int = LOG_TAIL) -> list[str]:
    try:
        raw = cli.logs(container_id, stdout=True, stderr=True, tail=lines)
    except Exception as exc:  # the container may already be gone
        return [f"(no log: {exc})"]
    return raw.decode("utf-8", "replace").splitlines()


class ServeModelOperator(_DockerMixin, BaseOperator):
    """Start one level's model server and wait until it is healthy (a setup task).

    Args:
        level: The level's plan from ``plan_levels`` (templated; a mapped argument in the
            per-level task group): ``run_dir``, ``run_key``, ``level``, ``train_dir``,
            ``server`` (:class:`simia.containers.serving.ServerSettings` fields), GPU settings.
        docker_url: The Docker engine.
        gpu_wait_s: Longest wait for free GPUs.
        poll_s: Seconds between health polls (the server's log is forwarded as it comes).

    Returns the server description (:func:`simia.containers.serving.server_spec`): base URL on the
    level's network, served model name, container and network names.
    """

    template_fields = ("level",)
    ui_color = "#d8f0e0"

    def __init__(self, *, level: Any, docker_url: str = "unix://var/run/docker.sock",
                 docker_conn_id: str | None = None, gpu_wait_s: float = 6 * 3600,
                 poll_s: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level
        self.docker_url = docker_url
        self.docker_conn_id = docker_conn_id
        self.gpu_wait_s = gpu_wait_s
        self.poll_s = poll_s
        self._container: str | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        from simia.containers.gpus import GpuLease, parse_gpu_ids, release_claims
        from simia.containers.serving import ServerSettings, server_spec, trained_model

        plan = self.level
        if not plan.get("evaluate", True):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("evaluate_models is off: no server, no evaluation")
        settings = ServerSettings(**plan["server"])
        model = trained_model(plan["train_dir"])
        spec = server_spec(settings, model=model, level=plan["level"],
                           run_key=plan["run_key"], run_dir=plan["run_dir"])
        cli = self._client()
        name = spec["container_name"]
        remove_containers(cli, name, self.log.warning)
        release_claims(plan["lock_dir"], name)
        self._ensure_network(cli, spec, plan)
        lease = GpuLease(plan["lock_dir"], parse_gpu_ids(plan["gpu_ids"]),
                         spec["gpus_per_server"], holder=f"{name} ({context['run_id']})",
                         wait_s=self.gpu_wait_s, log=self.log.info,
                         claim_alive=lambda holder: container_alive(cli, holder))
        try:
            with lease as ids:
                self._start(cli, spec, plan, ids)
                if ids:
                    lease.claim(name)
            self._wait_healthy(cli, spec)
        except BaseException:
            self._cleanup(cli, spec, plan)
            raise
        self.log.info("level %g %%: %s serves %s at %s", spec["level"], spec["backend"],
                      spec["served_model_name"], spec["base_url"])
        return spec

    def _ensure_network(self, cli, spec: dict[str, Any], plan: dict[str, Any]) -> None:
        if not [n for n in cli.networks(names=[spec["network"]])
                if n.get("Name") == spec["network"]]:
            cli.create_network(spec["network"], driver="bridge", labels={
                "simia.run_id": plan["run_id"], "simia.level": f"{plan['level']:g}",
                "simia.network": spec["network"]})

    def _start(self, cli, spec: dict[str, Any], plan: dict[str, Any], gpu_ids: list[str]
               ) -> None:
        from docker.types import DeviceRequest, Healthcheck, Mount

        devices = ([DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
                   if gpu_ids else None)
        host_config = cli.create_host_config(
            mounts=[Mount(**m) for m in spec["mounts"]], shm_size=spec["shm_size"],
            device_requests=devices, network_mode=spec["network"])
        second = 1_000_000_000
        health = Healthcheck(test=spec["healthcheck"], interval=5 * second,
                             timeout=10 * second, retries=3, start_period=0)
        container = cli.create_container(
            image=spec["image"], command=spec["command"], entrypoint=spec["entrypoint"],
            environment=spec["environment"], name=spec["container_name"],
            user=spec["user"], host_config=host_config, healthcheck=health,
            labels={"simia.container": spec["container_name"], "simia.stage": "serve",
                    "simia.run_id": plan["run_id"], "simia.level": f"{plan['level']:g}"},
            networking_config=cli.create_networking_config({
                spec["network"]: cli.create_endpoint_config(
                    aliases=[spec["container_name"]])}))
        self._container = container["Id"]
        self.log.info("starting %s server %s for level %g %% (model %s) on %s", spec["backend"],
                      spec["container_name"], spec["level"], spec["model_path"],
                      f"GPUs {','.join(gpu_ids)}" if gpu_ids else "the CPU")
        self.log.info("command: %s", " ".join(spec["command"]))
        cli.start(container["Id"])

    def _wait_healthy(self, cli, spec: dict[str, Any]) -> None:
        """Poll the container's health; its log goes to the task log as it is written
        (:meth:`_forward_log`) until the server is healthy or has failed."""
        cid = self._container
        stream, pump = self._forward_log(cli, cid)
        try:
            self._poll_health(cli, cid, spec)
        except BaseException:
            pump.join(timeout=2)  # an exited server's stream ends once all its log is read
            raise
        finally:
            stream.close()
            pump.join(timeout=5)

    def _forward_log(self, cli, cid: str) -> tuple[Any, threading.Thread]:
        """Follow the container's log (one streaming request, nothing read twice) on a
        thread that writes each line to the task log as ``[server] ...``; closing the
        returned stream ends the thread."""
        stream = cli.logs(cid, stdout=True, stderr=True, stream=True, follow=True)

        def pump() -> None:
            pending = b""
            try:
                for chunk in stream:
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self.log.info("[server] %s",
                                      line.decode("utf-8", "replace").rstrip("\r"))
            except Exception:  # noqa: BLE001 - the stream was closed, or the container went
                pass
            if pending.strip():
                self.log.info("[server] %s", pending.decode("utf-8", "replace").rstrip("\r"))

        thread = threading.Thread(target=pump, name="server-log", daemon=True)
        thread.start()
        return stream, thread

    def _poll_health(self, cli, cid: str, spec: dict[str, Any]) -> None:
        timeout = float(spec["startup_timeout_s"])
        start = time.monotonic()
        next_note = 0.0
        while True:
            state = cli.inspect_container(cid)["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return
            elapsed = time.monotonic() - start
            exited = not state.get("Running")
            if exited or elapsed > timeout:
                if exited:
                    what = (f"exited with code {state.get('ExitCode')} after {elapsed:.0f} s, "
                            "before it was healthy")
                    hint = "Fix the cause (model path, image, max_model_len, GPU memory)"
                else:
                    what = (f"was not healthy after {timeout:.0f} s (GET /v1/models inside "
                            "the container)")
                    hint = ("Raise server_startup_timeout_s if the model only loads slowly; "
                            "otherwise fix the cause")
                tail = "\n".join(log_tail(cli, cid))
                raise ServerFailedError(
                    f"the {spec['backend']} server {spec['container_name']} {what}. Its last "
                    f"log lines:\n{tail}\n{hint} and clear this task.")
            if elapsed >= next_note:
                self.log.info("waiting for %s to be healthy (%.0f s of %.0f s; health: %s)",
                              spec["container_name"], elapsed, timeout, health or "starting")
                next_note = elapsed + 30
            time.sleep(self.poll_s)

    def _cleanup(self, cli, spec: dict[str, Any], plan: dict[str, Any]) -> None:
        from simia.containers.gpus import release_claims

        remove_containers(cli, spec["container_name"], self.log.warning)
        remove_network(cli, spec["network"], self.log.info)
        release_claims(plan["lock_dir"], spec["container_name"])

    def on_kill(self) -> None:
        if self._container:
            try:
                self._client().remove_container(self._container, force=True)
            except Exception as exc:  # best effort; the teardown and retries clean up too
                self.log.warning("could not remove the server container: %s", exc)


class StopModelServerOperator(_DockerMixin, BaseOperator):
    """Remove one level's server, evaluator leftovers, network and GPU claims (teardown).

    Idempotent: whatever is already gone is skipped, so a cleared run can repeat it.
    """

    template_fields = ("level",)
    ui_color = "#f0e0d8"

    def __init__(self, *, level: Any, docker_url: str = "unix://var/run/docker.sock",
                 docker_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level
        self.docker_url = docker_url
        self.docker_conn_id = docker_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from simia.containers.gpus import release_claims
        from simia.containers.serving import network_name, server_container_name

        plan = self.level
        cli = self._client()
        name = server_container_name(plan["run_key"], plan["level"])
        removed = remove_containers(cli, name, self.log.info)
        removed += remove_containers(cli, name.replace("simia-serve-", "simia-eval-"),
                                     self.log.info)
        net = remove_network(cli, network_name(plan["run_key"], plan["level"]), self.log.info)
        gpus = release_claims(plan["lock_dir"], name)
        self.log.info("level %g %%: removed %d container(s), network %s, GPU claims %s",
                      plan["level"], len(removed), "yes" if net else "none left",
                      ",".join(gpus) or "none")
        return {"containers_removed": len(removed), "network_removed": net,
                "gpus_released": gpus}
