"""Secondary evidence from the same simulations, declared as such (the verdict never uses it).

* Outcomes per run, each level contrasted with the reference (lowest) level with runs as
  the unit (level as a factor, OLS; two-sided t tests on the pooled residual between runs),
  Holm-adjusted within each outcome's family: pass^1, the fraction of environment
  assertions met, the write-action match rate (``action_checks`` with ``tool_type`` write),
  and the share of judged simulations ending with each termination reason.
* Strata: the primary slope on the tasks of one issue type or persona (two-sided, Holm
  within the dimension), and on the held-out test split (the declared alternative).
* Checkpoints: how each run differs from the reference run on the same tasks (paired t
  over tasks): evaluation noise only, the comparison one checkpoint per level allows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from simia.analysis.inference import _TINY, RunVariance, _t_stat, slope_test
from simia.analysis.outcomes import OutcomeTable, issue_type, level_key, persona
from simia.analysis.results import CheckpointDiff, Contrast, OutcomeFamily, Stratum

__all__ = ["checkpoint_diffs", "holm", "level_contrasts", "secondary_outcomes", "strata"]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p values (statsmodels' ``multipletests``); None stays None."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        adj = multipletests([p_values[i] for i in idx], method="holm")[1]
        for i, a in zip(idx, adj, strict=True):
            out[i] = float(a)
    return out


def level_contrasts(levels: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                    alpha: float = 0.05, variance: RunVariance | None = None,
                    use_inference: bool = True) -> list[Contrast]:
    """Each level minus the lowest level (mean over runs), two-sided t tests with runs as
    the unit, Holm-adjusted over the levels. SE: pooled residual between runs of a level
    (OLS, level as a factor), or the supplied run-to-run SD; estimates only without either
    (or when ``use_inference`` is false)."""
    lv, yy = np.asarray(levels, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(yy)
    lv, yy = lv[ok], yy[ok]
    uniq = np.unique(lv)
    if len(uniq) < 2:
        return []
    ref, others = float(uniq[0]), [float(u) for u in uniq[1:]]
    X = np.column_stack([np.ones(len(lv))] + [(lv == u).astype(float) for u in others])
    fit = sm.OLS(yy, X).fit()
    n_ref = int(np.sum(lv == ref))
    rows: list[Contrast] = []
    for j, u in enumerate(others, start=1):
        est = float(fit.params[j])
        if not use_inference or (fit.df_resid <= 0 and variance is None):
            rows.append(Contrast(level=u, reference=ref, estimate=est))
            continue
        if variance is not None:
            se = variance.sd * math.sqrt(1 / int(np.sum(lv == u)) + 1 / n_ref)
            df = variance.df
        else:
            se, df = float(fit.bse[j]), float(fit.df_resid)
        if se <= _TINY:  # the runs of each level agree exactly: no spread to test against
            rows.append(Contrast(level=u, reference=ref, estimate=est))
            continue
        t = _t_stat(est, se)
        q = float(stats.t.ppf(1 - alpha / 2, df))
        p = float(2 * stats.t.sf(abs(t), df)) if not math.isnan(t) else None
        rows.append(Contrast(level=u, reference=ref, estimate=est, se=se, df=df,
                             ci_low=est - q * se, ci_high=est + q * se, p_value=p))
    adjusted = holm([c.p_value for c in rows])
    return [c.model_copy(update={"p_holm": a}) for c, a in zip(rows, adjusted, strict=True)]


def _family(name: str, description: str, table: OutcomeTable, y: np.ndarray, *,
            alpha: float, variance: RunVariance | None, use_inference: bool) -> OutcomeFamily:
    per_level: dict[str, float | None] = {}
    for lv in table.unique_levels():
        vals = y[(table.levels == lv) & np.isfinite(y)]
        per_level[level_key(lv)] = float(np.mean(vals)) if vals.size else None
    return OutcomeFamily(outcome=name, description=description, per_level=per_level,
                         contrasts=level_contrasts(table.levels, y, alpha=alpha,
                                                   variance=variance,
                                                   use_inference=use_inference))


def secondary_outcomes(table: OutcomeTable, *, alpha: float = 0.05,
                       variance: RunVariance | None = None,
                       use_inference: bool = True) -> list[OutcomeFamily]:
    """The secondary outcome families (``variance``, a supplied run-to-run SD of pass^1,
    serves pass^1 only)."""
    kw = {"alpha": alpha, "use_inference": use_inference}
    out = [_family("pass^1", "per-run pass^1 (the primary outcome, level by level)", table,
                   table.pass1(), variance=variance, **kw)]
    candidates = [
        ("env_assertions_met", "fraction of environment assertions met (partial credit: the "
                               "reward needs all of them)", table.env_met_rate()),
        ("write_action_match", "write actions (action_checks with tool_type write) matched / "
                               "checked", table.write_match_rate())]
    for reason in table.termination_reasons():
        candidates.append((f"termination:{reason}",
                           f"share of judged simulations ending with {reason}",
                           table.termination_rate(reason)))
    for name, description, y in candidates:
        if np.isfinite(y).any():
            out.append(_family(name, description, table, y, variance=None, **kw))
    return out


def _stratum(table: OutcomeTable, dimension: str, name: str, mask: np.ndarray, *,
             alternative: str, alpha: float, use_inference: bool) -> Stratum:
    sub = table.select_tasks(mask)
    slope = slope_test(sub.levels, sub.pass1(), alternative=alternative, alpha=alpha)
    if not use_inference:
        slope = slope.model_copy(update={"se": None, "df": None, "t": None, "ci_low": None,
                                         "ci_high": None, "bound": None, "p_value": None,
                                         "variance": "not tested"})
    return Stratum(dimension=dimension, name=name, tasks=int(mask.sum()), slope=slope)


def strata(table: OutcomeTable, *, alternative: str = "less", alpha: float = 0.05,
           test_tasks: Collection[str] | None = None,
           use_inference: bool = True) -> list[Stratum]:
    """The primary slope by issue type and by persona (two-sided, Holm within each), and on
    the ``test_tasks`` present (under the declared ``alternative``)."""
    out: list[Stratum] = []
    for dimension, key in (("issue_type", issue_type), ("persona", persona)):
        labels = np.array([key(t) for t in table.task_ids], dtype=object)
        rows = [_stratum(table, dimension, str(name), labels == name, alternative="two-sided",
                         alpha=alpha, use_inference=use_inference)
                for name in sorted(set(labels.tolist()))]
        adjusted = holm([r.slope.p_value for r in rows])
        out += [r.model_copy(update={"p_holm": a}) for r, a in zip(rows, adjusted, strict=True)]
    if test_tasks:
        wanted = set(test_tasks)
        mask = np.array([t in wanted for t in table.task_ids], dtype=bool)
        if mask.any():
            out.append(_stratum(table, "split", f"test ({int(mask.sum())} held-out tasks)",
                                mask, alternative=alternative, alpha=alpha,
                                use_inference=use_inference))
    return out


def checkpoint_diffs(table: OutcomeTable, *, alpha: float = 0.05) -> list[CheckpointDiff]:
    """Each run minus the reference run (the first run of the lowest level) in per-task
    success, paired over the tasks both judged (scipy's ``ttest_rel``, two-sided)."""
    if table.n_runs < 2:
        return []
    rates = table.task_rates()
    ref = f"{level_key(float(table.levels[0]))}:{table.replicates[0]}"
    out = []
    for i in range(1, table.n_runs):
        both = np.isfinite(rates[i]) & np.isfinite(rates[0])
        a, b = rates[i][both], rates[0][both]
        diff = float(np.mean(a - b)) if both.any() else None
        lo = hi = p = None
        if both.sum() >= 2 and np.ptp(a - b) > 0:
            res = stats.ttest_rel(a, b)
            ci = res.confidence_interval(1 - alpha)
            lo, hi, p = float(ci.low), float(ci.high), float(res.pvalue)
        elif both.sum() >= 2:  # every task differs by the same amount: no spread to test
            lo = hi = diff
            p = 1.0 if diff == 0 else None
        out.append(CheckpointDiff(level=float(table.levels[i]), replicate=table.replicates[i],
                                  reference=ref, tasks=int(both.sum()), diff=diff, ci_low=lo,
                                  ci_high=hi, p_value=p))
    return out
