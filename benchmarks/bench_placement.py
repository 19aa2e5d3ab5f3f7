#!/usr/bin/env python
"""Placement of training runs on several GPU hosts: the planner's makespan against the
ideal.

The planner is :func:`simia.placement.plan_placement`, the function ``validate_params`` and
``plan_levels`` call with ``SIMIA_GPU_HOSTS``: longest-processing-time-first list
scheduling over the hosts' slots (a host runs floor(GPUs / GPUs per training) trainings at
once). For each scenario it prints

* the **ideal**: the lower bound max(total work / total slots, longest run): no placement
  finishes sooner;
* the **planner's makespan** and its ratio to the ideal (1.00: optimal);
* beside it a naive placement, **round-robin** (run i to host i mod H, each host running
  its runs on its slots in order), to show what balancing by slots is worth.

Scenarios: 2 hosts x 8 GPUs with 12 runs of 4 GPUs (levels 0/5/10/20 x 3 replicates);
hosts of 8/8/4 GPUs; one host; then uneven durations from a simple model: training hours
proportional to the dataset's size over the GPUs per training, evaluation a fixed 1.5 h
(a run is train + serve + evaluate on one host). Durations are in hours.

Target: every ratio at most 4/3 (LPT's guarantee against the optimum, which the ideal
bounds from below).

Run:  .venv/bin/python benchmarks/bench_placement.py [--json figures.json]
A benchmark, not a test: it prints figures (and PASS/MISS against the target) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from simia.placement import TrainingRun, plan_placement, training_runs  # noqa: E402
from simia.settings.hosts import GpuHost, parse_gpu_hosts  # noqa: E402

TARGET = 4 / 3
#: conversations one GPU trains on per hour (a model's figure, not a measurement)
SAMPLES_PER_GPU_HOUR = 1000.0
EVAL_HOURS = 1.5


@dataclass(frozen=True)
class Scenario:
    name: str
    hosts: str  # SIMIA_GPU_HOSTS
    runs: tuple[TrainingRun, ...]
    gpus_per_training: int
    durations: Mapping[TrainingRun, float] | None = None  # None: equal (1 each)


def run_hours(dataset_size: int, gpus: int) -> float:
    """The duration model: training ~ dataset size / GPUs (a CPU training counts as one
    GPU's), then serving and evaluation, a fixed time."""
    return dataset_size / (SAMPLES_PER_GPU_HOUR * max(gpus, 1)) + EVAL_HOURS


def round_robin(runs: Sequence[TrainingRun], hosts: Sequence[GpuHost], per: int,
                length: Mapping[TrainingRun, float]) -> float:
    """The makespan of run i on host i mod H (hosts that can run one), each host running
    its runs in order on whichever of its slots frees first."""
    able = [h for h in hosts if h.gpus >= per and h.trainings_at_once(per)]
    free = {h.name: [0.0] * h.trainings_at_once(per) for h in able}
    for i, run in enumerate(runs):
        slots = free[able[i % len(able)].name]
        k = min(range(len(slots)), key=slots.__getitem__)
        slots[k] += length[run]
    return max(max(s) for s in free.values())


def scenarios() -> list[Scenario]:
    twelve = tuple(training_runs([0, 5, 10, 20], 3))
    out = [Scenario("2 hosts x 8 GPUs, 12 runs x 4 GPUs", "a:0,1,2,3,4,5,6,7;b:0,1,2,3,4,5,6,7",
                    twelve, 4),
           Scenario("3 hosts 8/8/4 GPUs, 12 runs x 4 GPUs",
                    "a:0,1,2,3,4,5,6,7;b:0,1,2,3,4,5,6,7;c:0,1,2,3", twelve, 4),
           Scenario("1 host x 8 GPUs, 12 runs x 4 GPUs", "a:0,1,2,3,4,5,6,7", twelve, 4),
           Scenario("2 hosts 4/8 GPUs, 12 runs x 4 GPUs", "a:0,1,2,3;b:0,1,2,3,4,5,6,7",
                    twelve, 4),
           Scenario("GPU host + CPU host, 8 runs on the CPU", "a:0,1,2,3;cpu:",
                    tuple(training_runs([0, 5, 10, 20], 2)), 0)]
    # uneven: designs of different dataset sizes in one batch (e.g. a size sweep)
    sizes = {0: 2000, 5: 2000, 10: 4000, 20: 8000}
    uneven = tuple(training_runs(sorted(sizes), 3))
    for hosts, per in [("a:0,1,2,3,4,5,6,7;b:0,1,2,3,4,5,6,7", 4),
                       ("a:0,1,2,3,4,5,6,7;b:0,1,2,3,4,5,6,7;c:0,1,2,3", 4),
                       ("a:0,1,2,3,4,5,6,7;b:0,1,2,3,4,5,6,7;c:0,1,2,3", 2)]:
        n = hosts.count(";") + 1
        out.append(Scenario(f"{n} hosts, uneven sizes 2k-8k, {per} GPUs/training", hosts,
                            uneven, per,
                            {r: run_hours(sizes[int(r.level)], per) for r in uneven}))
    return out


def measure(s: Scenario) -> dict:
    hosts = parse_gpu_hosts(s.hosts)
    placed = plan_placement(s.runs, hosts, s.gpus_per_training, durations=s.durations)
    length = {r: float((s.durations or {}).get(r, 1.0)) for r in s.runs}
    naive = round_robin(s.runs, hosts, s.gpus_per_training, length)
    return {"scenario": s.name, "hosts": s.hosts, "runs": len(s.runs),
            "gpus_per_training": s.gpus_per_training, "slots": dict(placed.slots),
            "ideal": placed.ideal, "makespan": placed.makespan, "ratio": placed.ratio,
            "round_robin": naive, "round_robin_ratio": naive / placed.ideal,
            "runs_per_host": {h: len(r) for h, r in placed.by_host().items()},
            "unit": "hours" if s.durations else "run-lengths"}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = [measure(s) for s in scenarios()]
    print(f"{'scenario':<46} {'slots':>5} {'ideal':>7} {'planner':>8} {'ratio':>6} "
          f"{'round-robin':>11} {'ratio':>6}  target <= {TARGET:.2f}")
    for r in rows:
        ok = "PASS" if r["ratio"] <= TARGET + 1e-9 else "MISS"
        print(f"{r['scenario']:<46} {sum(r['slots'].values()):>5} {r['ideal']:>7.2f} "
              f"{r['makespan']:>8.2f} {r['ratio']:>6.2f} {r['round_robin']:>11.2f} "
              f"{r['round_robin_ratio']:>6.2f}  {ok}  runs per host {r['runs_per_host']}")
    print("units: run-lengths (equal runs) or hours (the duration model: training "
          f"size / ({SAMPLES_PER_GPU_HOUR:g} x GPUs) h + {EVAL_HOURS} h evaluation)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
