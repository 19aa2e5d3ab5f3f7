"""``SimiaDockerHook``: the docker provider's ``DockerHook`` plus the engine calls that the
simia container operators share.

The provider's hook gives the ``docker.APIClient`` (``api_client``: engine URL, TLS and
registry login from the operator's settings or a ``docker`` connection); this subclass
adds, on that client:

- finding and removing containers by their deterministic name or ``simia.container``
  label (leftovers of an earlier try, e.g. after a worker was SIGKILLed);
- creating and removing a level's Docker network;
- following a container's log line by line into a callback (the task log);
- waiting for a container's Docker health check.

It holds no simia knowledge beyond the ``simia.container`` label, and no secret.
Imported when the DAG is parsed: docker-py only, no ``simia`` import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow.providers.docker.hooks.docker import DockerHook

#: The label every simia container carries: its deterministic name.
CONTAINER_LABEL = "simia.container"
#: How many log lines a failure message quotes.
LOG_TAIL = 40

LogFn = Callable[..., None]


class ContainerNotHealthyError(RuntimeError):
    """A container exited, or was not healthy within its timeout.

    Attributes:
        exited: True when the container stopped before it was healthy.
        exit_code: Its exit code when it stopped, else None.
        elapsed_s: Seconds waited.
        timeout_s: The longest wait allowed.
        log_tail: Its last log lines.
    """

    def __init__(self, *, exited: bool, exit_code: int | None, elapsed_s: float,
                 timeout_s: float, log_tail: list[str]) -> None:
        what = (f"exited with code {exit_code}" if exited
                else f"was not healthy after {timeout_s:.0f} s")
        super().__init__(what)
        self.exited = exited
        self.exit_code = exit_code
        self.elapsed_s = elapsed_s
        self.timeout_s = timeout_s
        self.log_tail = log_tail


@dataclass(frozen=True)
class HealthPoll:
    """One look at a container that is not healthy yet (for progress notes)."""

    elapsed_s: float
    timeout_s: float
    health: str


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decoded lines of a byte stream that arrives in arbitrary chunks (``\\r`` dropped,
    the last line yielded even without its newline)."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending.strip():
        yield pending.decode("utf-8", "replace").rstrip("\r")


class SimiaDockerHook(DockerHook):
    """``DockerHook`` with container, network, log and health helpers on its client.

    Constructed like ``DockerHook`` (``docker_conn_id``, ``base_url``, ``version``,
    ``tls``, ``timeout``); every method uses the cached ``api_client``.
    """

    hook_name = "Docker (simia)"

    # -- containers ------------------------------------------------------------------
    def find_containers(self, name: str) -> list[dict[str, Any]]:
        """Every container (running or not) named ``name`` or labelled
        ``simia.container=name``, as the engine lists them."""
        cli = self.api_client
        found = {c["Id"]: c for c in cli.containers(
            all=True, filters={"label": f"{CONTAINER_LABEL}={name}"})}
        for c in cli.containers(all=True, filters={"name": name}):
            if f"/{name}" in c.get("Names", []):  # the name filter also matches substrings
                found[c["Id"]] = c
        return list(found.values())

    def remove_containers(self, name: str, log: LogFn) -> list[str]:
        """Force-remove :meth:`find_containers`' containers, logging each; their ids."""
        removed = []
        for c in self.find_containers(name):
            log("removing container %s (%s)", ",".join(c.get("Names", [])) or c["Id"][:12],
                c.get("Status", "?"))
            self.api_client.remove_container(c["Id"], force=True)
            removed.append(c["Id"])
        return removed

    def container_alive(self, name: str) -> bool:
        """True while a container named ``name`` exists and has not exited or died."""
        for c in self.api_client.containers(all=True, filters={"name": name}):
            if f"/{name}" in c.get("Names", []):
                return c.get("State") not in ("exited", "dead")
        return False

    def log_tail(self, container_id: str, lines: int = LOG_TAIL) -> list[str]:
        """The container's last log lines (a note instead when it is already gone)."""
        try:
            raw = self.api_client.logs(container_id, stdout=True, stderr=True, tail=lines)
        except Exception as exc:  # noqa: BLE001 - the container may already be gone
            return [f"(no log: {exc})"]
        return raw.decode("utf-8", "replace").splitlines()

    @contextmanager
    def following_log(self, container_id: str, on_line: Callable[[str], None]
                      ) -> Iterator[None]:
        """Pass each line the container writes to ``on_line`` while the block runs.

        One streaming request (nothing is read twice), read on a daemon thread. When the
        block raises, the thread gets two seconds to read what an exited container still
        has to say; on every path the stream is then closed, which ends the thread.
        """
        stream = self.api_client.logs(container_id, stdout=True, stderr=True, stream=True,
                                      follow=True)

        def pump() -> None:
            try:
                for line in split_lines(stream):
                    on_line(line)
            except Exception:  # noqa: BLE001, S110 - the stream was closed or the container went
                pass

        thread = threading.Thread(target=pump, name=f"log-{container_id[:12]}", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            thread.join(timeout=2)
            raise
        finally:
            stream.close()
            thread.join(timeout=5)

    def wait_healthy(self, container_id: str, *, timeout_s: float, poll_s: float,
                     on_poll: Callable[[HealthPoll], None] | None = None) -> None:
        """Poll the container's Docker health check until it reports ``healthy``.

        ``on_poll`` hears of every poll that found it not healthy yet. Raises
        :class:`ContainerNotHealthyError` (with the container's last log lines) when it
        stops first or ``timeout_s`` passes.
        """
        start = time.monotonic()
        while True:
            state = self.api_client.inspect_container(container_id)["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return
            elapsed = time.monotonic() - start
            exited = not state.get("Running")
            if exited or elapsed > timeout_s:
                raise ContainerNotHealthyError(
                    exited=exited, exit_code=state.get("ExitCode") if exited else None,
                    elapsed_s=elapsed, timeout_s=timeout_s,
                    log_tail=self.log_tail(container_id))
            if on_poll is not None:
                on_poll(HealthPoll(elapsed, timeout_s, health or "starting"))
            time.sleep(poll_s)

    # -- networks --------------------------------------------------------------------
    def _networks(self, name: str) -> list[dict[str, Any]]:
        """Networks named exactly ``name`` (the engine's filter matches substrings)."""
        return [n for n in self.api_client.networks(names=[name]) if n.get("Name") == name]

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """Create the bridge network ``name`` with ``labels`` unless it exists."""
        if not self._networks(name):
            self.api_client.create_network(name, driver="bridge", labels=labels)

    def remove_network(self, name: str, log: LogFn) -> bool:
        """Remove the network ``name``, disconnecting whatever is still attached; whether
        there was one."""
        cli = self.api_client
        nets = self._networks(name)
        for net in nets:
            info = cli.inspect_network(net["Id"])
            for cid in (info.get("Containers") or {}):
                cli.disconnect_container_from_network(cid, net["Id"], force=True)
            cli.remove_network(net["Id"])
            log("removed network %s", name)
        return bool(nets)
