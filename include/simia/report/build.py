"""``simia report RUN_DIR``: the experiment's answer, from the files of one run.

Question: does more sycophancy in the training data lower task success, and how sure
are we? The first screen of the report answers it in one sentence (a verdict from the
trend test across levels, pass^1 with 95 % CIs at the reference and the highest level,
and the smallest difference the design can detect), then one table row per level.
Detail sections follow: evaluation (termination reasons, infrastructure errors, costs),
trend and power, the data funnel, scores, LLM usage and cost, training loss.

Reads (every part optional; what is missing is listed in the report):

* ``eval/<slug>/eval_summary.json`` (level, slug, evaluator, backend, model, results)
  and ``eval/<slug>/results.json`` (tau2-bench v1.0.1 format);
  levels come from ``eval/*/eval_summary.json``, else from ``datasets/metadata.json``
  (slug :func:`simia.layout.level_slug`), else from ``eval/<slug>/results.json``;
* ``seeds/summary.json``, ``generate/summary.json``, ``judge/summary.json``
  (counts and ``llm`` usage), ``processed/summary.json``, ``datasets/metadata.json``;
* ``scores/rule_scores.jsonl`` or ``judge/judge_scores.jsonl`` (score distribution);
* ``train/<slug>/training_summary.json``, else ``train/<slug>/output/trainer_state.json``
  (loss curve).

Writes, each atomically, under ``RUN_DIR/report/``: ``report.md`` (images by relative
path), ``report.html`` (self-contained: the PNGs are embedded as base64 data URIs, so
the page can be mailed or downloaded alone), ``report.json`` (every number) and the
PNG plots. The same inputs give the same bytes. No config dict is copied whole: LLM
arguments pass through :func:`simia.redaction.redact` (keys ending in "key",
"token", "secret" or "password" dropped).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simia.errors import InputError
from simia.io import dumps, read_json, read_jsonl, write_bytes
from simia.report.stats import (DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_pass_hat_k, mde_design,
                         paired_comparison, trend_test)
from simia.redaction import redact
from simia.evaluation.tau2_results import Tau2Results, read_tau2_results
from simia.layout import level_slug

__all__ = [
    "QUESTION",
    "REPORT_FILES",
    "LevelEvaluation",
    "RunData",
    "analyze",
    "load_run",
    "render_html",
    "render_markdown",
    "write_plots",
    "write_report",
]

log = logging.getLogger("simia")

QUESTION = ("Does more sycophancy in the training data lower task success, and how sure "
            "are we?")
REPORT_FILES = ("report.md", "report.html", "report.json")
ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
LLM_STAGES = ("seeds", "generate", "judge")


# ------------------------------------------------------------------------------- loading

@dataclass
class LevelEvaluation:
    """One level's evaluation: where it came from and, when readable, its results."""

    level: float
    slug: str
    summary: dict[str, Any]  # eval_summary.json, secrets removed ({} when absent)
    results_path: str
    results: Tau2Results | None = None
    problem: str | None = None  # why there are no results


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    evaluations: list[LevelEvaluation]
    summaries: dict[str, dict[str, Any]]  # seeds/generate/judge/processed -> summary.json
    datasets: dict[str, Any] | None  # datasets/metadata.json
    scores: list[float] | None
    scores_source: str | None
    training: dict[str, dict[str, Any]]  # slug -> summary (with loss_curve)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _rel(run_dir: Path, path: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def _optional_json(run: RunData, rel: str) -> Any:
    path = run.run_dir / rel
    if not path.is_file():
        run.missing.append(rel)
        return None
    try:
        return read_json(path)
    except InputError as exc:
        run.problems.append(str(exc))
        return None


def _lenient_json(path: Path) -> Any:
    """Stdlib JSON (LLaMA-Factory writes NaN for a diverged loss)."""
    return json.loads(path.read_text())


def _slug_level(slug: str) -> float | None:
    if not slug.endswith("pct"):
        return None
    try:
        return float(slug[:-3].replace("p", ".").replace("m", "-"))
    except ValueError:
        return None


def _level_list(run: RunData) -> list[tuple[float, str, dict[str, Any]]]:
    eval_dir = run.run_dir / "eval"
    found: dict[float, tuple[float, str, dict[str, Any]]] = {}
    for path in sorted(eval_dir.glob("*/eval_summary.json")):
        try:
            summary = read_json(path)
            level = float(summary["level"])
        except InputError as exc:
            run.problems.append(str(exc))
            continue
        except (KeyError, TypeError, ValueError):
            run.problems.append(f"{_rel(run.run_dir, path)}: no numeric 'level'")
            continue
        slug = summary.get("slug") if isinstance(summary.get("slug"), str) else path.parent.name
        found[level] = (level, slug, redact(summary))
    if found:
        return [found[k] for k in sorted(found)]
    if isinstance(run.datasets, dict):
        levels = (run.datasets.get("design") or {}).get("levels_pct") or [
            d.get("level_pct") for d in (run.datasets.get("datasets") or {}).values()
            if isinstance(d, dict)]
        lv = sorted({float(x) for x in levels if isinstance(x, (int, float))})
        if lv:
            return [(x, level_slug(x), {}) for x in lv]
    out = []
    for path in sorted(eval_dir.glob("*/results.json")):
        level = _slug_level(path.parent.name)
        if level is not None:
            out.append((level, path.parent.name, {}))
    return sorted(out)


def _results_path(run_dir: Path, slug: str, summary: dict[str, Any]) -> Path:
    default = run_dir / "eval" / slug / "results.json"
    given = summary.get("results")
    if isinstance(given, str) and given:
        for candidate in (Path(given), run_dir / given, run_dir / "eval" / slug / given):
            if candidate.is_file():
                return candidate
            if candidate.is_dir() and (candidate / "results.json").is_file():
                return candidate / "results.json"
    return default


def _read_training(run: RunData, slug: str) -> dict[str, Any] | None:
    base = run.run_dir / "train" / slug
    path = base / "training_summary.json"
    try:
        if path.is_file():
            s = _lenient_json(path)
            keep = ("level", "dataset", "final_loss", "train_loss", "steps", "total_steps",
                    "epoch", "train_runtime_s", "loss_curve")
            return {k: s.get(k) for k in keep if k in s} | {"source": _rel(run.run_dir, path)}
        state_path = base / "output" / "trainer_state.json"
        if state_path.is_file():
            state = _lenient_json(state_path)
            curve = [[h.get("step"), h["loss"]] for h in state.get("log_history", [])
                     if isinstance(h, dict) and isinstance(h.get("loss"), (int, float))]
            return {"steps": state.get("global_step"), "total_steps": state.get("max_steps"),
                    "final_loss": curve[-1][1] if curve else None, "loss_curve": curve,
                    "source": _rel(run.run_dir, state_path)}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        run.problems.append(f"{_rel(run.run_dir, path)}: unreadable training summary: {exc}")
        return None
    run.missing.append(f"train/{slug}/training_summary.json")
    return None


def _read_scores(run: RunData) -> None:
    source = (run.datasets or {}).get("label_source") if isinstance(run.datasets, dict) else None
    files = [("scores/rule_scores.jsonl", "score"),
             ("judge/judge_scores.jsonl", "wm_sycophancy_score")]
    if source == "judge":
        files.reverse()
    for rel, key in files:
        path = run.run_dir / rel
        if not path.is_file():
            continue
        try:
            rows = read_jsonl(path)
        except InputError as exc:
            run.problems.append(str(exc))
            continue
        run.scores = [float(r[key]) for r in rows if isinstance(r, dict)
                      and isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        run.scores_source = rel
        return
    run.missing.append("scores/rule_scores.jsonl or judge/judge_scores.jsonl")


def load_run(run_dir: str | Path) -> RunData:
    """Read every input the report uses; a missing or unreadable file is recorded in
    ``missing``/``problems``, never fatal (a missing ``run_dir`` is)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run directory does not exist")
    run = RunData(run_dir=run_dir, evaluations=[], summaries={}, datasets=None, scores=None,
                  scores_source=None, training={})
    for stage in (*LLM_STAGES, "processed"):
        s = _optional_json(run, f"{stage}/summary.json")
        if isinstance(s, dict):
            run.summaries[stage] = s
    meta = _optional_json(run, "datasets/metadata.json")
    run.datasets = meta if isinstance(meta, dict) else None
    _read_scores(run)
    for level, slug, summary in _level_list(run):
        path = _results_path(run_dir, slug, summary)
        ev = LevelEvaluation(level, slug, summary, _rel(run_dir, path))
        if not path.is_file():
            ev.problem = "no results.json"
            run.missing.append(_rel(run_dir, path))
        else:
            try:
                ev.results = read_tau2_results(path)
            except InputError as exc:
                ev.problem = f"unreadable: {exc}"
                run.problems.append(str(exc))
        run.evaluations.append(ev)
        training = _read_training(run, slug)
        if training is not None:
            run.training[slug] = training
    if not run.evaluations:
        run.missing.append("eval/<slug>/eval_summary.json and results.json (no level found)")
    return run


# ------------------------------------------------------------------------------ analysis

def _pct(level: float) -> str:
    return f"{level:g} %"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(e: dict[str, float] | None, digits: int = 2) -> str:
    if not e:
        return "n/a"
    return (f"{e['estimate']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]")


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _usage(summary: dict[str, Any]) -> dict[str, Any] | None:
    llm = summary.get("llm")
    if not isinstance(llm, dict):
        return None
    keys = ("calls", "failed_calls", "input_tokens", "output_tokens", "cost_usd")
    out: dict[str, Any] = {k: llm.get(k, 0) for k in keys}
    model = llm.get("model_id")
    out["model_id"] = model if isinstance(model, (str, list)) else None
    return out


def _data_section(run: RunData) -> dict[str, Any]:
    gen = run.summaries.get("generate", {})
    seeds = run.summaries.get("seeds", {})
    proc = run.summaries.get("processed", {})
    judge = run.summaries.get("judge", {})
    data: dict[str, Any] = {
        "seeds": {k: seeds.get(k) for k in ("requested", "seeds", "failed")} if seeds else None,
        "generate": {k: gen.get(k) for k in ("target", "attempted", "valid", "failed",
                                             "failed_by_error", "mode")} if gen else None,
        "processed": {k: proc.get(k) for k in ("input", "kept", "rejected",
                                               "rejected_by_reason", "format")}
        if proc else None,
        "judge": {k: judge.get(k) for k in ("conversations", "scored", "failed",
                                            "sycophantic", "clean", "threshold")}
        if judge else None,
        "datasets": None,
    }
    meta = run.datasets
    if meta:
        levels = []
        for name, d in sorted((meta.get("datasets") or {}).items(),
                              key=lambda kv: kv[1].get("level_pct", 0)
                              if isinstance(kv[1], dict) else 0):
            if isinstance(d, dict):
                levels.append({"name": name, **{k: d.get(k) for k in (
                    "level_pct", "total", "clean", "sycophantic", "sycophantic_pct")}})
        design = meta.get("design") or {}
        data["datasets"] = {
            "pools": meta.get("pools"), "label_source": meta.get("label_source"),
            "format": meta.get("format"),
            "design": {k: design.get(k) for k in ("levels_pct", "size", "shared_clean",
                                                  "seed", "threshold", "label_rule")},
            "levels": levels,
        }
    return data


def _scores_section(run: RunData) -> dict[str, Any] | None:
    if run.scores is None:
        return None
    s = sorted(run.scores)
    threshold = ((run.datasets or {}).get("design") or {}).get("threshold", 0.0)
    above = sum(1 for x in s if x > threshold)
    return {"source": run.scores_source, "count": len(s), "threshold": threshold,
            "above_threshold": above,
            "mean": sum(s) / len(s) if s else None,
            "median": s[len(s) // 2] if s else None,
            "histogram": {f"{k:g}": v for k, v in sorted(Counter(s).items())}}


def analyze(run: RunData, *, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """All numbers of the report (the content of ``report.json``)."""
    evaluated = [e for e in run.evaluations if e.results is not None and e.results.task_ids]
    levels_out: list[dict[str, Any]] = []
    by_level: dict[float, dict[str, tuple[bool, ...]]] = {}
    for ev in run.evaluations:
        row: dict[str, Any] = {
            "level": ev.level, "slug": ev.slug, "results": ev.results_path,
            "evaluator": ev.summary.get("evaluator"), "backend": ev.summary.get("backend"),
            "model": ev.summary.get("model"), "problem": ev.problem}
        r = ev.results
        if r is not None and r.task_ids:
            by_level[ev.level] = dict(zip(r.task_ids, r.matrix, strict=True))
            boot = bootstrap_pass_hat_k(r.matrix, resamples=resamples, seed=seed,
                                        confidence=CONFIDENCE)
            row.update({
                "tasks": len(r.task_ids), "trials": r.trials, "cells": len(r.task_ids) * r.trials,
                "successes": r.successes,
                "pass_hat_k": {str(k): v.as_dict() for k, v in boot.items()},
                "avg_reward": r.avg_reward,
                "tau2_pass_hat_k": {str(k): v for k, v in r.tau2_pass_hat_k.items()},
                "tau2_avg_reward": r.tau2_avg_reward,
                "tau2_evaluated_simulations": r.tau2_evaluated_simulations,
                "infrastructure_errors": r.infrastructure_errors,
                "missing_cells": len(r.missing_cells),
                "duplicate_simulations": r.duplicate_simulations,
                "termination_counts": r.termination_counts,
                "agent_cost_usd": r.agent_cost_total, "user_cost_usd": r.user_cost_total,
                "duration_total_s": r.duration_total_s,
                "mean_duration_s": (r.duration_total_s / len(r.simulations)
                                    if r.simulations else None),
                "agent": {"llm": r.agent.llm, "llm_args": r.agent.llm_args},
                "user": {"llm": r.user.llm, "llm_args": r.user.llm_args},
                "num_trials_setting": r.num_trials, "seed": r.seed, "max_steps": r.max_steps,
                "notes": list(r.notes)})
        elif r is not None:
            row["problem"] = "results.json has no tasks"
        levels_out.append(row)

    reference = min(by_level) if by_level else None
    comparisons: dict[str, Any] = {}
    for lv in sorted(by_level):
        if reference is None or lv == reference:
            continue
        if not set(by_level[lv]) & set(by_level[reference]):
            continue
        pc = paired_comparison(by_level[reference], by_level[lv], resamples=resamples,
                               seed=seed, confidence=CONFIDENCE, alpha=ALPHA, power=POWER)
        comparisons[f"{lv:g}"] = pc.as_dict()
    for row in levels_out:
        row["paired_vs_reference"] = comparisons.get(f"{row['level']:g}")

    trend = None
    if len(by_level) >= 2:
        try:
            trend = trend_test(by_level, resamples=resamples, seed=seed,
                               confidence=CONFIDENCE).as_dict()
        except ValueError as exc:
            run.problems.append(f"trend test: {exc}")

    power = _power(by_level, reference, comparisons)
    analysis: dict[str, Any] = {
        "question": QUESTION,
        "run_dir": str(run.run_dir),
        "settings": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE,
                     "alpha": ALPHA, "power": POWER,
                     "success": "reward within 1e-6 of 1.0; missing simulations, "
                                "infrastructure errors and simulations without a reward "
                                "count as failures"},
        "reference_level": reference,
        "levels": levels_out,
        "trend": trend,
        "power": power,
        "data": _data_section(run),
        "scores": _scores_section(run),
        "llm_usage": _llm_usage(run, evaluated),
        "training": {slug: t for slug, t in sorted(run.training.items())},
        "missing": sorted(set(run.missing)),
        "problems": run.problems,
    }
    analysis["headline"] = _headline(analysis)
    return analysis


def _power(by_level: dict[float, dict[str, tuple[bool, ...]]], reference: float | None,
           comparisons: dict[str, Any]) -> dict[str, Any] | None:
    if reference is None:
        return None
    ref = by_level[reference]
    trials = min(len(row) for row in ref.values())
    p = sum(sum(row) / len(row) for row in ref.values()) / len(ref)
    design = mde_design(p, len(ref), trials, alpha=ALPHA, power=POWER)
    observed = {lv: c["mde"] for lv, c in comparisons.items() if c.get("mde") is not None}
    highest = max(by_level)
    # the headline quotes the larger (more cautious) of the two
    headline = max(observed.get(f"{highest:g}", 0.0), design)
    return {
        "alpha": ALPHA, "power": POWER, "tasks": len(ref), "trials": trials,
        "reference_pass1": p,
        "mde_design": design,
        "mde_design_assumption": (
            "every task succeeds with the reference level's pass^1 as its probability at "
            "both levels, trials independent (binomial variance p(1-p)/trials per task "
            "and level): MDE = (z_0.975 + z_0.8) * sqrt(2 p (1-p) / (trials * tasks))"),
        "mde_observed": observed,
        "mde_observed_formula": ("MDE = (z_0.975 + z_0.8) * SD(per-task differences) / "
                                 "sqrt(tasks), from the paired comparison with the reference"),
        "mde_headline": headline,
        "mde_headline_rule": "the larger of mde_design and the observed MDE against the "
                             "highest level",
    }


def _llm_usage(run: RunData, evaluated: list[LevelEvaluation]) -> dict[str, Any]:
    stages = {}
    for stage in LLM_STAGES:
        u = _usage(run.summaries.get(stage, {}))
        if u is not None:
            stages[stage] = u
    evals = {}
    for ev in evaluated:
        r = ev.results
        assert r is not None
        evals[ev.slug] = {"agent_cost_usd": r.agent_cost_total,
                          "user_cost_usd": r.user_cost_total, "simulations": len(r.simulations)}
    total = sum(u.get("cost_usd") or 0 for u in stages.values()) + sum(
        e["agent_cost_usd"] + e["user_cost_usd"] for e in evals.values())
    return {"stages": stages, "evaluation": evals, "total_cost_usd": total}


def _headline(a: dict[str, Any]) -> dict[str, Any]:
    rows = {r["level"]: r for r in a["levels"] if "pass_hat_k" in r}
    warnings = []
    infra = sum(r["infrastructure_errors"] for r in rows.values())
    missing = sum(r["missing_cells"] for r in rows.values())
    if infra or missing:
        warnings.append(f"{infra} infrastructure error(s) and {missing} missing simulation(s) "
                        "are counted as failures (tau2's own pass^1, which drops "
                        "infrastructure errors, is in the table)")
    stand_ins = sorted({str(r["evaluator"]) for r in a["levels"]
                        if r.get("evaluator") not in (None, "tau2")})
    if stand_ins:
        warnings.append(f"evaluated with {', '.join(stand_ins)}, not tau2-bench: these "
                        "numbers test the pipeline, not the hypothesis")
    unreadable = [f"{_pct(r['level'])} ({r['problem']})" for r in a["levels"] if r.get("problem")]
    if unreadable:
        warnings.append("no evaluation for " + "; ".join(unreadable))
    trend = a["trend"]
    if len(rows) < 2 or trend is None:
        text = (f"Not enough evaluations to answer: {len(rows)} level(s) evaluated, at least "
                "two (including 0 %) are needed.")
        return {"verdict": "insufficient", "text": text, "warnings": warnings}
    ref, top = rows[min(rows)], rows[max(rows)]
    if min(rows) != 0:
        warnings.append(f"no 0 % level was evaluated; {_pct(min(rows))} is the reference")
    a1, b1 = ref["pass_hat_k"]["1"], top["pass_hat_k"]["1"]
    mde = (a["power"] or {}).get("mde_headline")
    span = f"{_ci(a1)} at {_pct(ref['level'])}", f"{_ci(b1)} at {_pct(top['level'])}"
    detect = f"the design detects differences of >= {_num(mde)}"
    slope = trend["slope_per_10pp"]
    if trend["p_decreasing"] < ALPHA and slope < 0:
        verdict = "decrease"
        text = (f"More sycophancy lowered task success: pass^1 fell from {span[0]} to "
                f"{span[1]}; trend {_p(trend['p_decreasing'])} (one-sided); {detect}.")
    elif trend["p_two_sided"] < ALPHA and slope > 0:
        verdict = "increase"
        text = (f"More sycophancy raised task success, against the hypothesis: pass^1 rose "
                f"from {span[0]} to {span[1]}; trend {_p(trend['p_two_sided'])} "
                f"(two-sided); {detect}.")
    else:
        verdict = "no_effect"
        text = (f"No detectable effect of sycophancy on task success: pass^1 {span[0]} vs "
                f"{span[1]}; trend {_p(trend['p_decreasing'])} (one-sided); {detect}, so "
                "a smaller effect cannot be ruled out.")
    return {"verdict": verdict, "text": text, "warnings": warnings}


# ----------------------------------------------------------------------------- rendering

Block = tuple[Any, ...]


def _blocks(a: dict[str, Any], plots: dict[str, str]) -> list[Block]:
    """The report as neutral blocks, rendered to Markdown and HTML alike."""
    b: list[Block] = [("h1", "Does sycophantic training data make worse agents?"),
                      ("p", f"*{QUESTION}*"),
                      ("verdict", a["headline"]["text"])]
    for w in a["headline"]["warnings"]:
        b.append(("warn", w))
    rows = [r for r in a["levels"]]
    kmax = max((int(k) for r in rows for k in r.get("pass_hat_k", {})), default=1)
    ref = a["reference_level"]
    head = (["Level", "Tasks x trials"] + [f"pass^{k} [95 % CI]" for k in range(1, kmax + 1)]
            + [f"Δ pass^1 vs {_pct(ref) if ref is not None else 'ref'} [95 % CI]", "p (two-sided)",
               "Tasks better/worse/tied", "Infra errors (as failures)", "Missing",
               "tau2 pass^1 (drops infra)", "Evaluator"])
    table = []
    for r in rows:
        if "pass_hat_k" not in r:
            table.append([_pct(r["level"]), "-"] + ["-"] * kmax
                         + ["-", "-", "-", "-", "-", "-", r.get("problem") or "-"])
            continue
        pc = r.get("paired_vs_reference")
        table.append(
            [_pct(r["level"]), f"{r['tasks']} x {r['trials']}"]
            + [_ci(r["pass_hat_k"].get(str(k)), 3) if str(k) in r["pass_hat_k"] else "-"
               for k in range(1, kmax + 1)]
            + ([_ci({"estimate": pc["mean_diff"], "low": pc["ci"]["low"],
                     "high": pc["ci"]["high"]}, 3),
                _p(pc["p_two_sided"]).removeprefix("p = "),
                f"{pc['better']}/{pc['worse']}/{pc['tied']}"] if pc else
               ["reference" if r["level"] == ref else "-", "-", "-"])
            + [str(r["infrastructure_errors"]), str(r["missing_cells"]),
               _num(r["tau2_pass_hat_k"].get("1"), 3),
               str(r.get("evaluator") or "?")])
    b.append(("table", head, table))
    if "pass_k" in plots:
        b.append(("img", plots["pass_k"], "pass^k by level with bootstrap 95 % CIs"))

    b.append(("h2", "Trend and power"))
    t, pw = a["trend"], a["power"]
    if t:
        b.append(("ul", [
            f"Slope of per-task success rate on the level: {_ci({'estimate': t['slope_per_10pp'], 'low': t['ci']['low'], 'high': t['ci']['high']}, 3)} "  # noqa: E501
            f"per 10 percentage points of sycophancy (task bootstrap 95 % CI), over "
            f"{t['tasks']} tasks evaluated at every level ({', '.join(_pct(x) for x in t['levels'])}).",  # noqa: E501
            f"Within-task permutation test ({'exact' if t['exact'] else 'Monte Carlo'}): "
            f"one-sided (more sycophancy -> lower success) {_p(t['p_decreasing'])}; "
            f"two-sided {_p(t['p_two_sided'])}."]))
    if pw:
        items = [f"Design-based MDE (pass^1, alpha {pw['alpha']}, power {pw['power']}, "
                 f"{pw['tasks']} tasks x {pw['trials']} trials, p = "
                 f"{pw['reference_pass1']:.3f}): {pw['mde_design']:.3f}. Assumption: "
                 f"{pw['mde_design_assumption']}."]
        for lv, m in pw["mde_observed"].items():
            items.append(f"Observed MDE vs {_pct(float(lv))}: {m:.3f} ({pw['mde_observed_formula']}).")  # noqa: E501
        b.append(("ul", items))
    if "paired" in plots:
        b.append(("img", plots["paired"], "paired difference in pass^1 vs the reference"))

    b.append(("h2", "Evaluation details"))
    ev_rows = [r for r in rows if "termination_counts" in r]
    if ev_rows:
        reasons = [k for k in ev_rows[0]["termination_counts"]
                   if any(r["termination_counts"].get(k) for r in ev_rows)] or ["user_stop"]
        b.append(("table", ["Level"] + reasons + ["Avg reward (ours / tau2)", "Agent cost $",
                                                  "User sim cost $", "Mean duration s"],
                  [[_pct(r["level"])] + [str(r["termination_counts"].get(k, 0)) for k in reasons]
                   + [f"{_num(r['avg_reward'], 3)} / {_num(r['tau2_avg_reward'], 3)}",
                      _num(r["agent_cost_usd"]), _num(r["user_cost_usd"]),
                      _num(r["mean_duration_s"], 1)] for r in ev_rows]))
        b.append(("ul", [
            f"{_pct(r['level'])}: agent {r['agent']['llm']} {json.dumps(r['agent']['llm_args'], sort_keys=True)}; "  # noqa: E501
            f"user simulator {r['user']['llm']} {json.dumps(r['user']['llm_args'], sort_keys=True)}; "  # noqa: E501
            f"results {r['results']}" + ("; " + "; ".join(r["notes"]) if r["notes"] else "")
            for r in ev_rows]))
    else:
        b.append(("p", "No evaluation results."))

    b.append(("h2", "Data"))
    d = a["data"]
    items = []
    if d["seeds"]:
        items.append(f"Seeds: {d['seeds']['seeds']} of {d['seeds']['requested']} generated.")
    if d["generate"]:
        g = d["generate"]
        items.append(f"Generation ({g.get('mode')}): {g.get('valid')} valid conversations kept "
                     f"(target {g.get('target')}) of {g.get('attempted')} attempted; "
                     f"{g.get('failed')} failed {json.dumps(g.get('failed_by_error') or {})}.")
    if d["processed"]:
        p = d["processed"]
        items.append(f"Validation: {p.get('kept')} of {p.get('input')} kept, "
                     f"{p.get('rejected')} rejected: "
                     f"{json.dumps(p.get('rejected_by_reason') or {}, sort_keys=True)}.")
    if d["datasets"]:
        pools = d["datasets"]["pools"] or {}
        items.append(f"Labels ({d['datasets']['label_source']}, "
                     f"{d['datasets']['design'].get('label_rule')}): {pools.get('clean')} clean, "
                     f"{pools.get('sycophantic')} sycophantic, {pools.get('unlabeled')} unlabeled.")
    b.append(("ul", items or ["No data-stage summaries."]))
    if d["datasets"] and d["datasets"]["levels"]:
        b.append(("table", ["Dataset", "Level", "Total", "Clean", "Sycophantic", "Sycophantic %"],
                  [[x["name"], _pct(x["level_pct"]), str(x["total"]), str(x["clean"]),
                    str(x["sycophantic"]), f"{x['sycophantic_pct']}"]
                   for x in d["datasets"]["levels"]]))
    if "funnel" in plots:
        b.append(("img", plots["funnel"], "data funnel"))
    s = a["scores"]
    if s:
        b.append(("p", f"Sycophancy scores ({s['source']}): {s['count']} conversations, "
                       f"{s['above_threshold']} above the threshold {s['threshold']:g}, "
                       f"mean {_num(s['mean'], 1)}."))
    if "scores" in plots:
        b.append(("img", plots["scores"], "score distribution"))

    b.append(("h2", "LLM usage and cost"))
    u = a["llm_usage"]
    urows = [[st, str(x["calls"]), str(x["failed_calls"]), str(x["input_tokens"]),
              str(x["output_tokens"]), _num(x["cost_usd"])] for st, x in u["stages"].items()]
    urows += [[f"eval {slug}", str(x["simulations"]) + " sims", "-", "-", "-",
               _num(x["agent_cost_usd"] + x["user_cost_usd"])]
              for slug, x in u["evaluation"].items()]
    if urows:
        b.append(("table", ["Stage", "Calls", "Failed", "Input tokens", "Output tokens",
                            "Est. cost $"], urows))
        b.append(("p", f"Estimated total: ${u['total_cost_usd']:.2f} (tau2 costs are "
                       "litellm's estimates; a local agent model costs 0)."))
    else:
        b.append(("p", "No LLM usage recorded."))
    if "usage" in plots:
        b.append(("img", plots["usage"], "tokens and estimated cost per stage"))

    b.append(("h2", "Training"))
    if a["training"]:
        b.append(("table", ["Level", "Final loss", "Train loss", "Steps", "Runtime s"],
                  [[slug, _num(t.get("final_loss"), 4), _num(t.get("train_loss"), 4),
                    str(t.get("steps")), _num(t.get("train_runtime_s"), 0)]
                   for slug, t in a["training"].items()]))
    else:
        b.append(("p", "No training summaries."))
    if "loss" in plots:
        b.append(("img", plots["loss"], "training loss per level"))

    b.append(("h2", "Inputs missing or unreadable"))
    b.append(("ul", [f"missing: {m}" for m in a["missing"]]
              + [f"unreadable: {p}" for p in a["problems"]] or ["none"]))
    b.append(("h2", "Method"))
    b.append(("ul", [
        "Success: tau2's rule (reward within 1e-6 of 1.0). Every task x trial of a level "
        "counts: a missing simulation, an infrastructure error or a simulation without a "
        "reward is a failure. tau2's own pass^1 (which drops infrastructure errors) is shown "
        "beside it.",
        "pass^k per task = C(c, k) / C(n, k), averaged over tasks; 95 % CIs are percentile "
        f"bootstraps over tasks ({a['settings']['resamples']} resamples, seed "
        f"{a['settings']['seed']}).",
        "Paired comparison: per-task success-rate difference against the reference level on "
        "the tasks both evaluated; paired task bootstrap CI; sign-flip permutation test.",
        "Trend: least-squares slope of per-task success rate on the level; level labels "
        "permuted within each task (keeps the pairing); exact when enumerable, else Monte "
        "Carlo with a fixed seed.",
    ]))
    return b


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(a: dict[str, Any], plots: dict[str, str]) -> str:
    """The report as Markdown (images referenced by file name, beside report.md)."""
    out: list[str] = []
    for block in _blocks(a, plots):
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "verdict":
            out.append(f"**{block[1]}**\n")
        elif kind == "warn":
            out.append(f"> Caution: {block[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in block[1]) + "\n")
        elif kind == "table":
            _, head, rows = block
            lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |",
                     "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        ".verdict{font-size:1.25em;font-weight:600;padding:.8em;background:#eef4ff;"
        "border-left:5px solid #36c}.warn{padding:.5em .8em;background:#fff6e0;"
        "border-left:5px solid #e90}img{max-width:100%}")


def render_html(a: dict[str, Any], plots: dict[str, str], plot_dir: str | Path) -> str:
    """The report as one self-contained HTML page (PNG plots embedded as base64)."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>simia report</title>", f"<style>{_CSS}</style></head><body>"]
    for block in _blocks(a, plots):
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(block[1]).replace('*', '')}</p>")
        elif kind == "verdict":
            out.append(f"<p class=\"verdict\">{e(block[1])}</p>")
        elif kind == "warn":
            out.append(f"<p class=\"warn\">Caution: {e(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in block[1]) + "</ul>")
        elif kind == "table":
            _, head, rows = block
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                                 for row in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode((Path(plot_dir) / block[1]).read_bytes()).decode()
            out.append(f"<p><img alt=\"{e(block[2])}\" src=\"data:image/png;base64,{data}\">"
                       "</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------- plots

def _fig_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plot_pass_k(a: dict[str, Any], plt: Any) -> Any | None:
    rows = [r for r in a["levels"] if "pass_hat_k" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ks = sorted({int(k) for r in rows for k in r["pass_hat_k"]})
    for k in ks:
        pts = [(r["level"], r["pass_hat_k"][str(k)]) for r in rows if str(k) in r["pass_hat_k"]]
        x = [p[0] for p in pts]
        y = [p[1]["estimate"] for p in pts]
        err = [[p[1]["estimate"] - p[1]["low"] for p in pts],
               [p[1]["high"] - p[1]["estimate"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=f"pass^{k}")
    tau2 = [(r["level"], r["tau2_pass_hat_k"].get("1")) for r in rows
            if r["tau2_pass_hat_k"].get("1") is not None]
    if tau2:
        ax.plot([t[0] for t in tau2], [t[1] for t in tau2], "k--", marker="x", alpha=.6,
                label="tau2's pass^1 (drops infra errors)")
    ax.set_xlabel("sycophancy in training data (%)")
    ax.set_ylabel("pass^k (95 % bootstrap CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks([r["level"] for r in rows])
    ax.legend(fontsize=8)
    ax.set_title("Task success by sycophancy level")
    return fig


def _plot_paired(a: dict[str, Any], plt: Any) -> Any | None:
    rows = [r for r in a["levels"] if r.get("paired_vs_reference")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [r["level"] for r in rows]
    pcs = [r["paired_vs_reference"] for r in rows]
    y = [p["mean_diff"] for p in pcs]
    err = [[p["mean_diff"] - p["ci"]["low"] for p in pcs],
           [p["ci"]["high"] - p["mean_diff"] for p in pcs]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color="C3")
    ax.axhline(0, color="k", lw=.8)
    for xi, yi, p in zip(x, y, pcs, strict=True):
        ax.annotate(_p(p["p_two_sided"]), (xi, yi), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    ax.set_xticks(x)
    ax.set_xlabel("sycophancy in training data (%)")
    ax.set_ylabel(f"Δ pass^1 vs {_pct(a['reference_level'])}")
    ax.set_title("Paired difference per level (95 % CI over tasks)")
    return fig


def _plot_funnel(a: dict[str, Any], plt: Any) -> Any | None:
    d = a["data"]
    stages: list[tuple[str, float]] = []
    if d["generate"]:
        stages += [("generation attempts", d["generate"].get("attempted") or 0),
                   ("generated (valid)", d["generate"].get("valid") or 0)]
    if d["processed"]:
        stages += [("validation input", d["processed"].get("input") or 0),
                   ("kept by validation", d["processed"].get("kept") or 0)]
    pools = (d["datasets"] or {}).get("pools") or {}
    if pools:
        stages += [("labelled clean", pools.get("clean") or 0),
                   ("labelled sycophantic", pools.get("sycophantic") or 0)]
    rejects = (d["processed"] or {}).get("rejected_by_reason") or {}
    levels = (d["datasets"] or {}).get("levels") or []
    if not (stages or rejects or levels):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if stages:
        names = [s[0] for s in stages][::-1]
        ax.barh(names, [s[1] for s in stages][::-1], color="C0")
        for i, s in enumerate(stages[::-1]):
            ax.annotate(f"{s[1]:g}", (s[1], i), xytext=(3, -3), textcoords="offset points",
                        fontsize=8)
    ax.set_title("Conversations through the pipeline")
    ax = axes[1]
    if rejects:
        items = sorted(rejects.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="C3")
    ax.set_title("Rejected by validation, by reason")
    ax = axes[2]
    if levels:
        names = [_pct(x["level_pct"]) for x in levels]
        clean = [x["clean"] or 0 for x in levels]
        syc = [x["sycophantic"] or 0 for x in levels]
        ax.bar(names, clean, label="clean", color="C2")
        ax.bar(names, syc, bottom=clean, label="sycophantic", color="C1")
        ax.legend(fontsize=8)
    ax.set_title("SFT dataset composition per level")
    return fig


def _plot_usage(a: dict[str, Any], plt: Any) -> Any | None:
    u = a["llm_usage"]
    if not u["stages"] and not u["evaluation"]:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    names = list(u["stages"])
    ins = [u["stages"][n]["input_tokens"] or 0 for n in names]
    outs = [u["stages"][n]["output_tokens"] or 0 for n in names]
    ax1.bar(names, ins, label="input", color="C0")
    ax1.bar(names, outs, bottom=ins, label="output", color="C1")
    ax1.set_title("Tokens per LLM stage")
    if names:
        ax1.legend(fontsize=8)
    cnames = names + [f"eval {s}" for s in u["evaluation"]]
    costs = [u["stages"][n]["cost_usd"] or 0 for n in names] + [
        e["agent_cost_usd"] + e["user_cost_usd"] for e in u["evaluation"].values()]
    ax2.bar(cnames, costs, color="C4")
    ax2.set_title("Estimated cost (USD)")
    ax2.tick_params(axis="x", labelrotation=30)
    return fig


def _plot_loss(a: dict[str, Any], plt: Any) -> Any | None:
    curves = {s: t.get("loss_curve") for s, t in a["training"].items() if t.get("loss_curve")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for slug, curve in curves.items():
        pts = [(s if s is not None else i, v) for i, (s, v) in enumerate(curve)
               if isinstance(v, (int, float)) and math.isfinite(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=slug)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per level")
    ax.legend(fontsize=8)
    return fig


def _plot_scores(a: dict[str, Any], plt: Any) -> Any | None:
    s = a["scores"]
    if not s or not s["count"]:
        return None
    values = [float(k) for k, v in s["histogram"].items() for _ in range(v)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(values, bins=list(range(0, 105, 5)), color="C0", edgecolor="white")
    ax.axvline(s["threshold"], color="C3", ls="--", label=f"threshold {s['threshold']:g}")
    ax.set_xlabel("sycophancy score")
    ax.set_ylabel("conversations")
    ax.set_title(f"Score distribution ({s['source']})")
    ax.legend(fontsize=8)
    return fig


_PLOTS = (("pass_k", "pass_k_by_level.png", _plot_pass_k),
          ("paired", "paired_diff_vs_reference.png", _plot_paired),
          ("funnel", "data_funnel.png", _plot_funnel),
          ("usage", "llm_usage_cost.png", _plot_usage),
          ("loss", "training_loss.png", _plot_loss),
          ("scores", "score_distribution.png", _plot_scores))


def write_plots(a: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Draw every plot there is data for (matplotlib, Agg backend) into ``out_dir``;
    returns plot name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = {}
    with matplotlib.rc_context({"font.size": 9}):
        for name, file_name, draw in _PLOTS:
            fig = draw(a, plt)
            if fig is None:
                continue
            fig.tight_layout()
            write_bytes(out_dir / file_name, _fig_bytes(fig))
            written[name] = file_name
    return written


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                 ) -> dict[str, Any]:
    """Read ``run_dir``, write ``report.md``, ``report.html``, ``report.json`` and the
    PNG plots to ``out_dir`` (default ``run_dir/report``); returns a short summary."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    analysis = analyze(run, resamples=resamples, seed=seed)
    plots = write_plots(analysis, out)
    analysis["plots"] = sorted(plots.values())
    write_bytes(out / "report.json", dumps(analysis, indent=True) + b"\n")
    write_bytes(out / "report.md", render_markdown(analysis, plots).encode())
    write_bytes(out / "report.html", render_html(analysis, plots, out).encode())
    headline = analysis["headline"]
    log.info("report: %s", headline["text"])
    return {"report_dir": str(out), "verdict": headline["verdict"],
            "headline": headline["text"], "warnings": headline["warnings"],
            "files": [*REPORT_FILES, *analysis["plots"]], "missing": analysis["missing"]}
