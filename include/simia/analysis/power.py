"""Power before money: how many training runs per level the declared effect needs.

The primary test is a t test of the OLS slope of per-run pass^1 on the level (per 10
points) with N - 2 degrees of freedom, N = r runs at each of m levels. With sigma the SD of
a run's pass^1 between runs of one level (the runs' own variation plus the evaluation
noise of its tasks x trials), the slope's SE is sigma / sqrt(r * Sxx), Sxx = sum over levels
of (x_i / 10 - mean)^2, and the power against a slope delta is exact under normal run
effects: a noncentral t with N - 2 df and noncentrality |delta| sqrt(r Sxx) / sigma (scipy's
``nct``). The notes' closed form, r >= (t_{1-alpha} + t_{1-power})^2 sigma^2 / (delta^2 Sxx),
is given beside it.

sigma comes from an earlier analysis's measured ``run_to_run`` (an A/A run, or any run with
replicates), or from the logistic model of :mod:`simia.analysis.simulate` with the
literature's run-to-run variance (:mod:`simia.settings.analysis`), by Monte Carlo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from scipy import stats

from simia.analysis.simulate import (DEFAULT_BASELINE_PASS1, DEFAULT_TASK_SD_LOGIT,
                                     DEFAULT_TRIAL_ICC, SimulationModel, _mean_expit,
                                     logit_parameters, run_pass1_sd)
from simia.analysis.telecom_split import SPLIT_SIZES
from simia.errors import ConfigError
from simia.settings.analysis import AnalysisSettings

__all__ = ["PowerPlan", "plan_power", "plan_power_for_run", "slope_power"]


def _sxx(levels: Sequence[float]) -> float:
    x = [lv / 10 for lv in levels]
    mean = sum(x) / len(x)
    return sum((v - mean) ** 2 for v in x)


def slope_power(replicates: int, levels: Sequence[float], sd_pass1: float, effect: float, *,
                alpha: float = 0.05, alternative: str = "less",
                df: float | None = None) -> float:
    """Power of the primary test with ``replicates`` runs per level against a slope of
    ``effect`` (pass^1 per 10 points, its size; the sign follows the alternative). ``df``:
    the variance's degrees of freedom when it is supplied rather than measured (default:
    runs - 2)."""
    sxx = replicates * _sxx(levels)
    df = replicates * len(levels) - 2 if df is None else df
    if df <= 0 or sxx <= 0 or sd_pass1 <= 0:
        return 0.0
    ncp = abs(effect) * math.sqrt(sxx) / sd_pass1
    if alternative == "two-sided":
        q = stats.t.ppf(1 - alpha / 2, df)
        return float(stats.nct.sf(q, df, ncp) + stats.nct.cdf(-q, df, ncp))
    return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, ncp))


def _model_sd(model: SimulationModel, effect: float, alternative: str) -> tuple[float, float]:
    """(sigma, its part without evaluation noise) under the logistic model: the runs' SD
    of pass^1 at each level's expected pass^1 when the slope is the smallest effect in the
    alternative's direction, pooled over the levels (the residual the test will see); for a
    two-sided test the larger of the two directions."""
    signs = {"less": (-1.0,), "greater": (1.0,)}.get(alternative, (-1.0, 1.0))
    best = (0.0, 0.0)
    for sign in signs:
        shifted = model.with_(slope_per_10pp=sign * effect)
        mu, beta = logit_parameters(shifted)
        x = [(lv - min(model.levels)) / 10 for lv in model.levels]
        sds = [run_pass1_sd(model.with_(baseline_pass1=float(
            _mean_expit(mu + beta * xi, model.total_sd)))) for xi in x]
        pooled = (math.sqrt(sum(a * a for a, _ in sds) / len(sds)),
                  math.sqrt(sum(b * b for _, b in sds) / len(sds)))
        best = max(best, pooled)
    return best


class PowerPlan(BaseModel):
    """Replicates per level for the declared smallest effect, and the power of each choice."""

    model_config = ConfigDict(extra="forbid")

    levels: list[float]
    tasks: int
    trials: int
    smallest_effect_per_10pp: float
    alpha: float
    alternative: str
    target_power: float
    sd_pass1: float  # SD of one run's pass^1 between runs of a level (evaluation noise incl.;
    # model-based: pooled over the levels under the smallest effect)
    sd_runs_only: float | None  # the part without evaluation noise (model-based plans only)
    sd_source: str
    assumptions: dict[str, Any]
    replicates_needed: int | None  # None: more than max_replicates
    power_by_replicates: dict[str, float]  # runs per level -> power (1: insufficient -> 0)
    formula_replicates: float  # the notes' closed form, at the df of replicates_needed
    one_run_per_level_power: float | None  # with the supplied SD's df (A/A measured), if any
    summary: str

    def to_json(self, *, indent: bool = True) -> str:
        """The plan as JSON text."""
        import json

        return json.dumps(self.model_dump(mode="json"), indent=2 if indent else None)


def plan_power(levels: Sequence[float], tasks: int, trials: int,
               settings: AnalysisSettings | None = None, *, sd_pass1: float | None = None,
               prior_analysis: str | Path | None = None,
               baseline_pass1: float = DEFAULT_BASELINE_PASS1,
               task_sd: float = DEFAULT_TASK_SD_LOGIT, trial_icc: float = DEFAULT_TRIAL_ICC,
               max_replicates: int = 20) -> PowerPlan:
    """The replicates per level the primary test needs to detect the declared smallest
    effect with the target power.

    sigma (the SD of a run's pass^1 between runs of a level) is, in order: ``sd_pass1``;
    the ``run_to_run`` of ``prior_analysis`` (default ``settings.run_variance_from``); else
    the logistic model with ``settings.run_sd_logit`` / ``task_run_sd_logit``, the task
    spread ``task_sd``, trial correlation ``trial_icc`` and ``baseline_pass1``.
    """
    from simia.analysis.inference import run_variance_from_analysis

    settings = settings or AnalysisSettings()
    levels = sorted(float(lv) for lv in levels)
    if len(set(levels)) < 2:
        raise ConfigError(f"levels: need two or more distinct levels, got {levels}")
    if tasks < 1 or trials < 1:
        raise ConfigError(f"tasks and trials must be >= 1, got {tasks} x {trials}")
    alpha, alt, target = settings.alpha, settings.alternative, settings.target_power
    effect = settings.smallest_effect_per_10pp
    prior = prior_analysis or settings.run_variance_from
    runs_only: float | None = None
    supplied_df: float | None = None
    assumptions: dict[str, Any] = {}
    if sd_pass1 is not None:
        sigma, source = float(sd_pass1), "given"
    elif prior:
        rv = run_variance_from_analysis(prior)
        sigma, supplied_df = rv.sd, rv.df
        source = f"measured in {prior} ({rv.df:g} df, {rv.tasks} tasks x {rv.trials} trials)"
        if (rv.tasks and rv.tasks != tasks) or (rv.trials and rv.trials != trials):
            source += f"; this run has {tasks} x {trials}: evaluation noise differs"
    else:
        model = SimulationModel(levels=tuple(levels), tasks=tasks, trials=trials,
                                baseline_pass1=baseline_pass1, task_sd=task_sd,
                                run_sd=settings.run_sd_logit,
                                task_run_sd=settings.task_run_sd_logit, trial_icc=trial_icc)
        sigma, runs_only = _model_sd(model, effect, alt)
        assumptions = {"run_sd_logit": settings.run_sd_logit,
                       "task_run_sd_logit": settings.task_run_sd_logit,
                       "task_sd_logit": task_sd, "trial_icc": trial_icc,
                       "baseline_pass1": baseline_pass1}
        source = ("logistic model (simia.analysis.simulate) with the literature's run-to-run "
                  f"SD {settings.run_sd_logit:g} and task x run SD "
                  f"{settings.task_run_sd_logit:g} (logit)")
    table = {r: (0.0 if r == 1 else slope_power(r, levels, sigma, effect, alpha=alpha,
                                                alternative=alt))
             for r in range(1, max_replicates + 1)}
    needed = next((r for r, p in table.items() if p >= target), None)
    df = (needed or max_replicates) * len(levels) - 2
    a = alpha / 2 if alt == "two-sided" else alpha
    formula = ((stats.t.ppf(1 - a, df) + stats.t.ppf(target, df)) ** 2 * sigma ** 2
               / (effect ** 2 * _sxx(levels)))
    one_run = (slope_power(1, levels, sigma, effect, alpha=alpha, alternative=alt,
                           df=supplied_df) if supplied_df else None)
    tail = "" if alt == "two-sided" else f" one-sided ({alt})"
    summary = (f"{needed} training runs per level" if needed else
               f"more than {max_replicates} training runs per level") + (
        f" detect a slope of {effect * 100:.1f} points of pass^1 per 10 points with power "
        f"{target:.0%} at alpha {alpha:g}{tail} ({len(levels)} levels, {tasks} tasks x "
        f"{trials} trials, run-to-run SD of pass^1 {sigma * 100:.1f} points); power with 2 "
        f"runs: {table.get(2, 0.0):.2f}")
    return PowerPlan(levels=levels, tasks=tasks, trials=trials, smallest_effect_per_10pp=effect,
                     alpha=alpha, alternative=alt, target_power=target, sd_pass1=sigma,
                     sd_runs_only=runs_only, sd_source=source, assumptions=assumptions,
                     replicates_needed=needed,
                     power_by_replicates={str(r): p for r, p in table.items()},
                     formula_replicates=float(formula), one_run_per_level_power=one_run,
                     summary=summary)


def plan_power_for_run(levels: Sequence[float], num_trials: int,
                       settings: AnalysisSettings | None = None, *, task_split: str = "base",
                       num_tasks: int = 0) -> PowerPlan:
    """:func:`plan_power` for a run's settings (the evaluation's split and ``num_tasks``, 0:
    the whole split), for the run's validation to log (``plan.summary``) and record
    (``plan.to_json()``)."""
    size = SPLIT_SIZES.get(task_split, SPLIT_SIZES["base"])
    tasks = min(num_tasks, size) if num_tasks else size
    return plan_power(levels, tasks, num_trials, settings)
