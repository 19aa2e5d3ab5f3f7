"""Several GPU hosts: which host trains each training run, and the checks a host makes.

**Placement.** With ``SIMIA_GPU_HOSTS`` (:mod:`simia.settings.hosts`) every training run
(level x replicate) is assigned to one host before any training starts; its tasks then
go to that host's Celery queue. A host runs ``floor(GPUs / gpus_per_training)``
trainings at once (one on a CPU host, or with 0 GPUs per training); a host with fewer
GPUs than a training (or a server) needs runs none. :func:`plan_placement` balances the
runs over the hosts' slots by longest-processing-time-first list scheduling: each run,
longest first, goes to the slot that frees up first (ties: the host with the least work
per slot so far, then the host listed first, so equal hosts share the runs evenly). Its
makespan is at most 4/3 of the optimum; :attr:`Placement.ideal` is the lower bound
``max(total work / total slots, longest run)``. Durations are equal unless given (a
benchmark's model); the runs of one design all take about as long.

**Checks on a host.** A plan records the host it was placed on and that host's GPU ids;
:func:`check_worker_gpus` refuses to start containers on a worker whose own
``SIMIA_GPU_IDS`` says otherwise (a worker listening on the wrong queue). The data root
must be the same folder on every host (shared storage): :func:`write_data_root_marker`
writes ``<data_root>/.simia-data-root`` holding an id once (``simia init-data-root``),
every host has that id in ``SIMIA_DATA_ROOT_ID``, and :func:`check_shared_data_root`
refuses a data root whose marker is missing or holds another id.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simia.errors import ConfigError, SimiaError
from simia.layout import DataRoot, run_slug
from simia.settings.hosts import GpuHost, parse_gpu_ids

__all__ = ["DATA_ROOT_ID_ENV", "Assignment", "DataRootError", "Placement", "PlacementError",
           "TrainingRun", "WrongHostError", "check_shared_data_root", "check_worker_gpus",
           "data_root_problem", "plan_placement", "read_data_root_marker", "training_runs",
           "write_data_root_marker"]

#: every host's id of the shared data root
DATA_ROOT_ID_ENV = "SIMIA_DATA_ROOT_ID"


class PlacementError(ConfigError):
    """No host can run the design's trainings."""


class WrongHostError(SimiaError):
    """A task runs on a worker that is not the host its plan was placed on."""


class DataRootError(SimiaError):
    """The data root is not the shared one every host mounts."""


# --------------------------------------------------------------------------- placement

@dataclass(frozen=True, order=True)
class TrainingRun:
    """One training run: a level (%) and its replicate (1-based)."""

    level: float
    replicate: int = 1

    @property
    def slug(self) -> str:
        """``5pct`` for replicate 1, ``5pct-r2`` for replicate 2 (its folder names)."""
        return run_slug(self.level, self.replicate)


def training_runs(levels: Sequence[float], replicates: int) -> list[TrainingRun]:
    """The runs of a design in ``level_plans``' order: replicate-major, levels sorted."""
    return [TrainingRun(float(level), k) for k in range(1, replicates + 1)
            for level in sorted(levels)]


@dataclass(frozen=True)
class Assignment:
    """Where and when (in the planner's time units) one run goes."""

    run: TrainingRun
    host: GpuHost
    slot: int  # which of the host's concurrent trainings (0-based)
    start: float
    end: float


@dataclass(frozen=True)
class Placement:
    """Every run's host; the planned makespan and its lower bound."""

    assignments: tuple[Assignment, ...]  # in the runs' order
    hosts: tuple[GpuHost, ...]  # every configured host, eligible or not
    slots: Mapping[str, int]  # host name -> trainings at once (0: cannot run one)
    gpus_per_training: int
    makespan: float
    ideal: float

    @property
    def ratio(self) -> float:
        """Makespan / ideal (1.0: no placement can finish sooner)."""
        return self.makespan / self.ideal if self.ideal > 0 else 1.0

    def host_of(self, run: TrainingRun) -> GpuHost:
        """The host ``run`` is placed on (``KeyError`` for a run not in the plan)."""
        for a in self.assignments:
            if a.run == run:
                return a.host
        raise KeyError(run)

    def by_host(self) -> dict[str, list[TrainingRun]]:
        """Host name -> its runs in the order they are planned to start (every host,
        an empty list for one that gets none)."""
        out: dict[str, list[TrainingRun]] = {h.name: [] for h in self.hosts}
        order = sorted(range(len(self.assignments)),
                       key=lambda i: (self.assignments[i].start, i))
        for i in order:
            out[self.assignments[i].host.name].append(self.assignments[i].run)
        return out

    def lines(self) -> list[str]:
        """The log: one line per run (``5pct-r2 -> gpu-b (queue simia-gpu-b)``), one per
        host without runs, then the makespan against the ideal."""
        out = [f"{a.run.slug} -> {a.host.name} (queue {a.host.queue})"
               for a in self.assignments]
        for h in self.hosts:
            if not self.slots[h.name]:
                out.append(f"{h.name}: no runs ({h.gpus} GPUs, a training needs "
                           f"{self.gpus_per_training})")
        out.append(f"planned makespan {self.makespan:g} run-lengths vs ideal {self.ideal:g} "
                   f"(ratio {self.ratio:.2f}) on "
                   + ", ".join(f"{h.name} x{self.slots[h.name]}" for h in self.hosts
                               if self.slots[h.name]))
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: what ``placement.json`` holds."""
        return {"gpus_per_training": self.gpus_per_training, "makespan": self.makespan,
                "ideal": self.ideal, "ratio": self.ratio,
                "hosts": [{"name": h.name, "gpu_ids": h.gpu_ids_text, "queue": h.queue,
                           "group": h.group_id, "slots": self.slots[h.name]}
                          for h in self.hosts],
                "runs": [{"level": a.run.level, "replicate": a.run.replicate,
                          "slug": a.run.slug, "host": a.host.name, "queue": a.host.queue,
                          "slot": a.slot, "start": a.start, "end": a.end}
                         for a in self.assignments]}


def plan_placement(runs: Sequence[TrainingRun], hosts: Sequence[GpuHost],
                   gpus_per_training: int, *, gpus_per_server: int = 0,
                   durations: Mapping[TrainingRun, float] | None = None) -> Placement:
    """Assign each run to a host (see the module's docstring); deterministic.

    Args:
        runs: The training runs, in the order plans are made.
        hosts: The hosts (``SIMIA_GPU_HOSTS``), in their listed order (the tie-break).
        gpus_per_training: GPUs each training leases (0: CPU training).
        gpus_per_server: GPUs each model server leases on the same host (0: none); a
            host with fewer gets no runs.
        durations: Each run's length (train + serve + evaluate) in any unit; default 1.

    Raises:
        PlacementError: no host has enough GPUs, or a duration is not positive.
    """
    if not hosts:
        raise PlacementError("no GPU hosts to place training runs on (SIMIA_GPU_HOSTS is "
                             "empty)")
    if gpus_per_training < 0 or gpus_per_server < 0:
        raise PlacementError("gpus_per_training and gpus_per_server must be >= 0")
    need = max(gpus_per_training, gpus_per_server)
    slots = {h.name: (h.trainings_at_once(gpus_per_training) if h.gpus >= need else 0)
             for h in hosts}
    if not any(slots.values()):
        listed = ", ".join(f"{h.name} {h.gpus}" for h in hosts)
        what = (f"gpus_per_training = {gpus_per_training}" if gpus_per_training >= need
                else f"gpus_per_server = {gpus_per_server}")
        raise PlacementError(
            f"{what}: no host of SIMIA_GPU_HOSTS has that many GPUs (GPUs per host: "
            f"{listed}); lower the Param(s) gpus_per_training / gpus_per_server to at most "
            f"{max(h.gpus for h in hosts)}, or add a host with more GPUs")
    length = {r: float((durations or {}).get(r, 1.0)) for r in runs}
    bad = [r.slug for r, d in length.items() if not d > 0]
    if bad:
        raise PlacementError(f"run durations must be > 0 (not for {', '.join(bad)})")
    # every slot's finish time; a slot: (host index, slot index)
    free = {(hi, k): 0.0 for hi, h in enumerate(hosts) for k in range(slots[h.name])}
    load = [0.0] * len(hosts)  # each host's work per slot so far
    placed: dict[int, Assignment] = {}
    for i in sorted(range(len(runs)), key=lambda i: (-length[runs[i]], i)):
        hi, k = min(free, key=lambda s: (free[s], load[s[0]], s))
        start = free[(hi, k)]
        free[(hi, k)] = start + length[runs[i]]
        load[hi] += length[runs[i]] / slots[hosts[hi].name]
        placed[i] = Assignment(runs[i], hosts[hi], k, start, free[(hi, k)])
    assignments = tuple(placed[i] for i in range(len(runs)))
    total_slots = sum(slots.values())
    work = sum(length.values())
    ideal = max(work / total_slots, max(length.values(), default=0.0))
    makespan = max((a.end for a in assignments), default=0.0)
    return Placement(assignments, tuple(hosts), slots, gpus_per_training, makespan, ideal)


# --------------------------------------------------------------------------- worker checks

def check_worker_gpus(plan: Mapping[str, Any], environ: Mapping[str, str] | None = None
                      ) -> None:
    """Refuse (:class:`WrongHostError`) when the worker's own ``SIMIA_GPU_IDS`` (if set)
    are not the GPUs of the host ``plan`` was placed on. Plans of one host (no
    ``host`` key) and workers without ``SIMIA_GPU_IDS`` pass."""
    env = os.environ if environ is None else environ
    host = plan.get("host")
    mine = (env.get("SIMIA_GPU_IDS") or "").strip()
    if not host or not mine:
        return
    planned = plan.get("gpu_ids") or ""
    try:
        same = set(parse_gpu_ids(mine)) == set(parse_gpu_ids(planned))
    except ConfigError as exc:
        raise WrongHostError(f"this worker's SIMIA_GPU_IDS cannot be read: {exc}") from None
    if not same:
        raise WrongHostError(
            f"this task ran on a worker whose GPUs are {mine} (SIMIA_GPU_IDS), but it was "
            f"planned for host {host} with {planned or 'no GPUs'} (queue "
            f"{plan.get('queue', '?')}). Start this host's Celery worker with --queues "
            f"{plan.get('queue', '?')} only on {host}, and give every host the same "
            "SIMIA_GPU_HOSTS; then clear this task")


# --------------------------------------------------------------------------- data root

def read_data_root_marker(root: str | Path) -> str | None:
    """The id in ``<root>/.simia-data-root`` (None when there is no marker)."""
    try:
        return DataRoot(root).marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def data_root_problem(root: str | Path, found: str | None, expected: str) -> str | None:
    """What is wrong with a data root whose marker holds ``found`` (None: no marker) when
    this host expects ``expected``; None when it is the shared one."""
    marker = DataRoot(root).marker
    fix = (f"mount the shared data root at {root} on this host (the same NFS or other "
           f"shared folder as the control plane's), or set {DATA_ROOT_ID_ENV} to the id "
           f"in that folder's {marker.name} (written once by `simia init-data-root`)")
    if found is None:
        return (f"the data root {root} is not the shared one: it has no {marker.name} "
                f"marker ({DATA_ROOT_ID_ENV} is {expected!r}); {fix}")
    if found != expected:
        return (f"the data root {root} is not the shared one: its {marker.name} holds id "
                f"{found!r}, this host expects {expected!r} ({DATA_ROOT_ID_ENV}); {fix}")
    return None


def check_shared_data_root(root: str | Path, environ: Mapping[str, str] | None = None
                           ) -> None:
    """Raise :class:`DataRootError` when ``SIMIA_DATA_ROOT_ID`` is set and ``root``'s
    marker is missing or holds another id; nothing to check when it is unset (one
    host)."""
    env = os.environ if environ is None else environ
    expected = (env.get(DATA_ROOT_ID_ENV) or "").strip()
    if not expected:
        return
    problem = data_root_problem(root, read_data_root_marker(root), expected)
    if problem:
        raise DataRootError(problem)


def write_data_root_marker(root: str | Path, data_root_id: str | None = None, *,
                           force: bool = False) -> dict[str, Any]:
    """Write ``<root>/.simia-data-root`` (the folder is created). ``data_root_id``: the
    id to write; None: keep the marker's id, else a new random one. A marker with
    another id is kept unless ``force`` (every host's ``SIMIA_DATA_ROOT_ID`` names it)."""
    from simia.io import atomic_writer

    if data_root_id is not None:
        data_root_id = data_root_id.strip()
        if not data_root_id or any(c.isspace() for c in data_root_id):
            raise ConfigError(f"a data root id is one word without spaces, got "
                              f"{data_root_id!r}")
    Path(root).mkdir(parents=True, exist_ok=True)
    marker = DataRoot(root).marker
    found = read_data_root_marker(root)
    if found and data_root_id in (None, found):
        return {"data_root": str(root), "marker": str(marker), "id": found, "written": False}
    if found and not force:
        raise ConfigError(f"{marker} already holds id {found!r}, not {data_root_id!r} (from "
                          f"--id or {DATA_ROOT_ID_ENV}); every host's {DATA_ROOT_ID_ENV} "
                          f"must name the marker's id. Set {DATA_ROOT_ID_ENV}={found} "
                          "everywhere, or pass --force and change it on every host")
    new_id = data_root_id or uuid.uuid4().hex
    with atomic_writer(marker) as fh:
        fh.write(f"{new_id}\n".encode())
    return {"data_root": str(root), "marker": str(marker), "id": new_id, "written": True}
