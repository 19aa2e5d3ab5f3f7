"""Reading a run folder for the report: every file through :class:`simia.layout.RunLayout`.

Every part is optional: a missing file is listed in :attr:`RunData.missing`, an unreadable
one in :attr:`RunData.problems`, and the report says so. Only a missing run folder is an
error. What is read:

* the declared design: every training run (level x replicate) the run was to train and
  evaluate, from ``run.json``'s ``params`` (``levels``, ``replicates``: 1 when absent, a run
  from before replicates), else from the datasets' metadata (``design.levels_pct``,
  ``design.replicates``), else the runs the evaluation folders hold; and the declared
  analysis settings (:class:`simia.settings.analysis.AnalysisSettings` from the same
  ``params``, defaults when absent);
* per training run (``layout.eval(level, replicate)``; replicate 1 is ``eval/5pct``,
  replicate k ``eval/5pct-rK``): its evaluation summary (secrets removed) and its tau2
  results (tau2-bench v1.0.1 format) where the summary says, else ``.results`` of its folder;
  a run without them is named (its evaluation never ran);
* the summaries of the seeds, generate, judge and processed stages (``.summary``: counts
  and ``llm`` usage) and the datasets' metadata;
* the rule scores or the judge's scores (``layout.rule_scores.scores``,
  ``layout.judge.scores``), the datasets' label source first;
* each training run's training summary (``.summary`` of its train folder), else
  LLaMA-Factory's ``.trainer_state`` (the loss curve).

An evaluation summary is kept with its secrets removed (:func:`simia.redaction.redact`);
of ``run.json`` only the design and analysis settings are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simia.errors import InputError, SimiaError
from simia.evaluation.tau2_results import Tau2Results, read_tau2_results
from simia.io import read_json, read_jsonl
from simia.layout import EvalFiles, RunLayout, TrainFiles, run_slug
from simia.redaction import redact
from simia.report.model import Training
from simia.settings import build
from simia.settings.analysis import AnalysisSettings

__all__ = ["LLM_STAGES", "RunData", "RunEvaluation", "load_run", "slug_run"]

#: the stages whose summaries record LLM usage, in pipeline order
LLM_STAGES = ("seeds", "generate", "judge", "twins")
#: the fields of a training summary the report keeps, in the order of the report's JSON
TRAINING_FIELDS = ("dataset", "final_loss", "train_loss", "steps", "total_steps", "epoch",
                   "train_runtime_s", "loss_curve")
#: the score field of a rule-score and of a judge-score row
RULE_SCORE, JUDGE_SCORE = "score", "wm_sycophancy_score"
_SLUG = re.compile(r"^(m?[0-9]+(?:p[0-9]+)?)pct(?:-r([0-9]+))?$")


@dataclass
class RunEvaluation:
    """One training run's evaluation (a level's replicate): where it came from and, when
    readable, its results."""

    level: float
    replicate: int
    slug: str  # its folder name: 5pct (replicate 1), 5pct-r2, ...
    summary: dict[str, Any]  # the evaluation summary, secrets removed ({} when absent)
    results_path: str  # relative to the run folder when inside it
    results_file: Path  # where the results are (or would be)
    results: Tau2Results | None = None
    problem: str | None = None  # why there are no results (or none with a task)

    @property
    def name(self) -> str:
        """``10 % replicate 2``."""
        return f"{self.level:g} % replicate {self.replicate}"


@dataclass
class RunData:
    """Everything the report reads from a run directory."""

    run_dir: Path
    evaluations: list[RunEvaluation]  # every training run, by level then replicate
    summaries: dict[str, dict[str, Any]]  # seeds/generate/judge/processed -> summary
    datasets: dict[str, Any] | None  # the datasets' metadata
    scores: list[float] | None
    scores_source: str | None
    training: dict[str, Training]  # run slug -> training, by level then replicate
    #: the declared design, level -> training runs (empty: none declared or found)
    declared: dict[float, int] = field(default_factory=dict)
    design_source: str = ""  # where ``declared`` comes from
    #: whether the run was to train and evaluate models (False: run.json says it was not)
    evaluates: bool = True
    analysis_settings: AnalysisSettings = field(default_factory=AnalysisSettings)
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


def slug_run(slug: str) -> tuple[float, int] | None:
    """The (level, replicate) a run folder name (:func:`simia.layout.run_slug`) stands
    for: ``5pct`` -> (5, 1), ``2p5pct-r3`` -> (2.5, 3); None for another name."""
    m = _SLUG.match(slug)
    if not m:
        return None
    level = float(m.group(1).replace("p", ".").replace("m", "-"))
    replicate = int(m.group(2)) if m.group(2) else 1
    return (level, replicate) if replicate >= 1 else None


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


def _positive_int(value: Any, default: int = 1) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return default


def _levels(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    return sorted({float(x) for x in values if isinstance(x, (int, float))
                   and not isinstance(x, bool)})


def _read_params(run: RunData) -> dict[str, Any] | None:
    """``run.json``'s ``params`` (None without a readable one; never copied whole)."""
    path = run.layout.run_json
    if not path.is_file():
        return None
    try:
        manifest = read_json(path, what="run record")
    except InputError as exc:
        run.problems.append(str(exc))
        return None
    params = manifest.get("params") if isinstance(manifest, dict) else None
    if not isinstance(params, dict):
        run.problems.append(f"{run.rel(path)}: no 'params' object")
        return None
    return params


def _analysis_settings(run: RunData, params: dict[str, Any] | None) -> None:
    if not params:
        return
    try:
        run.analysis_settings = build(AnalysisSettings, params)
    except (ValidationError, SimiaError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        run.problems.append(f"{run.rel(run.layout.run_json)}: analysis settings unusable "
                            f"({first}); the defaults are used")


def _declare(run: RunData, params: dict[str, Any] | None) -> None:
    """The declared design: run.json's, else the datasets' (or nothing)."""
    if params is not None and _levels(params.get("levels")):
        reps = _positive_int(params.get("replicates", 1))
        run.declared = {lv: reps for lv in _levels(params["levels"])}
        run.design_source = run.rel(run.layout.run_json)
        run.evaluates = bool(params.get("train_models", True)) and bool(
            params.get("evaluate_models", True))
        return
    design = (run.datasets or {}).get("design") if isinstance(run.datasets, dict) else None
    if isinstance(design, dict) and _levels(design.get("levels_pct")):
        reps = _positive_int(design.get("replicates", 1))
        run.declared = {lv: reps for lv in _levels(design["levels_pct"])}
        run.design_source = run.rel(run.layout.datasets.metadata)


def _found_runs(run: RunData) -> dict[tuple[float, int], tuple[str, dict[str, Any]]]:
    """(level, replicate) -> (folder name, evaluation summary) of every evaluation folder
    with a summary or results: the summary's level and replicate, else the folder name's."""
    root = run.layout.eval_root
    found: dict[tuple[float, int], tuple[str, dict[str, Any]]] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = EvalFiles(folder)
        key = slug_run(folder.name)
        summary: dict[str, Any] = {}
        if files.summary.is_file():
            try:
                raw = read_json(files.summary)
            except InputError as exc:
                run.problems.append(str(exc))
                raw = None
            if isinstance(raw, dict):
                summary = redact(raw)
                try:
                    key = (float(raw["level"]),
                           _positive_int(raw.get("replicate", key[1] if key else 1)))
                except (KeyError, TypeError, ValueError):
                    run.problems.append(f"{run.rel(files.summary)}: no numeric 'level'")
        elif not files.results.is_file():
            continue
        if key is not None and key not in found:
            found[key] = (folder.name, summary)
    return found


def _results_path(run_dir: Path, files: EvalFiles, summary: dict[str, Any]) -> Path:
    """The results file the evaluation summary names (a file or a folder holding one,
    absolute or relative to the run or the run's eval folder), else the folder's."""
    given = summary.get("results")
    if isinstance(given, str) and given:
        for candidate in (Path(given), run_dir / given, files.dir / given):
            if candidate.is_file():
                return candidate
            if candidate.is_dir() and EvalFiles(candidate).results.is_file():
                return EvalFiles(candidate).results
    return files.results


def _read_training(run: RunData, ev: RunEvaluation) -> Training | None:
    files = TrainFiles(run.layout.train_root / ev.slug)
    base = {"level": ev.level, "replicate": ev.replicate, "slug": ev.slug}
    try:
        if files.summary.is_file():
            s = _lenient_json(files.summary)
            keys = tuple(k for k in TRAINING_FIELDS if k in s)
            return Training(source=run.rel(files.summary), keys=keys, **base,
                            **{k: s.get(k) for k in keys})
        if files.trainer_state.is_file():
            state = _lenient_json(files.trainer_state)
            curve = [[h.get("step"), h["loss"]] for h in state.get("log_history", [])
                     if isinstance(h, dict) and isinstance(h.get("loss"), (int, float))]
            return Training(source=run.rel(files.trainer_state),
                            keys=("steps", "total_steps", "final_loss", "loss_curve"), **base,
                            steps=state.get("global_step"), total_steps=state.get("max_steps"),
                            final_loss=curve[-1][1] if curve else None, loss_curve=curve)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        run.problems.append(f"{run.rel(files.summary)}: unreadable training summary: {exc}")
        return None
    if run.evaluates:
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


def _evaluation(run: RunData, level: float, replicate: int, slug: str,
                summary: dict[str, Any]) -> RunEvaluation:
    files = EvalFiles(run.layout.eval_root / slug)
    path = _results_path(run.run_dir, files, summary)
    ev = RunEvaluation(level, replicate, slug, summary, run.rel(path), path)
    if not path.is_file():
        ev.problem = f"no {files.results.name}: its evaluation never ran"
        if run.evaluates:
            run.missing.append(run.rel(path))
        return ev
    try:
        ev.results = read_tau2_results(path)
    except InputError as exc:
        ev.problem = f"unreadable: {exc}"
        run.problems.append(str(exc))
    else:
        if not ev.results.task_ids:
            ev.problem = f"{files.results.name} has no tasks"
    return ev


def _evaluations(run: RunData) -> None:
    """Every declared training run (and, without a declaration, every one found)."""
    found = _found_runs(run)
    if not run.declared and found:
        run.declared = {}
        for level, _ in found:
            run.declared[level] = run.declared.get(level, 0) + 1
        run.declared = dict(sorted(run.declared.items()))
        run.design_source = "the evaluation folders (no declared design)"
        keys = sorted(found)
    else:
        keys = [(lv, k) for lv, n in sorted(run.declared.items()) for k in range(1, n + 1)]
    extra = sorted(set(found) - set(keys))
    if extra:
        run.problems.append("evaluation folder(s) of runs the design does not declare, left "
                            "out: " + ", ".join(f"eval/{found[k][0]}" for k in extra))
    for level, replicate in keys:
        slug, summary = found.get((level, replicate), (run_slug(level, replicate), {}))
        run.evaluations.append(_evaluation(run, level, replicate, slug, summary))


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
    # only runs that collect by the design, or make twins, have these
    stage_summaries.update({stage: path for stage, path in (
        ("collect", layout.collect.summary), ("twins", layout.twins.summary)) if path.is_file()})
    for stage, path in stage_summaries.items():
        s = _optional_json(run, path)
        if isinstance(s, dict):
            run.summaries[stage] = s
    meta = _optional_json(run, layout.datasets.metadata)
    run.datasets = meta if isinstance(meta, dict) else None
    _read_scores(run)
    params = _read_params(run)
    _analysis_settings(run, params)
    _declare(run, params)
    _evaluations(run)
    for ev in run.evaluations:
        training = _read_training(run, ev)
        if training is not None:
            run.training[ev.slug] = training
    if not run.evaluations:
        placeholder = EvalFiles(layout.eval_root / "<run>")
        run.missing.append(f"{run.rel(placeholder.summary)} and {placeholder.results.name} "
                           "(no training run declared or found)")
    return run
