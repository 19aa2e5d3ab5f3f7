"""The report's numbers, from a loaded run: pass^k with bootstrap CIs per level, paired
comparisons with the reference (lowest) level, the trend test, power, and the data, score,
LLM-usage and training summaries; then the headline that answers the question.

Statistics are :mod:`simia.report.stats`; the result is a typed :class:`Analysis`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from simia.evaluation.tau2_results import Tau2Results
from simia.report.formatting import ci, num, p_value, pct
from simia.report.load import LLM_STAGES, LevelEvaluation, RunData
from simia.report.model import (Analysis, DataSection, DatasetLevel, Datasets, Design,
                                EvalCost, GenerateCounts, Headline, JudgeCounts, LevelRow,
                                LevelStats, LLMUsage, Participant, Power, ProcessedCounts,
                                Scores, SeedCounts, Settings, StageUsage, pick)
from simia.report.stats import (DEFAULT_RESAMPLES, DEFAULT_SEED, PairedComparison, TrendTest,
                                bootstrap_pass_hat_k, mde_design, paired_comparison,
                                trend_test)

__all__ = ["ALPHA", "CONFIDENCE", "POWER", "QUESTION", "analyze"]

QUESTION = ("Does more sycophancy in the training data lower task success, and how sure "
            "are we?")
ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
SUCCESS_RULE = ("reward within 1e-6 of 1.0; missing simulations, infrastructure errors and "
                "simulations without a reward count as failures")
MDE_DESIGN_ASSUMPTION = (
    "every task succeeds with the reference level's pass^1 as its probability at both "
    "levels, trials independent (binomial variance p(1-p)/trials per task and level): "
    "MDE = (z_0.975 + z_0.8) * sqrt(2 p (1-p) / (trials * tasks))")
MDE_OBSERVED_FORMULA = ("MDE = (z_0.975 + z_0.8) * SD(per-task differences) / sqrt(tasks), "
                        "from the paired comparison with the reference")
MDE_HEADLINE_RULE = "the larger of mde_design and the observed MDE against the highest level"

Matrices = dict[float, dict[str, tuple[bool, ...]]]  # level -> task id -> trial successes


def _level_stats(r: Tau2Results, *, resamples: int, seed: int) -> LevelStats:
    boot = bootstrap_pass_hat_k(r.matrix, resamples=resamples, seed=seed,
                                confidence=CONFIDENCE)
    return LevelStats(
        tasks=len(r.task_ids), trials=r.trials, cells=len(r.task_ids) * r.trials,
        successes=r.successes, pass_hat_k={str(k): v for k, v in boot.items()},
        avg_reward=r.avg_reward,
        tau2_pass_hat_k={str(k): v for k, v in r.tau2_pass_hat_k.items()},
        tau2_avg_reward=r.tau2_avg_reward,
        tau2_evaluated_simulations=r.tau2_evaluated_simulations,
        infrastructure_errors=r.infrastructure_errors, missing_cells=len(r.missing_cells),
        duplicate_simulations=r.duplicate_simulations,
        termination_counts=r.termination_counts,
        agent_cost_usd=r.agent_cost_total, user_cost_usd=r.user_cost_total,
        duration_total_s=r.duration_total_s,
        mean_duration_s=r.duration_total_s / len(r.simulations) if r.simulations else None,
        agent=Participant(r.agent.llm, r.agent.llm_args),
        user=Participant(r.user.llm, r.user.llm_args),
        num_trials_setting=r.num_trials, seed=r.seed, max_steps=r.max_steps,
        notes=list(r.notes))


def _level_row(ev: LevelEvaluation, stats: LevelStats | None,
               paired: PairedComparison | None) -> LevelRow:
    return LevelRow(level=ev.level, slug=ev.slug, results=ev.results_path,
                    evaluator=ev.summary.get("evaluator"), backend=ev.summary.get("backend"),
                    model=ev.summary.get("model"), problem=ev.problem, stats=stats,
                    paired_vs_reference=paired)


def _power(by_level: Matrices, reference: float | None,
           comparisons: dict[str, PairedComparison]) -> Power | None:
    if reference is None:
        return None
    ref = by_level[reference]
    trials = min(len(row) for row in ref.values())
    p = sum(sum(row) / len(row) for row in ref.values()) / len(ref)
    design = mde_design(p, len(ref), trials, alpha=ALPHA, power=POWER)
    observed = {lv: c.mde for lv, c in comparisons.items() if c.mde is not None}
    highest = max(by_level)
    # the headline quotes the larger (more cautious) of the two
    headline = max(observed.get(f"{highest:g}", 0.0), design)
    return Power(alpha=ALPHA, power=POWER, tasks=len(ref), trials=trials, reference_pass1=p,
                 mde_design=design, mde_design_assumption=MDE_DESIGN_ASSUMPTION,
                 mde_observed=observed, mde_observed_formula=MDE_OBSERVED_FORMULA,
                 mde_headline=headline, mde_headline_rule=MDE_HEADLINE_RULE)


def _data_section(run: RunData) -> DataSection:
    def counts(stage: str, cls: Any) -> Any:
        summary = run.summaries.get(stage, {})
        return pick(cls, summary) if summary else None

    datasets = None
    meta = run.datasets
    if meta:
        levels = [pick(DatasetLevel, d, name=name) for name, d in sorted(
            (meta.get("datasets") or {}).items(),
            key=lambda kv: kv[1].get("level_pct", 0) if isinstance(kv[1], dict) else 0)
            if isinstance(d, dict)]
        datasets = Datasets(pools=meta.get("pools"), label_source=meta.get("label_source"),
                            format=meta.get("format"),
                            design=pick(Design, meta.get("design") or {}), levels=levels)
    return DataSection(seeds=counts("seeds", SeedCounts),
                       generate=counts("generate", GenerateCounts),
                       processed=counts("processed", ProcessedCounts),
                       judge=counts("judge", JudgeCounts), datasets=datasets)


def _scores(run: RunData) -> Scores | None:
    if run.scores is None:
        return None
    s = sorted(run.scores)
    threshold = ((run.datasets or {}).get("design") or {}).get("threshold", 0.0)
    return Scores(source=run.scores_source, count=len(s), threshold=threshold,
                  above_threshold=sum(1 for x in s if x > threshold),
                  mean=sum(s) / len(s) if s else None, median=s[len(s) // 2] if s else None,
                  histogram={f"{k:g}": v for k, v in sorted(Counter(s).items())})


def _stage_usage(summary: dict[str, Any]) -> StageUsage | None:
    llm = summary.get("llm")
    if not isinstance(llm, dict):
        return None
    model = llm.get("model_id")
    return pick(StageUsage, llm, default=0,
                model_id=model if isinstance(model, (str, list)) else None)


def _llm_usage(run: RunData) -> LLMUsage:
    stages = {}
    for stage in LLM_STAGES:
        u = _stage_usage(run.summaries.get(stage, {}))
        if u is not None:
            stages[stage] = u
    evals = {ev.slug: EvalCost(ev.results.agent_cost_total, ev.results.user_cost_total,
                               len(ev.results.simulations))
             for ev in run.evaluations if ev.results is not None and ev.results.task_ids}
    total = sum(u.cost_usd or 0 for u in stages.values()) + sum(
        e.agent_cost_usd + e.user_cost_usd for e in evals.values())
    return LLMUsage(stages=stages, evaluation=evals, total_cost_usd=total)


def analyze(run: RunData, *, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> Analysis:
    """All numbers of the report (the content of its JSON file)."""
    stats: dict[float, LevelStats] = {}
    by_level: Matrices = {}
    for ev in run.evaluations:
        r = ev.results
        if r is not None and r.task_ids:
            by_level[ev.level] = dict(zip(r.task_ids, r.matrix, strict=True))
            stats[ev.level] = _level_stats(r, resamples=resamples, seed=seed)

    reference = min(by_level) if by_level else None
    comparisons: dict[str, PairedComparison] = {}
    for lv in sorted(by_level):
        if reference is None or lv == reference:
            continue
        if not set(by_level[lv]) & set(by_level[reference]):
            continue
        comparisons[f"{lv:g}"] = paired_comparison(
            by_level[reference], by_level[lv], resamples=resamples, seed=seed,
            confidence=CONFIDENCE, alpha=ALPHA, power=POWER)
    levels = [_level_row(ev, stats.get(ev.level), comparisons.get(f"{ev.level:g}"))
              for ev in run.evaluations]

    trend = None
    if len(by_level) >= 2:
        try:
            trend = trend_test(by_level, resamples=resamples, seed=seed, confidence=CONFIDENCE)
        except ValueError as exc:
            run.problems.append(f"trend test: {exc}")

    power = _power(by_level, reference, comparisons)
    return Analysis(
        question=QUESTION, run_dir=str(run.run_dir),
        settings=Settings(resamples=resamples, seed=seed, confidence=CONFIDENCE, alpha=ALPHA,
                          power=POWER, success=SUCCESS_RULE),
        reference_level=reference, levels=levels, trend=trend, power=power,
        data=_data_section(run), scores=_scores(run), llm_usage=_llm_usage(run),
        training=dict(sorted(run.training.items())), missing=sorted(set(run.missing)),
        problems=run.problems,
        headline=_headline(levels, trend, power))


def _headline(levels: list[LevelRow], trend: TrendTest | None,
              power: Power | None) -> Headline:
    rows = {r.level: r.stats for r in levels if r.stats is not None}
    warnings = []
    infra = sum(s.infrastructure_errors for s in rows.values())
    missing = sum(s.missing_cells for s in rows.values())
    if infra or missing:
        warnings.append(f"{infra} infrastructure error(s) and {missing} missing simulation(s) "
                        "are counted as failures (tau2's own pass^1, which drops "
                        "infrastructure errors, is in the table)")
    stand_ins = sorted({str(r.evaluator) for r in levels if r.evaluator not in (None, "tau2")})
    if stand_ins:
        warnings.append(f"evaluated with {', '.join(stand_ins)}, not tau2-bench: these "
                        "numbers test the pipeline, not the hypothesis")
    unreadable = [f"{pct(r.level)} ({r.problem})" for r in levels if r.problem]
    if unreadable:
        warnings.append("no evaluation for " + "; ".join(unreadable))
    if len(rows) < 2 or trend is None:
        text = (f"Not enough evaluations to answer: {len(rows)} level(s) evaluated, at least "
                "two (including 0 %) are needed.")
        return Headline(verdict="insufficient", text=text, warnings=warnings)
    low, high = min(rows), max(rows)
    if low != 0:
        warnings.append(f"no 0 % level was evaluated; {pct(low)} is the reference")
    a1, b1 = rows[low].pass_hat_k["1"], rows[high].pass_hat_k["1"]
    mde = power.mde_headline if power is not None else None
    span = f"{ci(a1)} at {pct(low)}", f"{ci(b1)} at {pct(high)}"
    detect = f"the design detects differences of >= {num(mde)}"
    slope = trend.slope_per_10pp
    if trend.p_decreasing < ALPHA and slope < 0:
        verdict = "decrease"
        text = (f"More sycophancy lowered task success: pass^1 fell from {span[0]} to "
                f"{span[1]}; trend {p_value(trend.p_decreasing)} (one-sided); {detect}.")
    elif trend.p_two_sided < ALPHA and slope > 0:
        verdict = "increase"
        text = (f"More sycophancy raised task success, against the hypothesis: pass^1 rose "
                f"from {span[0]} to {span[1]}; trend {p_value(trend.p_two_sided)} "
                f"(two-sided); {detect}.")
    else:
        verdict = "no_effect"
        text = (f"No detectable effect of sycophancy on task success: pass^1 {span[0]} vs "
                f"{span[1]}; trend {p_value(trend.p_decreasing)} (one-sided); {detect}, so "
                "a smaller effect cannot be ruled out.")
    return Headline(verdict=verdict, text=text, warnings=warnings)
