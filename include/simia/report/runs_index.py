"""What the experiment's runs left on disk, for the Airflow UI plugin's run list.

Each run of the DAG writes under ``<data_root>/simia_sycophancy_experiment/<folder>/``
where ``folder`` is :func:`simia.layout.safe_name` of the Airflow run id. This module reads
those folders (never writes), every path through :class:`simia.layout.RunLayout`, and
returns typed summaries: which stages have output, the report's headline (the run-aware
verdict) and per level its training runs and pass^1 with its CI (from the report's JSON;
reports written before replicates have no run counts), failures recorded by the failure
callback (or in the failure summary of earlier runs), and the report files that may be
served. It never raises for a damaged run folder: what cannot be read becomes a note.

Only the fields listed here are taken from the files; settings and configuration
dictionaries (which may name endpoints or carry credentials) are never read out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simia.layout import RunLayout, safe_name

EXPERIMENT = "simia_sycophancy_experiment"
DEFAULT_DATA_ROOT = "/opt/simia/data"
DATA_ROOT_ENV = "SIMIA_DATA_ROOT"

#: the layout's paths relative to a run folder: the names notes give, the stage folders
_REL = RunLayout(Path())
_STAGE_DIRS = (_REL.seeds.dir, _REL.collect.dir, _REL.generate.dir, _REL.processed.dir,
               _REL.rule_scores.dir, _REL.judge.dir, _REL.twins.dir, _REL.datasets.dir,
               _REL.train_root, _REL.eval_root, _REL.report.dir)
#: stage folders in pipeline order (seeds ... report)
STAGES = tuple(str(d) for d in _STAGE_DIRS)
#: the stages with one subfolder per level
TRAIN_STAGE, EVAL_STAGE = str(_REL.train_root), str(_REL.eval_root)
LEVEL_STAGES = (TRAIN_STAGE, EVAL_STAGE)
REPORT_STAGE = str(_REL.report.dir)

#: the only suffixes ever served, with their content types
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
}
#: files are served from the run's report folder only (other stage outputs hold settings);
#: the report page is this file of it
REPORT_HTML = _REL.report.html.name
#: a report JSON or failure file larger than this is not parsed (a note says so)
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_ERROR_CHARS = 4000
MAX_FAILURES = 200

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Headline:
    """The report JSON's ``headline``: the verdict (decrease / increase / no_effect /
    invalid / insufficient), its one-line text and warnings."""

    verdict: str
    text: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LevelResult:
    """One sycophancy level of the report: its training runs (declared, with results) and
    pass^1 with its CI over runs (None when no run of the level has results, or without
    a run-to-run SD; ``problem`` names the runs without results)."""

    level: float
    slug: str
    pass1: float | None = None
    pass1_low: float | None = None
    pass1_high: float | None = None
    runs: int | None = None  # declared training runs (None: a report from before replicates)
    runs_with_results: int | None = None
    tasks: int | None = None
    trials: int | None = None
    infrastructure_errors: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Failure:
    """A failed task as the DAG's failure callback records it (:meth:`RunLayout.failure`)."""

    task_id: str
    map_index: int | None = None  # -1 or None: not a mapped task
    try_number: int | None = None
    max_tries: int | None = None
    error: str = ""
    log_hint: str = ""
    time: str = ""
    source: str = ""
    run_id: str | None = None  # the Airflow run id the callback saw


@dataclass(frozen=True)
class RunInfo:
    """One run folder."""

    name: str  # the folder name: safe_name(run id)
    path: Path
    modified: float  # seconds since the epoch: newest of the folder and its stage outputs
    stages: tuple[str, ...] = ()  # STAGES with output, in pipeline order
    train_levels: tuple[str, ...] = ()  # level folders of the train stage with output
    eval_levels: tuple[str, ...] = ()  # level folders of the eval stage with output
    headline: Headline | None = None
    levels: tuple[LevelResult, ...] = ()
    report_files: tuple[str, ...] = ()  # servable names in the report folder (page, PNGs...)
    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # what could not be read, and why

    @property
    def has_report_html(self) -> bool:
        return REPORT_HTML in self.report_files

    @property
    def has_report_output(self) -> bool:
        """The report folder has output (a report, maybe unreadable)."""
        return REPORT_STAGE in self.stages

    def stage_levels(self, stage: str) -> tuple[str, ...]:
        """The level subfolders with output of a per-level stage (LEVEL_STAGES); () for
        any other stage."""
        return {TRAIN_STAGE: self.train_levels, EVAL_STAGE: self.eval_levels}.get(stage, ())

    @property
    def verdict(self) -> str | None:
        return self.headline.verdict if self.headline else None

    @property
    def run_id(self) -> str | None:
        """The Airflow run id, when a file in the folder records it (failure records do);
        the folder name alone cannot be turned back into it."""
        for f in self.failures:
            if f.run_id and run_id_index([f.run_id]).get(self.name) == f.run_id:
                return f.run_id
        return None


# ------------------------------------------------------------------------------ locations

def data_root_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$SIMIA_DATA_ROOT`` or ``/opt/simia/data`` (the DAG's default)."""
    env = os.environ if environ is None else environ
    return Path(env.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def experiment_dir(data_root: str | Path) -> Path:
    return Path(data_root) / EXPERIMENT


def is_valid_name(name: str) -> bool:
    """A single folder or file name made of safe characters, not hidden, not ``.``/``..``."""
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


def run_id_index(run_ids: Iterable[str]) -> dict[str, str]:
    """Folder name -> Airflow run id, for run ids as the DAG turns them into folders."""
    out: dict[str, str] = {}
    for run_id in run_ids:
        try:
            out.setdefault(safe_name(run_id), run_id)
        except ValueError:
            continue
    return out


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _run_path(data_root: str | Path, name: str) -> Path | None:
    """The run folder ``name`` if it is a real folder directly inside the experiment
    folder (a symlink is followed only when it stays inside); else None."""
    if not is_valid_name(name):
        return None
    base = experiment_dir(data_root)
    try:
        root = base.resolve(strict=True)
        path = (base / name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if path.parent != root or not path.is_dir():
        return None
    return base / name


# ------------------------------------------------------------------------------ reading

def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _has_output(path: Path) -> bool:
    """A folder with at least one entry that is not a hidden (temporary) file."""
    try:
        with os.scandir(path) as it:
            return any(not e.name.startswith(".") for e in it)
    except OSError:
        return False


def _subfolders_with_output(path: Path) -> tuple[str, ...]:
    try:
        with os.scandir(path) as it:
            names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return ()
    return tuple(n for n in names if _has_output(path / n))


def _newest(run: Path) -> float:
    """The newest mtime of the run folder, its stage folders and their direct entries
    (not a full walk: model weights can hold many files)."""
    newest = _mtime(run)
    for stage in _STAGE_DIRS:
        folder = run / stage
        try:
            with os.scandir(folder) as it:
                newest = max(newest, _mtime(folder),
                             *(e.stat(follow_symlinks=False).st_mtime for e in it))
        except OSError:
            continue
    return newest


def _read_json(path: Path, what: str, notes: list[str]) -> Any:
    """The parsed file, or None with a note (a missing file is not noted here)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            notes.append(f"{what} is too large to read ({size} bytes)")
            return None
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{what} could not be read: {type(exc).__name__}")
    except json.JSONDecodeError as exc:
        notes.append(f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno})")
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _text(value: Any, limit: int = MAX_ERROR_CHARS) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " [...]"


def _headline(report: dict[str, Any], notes: list[str]) -> Headline | None:
    h = report.get("headline")
    if not isinstance(h, dict) or not isinstance(h.get("verdict"), str):
        notes.append(f"{_REL.report.json} has no headline (verdict missing)")
        return None
    warnings = h.get("warnings")
    warnings = warnings if isinstance(warnings, list) else []
    return Headline(verdict=h["verdict"], text=_text(h.get("text")),
                    warnings=tuple(_text(w) for w in warnings))


def _levels(report: dict[str, Any], notes: list[str]) -> tuple[LevelResult, ...]:
    rows = report.get("levels")
    if rows is None:
        return ()
    if not isinstance(rows, list):
        notes.append(f"{_REL.report.json}: 'levels' is not a list")
        return ()
    out = []
    skipped = 0
    for row in rows:
        level = _number(row.get("level")) if isinstance(row, dict) else None
        if level is None:
            skipped += 1
            continue
        by_k = row.get("pass_hat_k")
        pass1 = by_k.get("1") if isinstance(by_k, dict) else None
        pass1 = pass1 if isinstance(pass1, dict) else {}
        out.append(LevelResult(
            level=level, slug=_text(row.get("slug"), 100) or f"{level:g}pct",
            pass1=_number(pass1.get("estimate")), pass1_low=_number(pass1.get("low")),
            pass1_high=_number(pass1.get("high")), runs=_int(row.get("runs")),
            runs_with_results=_int(row.get("runs_with_results")), tasks=_int(row.get("tasks")),
            trials=_int(row.get("trials")),
            infrastructure_errors=_int(row.get("infrastructure_errors")),
            problem=_text(row.get("problem"), 500) or None))
    if skipped:
        notes.append(f"{_REL.report.json}: {skipped} level row(s) without a numeric level "
                     "skipped")
    return tuple(sorted(out, key=lambda r: r.level))


def _failure(obj: Any, source: str) -> Failure | None:
    if not isinstance(obj, dict) or not obj.get("task_id"):
        return None
    run_id = obj.get("run_id")
    return Failure(task_id=_text(obj.get("task_id"), 250), map_index=_int(obj.get("map_index")),
                   try_number=_int(obj.get("try_number")), max_tries=_int(obj.get("max_tries")),
                   error=_text(obj.get("error")), log_hint=_text(obj.get("log_hint"), 1000),
                   time=_text(obj.get("time"), 100), source=source,
                   run_id=run_id if isinstance(run_id, str) and run_id else None)


def _failures(run: Path, notes: list[str]) -> tuple[Failure, ...]:
    found: list[Failure] = []
    layout = RunLayout(run)
    folder = layout.failures
    try:
        files = sorted(p for p in folder.iterdir()
                       if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        files = []
    for path in files[:MAX_FAILURES]:
        what = str(path.relative_to(run))
        obj = _read_json(path, what, notes)
        f = _failure(obj, what) if obj is not None else None
        if f is not None:
            found.append(f)
        elif obj is not None:
            notes.append(f"{what} is not a failure record (no task_id)")
    if len(files) > MAX_FAILURES:
        notes.append(f"{len(files) - MAX_FAILURES} more failure file(s) not shown")
    summary_what = str(_REL.failure_summary)
    summary = _read_json(layout.failure_summary, summary_what, notes)
    if summary is not None:
        items = summary.get("failures") if isinstance(summary, dict) and "failures" in summary \
            else summary
        items = items if isinstance(items, list) else [items]
        known = {(f.task_id, f.map_index, f.try_number) for f in found}
        for item in items[:MAX_FAILURES]:
            f = _failure(item, summary_what)
            if f is not None and (f.task_id, f.map_index, f.try_number) not in known:
                found.append(f)
    return tuple(sorted(found, key=lambda f: (f.time, f.task_id, f.map_index or -1)))


def _report_files(run: Path) -> tuple[str, ...]:
    try:
        with os.scandir(RunLayout(run).report.dir) as it:
            names = [e.name for e in it if e.is_file()]
    except OSError:
        return ()
    return tuple(sorted(n for n in names
                        if is_valid_name(n) and Path(n).suffix in CONTENT_TYPES))


def read_run(path: str | Path) -> RunInfo:
    """Everything the UI shows about one run folder (never raises for bad content)."""
    run = Path(path)
    layout = RunLayout(run)
    notes: list[str] = []
    stages = tuple(str(s) for s in _STAGE_DIRS if _has_output(run / s))
    headline: Headline | None = None
    levels: tuple[LevelResult, ...] = ()
    what = str(_REL.report.json)
    if layout.report.json.exists():
        report = _read_json(layout.report.json, what, notes)
        if isinstance(report, dict):
            headline = _headline(report, notes)
            levels = _levels(report, notes)
        elif report is not None:
            notes.append(f"{what} is not a JSON object")
    elif REPORT_STAGE in stages:
        notes.append(f"{what} is missing")
    return RunInfo(
        name=run.name, path=run, modified=_newest(run), stages=stages,
        train_levels=_subfolders_with_output(layout.train_root),
        eval_levels=_subfolders_with_output(layout.eval_root),
        headline=headline, levels=levels, report_files=_report_files(run),
        failures=_failures(run, notes), notes=tuple(notes))


def list_runs(data_root: str | Path) -> list[RunInfo]:
    """Every run folder under ``<data_root>/simia_sycophancy_experiment/``, newest first
    (an absent folder: no runs)."""
    base = experiment_dir(data_root)
    try:
        with os.scandir(base) as it:
            names = [e.name for e in it]
    except OSError:
        return []
    runs = []
    for name in names:
        path = _run_path(data_root, name)
        if path is not None:
            runs.append(read_run(path))
    return sorted(runs, key=lambda r: (r.modified, r.name), reverse=True)


def run_detail(data_root: str | Path, name: str) -> RunInfo | None:
    """One run by folder name; None when there is no such run (or the name is unsafe)."""
    path = _run_path(data_root, name)
    return read_run(path) if path is not None else None


def report_file(data_root: str | Path, name: str, file_name: str) -> Path | None:
    """The path of ``file_name`` in run ``name``'s report folder if it may be served: a plain
    file name with an allowed suffix, a regular file that (after symlinks) lies inside
    the run's own folder. None otherwise (the caller answers 404)."""
    if not is_valid_name(file_name) or Path(file_name).suffix not in CONTENT_TYPES:
        return None
    run = _run_path(data_root, name)
    if run is None:
        return None
    try:
        root = run.resolve(strict=True)
        path = (RunLayout(run).report.dir / file_name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not _within(path, root) or not path.is_file():
        return None
    return path


def content_type(path: str | Path) -> str:
    return CONTENT_TYPES[Path(path).suffix]
