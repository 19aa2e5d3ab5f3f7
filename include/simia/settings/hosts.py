"""GPU hosts: where the training runs go when the experiment spans several machines.

``SIMIA_GPU_HOSTS`` lists the hosts that run the per-level tasks (train, serve,
evaluate) and the GPUs each may use: ``name:ids;name:ids``, e.g.
``gpu-a:0,1,2,3;gpu-b:0,1,2,3,4,5,6,7``. A host without ids (``cpu-a:``) is a CPU host:
it runs one training at a time. Each host's tasks go to its own Celery queue,
``simia-<name>`` (:attr:`GpuHost.queue`), in a task group of its own, ``level_<name>``
(:attr:`GpuHost.group_id`). Unset or empty: one host, the tasks on the default queue in
one ``level`` group (:data:`LEVEL_GROUP`).

The DAG file reads this when it is parsed, so every Airflow component (scheduler,
dag-processor, API server and every worker) needs the same value: a worker parses the
DAG to find the task it runs. This module imports only the standard library and
:mod:`simia.errors` (parse time).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from simia.errors import ConfigError

__all__ = ["HOSTS_ENV", "LEVEL_GROUP", "QUEUE_PREFIX", "GpuHost", "HostsError",
           "format_gpu_hosts", "gpu_hosts", "level_task_id", "parse_gpu_hosts",
           "parse_gpu_ids", "split_level_task_id"]

#: the environment variable that lists the GPU hosts
HOSTS_ENV = "SIMIA_GPU_HOSTS"
#: a host's Celery queue is this prefix and its name
QUEUE_PREFIX = "simia-"
#: the per-level task group's id on one host (no SIMIA_GPU_HOSTS)
LEVEL_GROUP = "level"
#: letters, digits, ``-`` and ``_``; a letter or digit first; at most 40 characters: safe
#: in a task-group id, a Celery queue name, a folder name and an XCom key
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
#: ``level.train_model`` or ``level_gpu-a.train_model`` (a mapped level task's id)
_LEVEL_TASK = re.compile(rf"{LEVEL_GROUP}(?:_({_NAME.pattern}))?\.([^.]+)")


class HostsError(ConfigError):
    """``SIMIA_GPU_HOSTS`` cannot be read."""


def parse_gpu_ids(text: str | None) -> list[str]:
    """``"0,1, 3"`` -> ``["0", "1", "3"]``; empty or None -> ``[]`` (no GPUs)."""
    ids = [part.strip() for part in (text or "").split(",") if part.strip()]
    bad = [i for i in ids if not (i.isdigit() or i.startswith("GPU-"))]
    if bad:
        raise ConfigError(f"GPU ids must be numbers or GPU-UUIDs separated by commas, got "
                          f"{', '.join(repr(b) for b in bad)}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"GPU ids repeat: {text!r}")
    return ids


@dataclass(frozen=True)
class GpuHost:
    """One host that runs training runs: its name and the GPUs the pipeline may use."""

    name: str
    gpu_ids: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        """How many GPUs (0: a CPU host)."""
        return len(self.gpu_ids)

    @property
    def queue(self) -> str:
        """Its Celery queue, ``simia-<name>``: its workers run ``--queues simia-<name>``."""
        return f"{QUEUE_PREFIX}{self.name}"

    @property
    def group_id(self) -> str:
        """Its per-level task group, ``level_<name>``."""
        return f"{LEVEL_GROUP}_{self.name}"

    @property
    def gpu_ids_text(self) -> str:
        """The ids as the ``gpu_ids`` Param writes them (``0,1,2,3``; empty: none)."""
        return ",".join(self.gpu_ids)

    @property
    def max_trainings(self) -> int:
        """The most trainings it can ever run at once (one per GPU, one on a CPU host);
        GPU leases enforce the exact split for the run's ``gpus_per_training``."""
        return max(1, self.gpus)

    def trainings_at_once(self, gpus_per_training: int) -> int:
        """How many trainings of ``gpus_per_training`` GPUs it runs at once: floor(GPUs /
        GPUs per training); one on the CPU (0 per training, or no GPUs); 0 when a
        training needs more GPUs than it has."""
        if gpus_per_training <= 0 or self.gpus == 0:
            return 1 if gpus_per_training <= 0 else 0
        return self.gpus // gpus_per_training


def _check_name(name: str, entry: str) -> None:
    if not _NAME.fullmatch(name):
        raise HostsError(
            f"{HOSTS_ENV}: host name {name!r} (in {entry!r}) is not usable: names are "
            "letters, digits, '-' and '_', starting with a letter or digit, at most 40 "
            "characters (they make the queue simia-<name> and the task group "
            "level_<name>); use a short label such as gpu-a, not the machine's DNS name")


def parse_gpu_hosts(text: str | None) -> tuple[GpuHost, ...]:
    """``"gpu-a:0,1;cpu-a:"`` -> the hosts in that order; empty or None -> ``()`` (one
    host: today's single-host mode). Raises :class:`HostsError` naming the bad entry."""
    hosts: list[GpuHost] = []
    seen: dict[str, str] = {}
    for entry in (text or "").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        if ":" not in entry:
            raise HostsError(f"{HOSTS_ENV}: entry {entry!r} has no ':'; write name:ids, e.g. "
                             "gpu-a:0,1,2,3 (or cpu-a: for a host without GPUs), entries "
                             "separated by ';'")
        name, ids = (part.strip() for part in entry.split(":", 1))
        _check_name(name, entry)
        if name.lower() in seen:
            raise HostsError(f"{HOSTS_ENV}: host {name!r} is listed twice ({seen[name.lower()]!r}"
                             f" and {entry!r}); give each host one entry with all its GPUs")
        seen[name.lower()] = entry
        try:
            gpu_ids = parse_gpu_ids(ids)
        except ConfigError as exc:
            raise HostsError(f"{HOSTS_ENV}: host {name!r}: {exc}") from None
        hosts.append(GpuHost(name, tuple(gpu_ids)))
    return tuple(hosts)


def format_gpu_hosts(hosts: tuple[GpuHost, ...] | list[GpuHost]) -> str:
    """The ``SIMIA_GPU_HOSTS`` text of ``hosts`` (what :func:`parse_gpu_hosts` reads)."""
    return ";".join(f"{h.name}:{h.gpu_ids_text}" for h in hosts)


def gpu_hosts() -> tuple[GpuHost, ...]:
    """The hosts in ``SIMIA_GPU_HOSTS`` (``()`` when unset or empty: one host)."""
    return parse_gpu_hosts(os.environ.get(HOSTS_ENV, ""))


def level_task_id(task: str, host: str | None = None) -> str:
    """A per-level task's id: ``level.<task>`` on one host, ``level_<host>.<task>`` on a
    host of ``SIMIA_GPU_HOSTS``."""
    return f"{LEVEL_GROUP}.{task}" if host is None else f"{LEVEL_GROUP}_{host}.{task}"


def split_level_task_id(task_id: str) -> tuple[str | None, str] | None:
    """``level_gpu-a.train_model`` -> ``("gpu-a", "train_model")``, ``level.serve_model``
    -> ``(None, "serve_model")``; None for a task outside the per-level groups."""
    m = _LEVEL_TASK.fullmatch(task_id)
    return (m.group(1), m.group(2)) if m else None
