"""The primary test and the verdict: training runs are the unit.

Primary endpoint: each training run's pass^1 (mean over tasks of its per-task success
over the trials that ran) regressed on the sycophancy level by OLS; the slope per 10
points is tested with a t test on runs - 2 degrees of freedom, under the declared
alternative and alpha. Task difficulty is shared by every run (all see the same tasks),
so it cancels in the slope; what is left between runs of one level (seed, data draw,
evaluation noise) is the residual the test uses. A checkpoint is not the unit: with one
run per level the level and the run are confounded, and the verdict is ``insufficient``
unless a run-to-run SD measured in an earlier analysis (an A/A design) is supplied, whose
degrees of freedom the t test then uses.

The verdict, in order:

* ``invalid``: a level lost more than 2 % of its cells to infrastructure errors or missing
  simulations, the levels' losses differ by more than 1 point, or a declared level/replicate
  has no results (each named);
* ``insufficient``: fewer than two levels with two or more runs (and no supplied variance),
  or only one level (an A/A design: the analysis states the run-to-run SD);
* ``decrease`` / ``increase`` (only where the alternative allows it) when p < alpha;
* ``no_effect`` otherwise, worded with what the (1 - alpha) bound excludes.

Calibration by simulation: ``benchmarks/bench_calibration.py``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import statsmodels.api as sm
from scipy import stats

from simia.analysis.outcomes import (INFRA, MISSING, OutcomeTable, RunSpec, level_key, parse_spec,
                                     read_runs)
from simia.analysis.results import (AnalysisResult, Excluded, ExcludedLevel, LackOfFit,
                                    LevelSummary, RunSummary, RunToRun, SensitivityRow, Slope,
                                    format_p)
from simia.analysis.telecom_split import TELECOM_TEST_TASKS
from simia.errors import InputError
from simia.settings.analysis import AnalysisSettings

__all__ = ["RunVariance", "analyze", "analyze_runs", "lack_of_fit", "pooled_run_sd",
           "run_variance_from_analysis", "slope_test"]

_METHOD = ("OLS of each training run's pass^1 on the level (per 10 points); t test of the "
           "slope with runs as the unit")


@dataclass(frozen=True)
class RunVariance:
    """A run-to-run SD of pass^1 measured elsewhere (an earlier analysis), with its
    degrees of freedom and the design it was measured on."""

    sd: float
    df: float
    tasks: int = 0
    trials: int = 0
    source: str = "supplied"


def run_variance_from_analysis(path: str | Path) -> RunVariance:
    """The run-to-run SD an earlier ``simia analyze`` JSON measured (``run_to_run``), or
    the one in an earlier run's ``report/report.json`` (its ``analysis``)."""
    from simia.io import read_json

    data = read_json(path, what="analysis JSON")
    if isinstance(data, dict) and "run_to_run" not in data and isinstance(
            data.get("analysis"), dict):
        data = data["analysis"]  # a report.json: the analysis is one of its keys
    rr = data.get("run_to_run") if isinstance(data, dict) else None
    if not isinstance(rr, dict) or not isinstance(rr.get("sd_pass1"), (int, float)) \
            or not isinstance(rr.get("df"), (int, float)) or rr["df"] <= 0:
        raise InputError(path, "no measured run-to-run SD (run_to_run.sd_pass1 with df > 0): "
                               "analyse a run with two or more replicates of a level first",
                         field="run_to_run")
    if rr.get("source", "").startswith("supplied"):
        raise InputError(path, "its run-to-run SD was itself supplied, not measured",
                         field="run_to_run.source")
    return RunVariance(float(rr["sd_pass1"]), float(rr["df"]), int(rr.get("tasks", 0)),
                       int(rr.get("trials", 0)), f"supplied: measured in {path}")


# --------------------------------------------------------------------------- statistics

def _p_value(t: float, df: float, alternative: str) -> float:
    if math.isnan(t):
        return math.nan
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    if alternative == "greater":
        return float(stats.t.sf(t, df))
    return float(2 * stats.t.sf(abs(t), df))


#: below this a slope, difference or SE is floating-point noise (pass^1 is a mean of ratios)
_TINY = 1e-12


def _t_stat(est: float, se: float) -> float:
    """est / se; +-inf when the runs agree exactly (se 0) but est is not 0; NaN for 0 / 0."""
    if abs(se) > _TINY:
        return est / se
    return math.copysign(math.inf, est) if abs(est) > _TINY else math.nan


def _design(levels: np.ndarray) -> np.ndarray:
    return sm.add_constant(np.asarray(levels, dtype=float) / 10.0, has_constant="add")


def slope_test(levels: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
               alternative: str = "less", alpha: float = 0.05,
               variance: RunVariance | None = None) -> Slope:
    """OLS slope of ``y`` (one value per run; NaN runs are dropped) on ``levels`` (%), per
    10 points, with a t test under ``alternative`` and a two-sided (1 - alpha) CI.

    The SE is OLS's (residual over runs, df = runs - 2), or, with ``variance``, the supplied
    run-to-run SD over sqrt(Sxx) on its df. Without residual df and ``variance`` only the
    estimate is returned."""
    lv, yy = np.asarray(levels, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(yy)
    lv, yy = lv[ok], yy[ok]
    conf = 1 - alpha
    if len(set(lv.tolist())) < 2:
        return Slope(estimate=None, confidence=conf, alternative=alternative,
                     variance="fewer than two levels with data")
    fit = sm.OLS(yy, _design(lv)).fit()
    est = float(fit.params[1])
    if variance is not None:
        sxx = float(np.sum((lv / 10 - np.mean(lv / 10)) ** 2))
        se, df, source = variance.sd / math.sqrt(sxx), variance.df, variance.source
    elif fit.df_resid > 0:
        se, df = float(fit.bse[1]), float(fit.df_resid)
        source = f"residual between this analysis's runs ({df:g} df)"
    else:
        return Slope(estimate=est, confidence=conf, alternative=alternative,
                     variance="no residual degrees of freedom")
    if abs(se) <= _TINY and abs(est) <= _TINY:
        return Slope(estimate=est, confidence=conf, alternative=alternative,
                     variance="every run's pass^1 lies on a flat line: no variation between "
                          "runs to test a slope against")
    t = _t_stat(est, se)
    q2 = float(stats.t.ppf(1 - alpha / 2, df))
    q1 = float(stats.t.ppf(1 - alpha, df))
    bound = {"less": est - q1 * se, "greater": est + q1 * se}.get(alternative)
    return Slope(estimate=est, se=se, df=df, t=t, ci_low=est - q2 * se, ci_high=est + q2 * se,
                 confidence=conf, bound=bound, p_value=_p_value(t, df, alternative),
                 alternative=alternative, variance=source)


def _factor_design(levels: np.ndarray) -> np.ndarray:
    """Cell-means design: one indicator column per level (sorted)."""
    uniq = np.unique(levels)
    return (levels[:, None] == uniq[None, :]).astype(float)


def pooled_run_sd(levels: Sequence[float] | np.ndarray,
                  y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(SD, df) of the runs around their level's mean (pooled within levels: the level as a
    factor, OLS residual); (NaN, 0) without a level holding two runs."""
    lv, yy = np.asarray(levels, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(yy)
    lv, yy = lv[ok], yy[ok]
    if len(yy) == 0:
        return math.nan, 0.0
    fit = sm.OLS(yy, _factor_design(lv)).fit()
    if fit.df_resid <= 0:
        return math.nan, 0.0
    return float(math.sqrt(fit.mse_resid)), float(fit.df_resid)


def lack_of_fit(levels: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                variance: RunVariance | None = None) -> LackOfFit:
    """F test of the level as a factor against the linear trend (needs three levels, and
    runs to spare or a supplied run-to-run SD)."""
    lv, yy = np.asarray(levels, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(yy)
    lv, yy = lv[ok], yy[ok]
    m = len(np.unique(lv))
    if m < 3:
        return LackOfFit(f=None, df_num=None, df_den=None, p_value=None,
                         note="needs three or more levels")
    lin = sm.OLS(yy, _design(lv)).fit()
    fac = sm.OLS(yy, _factor_design(lv)).fit()
    if fac.df_resid > 0 and variance is None:
        f, p, df_num = fac.compare_f_test(lin)
        return LackOfFit(f=float(f), df_num=float(df_num), df_den=float(fac.df_resid),
                         p_value=float(p), note="residual between this analysis's runs")
    if variance is None:
        return LackOfFit(f=None, df_num=None, df_den=None, p_value=None,
                         note="one run per level and no supplied run-to-run SD")
    df_num = float(m - 2)
    f = float((lin.ssr - fac.ssr) / df_num / variance.sd ** 2) if variance.sd > 0 else math.inf
    return LackOfFit(f=f, df_num=df_num, df_den=variance.df,
                     p_value=float(stats.f.sf(f, df_num, variance.df)),
                     note=f"against the run-to-run SD {variance.source}")


# --------------------------------------------------------------------------- summaries

def _excluded(table: OutcomeTable, settings: AnalysisSettings) -> Excluded:
    per_level = []
    for lv in table.unique_levels():
        st = table.status[table.levels == lv]
        per_level.append(ExcludedLevel(
            level=lv, cells=int(st.size), infrastructure_errors=int(np.sum(st == INFRA)),
            missing=int(np.sum(st == MISSING)),
            fraction=float(np.mean(st < 0)) if st.size else None))
    st = table.status
    return Excluded(
        cells=int(st.size), infrastructure_errors=int(np.sum(st == INFRA)),
        missing=int(np.sum(st == MISSING)), fraction=float(np.mean(st < 0)) if st.size else None,
        per_level=per_level,
        rule=(f"infrastructure errors and missing simulations are analysed as missing, not as "
              f"failures; invalid above {settings.max_excluded_fraction:.0%} of a level's cells "
              f"or when levels differ by more than {settings.max_excluded_imbalance:.0%}"))


def _run_summaries(table: OutcomeTable) -> list[RunSummary]:
    rates = table.task_rates()
    env, write = table.env_met_rate(), table.write_match_rate()
    out = []
    for i in range(table.n_runs):
        r = rates[i][np.isfinite(rates[i])]
        reasons, counts = np.unique(table.termination[i].astype(str), return_counts=True)
        out.append(RunSummary(
            level=float(table.levels[i]), replicate=table.replicates[i], path=table.paths[i],
            tasks=int(r.size), cells=int(table.status[i].size),
            infrastructure_errors=int(np.sum(table.status[i] == INFRA)),
            missing=int(np.sum(table.status[i] == MISSING)),
            pass_hat_k={str(k): v for k, v in table.pass_hat_k(i).items()},
            pass1_se_tasks=float(np.std(r, ddof=1) / math.sqrt(r.size)) if r.size > 1 else None,
            env_assertions_met=float(env[i]), write_action_match=float(write[i]),
            termination_reasons={str(k): int(c) for k, c in zip(reasons, counts, strict=True)}))
    return out


def _level_summaries(table: OutcomeTable, runs: list[RunSummary]) -> list[LevelSummary]:
    pass1 = table.pass1()
    out = []
    for lv in table.unique_levels():
        idx = [i for i in range(table.n_runs) if table.levels[i] == lv]
        ks = set.intersection(*(set(runs[i].pass_hat_k) for i in idx))
        mean_k = {k: float(np.mean([runs[i].pass_hat_k[k] for i in idx]))
                  for k in sorted(ks, key=int)}
        p1 = pass1[idx][np.isfinite(pass1[idx])]
        out.append(LevelSummary(level=lv, replicates=len(idx), pass_hat_k=mean_k,
                                pass1_run_sd=float(np.std(p1, ddof=1)) if p1.size > 1 else None))
    return out


# --------------------------------------------------------------------------- the verdict

def _pts(x: float) -> str:
    """A pass^1 change in points (0.031 -> '3.1')."""
    return f"{abs(x) * 100:.1f}"


def _validity(table: OutcomeTable, excluded: Excluded, settings: AnalysisSettings,
              expected: Mapping[float, int] | None) -> list[str]:
    reasons = []
    for e in excluded.per_level:
        if e.fraction is None or e.missing == e.cells:
            reasons.append(f"level {level_key(e.level)} %: no results (its evaluation never ran "
                           "or wrote no simulation)")
        elif e.fraction > settings.max_excluded_fraction:
            share = "all" if e.fraction == 1.0 else f"{e.fraction:.1%}"
            reasons.append(
                f"level {level_key(e.level)} %: {share} of its cells are infrastructure errors "
                f"({e.infrastructure_errors}) or missing ({e.missing}), more than "
                f"{settings.max_excluded_fraction:.0%}")
    fracs = [(e.fraction, e.level) for e in excluded.per_level if e.fraction is not None]
    if len(fracs) >= 2 and not reasons:
        (lo, lo_lv), (hi, hi_lv) = min(fracs), max(fracs)
        if hi - lo > settings.max_excluded_imbalance:
            reasons.append(
                f"excluded cells differ between levels: level {level_key(hi_lv)} % lost "
                f"{hi:.1%}, level {level_key(lo_lv)} % {lo:.1%} (more than "
                f"{settings.max_excluded_imbalance:.0%} apart: could bias the comparison)")
    have = table.replicates_per_level()
    for lv, n in sorted((expected or {}).items()):
        got = have.get(float(lv), 0)
        if got < n:
            reasons.append(f"level {level_key(lv)} %: {got} of {n} declared training runs have "
                           "results")
    if table.n_runs == 0 or not table.task_ids:
        reasons.append("no judged simulation at all")
    return reasons


def _sufficiency(table: OutcomeTable, pass1: np.ndarray,
                 variance: RunVariance | None) -> tuple[list[str], str]:
    """(reasons it is insufficient, A/A note)."""
    ok = np.isfinite(pass1)
    levels = table.levels[ok]
    uniq = np.unique(levels)
    if len(uniq) < 2:
        n = int(ok.sum())
        if n >= 2:
            return ([f"one level ({level_key(float(uniq[0]))} %) with {n} runs: an A/A design "
                     "measures the run-to-run SD (run_to_run) but has no level effect to "
                     "test"], "a/a")
        return (["fewer than two levels with results: nothing to compare"], "")
    replicated = int(sum(np.sum(levels == lv) >= 2 for lv in uniq))
    if replicated < 2 and variance is None:
        return ([f"only {replicated} level(s) with two or more training runs: with one run "
                 "per level the level is confounded with the checkpoint (see 'checkpoints' for "
                 "how the checkpoints differ); add replicates (simia plan-power) or supply a "
                 "run-to-run SD measured in an earlier run (run_variance_from)"], "")
    return [], ""


def _verdict_text(verdict: str, slope: Slope, alpha: float, alternative: str) -> str:
    conf = f"{(1 - alpha) * 100:g} %"
    est = slope.estimate
    p_text = format_p(slope.p_value)
    p = (f"p < {p_text[1:]}" if p_text.startswith("<") else f"p = {p_text}") + (
        "" if alternative == "two-sided" else f", one-sided ({alternative})")
    ci = (f"{conf} CI {slope.ci_low * 100:+.1f} to {slope.ci_high * 100:+.1f}"
          if slope.ci_low is not None and slope.ci_high is not None else "")
    if verdict in ("decrease", "increase") and est is not None:
        word = "falls" if verdict == "decrease" else "rises"
        return (f"pass^1 {word} by {_pts(est)} points per 10 points of sycophancy ({ci}; {p}).")
    if verdict != "no_effect" or est is None:
        return ""
    if alternative == "less":
        b = slope.bound
        if b is not None and b < 0:
            return (f"No effect shown: a drop larger than {_pts(b)} points of pass^1 per 10 "
                    f"points of sycophancy is excluded at {conf} (estimate {est * 100:+.1f}; {p}).")
        return (f"No drop: the {conf} lower bound of the slope is {(b or 0) * 100:+.1f} points "
                f"per 10 points (a rise, which the declared alternative 'less' does not test; "
                f"{p}).")
    if alternative == "greater":
        b = slope.bound
        if b is not None and b > 0:
            return (f"No effect shown: a rise larger than {_pts(b)} points of pass^1 per 10 "
                    f"points of sycophancy is excluded at {conf} (estimate {est * 100:+.1f}; {p}).")
        return (f"No rise: the {conf} upper bound of the slope is {(b or 0) * 100:+.1f} points "
                f"per 10 points ({p}).")
    lo, hi = slope.ci_low or 0.0, slope.ci_high or 0.0
    parts = []
    if lo < 0:
        parts.append(f"a drop larger than {_pts(lo)}")
    if hi > 0:
        parts.append(f"a rise larger than {_pts(hi)}")
    return (f"No effect shown: {' and '.join(parts)} points of pass^1 per 10 points of "
            f"sycophancy {'are' if len(parts) > 1 else 'is'} excluded at {conf} "
            f"(estimate {est * 100:+.1f}; {p}).")


def _tested(slope: Slope, testable: bool) -> Slope:
    """The slope, or its estimate only when the design cannot test it."""
    if testable:
        return slope
    return Slope(estimate=slope.estimate, confidence=slope.confidence,
                 alternative=slope.alternative,
                 variance="not tested: too few training runs (insufficient)")


def _decide(slope: Slope, alpha: float, alternative: str) -> str:
    p, est = slope.p_value, slope.estimate
    if p is None or est is None:
        return "insufficient"
    if p < alpha:
        if alternative == "less":
            return "decrease"
        if alternative == "greater":
            return "increase"
        return "decrease" if est < 0 else "increase"
    return "no_effect"


def analyze(table: OutcomeTable, settings: AnalysisSettings | None = None, *,
            run_variance: RunVariance | None = None,
            expected_levels: Mapping[float, int] | None = None,
            test_tasks: Collection[str] | None = TELECOM_TEST_TASKS,
            secondary: bool = True) -> AnalysisResult:
    """The verdict on the declared primary test, and the secondary evidence.

    Args:
        table: every run's cells (:func:`simia.analysis.outcomes.read_runs`).
        settings: the declared endpoint, alternative, alpha and missing-data limits.
        run_variance: a run-to-run SD measured earlier (default: the one
            ``settings.run_variance_from`` names); used only when this run has too few
            replicates to measure its own.
        expected_levels: the declared design {level: training runs}; a level or
            replicate without results makes the verdict ``invalid``.
        test_tasks: task ids of the held-out split reported on their own (None: skip).
        secondary: also compute secondary outcomes, strata and checkpoints.
    """
    from simia.analysis import secondary as sec

    settings = settings or AnalysisSettings()
    alt, alpha = settings.alternative, settings.alpha
    if run_variance is None and settings.run_variance_from:
        run_variance = run_variance_from_analysis(settings.run_variance_from)
    pass1 = table.pass1()
    excluded = _excluded(table, settings)
    notes = list(table.notes)

    invalid = _validity(table, excluded, settings, expected_levels)
    short, design = _sufficiency(table, pass1, run_variance)
    own_sd, own_df = pooled_run_sd(table.levels, pass1)
    use_external = bool(short == [] and run_variance is not None and
                        sum(np.sum(table.levels[np.isfinite(pass1)] == lv) >= 2
                            for lv in np.unique(table.levels)) < 2)
    variance = run_variance if use_external else None
    testable = not short
    slope = _tested(slope_test(table.levels, pass1, alternative=alt, alpha=alpha,
                               variance=variance), testable)
    method = _METHOD + (f"; SE from the run-to-run SD {run_variance.source}" if use_external
                        and run_variance else "; SE from the residual between runs")
    if use_external and run_variance is not None:
        if (run_variance.tasks and run_variance.tasks != len(table.task_ids)) or \
                (run_variance.trials and run_variance.trials != table.trials):
            notes.append(f"the supplied run-to-run SD was measured with {run_variance.tasks} "
                         f"tasks x {run_variance.trials} trials, this run has "
                         f"{len(table.task_ids)} x {table.trials}: not the same evaluation noise")
    elif run_variance is not None and not short:
        notes.append("replicates measured this run's own run-to-run SD; the supplied one is "
                     "not used")

    if invalid:
        verdict, reasons = "invalid", invalid
    elif short:
        verdict, reasons = "insufficient", short
    else:
        verdict, reasons = _decide(slope, alpha, alt), []
    if verdict == "insufficient" and not short:
        reasons = [f"the slope could not be tested ({slope.variance})"]
    text = _verdict_text(verdict, slope, alpha, alt) if not reasons else \
        f"{verdict}: " + "; ".join(reasons)
    if design == "a/a" and math.isfinite(own_sd):
        text += (f". Run-to-run SD of pass^1: {own_sd * 100:.1f} points ({own_df:g} df); give "
                 "this file as run_variance_from to plan or analyse later runs")

    if math.isfinite(own_sd):
        rr = RunToRun(sd_pass1=own_sd, df=own_df, tasks=len(table.task_ids),
                      trials=table.trials, source="measured: pooled within levels in this "
                                                  "analysis")
    elif run_variance is not None:
        rr = RunToRun(sd_pass1=run_variance.sd, df=run_variance.df, tasks=run_variance.tasks,
                      trials=run_variance.trials, source=run_variance.source)
    else:
        rr = RunToRun(sd_pass1=None, df=0, tasks=len(table.task_ids), trials=table.trials,
                      source="not measured: no level has two runs")

    runs = _run_summaries(table)
    sensitivity = [SensitivityRow(
        name="infrastructure errors and missing simulations counted as failures",
        slope=_tested(slope_test(table.levels, table.pass1(excluded_as_failure=True),
                                 alternative=alt, alpha=alpha, variance=variance), testable))]
    families, strata, checkpoints = [], [], []
    if secondary:
        families = sec.secondary_outcomes(table, alpha=alpha, variance=variance,
                                          use_inference=testable)
        strata = sec.strata(table, alternative=alt, alpha=alpha, test_tasks=test_tasks,
                            use_inference=testable and variance is None)
        checkpoints = sec.checkpoint_diffs(table, alpha=alpha)
    return AnalysisResult(
        verdict=verdict, verdict_text=text, reasons=reasons, endpoint=settings.primary_endpoint,
        method=method, alternative=alt, alpha=alpha, slope_per_10pp=slope,
        p_value=slope.p_value, p_value_text=format_p(slope.p_value),
        replicates_per_level={level_key(k): v for k, v in table.replicates_per_level().items()},
        excluded=excluded, levels=_level_summaries(table, runs), runs=runs, run_to_run=rr,
        lack_of_fit=lack_of_fit(table.levels, pass1, variance=variance),
        sensitivity=sensitivity, secondary=families, strata=strata, checkpoints=checkpoints,
        notes=notes, settings=settings.model_dump(mode="json"))


def analyze_runs(specs: Sequence[RunSpec | str], settings: AnalysisSettings | None = None, *,
                 run_variance: RunVariance | str | Path | None = None,
                 expected_levels: Mapping[float, int] | None = None,
                 test_tasks: Collection[str] | None = TELECOM_TEST_TASKS,
                 **kwargs: Any) -> AnalysisResult:
    """Read each run's tau2 results file (``LEVEL:REPLICATE=PATH`` or :class:`RunSpec`;
    a path that does not exist is a run whose evaluation never ran) and :func:`analyze`."""
    parsed = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    if isinstance(run_variance, (str, Path)):
        run_variance = run_variance_from_analysis(run_variance)
    return analyze(read_runs(parsed), settings, run_variance=run_variance,
                   expected_levels=expected_levels, test_tasks=test_tasks, **kwargs)
