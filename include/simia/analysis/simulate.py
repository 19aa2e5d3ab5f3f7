"""Simulated experiments with known truth, for the power planner and the calibration study.

The generating model (docs/statistics-notes.md): the success of task t, training run r
(level x_r, in points), trial k is Bernoulli(p'_{tr}) with

    logit p_{tr} = mu + beta * (x_r - x_min) / 10 + a_t + u_r + v_{tr}
    a_t ~ N(0, task_sd^2)       task difficulty (large: some tasks never, some always solved)
    u_r ~ N(0, run_sd^2)        the training run (seed, data order, conversations drawn)
    v_tr ~ N(0, task_run_sd^2)  how differently two runs handle the same task
    p'_{tr} ~ Beta with mean p_{tr} and intra-class correlation trial_icc: trials of one
                                task by one checkpoint are correlated (temperature 0)

``mu`` makes the lowest level's expected pass^1 ``baseline_pass1``; ``beta`` makes the
expected per-level pass^1 fall on a line of slope ``slope_per_10pp`` (pass^1 per 10
points) in the least-squares sense. The truth a run's CI should cover is the slope of the
expected per-run pass^1 GIVEN the experiment's tasks (every run sees the same tasks), which
:func:`simulate_experiment` returns beside the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize
from scipy.special import expit

from simia.analysis.outcomes import FAILURE, INFRA, SUCCESS, OutcomeTable

__all__ = ["DEFAULT_BASELINE_PASS1", "DEFAULT_TASK_SD_LOGIT", "DEFAULT_TRIAL_ICC",
           "SimulationModel", "logit_parameters", "run_pass1_sd", "simulate_experiment",
           "simulated_task_ids", "simulated_test_tasks"]

#: Qwen2.5-7B-Instruct's pass^1 on telecom base in the fork's own runs (tau2-reference.md)
DEFAULT_BASELINE_PASS1 = 0.26
#: assumption: telecom tasks range from always solved to never (logit SD 2: the middle 95 %
#: of tasks between p = 0.01 and 0.9 around a pass^1 of 0.26)
DEFAULT_TASK_SD_LOGIT = 2.0
#: assumption: trials at temperature 0 are strongly correlated (half of a task's trial
#: variance is shared by all its trials)
DEFAULT_TRIAL_ICC = 0.5

_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(48)
_GH_W = _GH_W / math.sqrt(2 * math.pi)
_REASONS_FAIL = ("user_stop", "agent_stop", "max_steps", "too_many_errors")
_REASONS_P = (0.6, 0.2, 0.15, 0.05)


@dataclass(frozen=True)
class SimulationModel:
    """One simulated experiment's design and truth."""

    levels: tuple[float, ...] = (0, 5, 10, 20)
    replicates: int = 2  # training runs per level
    tasks: int = 114
    trials: int = 4
    baseline_pass1: float = DEFAULT_BASELINE_PASS1
    task_sd: float = DEFAULT_TASK_SD_LOGIT
    run_sd: float = 0.2
    task_run_sd: float = 0.5
    trial_icc: float = DEFAULT_TRIAL_ICC
    slope_per_10pp: float = 0.0  # expected pass^1 change per 10 points
    infra_level: float | None = None  # every cell of this level is an infrastructure error
    infra_rate: float = 0.0  # share of cells at every level lost to infrastructure errors

    @property
    def total_sd(self) -> float:
        return math.sqrt(self.task_sd ** 2 + self.run_sd ** 2 + self.task_run_sd ** 2)

    def with_(self, **changes: object) -> SimulationModel:
        return replace(self, **changes)  # type: ignore[arg-type]


def _mean_expit(center: np.ndarray | float, sd: float) -> np.ndarray:
    """E[expit(center + sd * Z)], Z standard normal (Gauss-Hermite)."""
    c = np.asarray(center, dtype=float)[..., None]
    return np.sum(expit(c + sd * _GH_Z) * _GH_W, axis=-1)


def _x(model: SimulationModel, levels: np.ndarray | tuple[float, ...]) -> np.ndarray:
    return (np.asarray(levels, dtype=float) - min(model.levels)) / 10.0


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float(np.sum(xc * y) / np.sum(xc * xc))


def logit_parameters(model: SimulationModel) -> tuple[float, float]:
    """(mu, beta per 10 points) on the logit scale that give the model's baseline pass^1 and
    its pass^1 slope (marginally over tasks and runs)."""
    sd = model.total_sd
    mu = optimize.brentq(lambda m: float(_mean_expit(m, sd)) - model.baseline_pass1, -30, 30)
    if model.slope_per_10pp == 0 or len(set(model.levels)) < 2:
        return mu, 0.0
    x = _x(model, model.levels)

    def gap(beta: float) -> float:
        return _ols_slope(x, _mean_expit(mu + beta * x, sd)) - model.slope_per_10pp

    return mu, optimize.brentq(gap, -20, 20)


def simulated_task_ids(n: int) -> tuple[str, ...]:
    """Telecom-like task ids: issue types in the base split's proportions (49 MMS, 36 mobile
    data, 29 service of 114), personas None / Easy / Hard in turn."""
    shares = (("mms_issue", 49), ("mobile_data_issue", 36), ("service_issue", 29))
    bounds = np.cumsum([c for _, c in shares]) / 114
    ids = []
    for i in range(n):
        issue = shares[int(np.searchsorted(bounds, (i + 0.5) / n))][0]
        ids.append(f"[{issue}]sim_{i:03d}[PERSONA:{('None', 'Easy', 'Hard')[i % 3]}]")
    return tuple(ids)


def simulated_test_tasks(ids: tuple[str, ...]) -> tuple[str, ...]:
    """A held-out split the size of telecom's (40 of 114 tasks), evenly spaced."""
    n = len(ids)
    k = max(1, round(n * 40 / 114))
    pick = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    return tuple(ids[i] for i in pick)


def simulate_experiment(model: SimulationModel, rng: np.random.Generator
                        ) -> tuple[OutcomeTable, float]:
    """One experiment's outcome table and the true slope of its expected per-run pass^1 on
    the level, per 10 points, given its tasks (over the runs that have data)."""
    mu, beta = logit_parameters(model)
    levels = np.repeat(np.asarray(model.levels, dtype=float), model.replicates)
    n_runs, T, K = len(levels), model.tasks, model.trials
    x = _x(model, levels)
    a = rng.normal(0, model.task_sd, T)
    u = rng.normal(0, model.run_sd, n_runs)
    v = rng.normal(0, model.task_run_sd, (n_runs, T))
    p = np.clip(expit(mu + beta * x[:, None] + a[None, :] + u[:, None] + v), 1e-9, 1 - 1e-9)
    rho = model.trial_icc
    if rho > 0:
        s = (1 - rho) / rho
        p = rng.beta(p * s, (1 - p) * s)
    success = rng.random((n_runs, T, K)) < p[..., None]
    status = np.where(success, SUCCESS, FAILURE).astype(np.int8)
    if model.infra_rate > 0:
        status[rng.random(status.shape) < model.infra_rate] = INFRA
    if model.infra_level is not None:
        status[levels == model.infra_level] = INFRA
    # secondary outcomes: partial credit, write checks on a sixth of the tasks, reasons
    env_met = np.where(success, 1.0, rng.choice([0.0, 0.5], size=success.shape))
    has_write = (np.arange(T) % 6 == 0)[None, :, None] & np.ones_like(success)
    write_total = np.where(has_write, 2, 0)
    write_matched = np.where(success, 2, rng.binomial(2, 0.5, success.shape)) * (write_total > 0)
    reasons = np.array(_REASONS_FAIL, dtype=object)[
        rng.choice(len(_REASONS_FAIL), size=success.shape, p=_REASONS_P)]
    termination = np.where(success, "user_stop", reasons).astype(object)
    judged = status >= 0
    termination[~judged] = "infrastructure_error"
    env_met[~judged] = math.nan
    ids = simulated_task_ids(T)
    table = OutcomeTable(levels=levels, replicates=tuple(
        f"r{i % model.replicates + 1}" for i in range(n_runs)), paths=(None,) * n_runs,
        task_ids=ids, status=status, env_met=env_met, write_total=write_total * judged,
        write_matched=write_matched * judged, termination=termination)
    # the truth: expected per-run pass^1 given the tasks, its OLS slope over runs with data
    level_mean = _mean_expit(mu + beta * x[:, None] + a[None, :],
                             math.hypot(model.run_sd, model.task_run_sd)).mean(axis=1)
    keep = judged.any(axis=(1, 2))
    truth = _ols_slope(x[keep], level_mean[keep]) if len(set(x[keep])) > 1 else math.nan
    return table, truth


def run_pass1_sd(model: SimulationModel, *, task_sets: int = 96, runs: int = 48,
                 seed: int = 20240607) -> tuple[float, float]:
    """(SD of a run's pass^1 between runs of one level given the tasks, the part of it
    without evaluation noise: the runs' own variation), at the baseline, by Monte Carlo
    over ``task_sets`` x ``runs`` simulated runs (pooled within task sets)."""
    rng = np.random.default_rng(seed)
    mu, _ = logit_parameters(model.with_(slope_per_10pp=0.0))
    T, K = model.tasks, model.trials
    a = rng.normal(0, model.task_sd, (task_sets, 1, T))
    u = rng.normal(0, model.run_sd, (task_sets, runs, 1))
    v = rng.normal(0, model.task_run_sd, (task_sets, runs, T))
    p = np.clip(expit(mu + a + u + v), 1e-9, 1 - 1e-9)
    true_pass1 = p.mean(axis=2)
    if model.trial_icc > 0:
        s = (1 - model.trial_icc) / model.trial_icc
        p = rng.beta(p * s, (1 - p) * s)
    observed = rng.binomial(K, p).mean(axis=2) / K
    within = lambda y: float(np.mean(np.var(y, axis=1, ddof=1)))  # noqa: E731
    return math.sqrt(within(observed)), math.sqrt(within(true_pass1))
