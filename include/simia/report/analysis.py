"""The report's numbers, from a loaded run: the verdict of the run-aware analysis
(:func:`simia.analysis.analyze_runs`, the function behind ``simia analyze``) over every
training run of the run, each level's pass^1 with a CI over its runs, each run's
descriptive (per-checkpoint) numbers, and the data, score, LLM-usage and training
summaries; then the headline that answers the question.

The verdict's unit is the training run (a level's replicate): the declared design (levels
x replicates, :attr:`simia.report.load.RunData.declared`) is the analysis's
``expected_levels``, so a run whose evaluation never ran makes it ``invalid``, and with
fewer than two runs at two or more levels it is ``insufficient`` for the data question
(the checkpoints' differences are still shown). The per-checkpoint bootstrap CIs describe
one trained model's evaluation noise and never drive the headline.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from simia.analysis import AnalysisResult, analyze_runs
from simia.analysis.outcomes import RunSpec
from simia.errors import SimiaError
from simia.evaluation.tau2_results import Tau2Results
from simia.report.load import LLM_STAGES, RunData, RunEvaluation
from simia.report.model import (Analysis, CollectionCounts, DataSection, DatasetLevel, Datasets,
                                TwinCounts,
                                DeclaredDesign, Design, EvalCost, GenerateCounts, Headline,
                                JudgeCounts, LevelPass1, LevelRow, LLMUsage, Participant,
                                ProcessedCounts, RunRow, RunStats, Scores, SeedCounts,
                                Settings, StageUsage, pick)
from simia.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, bootstrap_pass_hat_k
from simia.report.stats import pass_hat_k as matrix_pass_hat_k

__all__ = ["CONFIDENCE", "QUESTION", "analyze", "replicate_name"]

QUESTION = ("Does more sycophancy in the training data lower task success, and how sure "
            "are we?")
CONFIDENCE = 0.95
SUCCESS_RULE = ("reward within 1e-6 of 1.0; infrastructure errors and simulations that never "
                "ran are missing data, not failures (pass^1 over the trials that ran); the "
                "sensitivity row counts them as failures")
#: the headline's opening per verdict
OPENINGS = {
    "decrease": "More sycophancy lowered task success",
    "increase": "More sycophancy raised task success",
    "no_effect": "No detectable effect of sycophancy on task success",
    "invalid": "No verdict (invalid)",
    "insufficient": "Not enough training runs to answer the data question",
}
NO_EVALUATION = "Not enough evaluations to answer"


def replicate_name(replicate: int) -> str:
    """The analysis's name of replicate ``replicate`` (``r1``, ``r2``, ...)."""
    return f"r{replicate}"


# --------------------------------------------------------------------------- per run

def _judged_pass_hat_k(r: Tau2Results, *, resamples: int, seed: int) -> dict[str, Estimate]:
    """pass^k over the trials that ran (a task with fewer judged trials than k left out of
    pass^k, as the analysis does), each with a bootstrap CI over tasks."""
    rows = [tuple(x for x in row if x is not None) for row in r.outcome_matrix()]
    rows = [row for row in rows if row]
    out: dict[str, Estimate] = {}
    for k in range(1, r.trials + 1):
        matrix = [row for row in rows if len(row) >= k]
        if not matrix:
            break
        out[str(k)] = bootstrap_pass_hat_k(matrix, [k], resamples=resamples, seed=seed,
                                           confidence=CONFIDENCE)[k]
    return out


def _run_stats(r: Tau2Results, *, resamples: int, seed: int) -> RunStats:
    judged = sum(1 for row in r.outcome_matrix() for x in row if x is not None)
    return RunStats(
        tasks=len(r.task_ids), trials=r.trials, cells=len(r.task_ids) * r.trials,
        judged_cells=judged, successes=r.successes,
        pass_hat_k=_judged_pass_hat_k(r, resamples=resamples, seed=seed),
        pass1_as_failures=matrix_pass_hat_k(r.matrix, 1), avg_reward=r.avg_reward,
        tau2_pass_hat_k={str(k): v for k, v in r.tau2_pass_hat_k.items()},
        tau2_avg_reward=r.tau2_avg_reward,
        tau2_evaluated_simulations=r.tau2_evaluated_simulations,
        infrastructure_errors=r.infrastructure_errors, missing_cells=len(r.missing_cells),
        termination_counts=r.termination_counts,
        agent_cost_usd=r.agent_cost_total, user_cost_usd=r.user_cost_total,
        duration_total_s=r.duration_total_s,
        mean_duration_s=r.duration_total_s / len(r.simulations) if r.simulations else None,
        agent=Participant(r.agent.llm, r.agent.llm_args),
        user=Participant(r.user.llm, r.user.llm_args),
        num_trials_setting=r.num_trials, seed=r.seed, max_steps=r.max_steps,
        notes=list(r.notes))


def _has_results(ev: RunEvaluation) -> bool:
    return ev.results is not None and bool(ev.results.task_ids)


def _run_row(ev: RunEvaluation, *, resamples: int, seed: int) -> RunRow:
    stats = _run_stats(ev.results, resamples=resamples, seed=seed) \
        if ev.results is not None and _has_results(ev) else None
    return RunRow(level=ev.level, replicate=ev.replicate, slug=ev.slug, results=ev.results_path,
                  evaluator=ev.summary.get("evaluator"), backend=ev.summary.get("backend"),
                  model=ev.summary.get("model"), problem=ev.problem, stats=stats)


# --------------------------------------------------------------------------- the verdict

def _run_aware(run: RunData) -> tuple[AnalysisResult | None, list[str]]:
    """The run-aware analysis over every training run (a run without readable results is
    one whose evaluation never ran), and the problems met; None when nothing could be
    analysed (no run evaluated by design, or unreadable inputs)."""
    if not any(_has_results(ev) for ev in run.evaluations) and (
            not run.evaluates or not run.evaluations):
        return None, []
    specs = [RunSpec(ev.level, replicate_name(ev.replicate),
                     str(ev.results_file) if _has_results(ev) else None)
             for ev in run.evaluations]
    settings, problems = run.analysis_settings, []
    while True:
        try:
            return analyze_runs(specs, settings, expected_levels=run.declared), problems
        except SimiaError as exc:
            if settings.run_variance_from:
                problems.append(f"run_variance_from ({settings.run_variance_from}) unusable, "
                                f"analysed without it: {exc}")
                settings = settings.model_copy(update={"run_variance_from": None})
                continue
            problems.append(f"the run-aware analysis could not read the results: {exc}")
            return None, problems


def _t_quantile(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _level_rows(run: RunData, runs: list[RunRow],
                result: AnalysisResult | None) -> list[LevelRow]:
    """One row per declared level: its runs' pass^1 (the analysis's: over the trials that
    ran) with a CI over runs from the run-to-run SD."""
    alpha = result.alpha if result is not None else 1 - CONFIDENCE
    rr = result.run_to_run if result is not None else None
    per_run = {(s.level, s.replicate): s for s in result.runs} if result is not None else {}
    rows = []
    for level, declared in sorted(run.declared.items()):
        mine = [r for r in runs if r.level == level]
        pass1: dict[str, float | None] = {}
        ks: list[dict[str, float]] = []
        for r in mine:
            s = per_run.get((level, replicate_name(r.replicate)))
            value = s.pass_hat_k.get("1") if s is not None and r.stats is not None else None
            pass1[str(r.replicate)] = value
            if value is not None and s is not None:
                ks.append(s.pass_hat_k)
        values = [v for v in pass1.values() if v is not None]
        mean = sum(values) / len(values) if values else None
        low = high = None
        sd = rr.sd_pass1 if rr is not None else None
        df = rr.df if rr is not None and rr.df > 0 else None
        if mean is not None and sd is not None and df is not None:
            half = _t_quantile(1 - alpha / 2, df) * sd / math.sqrt(len(values))
            low, high = mean - half, mean + half
        by_k = {"1": LevelPass1(mean, low, high, 1 - alpha, sd if low is not None else None,
                                df if low is not None else None)}
        common = set.intersection(*(set(k) for k in ks)) if ks else set()
        for k in sorted(common - {"1"}, key=int):
            by_k[k] = LevelPass1(sum(x[k] for x in ks) / len(ks), None, None, 1 - alpha,
                                 None, None)
        stats = [r.stats for r in mine if r.stats is not None]
        without = [f"replicate {r.replicate} ({r.problem or 'no results'})"
                   for r in mine if r.stats is None]
        rows.append(LevelRow(
            level=level, slug=mine[0].slug if mine else f"{level:g}pct", runs=declared,
            runs_with_results=len(values), pass_hat_k=by_k, runs_pass1=pass1,
            tasks=max((s.tasks for s in stats), default=None),
            trials=max((s.trials for s in stats), default=None),
            infrastructure_errors=sum(s.infrastructure_errors for s in stats),
            missing_cells=sum(s.missing_cells for s in stats),
            problem="no results for " + "; ".join(without) if without else None))
    return rows


def _levels_text(levels: list[float]) -> str:
    """``0, 10 and 20 %``."""
    names = [f"{lv:g}" for lv in levels]
    if len(names) <= 1:
        return f"{''.join(names)} %"
    return f"{', '.join(names[:-1])} and {names[-1]} %"


def _design_text(design: DeclaredDesign) -> str:
    """What was varied and how many runs: ``sycophancy in the training data varied over 0
    and 10 % with 2 training runs per level (4 runs)``."""
    counts = set(design.runs_per_level.values())
    if len(counts) == 1:
        n = counts.pop()
        reps = f"{n} training run{'s' if n != 1 else ''} per level"
    else:
        reps = "training runs per level " + ", ".join(
            f"{lv} %: {n}" for lv, n in design.runs_per_level.items())
    total = f"{design.runs} run{'s' if design.runs != 1 else ''}"
    if design.runs_with_results != design.runs:
        total += f", {design.runs_with_results} with results"
    what = "varied over" if len(design.levels) > 1 else "at"
    return f"sycophancy in the training data {what} {_levels_text(design.levels)} with {reps} " \
           f"({total})"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def _lcfirst(text: str) -> str:
    return text[:1].lower() + text[1:]


def _headline(run: RunData, design: DeclaredDesign, runs: list[RunRow],
              result: AnalysisResult | None, problems: list[str]) -> Headline:
    warnings = []
    without = [r for r in runs if r.stats is None]
    if without and run.evaluates:
        warnings.append("no evaluation for " + "; ".join(
            f"{r.level:g} % replicate {r.replicate} ({r.problem or 'no results'})"
            for r in without))
    evaluated = [r.stats for r in runs if r.stats is not None]
    infra = sum(s.infrastructure_errors for s in evaluated)
    missing = sum(s.missing_cells for s in evaluated)
    if infra or missing:
        warnings.append(f"{infra} infrastructure error(s) and {missing} missing simulation(s) "
                        "are analysed as missing data, not failures (the sensitivity row "
                        "counts them as failures)")
    stand_ins = sorted({str(r.evaluator) for r in runs
                        if r.evaluator not in (None, "tau2") and r.stats is not None})
    if stand_ins:
        warnings.append(f"evaluated with {', '.join(stand_ins)}, not tau2-bench: these "
                        "numbers test the pipeline, not the hypothesis")
    if design.levels and min(design.levels) != 0:
        warnings.append(f"no 0 % level: {min(design.levels):g} % is the lowest level")
    what = _design_text(design) if design.levels else ""
    if result is None:
        if problems:
            reasons = problems
        elif not run.evaluates:
            reasons = ["this run trains or evaluates no models (train_models or "
                       "evaluate_models is off)"]
        else:
            reasons = ["no training run was declared or evaluated in this run folder"]
        verdict = "invalid" if problems else "insufficient"
        opening = OPENINGS["invalid"] if problems else NO_EVALUATION
        text = f"{opening}: " + (f"{what}; " if what else "") + "; ".join(reasons)
        return Headline(verdict, _sentence(text), warnings, reasons)
    verdict, reasons = result.verdict, list(result.reasons)
    if verdict in ("invalid", "insufficient"):
        named = [f"{r.level:g} % replicate {r.replicate} has no results ({r.problem})"
                 for r in without if r.problem]
        detail = result.verdict_text.removeprefix(f"{verdict}: ").replace(
            "give this file as run_variance_from", "give this run's report.json as "
            "run_variance_from")
        if verdict == "invalid" and named:
            reasons = named + reasons
            detail = "; ".join(named + [detail])
        text = f"{OPENINGS[verdict]}: with {what}, " + "; ".join([detail, *problems])
        return Headline(verdict, _sentence(text), warnings, reasons + problems)
    detail = result.verdict_text.removeprefix("No effect shown: ")
    text = f"{OPENINGS[verdict]}: with {what}, {_lcfirst(detail)}"
    return Headline(verdict, _sentence(text), warnings, [])


def _method(run: RunData, design: DeclaredDesign, result: AnalysisResult | None) -> list[str]:
    """The first screen's method note: the model, the unit of inference, what is not
    covered."""
    s = run.analysis_settings
    declared = (f"Declared with the run: {s.primary_endpoint}, alternative '{s.alternative}', "
                f"alpha {s.alpha:g} (run.json's analysis settings, defaults where absent); "
                f"training runs per level from {design.source or 'nowhere (none found)'}.")
    if result is not None:
        model = f"Model: {result.method}. {declared}"
    else:
        model = (f"Model: OLS of each training run's pass^1 on the level, t test of the slope "
                 f"with runs as the unit; not computed: no training run has results. {declared}")
    unit = ("Unit of inference: the training run (a level's replicate, its own dataset draw and "
            f"seed): {design.runs_with_results} of {design.runs} declared runs have results. "
            "Tasks and trials within a run are its evaluation, not more runs; with one run per "
            "level the level is confounded with the checkpoint and the verdict is "
            "'insufficient'.")
    missing = ("Missing data: infrastructure errors and simulations that never ran are left "
               "out (pass^1 over the trials that ran); a level losing more than "
               f"{s.max_excluded_fraction:.0%} of its cells, or a declared run without "
               "results, makes the verdict 'invalid'.")
    not_covered = ("Not covered: other base models, training recipes, domains and user "
                   "simulators than this run's; effects smaller than the design can detect "
                   f"(smallest effect of interest {s.smallest_effect_per_10pp * 100:g} points "
                   "of pass^1 per 10 points, simia plan-power); a dose response that is not "
                   "a line (see the lack-of-fit check); the secondary outcomes, which never "
                   "make the verdict.")
    return [model, unit, missing, not_covered]


# --------------------------------------------------------------------------- the rest

def _data_section(run: RunData) -> DataSection:
    def counts(stage: str, cls: Any) -> Any:
        summary = run.summaries.get(stage, {})
        return pick(cls, summary) if summary else None

    def order(item: tuple[str, Any]) -> tuple[float, float]:
        d = item[1]
        level = d.get("level_pct", 0) if isinstance(d.get("level_pct", 0), (int, float)) else 0
        rep = d.get("replicate", 1) if isinstance(d.get("replicate", 1), (int, float)) else 1
        return float(level), float(rep)

    datasets = None
    meta = run.datasets
    if meta:
        entries = [(n, d) for n, d in (meta.get("datasets") or {}).items() if isinstance(d, dict)]
        levels = [pick(DatasetLevel, d, name=name) for name, d in sorted(entries, key=order)]
        datasets = Datasets(pools=meta.get("pools"), label_source=meta.get("label_source"),
                            format=meta.get("format"),
                            design=pick(Design, meta.get("design") or {}), levels=levels,
                            sycophancy_source=meta.get("sycophancy_source") or "natural")
    return DataSection(seeds=counts("seeds", SeedCounts),
                       generate=counts("generate", GenerateCounts),
                       processed=counts("processed", ProcessedCounts),
                       judge=counts("judge", JudgeCounts), datasets=datasets,
                       collection=counts("collect", CollectionCounts),
                       twins=counts("twins", TwinCounts))


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


def _design(run: RunData, runs: list[RunRow]) -> DeclaredDesign:
    levels = sorted(run.declared)
    return DeclaredDesign(levels=levels,
                          runs_per_level={f"{lv:g}": n for lv, n in sorted(run.declared.items())},
                          runs=sum(run.declared.values()),
                          runs_with_results=sum(1 for r in runs if r.stats is not None),
                          source=run.design_source, evaluates=run.evaluates)


def analyze(run: RunData, *, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> Analysis:
    """All numbers of the report (the content of its JSON file)."""
    runs = [_run_row(ev, resamples=resamples, seed=seed) for ev in run.evaluations]
    result, problems = _run_aware(run)
    design = _design(run, runs)
    training = dict(sorted(run.training.items(),
                           key=lambda kv: (kv[1].level, kv[1].replicate)))
    return Analysis(
        question=QUESTION, run_dir=str(run.run_dir),
        settings=Settings(resamples=resamples, seed=seed, confidence=CONFIDENCE,
                          success=SUCCESS_RULE),
        design=design, headline=_headline(run, design, runs, result, problems),
        method=_method(run, design, result), levels=_level_rows(run, runs, result),
        runs=runs, analysis=result, data=_data_section(run), scores=_scores(run),
        llm_usage=_llm_usage(run), training=training, missing=sorted(set(run.missing)),
        problems=run.problems + problems)

