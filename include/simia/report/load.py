"""Reading a run folder for the report: every file through :class:`simia.layout.RunLayout`.

Every part is optional: a missing file is listed in :attr:`RunData.missing`, an unreadable
one in :attr:`RunData.problems`, and the report says so. Only a missing run folder is an
error. What is read:

* the levels: each level folder's evaluation summary (``layout.eval(level).summary``:
  level, slug, evaluator, backend, model, results), else the levels of the datasets'
  metadata (``layout.datasets.metadata``, slug :func:`simia.layout.level_slug`), else
  the level folders holding tau2 results; then each level's results (tau2-bench v1.0.1
  format) where its summary says, else ``.results`` of its folder;
* the summaries of the seeds, generate, judge and processed stages (``.summary``: counts
  and ``llm`` usage) and the datasets' metadata;
* the rule scores or the judge's scores (``layout.rule_scores.scores``,
  ``layout.judge.scores``), the datasets' label source first;
* each evaluated level's training summary (``.summary`` of its train folder), else
  LLaMA-Factory's ``.trainer_state`` (the loss curve).

An evaluation summary is kept with its secrets removed (:func:`simia.redaction.redact`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simia.errors import InputError
from simia.evaluation.tau2_results import Tau2Results, read_tau2_results
from simia.io import read_json, read_jsonl
from simia.layout import EvalFiles, RunLayout, TrainFiles, level_slug
from simia.redaction import redact
from simia.report.model import Training

__all__ = ["LLM_STAGES", "LevelEvaluation", "RunData", "load_run"]

#: the stages whose summaries record LLM usage, in pipeline order
LLM_STAGES = ("seeds", "generate", "judge")
#: the fields of a training summary the report keeps, in the order of the report's JSON
TRAINING_FIELDS = ("level", "dataset", "final_loss", "train_loss", "steps", "total_steps",
                   "epoch", "train_runtime_s", "loss_curve")
#: the score field of a rule-score and of a judge-score row
RULE_SCORE, JUDGE_SCORE = "score", "wm_sycophancy_score"


@dataclass
class LevelEvaluation:
    """One level's evaluation: where it came from and, when readable, its results."""

    level: float
    slug: str
    summary: dict[str, Any]  # the evaluation summary, secrets removed ({} when absent)
    results_path: str
    results: Tau2Results | None = None
    problem: str | None = None  # why there are no results (or none with a task)


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    evaluations: list[LevelEvaluation]
    summaries: dict[str, dict[str, Any]]  # seeds/generate/judge/processed -> summary
    datasets: dict[str, Any] | None  # the datasets' metadata
    scores: list[float] | None
    scores_source: str | None
    training: dict[str, Training]  # level slug -> training
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder (as it is when outside)."""
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)


def _optional_json(run: RunData, path: Path) -> Any:
    if not path.is_file():
        run.missing.append(run.rel(path))
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
    """The level a folder name :func:`simia.layout.level_slug` made stands for."""
    if not slug.endswith("pct"):
        return None
    try:
        return float(slug[:-3].replace("p", ".").replace("m", "-"))
    except ValueError:
        return None


def _level_folders(run: RunData) -> list[EvalFiles]:
    """The run's evaluation level folders, by name."""
    root = run.layout.eval_root
    return [EvalFiles(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []


def _level_list(run: RunData) -> list[tuple[float, str, dict[str, Any]]]:
    """(level, slug, evaluation summary) per level, in level order: from the evaluation
    summaries, else the datasets' design, else the level folders holding results."""
    found: dict[float, tuple[float, str, dict[str, Any]]] = {}
    for files in _level_folders(run):
        if not files.summary.exists():
            continue
        try:
            summary = read_json(files.summary)
            level = float(summary["level"])
        except InputError as exc:
            run.problems.append(str(exc))
            continue
        except (KeyError, TypeError, ValueError):
            run.problems.append(f"{run.rel(files.summary)}: no numeric 'level'")
            continue
        slug = summary.get("slug") if isinstance(summary.get("slug"), str) else files.dir.name
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
    for files in _level_folders(run):
        level = _slug_level(files.dir.name)
        if level is not None and files.results.exists():
            out.append((level, files.dir.name, {}))
    return sorted(out)


def _results_path(run_dir: Path, files: EvalFiles, summary: dict[str, Any]) -> Path:
    """The results file the evaluation summary names (a file or a folder holding one,
    absolute or relative to the run or the level folder), else the level folder's."""
    given = summary.get("results")
    if isinstance(given, str) and given:
        for candidate in (Path(given), run_dir / given, files.dir / given):
            if candidate.is_file():
                return candidate
            if candidate.is_dir() and EvalFiles(candidate).results.is_file():
                return EvalFiles(candidate).results
    return files.results


def _read_training(run: RunData, slug: str) -> Training | None:
    files = TrainFiles(run.layout.train_root / slug)
    try:
        if files.summary.is_file():
            s = _lenient_json(files.summary)
            keys = tuple(k for k in TRAINING_FIELDS if k in s)
            return Training(source=run.rel(files.summary), keys=keys,
                            **{k: s.get(k) for k in keys})
        if files.trainer_state.is_file():
            state = _lenient_json(files.trainer_state)
            curve = [[h.get("step"), h["loss"]] for h in state.get("log_history", [])
                     if isinstance(h, dict) and isinstance(h.get("loss"), (int, float))]
            return Training(source=run.rel(files.trainer_state),
                            keys=("steps", "total_steps", "final_loss", "loss_curve"),
                            steps=state.get("global_step"), total_steps=state.get("max_steps"),
                            final_loss=curve[-1][1] if curve else None, loss_curve=curve)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        run.problems.append(f"{run.rel(files.summary)}: unreadable training summary: {exc}")
        return None
    run.missing.append(run.rel(files.summary))
    return None


def _read_scores(run: RunData) -> None:
    layout = run.layout
    source = (run.datasets or {}).get("label_source") if isinstance(run.datasets, dict) else None
    files = [(layout.rule_scores.scores, RULE_SCORE), (layout.judge.scores, JUDGE_SCORE)]
    for path, key in reversed(files) if source == "judge" else files:
        if not path.is_file():
            continue
        try:
            rows = read_jsonl(path)
        except InputError as exc:
            run.problems.append(str(exc))
            continue
        run.scores = [float(r[key]) for r in rows if isinstance(r, dict)
                      and isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        run.scores_source = run.rel(path)
        return
    run.missing.append(" or ".join(run.rel(path) for path, _ in files))


def load_run(run_dir: str | Path) -> RunData:
    """Read every input the report uses; a missing or unreadable file is recorded in
    ``missing``/``problems``, never fatal (a missing ``run_dir`` is)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run directory does not exist")
    run = RunData(run_dir=run_dir, evaluations=[], summaries={}, datasets=None, scores=None,
                  scores_source=None, training={})
    layout = run.layout
    stage_summaries = {"seeds": layout.seeds.summary, "generate": layout.generate.summary,
                       "judge": layout.judge.summary, "processed": layout.processed.summary}
    for stage, path in stage_summaries.items():
        s = _optional_json(run, path)
        if isinstance(s, dict):
            run.summaries[stage] = s
    meta = _optional_json(run, layout.datasets.metadata)
    run.datasets = meta if isinstance(meta, dict) else None
    _read_scores(run)
    for level, slug, summary in _level_list(run):
        files = EvalFiles(layout.eval_root / slug)
        path = _results_path(run_dir, files, summary)
        ev = LevelEvaluation(level, slug, summary, run.rel(path))
        if not path.is_file():
            ev.problem = f"no {files.results.name}"
            run.missing.append(run.rel(path))
        else:
            try:
                ev.results = read_tau2_results(path)
            except InputError as exc:
                ev.problem = f"unreadable: {exc}"
                run.problems.append(str(exc))
            else:
                if not ev.results.task_ids:
                    ev.problem = f"{files.results.name} has no tasks"
        run.evaluations.append(ev)
        training = _read_training(run, slug)
        if training is not None:
            run.training[slug] = training
    if not run.evaluations:
        placeholder = EvalFiles(layout.eval_root / "<slug>")
        run.missing.append(f"{run.rel(placeholder.summary)} and {placeholder.results.name} "
                           "(no level found)")
    return run
