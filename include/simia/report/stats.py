"""Statistics of the experiment: pass^k with task-bootstrap CIs, paired comparisons of
each sycophancy level with the reference (0 %) level, a trend test across levels, and
the smallest effect the design can detect.

Plain Python (``random``, ``fractions``, ``statistics``): deterministic for a given
seed, no numpy or scipy. Inputs are success matrices: one row per task, one boolean
per trial (:attr:`simia.evaluation.tau2_results.Tau2Results.matrix`), or mappings
``task_id -> row`` where levels must be paired on the same tasks.

The unit of resampling is the TASK: trials of one task are not independent (same
user scenario, same database), so every CI resamples whole tasks, and every
permutation test permutes within a task.

Permutation tests are exact whenever the null distribution's support is small enough
to enumerate (per-task success rates are fractions c/n, so every statistic is an
integer multiple of a common 1/D, and the distribution of a sum of independent
per-task terms is built by convolution over those integers); otherwise they fall back
on a Monte Carlo estimate ``(1 + #{as extreme}) / (1 + B)`` with a fixed seed. The
result says which (``exact``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "Estimate",
    "PairedComparison",
    "TrendTest",
    "bootstrap_pass_hat_k",
    "mde_design",
    "mde_from_sd",
    "pass_hat_k",
    "pass_hat_k_curve",
    "paired_comparison",
    "percentile",
    "task_pass_hat_k",
    "trend_test",
]

DEFAULT_RESAMPLES = 5000
DEFAULT_SEED = 20240607
#: exact enumeration when the convolution would touch at most this many (sum, term) pairs
_EXACT_BUDGET = 3_000_000

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


@dataclass(frozen=True)
class PairedComparison:
    """One level against the reference level on the tasks both were evaluated on.

    ``diffs`` are per task: success rate at the level minus at the reference (positive:
    the level did better).
    """

    tasks: int
    reference_rate: float  # mean per-task success rate of the reference on these tasks
    level_rate: float
    mean_diff: float  # level - reference
    ci: Estimate  # paired task bootstrap of mean_diff
    p_two_sided: float  # sign-flip permutation test of mean_diff = 0
    p_lower: float  # one-sided: the level is worse than the reference
    exact: bool  # True: the permutation distribution was enumerated
    better: int  # tasks whose success rate went up
    worse: int
    tied: int
    sd_diff: float | None  # sample SD of the per-task differences (None below 2 tasks)
    mde: float | None  # minimum detectable |mean_diff| from sd_diff (see mde_from_sd)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = self.ci.as_dict()
        return d


@dataclass(frozen=True)
class TrendTest:
    """Slope of per-task success rate on the sycophancy level, tested by permuting the
    level labels within each task."""

    levels: tuple[float, ...]
    tasks: int
    slope_per_10pp: float  # change of success rate per 10 percentage points of sycophancy
    ci: Estimate  # task bootstrap of slope_per_10pp
    p_decreasing: float  # one-sided: more sycophancy -> lower success
    p_two_sided: float
    exact: bool

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = self.ci.as_dict()
        d["levels"] = list(self.levels)
        return d


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


# ------------------------------------------------------------- exact permutation support

def _as_integers(terms: list[list[Fraction]]) -> tuple[list[list[int]], int]:
    """Scale every fraction by the least common multiple D of their denominators."""
    d = 1
    for options in terms:
        for x in options:
            d = d * x.denominator // math.gcd(d, x.denominator)
    return [[int(x * d) for x in options] for options in terms], d


def _sum_distribution(terms: list[list[int]]) -> dict[int, int] | None:
    """Distribution of sum_i X_i, X_i uniform over terms[i] (independent), as counts
    of each sum out of prod(len(terms[i])); None when over the work budget."""
    dist: dict[int, int] = {0: 1}
    for options in terms:
        opts: dict[int, int] = {}
        for x in options:
            opts[x] = opts.get(x, 0) + 1
        if len(opts) == 1:  # a constant term shifts the sum
            (x, m), = opts.items()
            dist = {s + x: c * m for s, c in dist.items()}
            continue
        if len(dist) * len(opts) > _EXACT_BUDGET:
            return None
        new: dict[int, int] = {}
        for s, c in dist.items():
            for x, m in opts.items():
                new[s + x] = new.get(s + x, 0) + c * m
        dist = new
        if len(dist) > _EXACT_BUDGET:
            return None
    return dist


def _permutation_p(terms: list[list[int]], observed: int, *, permutations: int,
                   seed: int) -> tuple[float, float, bool]:
    """(P[S <= observed], P[|S| >= |observed|], exact) for S = the sum of one uniformly
    drawn option per term (every test here has a null distribution centred on 0)."""
    dist = _sum_distribution(terms)
    if dist is not None:
        total = sum(dist.values())
        lower = sum(c for s, c in dist.items() if s <= observed)
        two = sum(c for s, c in dist.items() if abs(s) >= abs(observed))
        return lower / total, two / total, True
    rng = random.Random(seed)
    lower = two = 0
    for _ in range(permutations):
        s = sum(rng.choice(t) for t in terms)
        lower += s <= observed
        two += abs(s) >= abs(observed)
    return (1 + lower) / (1 + permutations), (1 + two) / (1 + permutations), False


# --------------------------------------------------------------------- paired comparison

def _rate(row: Sequence[bool]) -> Fraction:
    if not row:
        raise ValueError("a task with no trials")
    return Fraction(sum(1 for x in row if x), len(row))


def _z_sum(alpha: float, power: float) -> float:
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def mde_from_sd(sd: float, tasks: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable mean paired difference (normal approximation, two-sided):

        MDE = (z_{1-alpha/2} + z_{power}) * sd / sqrt(tasks)

    with ``sd`` the standard deviation of the per-task differences; alpha 0.05 and
    power 0.8 give the factor 1.95996 + 0.84162 = 2.80158.
    """
    if tasks < 1:
        raise ValueError("tasks must be >= 1")
    return _z_sum(alpha, power) * sd / math.sqrt(tasks)


def mde_design(p: float, tasks: int, trials: int, *, alpha: float = 0.05,
               power: float = 0.8) -> float:
    """Minimum detectable difference in pass^1 between two levels that the design
    (``tasks`` x ``trials``) allows when the only noise is trial-to-trial chance.

    Assumption: every task succeeds with the same probability ``p`` at both levels, its
    trials are independent Bernoulli draws, and the two levels are evaluated
    independently; task-to-task differences cancel in the paired design. A task's
    estimated rate then has variance p(1-p)/trials, a per-task difference
    2 p(1-p)/trials, and the mean over tasks 2 p(1-p)/(trials * tasks), so

        MDE = (z_{1-alpha/2} + z_{power}) * sqrt(2 p (1-p) / (trials * tasks)).

    Using one pooled p is conservative: for rates p_i that differ between tasks,
    mean p_i(1-p_i) <= p(1-p) with p their mean. Deterministic tasks (always or never
    solved) make the real noise smaller still.
    """
    if tasks < 1 or trials < 1:
        raise ValueError("tasks and trials must be >= 1")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be within 0..1, got {p}")
    return _z_sum(alpha, power) * math.sqrt(2 * p * (1 - p) / (trials * tasks))


def paired_comparison(reference: Mapping[str, Sequence[bool]],
                      level: Mapping[str, Sequence[bool]], *,
                      resamples: int = DEFAULT_RESAMPLES, permutations: int = 20000,
                      seed: int = DEFAULT_SEED, confidence: float = 0.95,
                      alpha: float = 0.05, power: float = 0.8) -> PairedComparison:
    """Compare ``level`` with ``reference`` on the tasks both have (task id -> trials).

    Per task i: d_i = rate_level(i) - rate_reference(i), rates = successes / trials
    (the per-task pass^1). Reports mean d, a paired percentile bootstrap CI (tasks
    resampled; both levels move together), and a sign-flip permutation test: under
    "the level makes no difference" each d_i is as likely as -d_i, so the null
    distribution of sum d_i is that of sum of +-|d_i|. p_two_sided = P(|S| >= |S_obs|),
    p_lower = P(S <= S_obs). Exact by enumeration (convolution over multiples of the
    common denominator of the rates), Monte Carlo with ``permutations`` draws past the
    budget. Also tasks better/worse/tied, SD of d and the MDE from it.
    """
    common = sorted(set(reference) & set(level))
    if not common:
        raise ValueError("the two levels share no task")
    diffs_f = [_rate(level[t]) - _rate(reference[t]) for t in common]
    diffs = [float(x) for x in diffs_f]
    ref_rates = [float(_rate(reference[t])) for t in common]
    lvl_rates = [float(_rate(level[t])) for t in common]
    n = len(common)
    mean = sum(diffs) / n
    (draws,) = _bootstrap(n, [_mean_of(diffs)], resamples=resamples, seed=seed)
    ints, _ = _as_integers([[x, -x] for x in diffs_f])
    observed = sum(t[0] for t in ints)
    p_lower, p_two, exact = _permutation_p(ints, observed, permutations=permutations, seed=seed)
    sd = None
    if n >= 2:
        sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    return PairedComparison(
        tasks=n, reference_rate=sum(ref_rates) / n, level_rate=sum(lvl_rates) / n,
        mean_diff=mean, ci=_interval(mean, draws, confidence), p_two_sided=p_two,
        p_lower=p_lower, exact=exact,
        better=sum(1 for x in diffs_f if x > 0), worse=sum(1 for x in diffs_f if x < 0),
        tied=sum(1 for x in diffs_f if x == 0), sd_diff=sd,
        mde=mde_from_sd(sd, n, alpha=alpha, power=power) if sd is not None else None)


# ---------------------------------------------------------------------------- trend test

def trend_test(by_level: Mapping[float, Mapping[str, Sequence[bool]]], *,
               resamples: int = DEFAULT_RESAMPLES, permutations: int = 20000,
               seed: int = DEFAULT_SEED, confidence: float = 0.95) -> TrendTest:
    """Does the per-task success rate fall as the sycophancy level rises?

    Tasks: those evaluated at every level. With levels x_j (J of them, mean xbar,
    Sxx = sum_j (x_j - xbar)^2) and per-task rates y_ij, the slope is the least-squares
    slope of the mean rate on the level, equal to the mean of per-task slopes:

        b = (1/T) sum_i sum_j (x_j - xbar) y_ij / Sxx,   reported per 10 points: 10 b.

    Null hypothesis: within each task the level labels are exchangeable (the level does
    not matter). The permutation test assigns each task's J rates to a random ordering
    of the levels, independently per task (which keeps the pairing: a task stays with
    itself), and compares the statistic U = sum_i sum_j (x_pi(j) - xbar) y_ij (b up to a
    constant) with the observed one: p_decreasing = P(U <= U_obs), p_two_sided =
    P(|U| >= |U_obs|). Exact by convolving the J! equally likely per-task values
    (rational, so integers after scaling) when within budget, else Monte Carlo.
    The CI of the slope resamples tasks.
    """
    levels = tuple(sorted(by_level))
    if len(levels) < 2:
        raise ValueError("a trend needs at least two levels")
    common = sorted(set.intersection(*(set(by_level[lv]) for lv in levels)))
    if not common:
        raise ValueError("no task was evaluated at every level")
    xs = [Fraction(str(lv)) for lv in levels]
    xbar = sum(xs) / len(xs)
    cx = [x - xbar for x in xs]
    sxx = sum(c * c for c in cx)
    rates = [[_rate(by_level[lv][t]) for lv in levels] for t in common]
    per_task_slope = [float(sum(c * y for c, y in zip(cx, ys, strict=True)) / sxx)
                      for ys in rates]
    n = len(common)
    slope10 = 10 * sum(per_task_slope) / n
    scaled = [10 * b for b in per_task_slope]
    (draws,) = _bootstrap(n, [_mean_of(scaled)], resamples=resamples, seed=seed)
    terms = []
    for ys in rates:
        terms.append([sum(c * y for c, y in zip(perm, ys, strict=True))
                      for perm in itertools.permutations(cx)])
    ints, _ = _as_integers(terms)
    observed = sum(t[0] for t in ints)  # permutations() yields the identity first
    p_dec, p_two, exact = _permutation_p(ints, observed, permutations=permutations, seed=seed)
    return TrendTest(levels=levels, tasks=n, slope_per_10pp=slope10,
                     ci=_interval(slope10, draws, confidence), p_decreasing=p_dec,
                     p_two_sided=p_two, exact=exact)
