"""Where every artifact of a run lives: the one owner of the run folder's layout.

A run of the experiment writes under ``<data_root>/<experiment>/<run_id>/``::

    run.json                       the run's settings (validate_params)
    seeds/                         SeedFiles
    generate/                      GenerateFiles
    processed/                     ProcessedFiles
    judge/                         JudgeFiles
    scores/                        RuleScoreFiles
    datasets/                      DatasetFiles
    train/deepspeed.json           the run's DeepSpeed config
    train/<run>/                   TrainFiles, one per training run: <run> is the level's
                                   slug (5pct) for replicate 1, 5pct-r2 for replicate 2, ...
    eval/<run>/                    EvalFiles, one per training run
    report/                        ReportFiles
    failures/<task>[.<i>].json     failure summaries (the DAG's failure callback)
    failure_summary.json           earlier runs' list of failures (read only)
    placement.json                 which host trains each run (SIMIA_GPU_HOSTS only)

Each stage folder has a small class naming its files, so that a stage writing into any
folder (the ``simia`` command line's ``-o``) and everything reading a run folder (the
DAG, the report, the runs index, ``simia commands``, the UI) spell a path in one place:
here. :class:`RunLayout` composes them for a whole run, and owns the order of the data
stages that ``start_from`` skips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_ROOT_MARKER",
    "CollectFiles", "DataRoot", "DatasetFiles", "EvalFiles", "GenerateFiles", "JudgeFiles",
    "ProcessedFiles", "ReportFiles", "RuleScoreFiles", "RunLayout", "START_STAGES", "SeedFiles",
    "TrainFiles", "TrainRoot", "TwinFiles", "level_slug", "run_slug", "safe_name", "shard_file",
    "shard_params", "shard_summary", "starts_after",
]

#: the file that names a shared data root (:attr:`DataRoot.marker`)
DATA_ROOT_MARKER = ".simia-data-root"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# where a run may start from an earlier run's artifacts (the DAG's start_from Param), in
# stage order; a run starting at one of them reuses that stage's outputs and those before
# "collect": start from the beginning, continuing the source run's collection (its
# finished items are reused; only what is left calls the LLM)
START_STAGES = ("beginning", "collect", "processed", "scores", "datasets")
# the data stages and the first start_from value that skips each
_SKIPPED_FROM = {"generate": "processed", "process": "processed", "score": "scores",
                 "build": "datasets"}


def starts_after(start_from: str, stage: str) -> bool:
    """True when a run with ``start_from`` reuses ``stage``'s outputs (generate, process,
    score, build) instead of running it."""
    if stage not in _SKIPPED_FROM:
        raise ValueError(f"unknown data stage {stage!r}; one of {', '.join(_SKIPPED_FROM)}")
    return START_STAGES.index(start_from) >= START_STAGES.index(_SKIPPED_FROM[stage])


def safe_name(text: str) -> str:
    """A file-name-safe form of a run id (``manual__2026-01-01T00:00:00+00:00`` ->
    ``manual__2026-01-01T00-00-00-00-00``)."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    if not cleaned:
        raise ValueError(f"cannot make a folder name from {text!r}")
    return cleaned


def level_slug(level: float) -> str:
    """``5`` -> ``5pct``, ``2.5`` -> ``2p5pct`` (names of folders and containers)."""
    text = f"{float(level):g}".replace(".", "p").replace("-", "m")
    return f"{text}pct"


def run_slug(level: float, replicate: int = 1) -> str:
    """One training run of a level: ``5pct`` for replicate 1 (the folder and container
    names of runs without replicates), ``5pct-r2`` for replicate 2, ..."""
    if replicate < 1:
        raise ValueError(f"replicates are numbered from 1, got {replicate}")
    return level_slug(level) if replicate == 1 else f"{level_slug(level)}-r{replicate}"


def shard_file(folder: str | Path, stage: str, shard: int, shards: int) -> Path:
    """A sharded LLM stage's per-shard checkpoint (``<stage>-shard-001-of-004.jsonl``);
    its settings and summary sit beside it (:func:`shard_params`, :func:`shard_summary`)."""
    return Path(folder) / f"{stage}-shard-{shard:03d}-of-{shards:03d}.jsonl"


def _beside(path: str | Path, suffix: str) -> Path:
    """``path`` with its last suffix replaced (``a.jsonl`` -> ``a<suffix>``)."""
    path = Path(path)
    return path.with_name(path.stem + suffix)


def shard_params(checkpoint: str | Path) -> Path:
    """The settings a shard's checkpoint was started with (``<shard>.params.json``)."""
    return _beside(checkpoint, ".params.json")


def shard_summary(checkpoint: str | Path) -> Path:
    """A shard's summary, written beside its checkpoint (``<shard>.summary.json``)."""
    return _beside(checkpoint, ".summary.json")


@dataclass(frozen=True)
class _Dir:
    dir: Path

    def __init__(self, folder: str | Path) -> None:
        object.__setattr__(self, "dir", Path(folder))


class _Folder(_Dir):
    """A stage's folder: its files and its summary."""

    @property
    def summary(self) -> Path:
        """The stage's ``summary.json`` (counts, hashes of inputs and settings)."""
        return self.dir / "summary.json"


class SeedFiles(_Folder):
    """``seeds/``: generated seed conversations (and the stage's one-shard checkpoint)."""

    STAGE = "seeds"

    @property
    def seeds(self) -> Path:
        return self.dir / "seeds.json"

    @property
    def failures(self) -> Path:
        return self.dir / "seed_failures.jsonl"

    def shard(self, shard: int, shards: int) -> Path:
        return shard_file(self.dir, self.STAGE, shard, shards)


class GenerateFiles(_Folder):
    """``generate/``: raw conversations, failures and per-shard checkpoints."""

    STAGE = "generate"

    @property
    def raw(self) -> Path:
        return self.dir / "raw_conversations.json"

    @property
    def failures(self) -> Path:
        return self.dir / "generation_failures.jsonl"

    def shard(self, shard: int, shards: int) -> Path:
        return shard_file(self.dir, self.STAGE, shard, shards)


class CollectFiles(_Folder):
    """``collect/``: the design-driven collection's per-item checkpoints (the pilot's and
    each shard's), the pilot's yields and projection, and the collection summary. The
    merged conversations, processed rows and judge scores go to the usual stage folders
    (``generate/``, ``processed/``, ``judge/``)."""

    STAGE = "collect"
    PILOT = "collect-pilot"

    @property
    def pilot(self) -> Path:
        """The pilot's checkpoint (items ``0 .. pilot - 1``)."""
        return shard_file(self.dir, self.PILOT, 0, 1)

    def shard(self, shard: int, shards: int) -> Path:
        return shard_file(self.dir, self.STAGE, shard, shards)

    @property
    def projection(self) -> Path:
        """``pilot.json``: the yields observed in the pilot and the projected attempts,
        tokens, cost and time to fill the pools."""
        return self.dir / "pilot.json"

    @property
    def imported(self) -> Path:
        """Written once the source run's items are copied in (``start_from = collect``)."""
        return self.dir / "imported.json"


class TwinFiles(_Folder):
    """``twins/``: counterfactual twins (one rewritten observation each), the candidates
    discarded and why, and the stage's checkpoint."""

    STAGE = "twins"

    @property
    def twins(self) -> Path:
        """One line per accepted twin: source index, the swapped observation, its diff,
        both judge scores, and the twin's turns."""
        return self.dir / "twins.jsonl"

    @property
    def rejects(self) -> Path:
        return self.dir / "rejects.jsonl"

    @property
    def checkpoint(self) -> Path:
        return shard_file(self.dir, self.STAGE, 0, 1)


class ProcessedFiles(_Folder):
    """``processed/``: the kept conversations and every rejected one."""

    @property
    def processed(self) -> Path:
        return self.dir / "processed.json"

    @property
    def rejects(self) -> Path:
        return self.dir / "rejects.jsonl"


class JudgeFiles(_Folder):
    """``judge/``: the LLM judge's scores and per-shard checkpoints."""

    STAGE = "judge"

    @property
    def scores(self) -> Path:
        return self.dir / "judge_scores.jsonl"

    def shard(self, shard: int, shards: int) -> Path:
        return shard_file(self.dir, self.STAGE, shard, shards)


class RuleScoreFiles(_Folder):
    """``scores/``: rule-based sycophancy scores."""

    @property
    def scores(self) -> Path:
        return self.dir / "rule_scores.jsonl"

    @property
    def summary(self) -> Path:
        return rule_scores_summary(self.scores)


def rule_scores_summary(scores_file: str | Path) -> Path:
    """The summary written beside a rule-score file (``rule_scores.summary.json``)."""
    return _beside(scores_file, ".summary.json")


class DatasetFiles(_Folder):
    """``datasets/``: one LLaMA-Factory dataset per level and their registration."""

    def dataset(self, file_name: str) -> Path:
        return self.dir / file_name

    @property
    def dataset_info(self) -> Path:
        return self.dir / "dataset_info.json"

    @property
    def metadata(self) -> Path:
        return self.dir / "metadata.json"

    @property
    def rejects(self) -> Path:
        return self.dir / "rejects.jsonl"


class TrainFiles(_Folder):
    """``train/<level>/``: the YAML a level trained with, LLaMA-Factory's output folder
    and the training summary."""

    @property
    def config(self) -> Path:
        return self.dir / "train_config.yaml"

    @property
    def output(self) -> Path:
        return self.dir / "output"

    @property
    def summary(self) -> Path:
        return self.dir / "training_summary.json"

    @property
    def trainer_state(self) -> Path:
        """LLaMA-Factory's ``trainer_state.json`` in the output folder (its log history)."""
        return self.output / "trainer_state.json"

    @classmethod
    def of_output(cls, output_dir: str | Path) -> TrainFiles:
        """The level folder whose LLaMA-Factory output folder is ``output_dir``."""
        return cls(Path(output_dir).parent)


class TrainRoot(_Dir):
    """``train/`` (or the folder ``simia train-config`` writes to): the DeepSpeed config
    shared by every level, and one :class:`TrainFiles` folder per level."""

    @property
    def deepspeed(self) -> Path:
        return self.dir / "deepspeed.json"

    def level(self, level: float, replicate: int = 1) -> TrainFiles:
        return TrainFiles(self.dir / run_slug(level, replicate))


class EvalFiles(_Folder):
    """``eval/<level>/``: tau2's ``--save-to`` folder and our summary of it."""

    @property
    def results(self) -> Path:
        return self.dir / "results.json"

    @property
    def summary(self) -> Path:
        return self.dir / "eval_summary.json"

    @classmethod
    def of_results(cls, results_file: str | Path) -> EvalFiles:
        """The level folder holding the results file ``results_file``."""
        return cls(Path(results_file).parent)


class ReportFiles(_Folder):
    """``report/``: the results report in three forms and its plots."""

    @property
    def markdown(self) -> Path:
        return self.dir / "report.md"

    @property
    def html(self) -> Path:
        return self.dir / "report.html"

    @property
    def json(self) -> Path:
        return self.dir / "report.json"

    def plot(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class DataRoot:
    """Folders shared by every run under one data root (created on first use)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def _child(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def hf_cache(self) -> Path:
        """The default model cache (HF_HOME) of trainings and servers."""
        return self._child("hf-cache")

    @property
    def gpu_locks(self) -> Path:
        """The GPU leases' lock files (one host)."""
        return self._child(".locks/gpus")

    def host_gpu_locks(self, host: str) -> Path:
        """The GPU leases' lock files of one host of ``SIMIA_GPU_HOSTS``
        (``.locks/gpus/<host>``): leases stay per host when the data root is shared."""
        return self._child(f".locks/gpus/{safe_name(host)}")

    @property
    def marker(self) -> Path:
        """``.simia-data-root``: the id of a data root shared by several hosts (written by
        ``simia init-data-root``, checked against ``SIMIA_DATA_ROOT_ID``). Not created."""
        return self.root / DATA_ROOT_MARKER

    def run(self, experiment: str, run_id: str) -> RunLayout:
        """The layout of one run, ``<root>/<experiment>/<run_id>`` (folder created)."""
        path = self.root / safe_name(experiment) / safe_name(run_id)
        path.mkdir(parents=True, exist_ok=True)
        return RunLayout(path)


@dataclass(frozen=True)
class RunLayout:
    """Every artifact path of one run folder. Nothing is created or read on construction,
    so a layout of an earlier (read-only) run is safe to build."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def placement(self) -> Path:
        """Which host of ``SIMIA_GPU_HOSTS`` trains each run (``plan_levels``)."""
        return self.root / "placement.json"

    @property
    def seeds(self) -> SeedFiles:
        return SeedFiles(self.root / "seeds")

    @property
    def generate(self) -> GenerateFiles:
        return GenerateFiles(self.root / "generate")

    @property
    def collect(self) -> CollectFiles:
        return CollectFiles(self.root / "collect")

    @property
    def twins(self) -> TwinFiles:
        return TwinFiles(self.root / "twins")

    @property
    def processed(self) -> ProcessedFiles:
        return ProcessedFiles(self.root / "processed")

    @property
    def judge(self) -> JudgeFiles:
        return JudgeFiles(self.root / "judge")

    @property
    def rule_scores(self) -> RuleScoreFiles:
        return RuleScoreFiles(self.root / "scores")

    def scores(self, label_source: str) -> Path:
        """The score file a run's datasets are built from: the merged judge scores
        (``judge``) or the rule scores (``rules``)."""
        return self.judge.scores if label_source == "judge" else self.rule_scores.scores

    @property
    def datasets(self) -> DatasetFiles:
        return DatasetFiles(self.root / "datasets")

    @property
    def train_root(self) -> Path:
        return self.root / "train"

    @property
    def trainings(self) -> TrainRoot:
        """The ``train/`` folder: the DeepSpeed config and the levels' folders."""
        return TrainRoot(self.train_root)

    @property
    def deepspeed(self) -> Path:
        """The run's DeepSpeed config, shared by every level."""
        return self.trainings.deepspeed

    def train(self, level: float, replicate: int = 1) -> TrainFiles:
        return self.trainings.level(level, replicate)

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval(self, level: float, replicate: int = 1) -> EvalFiles:
        return EvalFiles(self.eval_root / run_slug(level, replicate))

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.root / "report")

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def failure_summary(self) -> Path:
        """``failure_summary.json``: the list of failures earlier runs wrote (read only)."""
        return self.root / "failure_summary.json"

    def failure(self, task_id: str, map_index: int | None = None) -> Path:
        """``failures/<task_id>[.<map_index>].json`` (a mapped task's instance has its own)."""
        name = task_id if map_index is None or map_index < 0 else f"{task_id}.{map_index}"
        return self.failures / f"{name}.json"

    def reused_files(self, start_from: str, label_source: str) -> list[Path]:
        """The files of this (earlier) run that a run starting at ``start_from`` reads."""
        if start_from == "processed":
            return [self.processed.processed]
        if start_from == "scores":
            files = [self.processed.processed]
            if label_source != "judge_file":
                files.append(self.scores(label_source))
            return files
        if start_from == "datasets":
            return [self.datasets.dataset_info, self.datasets.metadata]
        if start_from == "collect":
            return [self.collect.pilot]
        return []
