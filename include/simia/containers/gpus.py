"""GPU leases: concurrent trainings on one host never share a GPU.

Docker's ``count``-style GPU requests always hand out the *first* N GPUs, so two
containers started with ``count=2`` would both land on GPUs 0 and 1. Instead, each
training leases explicit device ids: one lock file per GPU under a host-wide lock
folder, held with ``flock`` for as long as the container runs. The kernel drops a lock
when its holder dies (even by SIGKILL), so a crashed worker never leaks a GPU.
A training that cannot get enough free GPUs waits (logging who holds them) up to a
timeout, then fails with a clear message.

A model server outlives the task that starts it, so it cannot hold a ``flock``. It
*claims* its GPUs instead: while holding their locks, the starting task writes
``gpu-<id>.claim`` naming the server container, then lets the locks go. A lease skips
a GPU whose claim names a container that is still alive (asked through a callback, e.g.
the Docker API); the server's teardown deletes its claims, and a claim whose container
is gone is stale and removed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from simia.errors import ConfigError
from simia.settings.hosts import parse_gpu_ids  # the one definition, also used at parse time

__all__ = ["GpuLease", "GpuLeaseTimeout", "check_request", "parse_gpu_ids", "release_claims"]


class GpuLeaseTimeout(TimeoutError):
    """Not enough free GPUs within the wait limit."""


def check_request(gpu_ids: list[str], count: int) -> None:
    """ConfigError unless ``count`` GPUs can ever be leased from ``gpu_ids``."""
    if count < 0:
        raise ConfigError(f"GPUs per training must be >= 0, got {count}")
    if count > len(gpu_ids):
        raise ConfigError(f"a training needs {count} GPUs but only {len(gpu_ids)} are "
                          f"configured ({','.join(gpu_ids) or 'none'}); set the GPU ids "
                          "(SIMIA_GPU_IDS or the gpu_ids Param) or use fewer per training")


class GpuLease:
    """Hold ``count`` of ``gpu_ids`` exclusively (a context manager).

    Args:
        lock_dir: Host-wide folder for the lock files (shared by every worker).
        gpu_ids: The GPUs this pipeline may use.
        count: How many to lease (0: none, ``ids`` is empty).
        holder: Written into the lock files, shown to whoever waits.
        wait_s: Give up after this many seconds without enough free GPUs.
        poll_s: Seconds between attempts while waiting.
        log: Called with a progress message while waiting.
        claim_alive: Tells whether the holder named in a GPU's claim file (a server
            container) is still alive; ``None`` treats every claim as alive.
    """

    def __init__(self, lock_dir: str | Path, gpu_ids: list[str], count: int, *,
                 holder: str = "", wait_s: float = 3600.0, poll_s: float = 5.0,
                 log: Callable[[str], None] | None = None,
                 claim_alive: Callable[[str], bool] | None = None) -> None:
        check_request(gpu_ids, count)
        self.lock_dir = Path(lock_dir)
        self.gpu_ids = list(gpu_ids)
        self.count = count
        self.holder = holder or f"pid {os.getpid()}"
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.log = log or (lambda _msg: None)
        self.claim_alive = claim_alive
        self.ids: list[str] = []
        self._fds: list[int] = []

    def _claim_file(self, gpu: str) -> Path:
        return self.lock_dir / f"gpu-{gpu}.claim"

    def _claimed(self, gpu: str) -> bool:
        """A live claim on ``gpu`` (called with its lock held); stale claims are removed."""
        path = self._claim_file(gpu)
        try:
            holder = path.read_text().strip()
        except FileNotFoundError:
            return False
        if not holder:
            path.unlink(missing_ok=True)
            return False
        if self.claim_alive is None or self.claim_alive(holder):
            return True
        self.log(f"GPU {gpu}: removing the stale claim of {holder} (no longer running)")
        path.unlink(missing_ok=True)
        return False

    def claim(self, holder: str) -> None:
        """Mark the leased GPUs as used by ``holder`` beyond this lease (a server).

        Call while the lease is held; :func:`release_claims` undoes it.
        """
        if len(self._fds) != self.count:
            raise RuntimeError("claim() needs the lease to be held")
        for gpu in self.ids:
            tmp = self._claim_file(gpu).with_suffix(f".claim.tmp{os.getpid()}")
            tmp.write_text(f"{holder}\n")
            os.replace(tmp, self._claim_file(gpu))

    def _try_once(self) -> bool:
        for gpu in self.gpu_ids:
            if len(self._fds) == self.count:
                break
            fd = os.open(self.lock_dir / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if self._claimed(gpu):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.holder}\n".encode(), 0)
            self._fds.append(fd)
            self.ids.append(gpu)
        if len(self._fds) == self.count:
            return True
        self._release()  # all or nothing: never sit on a partial set
        return False

    def _holders(self) -> str:
        out = []
        for gpu in self.gpu_ids:
            try:
                text = (self.lock_dir / f"gpu-{gpu}.lock").read_text().strip()
            except OSError:
                text = ""
            try:
                claim = self._claim_file(gpu).read_text().strip()
            except OSError:
                claim = ""
            if claim:
                text = f"{text or '?'}, claimed by {claim}"
            out.append(f"{gpu}: {text or '?'}")
        return "; ".join(out)

    def acquire(self) -> list[str]:
        """Lease the GPUs (waiting if needed) and return their ids."""
        if self.count == 0:
            return []
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        next_note = 0.0
        while not self._try_once():
            now = time.monotonic()
            if now >= deadline:
                raise GpuLeaseTimeout(
                    f"no {self.count} free GPUs among {','.join(self.gpu_ids)} after "
                    f"{self.wait_s:.0f} s; lock holders: {self._holders()} "
                    f"(locks in {self.lock_dir})")
            if now >= next_note:
                self.log(f"waiting for {self.count} free GPUs among "
                         f"{','.join(self.gpu_ids)}; holders: {self._holders()}")
                next_note = now + 60
            time.sleep(self.poll_s)
        return list(self.ids)

    def _release(self) -> None:
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._fds = []
        self.ids = []

    def release(self) -> None:
        """Give the GPUs back (also done by the kernel if this process dies)."""
        self._release()

    def __enter__(self) -> list[str]:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def release_claims(lock_dir: str | Path, holder: str) -> list[str]:
    """Delete the GPU claims of ``holder``; the ids it had claimed."""
    released = []
    for path in sorted(Path(lock_dir).glob("gpu-*.claim")):
        try:
            if path.read_text().strip() == holder:
                path.unlink(missing_ok=True)
                released.append(path.name[len("gpu-"):-len(".claim")])
        except FileNotFoundError:
            continue
    return released
