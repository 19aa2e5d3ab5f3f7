"""A run's settings: the models that define them, the DAG's Params derived from those,
and the checks on a whole run before any work starts.

Every run setting is one field of one model in :data:`RUN_MODELS` (see
:mod:`simia.config`): the stage models (generation, LLM, datasets, training, serving,
evaluation) and the run-level ones below (where data comes from, shards, labels,
connections, which halves run). :func:`param_specs` turns them into the DAG's Params
(default, JSON schema, title, description, section), the ``simia`` command line adds
options from the same fields, and :func:`check_run_params` builds every model from a
run's Params. What one Param's schema cannot express is checked here too, once, at the
start of the run (the DAG's first task): combinations (levels against dataset size and
the shared clean core, a judge-score file with ``label_source = judge_file``, GPUs
against the GPU list, the vLLM backend without GPUs) and files that must exist. All
problems are reported together, each naming its Param, so one fix-and-retrigger is
enough.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from simia.config import (RunSetting, SettingsModel, env_default, gpu_ids_default,
                          run_settings, setting, settings_values)
from simia.containers.serving import ServerSettings
from simia.containers.training import ContainerSettings, TrainingConfig
from simia.data.datasets import DatasetDesign
from simia.errors import SimiaError
from simia.evaluation.evaluator import EvalSettings
from simia.layout import START_STAGES, DataRoot, RunLayout
from simia.llm.client import LLMSettings
from simia.llm.generation import GenerationSettings, SeedSettings

__all__ = ["RUN_MODELS", "build", "check_run_params", "datasets_dir", "defined_settings",
           "eval_settings", "level_plans", "param_specs", "training_config"]

M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- run-level models

class DataSettings(SettingsModel):
    """Where a run's data comes from and goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Data"

    start_from: Literal[START_STAGES] = setting(  # type: ignore[valid-type]
        "beginning", title="Start from an earlier run's artifacts",
        description="beginning: generate (or read the raw file below). processed / scores / "
                    "datasets: reuse that stage's outputs (and those before it) from the "
                    "source run folder below; the stages before it do no work. The earlier "
                    "run is only read, never written.")
    source_run: str | None = setting(
        None, title="Source run folder",
        description="With start_from: <data_root>/simia_sycophancy_experiment/<run_id> of an "
                    "earlier run.")
    data_root: str = setting(
        default_factory=env_default("SIMIA_DATA_ROOT", "/opt/simia/data"), min_length=1,
        title="Data root", description="Every run writes under <data_root>/"
                                       "simia_sycophancy_experiment/<run_id>/.")
    tau2_data_dir: str | None = setting(
        default_factory=env_default("TAU2_DATA_DIR"), title="tau2 data directory",
        description="Folder with tau2's telecom main_policy.md and tech_support_manual.md "
                    "(tau2's data/ folder works too). Empty: TAU2_DATA_DIR of the worker.")
    output_format: Literal["native", "hermes"] = setting(
        "native", title="Output format",
        description="native: function_call/observation roles + tools column, rendered by the "
                    "qwen template exactly as vLLM serves the model. hermes: the reference "
                    "scripts' format, for comparison.")
    skip_invalid_records: bool = setting(
        False, title="Skip malformed records",
        description="Reject malformed records (listed in rejects.jsonl) instead of failing "
                    "the task.")


class InputSettings(SettingsModel):
    """Files that replace the generation stages, and how the LLM stages are sharded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Generation"

    raw_conversations: str | None = setting(
        None, title="Raw conversations file (skips generation)",
        description="Path (as the workers see it) to an existing JSON list of generated "
                    "conversations, e.g. the reference run's tau2_telecom_base_3000.json. "
                    "Empty: generate them with the LLM.")
    seeds_file: str | None = setting(
        None, title="Seed file (skips seed generation)",
        description="JSON list of seed conversations in the raw record shape. Empty: generate "
                    "seeds from the tau2 policy.")
    shards: int = setting(4, ge=1, le=64, title="Shards",
                          description="Generation and judging run as this many mapped tasks; "
                                      "a failed shard is retried alone.")


class LLMConnection(SettingsModel):
    """The Airflow connection of the Bedrock backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "LLM"

    aws_conn_id: str = setting("aws_default", min_length=1, title="AWS connection",
                               description="Connection with Bedrock access (region and "
                                           "endpoint_url in its extras).")


class JudgingSettings(SettingsModel):
    """Where the sycophancy labels come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Judging"

    label_source: Literal["rules", "judge", "judge_file"] = setting(
        "rules", title="Label source",
        description="rules: the rule-based scorer. judge: the LLM judge (mapped shards). "
                    "judge_file: an existing LLM-judge score file.")
    judge_scores: str | None = setting(
        None, title="Judge score file",
        description="With label_source = judge_file: JSONL with conv_idx (position in the raw "
                    "file) and wm_sycophancy_score, as the reference judge wrote.")


class TrainingRunSettings(SettingsModel):
    """Whether models are trained, and on which GPUs of the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Training"

    train_models: bool = setting(True, title="Train models",
                                 description="Off: stop after the datasets.")
    gpu_ids: str | None = setting(
        default_factory=gpu_ids_default, title="GPU ids",
        description="GPUs the trainings may use, e.g. 0,1,2,3 (default: SIMIA_GPU_IDS). "
                    "Empty: CPU.")


class ServingRunSettings(SettingsModel):
    """Whether trained models are served and evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Serving"

    evaluate_models: bool = setting(True, title="Serve and evaluate",
                                    description="Off: stop after training.")


class EvaluationConnection(SettingsModel):
    """The Airflow connection of tau2's user simulator."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Evaluation"

    user_llm_conn_id: str = setting("openai_default", title="User simulator connection",
                                    description="Its password is passed as OPENAI_API_KEY "
                                                "(never logged).")


#: every model that defines run settings, in the trigger form's order
RUN_MODELS: tuple[type[SettingsModel], ...] = (
    DataSettings, InputSettings, SeedSettings, GenerationSettings, LLMSettings, LLMConnection,
    JudgingSettings, DatasetDesign, TrainingRunSettings, TrainingConfig, ContainerSettings,
    ServingRunSettings, ServerSettings, EvaluationConnection, EvalSettings)


def _all_settings() -> Iterator[RunSetting]:
    for model in RUN_MODELS:
        yield from run_settings(model)


def defined_settings() -> dict[str, RunSetting]:
    """Each run setting by Param name, where it is defined (a name defined twice is a
    programming error)."""
    out: dict[str, RunSetting] = {}
    for s in _all_settings():
        if not s.defined:
            continue
        if s.param in out:
            raise RuntimeError(f"run setting {s.param!r} is defined by both "
                               f"{out[s.param].model.__name__} and {s.model.__name__}")
        out[s.param] = s
    return out


def shared_settings() -> list[RunSetting]:
    """The fields that take the value of a setting defined elsewhere (``from_setting``)."""
    return [s for s in _all_settings() if not s.defined]


# --------------------------------------------------------------------------- Params

def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _schema(s: RunSetting) -> dict[str, Any]:
    """The JSON schema of one setting as an Airflow Param takes it (no title, default)."""
    schema = dict(s.model.model_json_schema()["properties"][s.field])
    for key in ("title", "description", "default", "simia_setting"):
        schema.pop(key, None)
    branches = schema.pop("anyOf", None)
    if branches:  # "X | None" -> type [null, X] with X's constraints
        types = ["null"] if any(b.get("type") == "null" for b in branches) else []
        for branch in branches:
            if branch.get("type") != "null":
                types.append(branch["type"])
                schema.update({k: v for k, v in branch.items() if k != "type"})
        schema["type"] = types
    if "const" in schema:  # a single choice
        schema["enum"] = [schema.pop("const")]
    if schema.get("type") == "object":
        schema.pop("additionalProperties", None)
    return schema


def param_specs() -> dict[str, dict[str, Any]]:
    """Each run setting as the keyword arguments of an Airflow ``Param``: ``default``,
    its JSON schema (type, bounds, choices), ``title``, ``description``, ``section``.
    Host-dependent defaults are read now (the DAG file is parsed on the host)."""
    out = {}
    for name, s in defined_settings().items():
        out[name] = {"default": _json_value(s.default()), **_schema(s),
                     "title": s.info.title or name, "description": s.info.description or "",
                     "section": s.section}
    return out


# --------------------------------------------------------------------------- building models

def build(model: type[M], params: Mapping[str, Any], **values: Any) -> M:
    """``model`` from a run's Params (settings it does not define keep their defaults);
    ``values`` set its other fields."""
    return model(**{**settings_values(model, params), **values})


def _require(params: Mapping[str, Any], *models: type[BaseModel]) -> None:
    """A ``KeyError`` naming the first setting of ``models`` that ``params`` lacks (a
    run.json written by another version of the DAG)."""
    for model in models:
        for s in run_settings(model):
            if s.param not in params:
                raise KeyError(s.param)


def training_config(p: Mapping[str, Any]) -> TrainingConfig:
    """The run's :class:`~simia.containers.training.TrainingConfig` from its Params."""
    return build(TrainingConfig, p)


def eval_settings(p: Mapping[str, Any]) -> EvalSettings:
    """The run's :class:`~simia.evaluation.evaluator.EvalSettings` from its Params."""
    return build(EvalSettings, p)


# --------------------------------------------------------------------------- checks

def _pydantic_problems(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One line per error, naming the setting (its Param when it has another name)."""
    params = {s.field: s.param for s in run_settings(model)}
    prefix = getattr(model, "section", "") or model.__name__
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc) or "?"
        param = params.get(loc[0]) if loc else None
        if param and param != loc[0]:
            where += f" (Param {param})"
        cause = (err.get("ctx") or {}).get("error")
        msg = str(cause) if isinstance(cause, SimiaError) else err.get("msg")
        out.append(f"{prefix.lower()} {where}: {msg}")
    return out


def _validated(problems: list[str], model: type[M], p: Mapping[str, Any],
               **values: Any) -> M | None:
    try:
        return build(model, p, **values)
    except ValidationError as exc:
        problems += _pydantic_problems(model, exc)
    except SimiaError as exc:
        problems.append(f"{model.section.lower()}: {exc}")
    return None


def _must_exist(problems: list[str], name: str, path: str, *, folder: bool = False) -> None:
    p = Path(path)
    ok = p.is_dir() if folder else p.is_file()
    if not ok:
        problems.append(f"{name}: {path!r} is not {'a folder' if folder else 'a file'} the "
                        "workers can read")


def check_run_params(p: Mapping[str, Any]) -> list[str]:
    """Every problem with a run's Params (empty list: the run may start)."""
    problems: list[str] = []
    data = _validated(problems, DataSettings, p)
    if data is None:
        return problems
    _validated(problems, InputSettings, p)
    _validated(problems, JudgingSettings, p)
    start = data.start_from
    if start != "beginning":
        src = data.source_run or ""
        if not src:
            problems.append(f"source_run: start_from = {start} needs the folder of an earlier "
                            "run (<data_root>/simia_sycophancy_experiment/<run_id>)")
        elif not Path(src).is_dir():
            problems.append(f"source_run: {src!r} is not a folder the workers can read")
        else:
            for path in RunLayout(src).reused_files(start, p.get("label_source", "rules")):
                rel = path.relative_to(src)
                if not path.is_file():
                    problems.append(f"source_run: {src} has no {rel} (needed to start from "
                                    f"{start})")
    if start == "beginning":
        if p.get("raw_conversations"):
            _must_exist(problems, "raw_conversations", p["raw_conversations"])
        else:
            if p.get("seeds_file"):
                _must_exist(problems, "seeds_file", p["seeds_file"])
            _validated(problems, SeedSettings, p)
            _validated(problems, GenerationSettings, p)
            _validated(problems, LLMSettings, p)
            if p.get("llm_backend") == "openai" and not p.get("openai_base_url"):
                problems.append("openai_base_url: the openai LLM backend needs the server's "
                                "base URL (e.g. http://127.0.0.1:8000/v1)")
            if p.get("llm_backend") == "openai" and not p.get("model_id"):
                problems.append("model_id: the openai LLM backend needs the served model's "
                                "name")
    if start in ("beginning", "processed"):
        if p.get("label_source") == "judge_file":
            if not p.get("judge_scores"):
                problems.append("judge_scores: label_source = judge_file needs a judge-score "
                                "file (JSONL with conv_idx and wm_sycophancy_score)")
            else:
                _must_exist(problems, "judge_scores", p["judge_scores"])
        elif p.get("judge_scores"):
            problems.append(f"judge_scores: a file is given but label_source is "
                            f"{p.get('label_source')!r}; set label_source = judge_file to use "
                            "it, or clear the field")
        if p.get("label_source") == "judge":
            _validated(problems, LLMSettings, p)
    if start == "beginning" and not data.tau2_data_dir and not os.environ.get("TAU2_DATA_DIR"):
        problems.append("tau2_data_dir: processing needs tau2's telecom policy; set the Param "
                        "or TAU2_DATA_DIR on the workers")
    if start != "datasets":
        try:
            build(DatasetDesign, p)
        except SimiaError as exc:
            problems.append(f"datasets: {exc}")
    if p.get("train_models"):  # without trained models there is nothing to serve either
        problems += _training_problems(p)
    return list(dict.fromkeys(problems))


def _training_problems(p: Mapping[str, Any]) -> list[str]:
    from simia.containers.gpus import check_request, parse_gpu_ids

    problems: list[str] = []
    cfg = _validated(problems, TrainingConfig, p)
    _validated(problems, ContainerSettings, p)
    try:
        ids = parse_gpu_ids(p["gpu_ids"])
        check_request(ids, p["gpus_per_training"])
    except SimiaError as exc:
        problems.append(f"gpu_ids / gpus_per_training: {exc}")
        ids = []
    if cfg is not None and Path(cfg.model).is_absolute() and not Path(cfg.model).is_dir():
        problems.append(f"base_model: {cfg.model!r} looks like a local path but is not a "
                        "folder the workers can see")
    if p.get("evaluate_models"):
        server = _validated(problems, ServerSettings, p, model_cache_dir="-")
        if server is not None and server.backend == "vllm":
            if server.gpus_per_server < 1:
                problems.append("gpus_per_server: the vllm backend needs at least one GPU "
                                "(use serve_backend = transformers on machines without one)")
            elif server.gpus_per_server > len(ids):
                problems.append(f"gpus_per_server: {server.gpus_per_server} GPUs per server "
                                f"but only {len(ids)} in gpu_ids")
            if cfg is not None and server.max_model_len < cfg.cutoff_len:
                problems.append(f"max_model_len: {server.max_model_len} is shorter than the "
                                f"training cutoff_len {cfg.cutoff_len}; tau2's conversations "
                                "would be cut")
        evaluation = _validated(problems, EvalSettings, p)
        if evaluation is not None and evaluation.tau2_data_dir:
            _must_exist(problems, "eval_data_dir", evaluation.tau2_data_dir, folder=True)
    return problems


# --------------------------------------------------------------------------- plans

def datasets_dir(p: Mapping[str, Any], run_dir: str | Path) -> Path:
    """Where a run's datasets are: its own ``datasets/``, or the source run's when it
    starts from datasets (``start_from``)."""
    if p.get("start_from", "beginning") == "datasets":
        return RunLayout(p["source_run"]).datasets.dir
    return RunLayout(run_dir).datasets.dir


def level_plans(p: Mapping[str, Any], *, run_dir: str | Path, run_id: str, dag_id: str,
                dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Per level, everything its tasks need, as plain JSON-able data: the LLaMA-Factory
    YAML (written to ``train/<level>/train_config.yaml``, unchanged when identical) and
    the trainer container, then the server and evaluator settings. Empty when
    ``train_models`` is off. Bad training, GPU, serving or evaluation Params raise here,
    before any container starts; a missing one raises ``KeyError`` (a run.json written by
    another version of the DAG).

    The DAG's ``plan_levels`` task returns this (one mapped ``level`` group per entry),
    and ``simia commands`` prints the containers it describes as ``docker`` commands.
    """
    from simia.containers.gpus import check_request, parse_gpu_ids
    from simia.containers.training import container_spec, plan_level

    _require(p, TrainingRunSettings, ServingRunSettings, DatasetDesign, TrainingConfig,
             ContainerSettings, ServerSettings, EvalSettings)
    if not p["train_models"]:
        return []
    gpu_ids = parse_gpu_ids(p["gpu_ids"])
    check_request(gpu_ids, p["gpus_per_training"])
    cfg = training_config(p)
    root = DataRoot(p["data_root"])
    cache = p["model_cache_dir"] or str(root.hf_cache)
    settings = build(ContainerSettings, p, model_cache_dir=cache)
    server = build(ServerSettings, p, model_cache_dir=cache)
    if server.backend != "vllm":
        server = server.model_copy(update={"gpus_per_server": 0})
    check_request(gpu_ids, server.gpus_per_server)
    evaluation = eval_settings(p)
    layout = RunLayout(run_dir)
    run = str(layout.root)
    run_key = f"{dag_id}/{run_id}"
    lock_dir = str(root.gpu_locks)
    out = []
    for level in sorted(p["levels"]):
        plan = plan_level(cfg, datasets_dir=dataset_dir, train_dir=str(layout.train_root),
                          level=level, run_key=run_key)
        spec = container_spec(cfg, plan, run, settings)
        out.append({
            "level": float(level), "run_dir": run, "run_key": run_key,
            "run_id": run_id, "lock_dir": lock_dir, "gpu_ids": p["gpu_ids"],
            "train_dir": str(layout.train(level).dir),
            "evaluate": p["evaluate_models"],
            "train": {**spec, "plan": plan.as_dict(),
                      "labels": {"simia.dag_id": dag_id, "simia.run_id": run_id,
                                 "simia.level": f"{level:g}", "simia.stage": "train"},
                      "gpus_per_training": p["gpus_per_training"],
                      "gpu_ids": p["gpu_ids"], "lock_dir": lock_dir},
            "server": server.model_dump(mode="json"),
            "eval": evaluation.model_dump(mode="json")})
    return out

