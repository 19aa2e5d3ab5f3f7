"""Descriptive statistics of one checkpoint's tau2 results: pass^k with a task-bootstrap
CI (the report's per-run numbers). The verdict is :mod:`simia.analysis`'s (training runs
as the unit), not these.

Plain Python (``random``, ``statistics``): deterministic for a given seed. Inputs are
success matrices: one row per task, one boolean per trial
(:attr:`simia.evaluation.tau2_results.Tau2Results.matrix`).

The unit of resampling is the TASK: trials of one task are not independent (same user
scenario, same database), so every CI resamples whole tasks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "Estimate",
    "bootstrap_pass_hat_k",
    "pass_hat_k",
    "pass_hat_k_curve",
    "percentile",
    "task_pass_hat_k",
]

DEFAULT_RESAMPLES = 5000
DEFAULT_SEED = 20240607

Matrix = Sequence[Sequence[bool]]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# ------------------------------------------------------------------------------ pass^k

def task_pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k of one task with n trials and c successes: C(c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"k must be within 1..n={n}, got {k}")
    return math.comb(c, k) / math.comb(n, k)


def _counts(matrix: Matrix) -> list[tuple[int, int]]:
    out = []
    for i, row in enumerate(matrix):
        if not row:
            raise ValueError(f"task row {i} has no trials")
        out.append((len(row), sum(1 for x in row if x)))
    return out


def pass_hat_k(matrix: Matrix, k: int) -> float:
    """pass^k of a success matrix: the mean over tasks of C(c, k) / C(n, k)."""
    counts = _counts(matrix)
    if not counts:
        raise ValueError("no tasks")
    return sum(task_pass_hat_k(n, c, k) for n, c in counts) / len(counts)


def pass_hat_k_curve(matrix: Matrix) -> dict[int, float]:
    """pass^k for k = 1 .. the smallest number of trials of any task."""
    counts = _counts(matrix)
    if not counts:
        return {}
    return {k: sum(task_pass_hat_k(n, c, k) for n, c in counts) / len(counts)
            for k in range(1, min(n for n, _ in counts) + 1)}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between order statistics
    (numpy's default ``linear`` method)."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _bootstrap(n: int, stats: Sequence[Callable[[list[int]], float]], *, resamples: int,
               seed: int) -> list[list[float]]:
    """For each of ``resamples`` draws of ``n`` task indices with replacement (one RNG,
    so every statistic sees the same draws), the value of every statistic."""
    rng = random.Random(seed)
    population = range(n)
    out: list[list[float]] = [[] for _ in stats]
    for _ in range(resamples):
        idx = rng.choices(population, k=n)
        for j, stat in enumerate(stats):
            out[j].append(stat(idx))
    return out


def _interval(point: float, draws: list[float], confidence: float) -> Estimate:
    a = (1 - confidence) / 2
    low, high = percentile(draws, a), percentile(draws, 1 - a)
    # float sums of identical values can differ in the last bit; keep the point inside
    return Estimate(point, min(low, point), max(high, point), confidence)


def bootstrap_pass_hat_k(matrix: Matrix, ks: Sequence[int] | None = None, *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                         confidence: float = 0.95) -> dict[int, Estimate]:
    """pass^k for each k (default 1 .. min trials) with a percentile bootstrap CI that
    resamples TASKS with replacement (``resamples`` draws, RNG seeded with ``seed``;
    the same draws for every k)."""
    counts = _counts(matrix)
    if not counts:
        return {}
    if ks is None:
        ks = range(1, min(n for n, _ in counts) + 1)
    per_task = [[task_pass_hat_k(n, c, k) for n, c in counts] for k in ks]
    stats = [_mean_of(v) for v in per_task]
    draws = _bootstrap(len(counts), stats, resamples=resamples, seed=seed)
    return {k: _interval(sum(v) / len(v), d, confidence)
            for k, v, d in zip(ks, per_task, draws, strict=True)}


def _mean_of(values: Sequence[float]) -> Callable[[list[int]], float]:
    def stat(idx: list[int]) -> float:
        return sum(values[i] for i in idx) / len(idx)
    return stat
