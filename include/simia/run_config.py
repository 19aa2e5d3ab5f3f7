"""A run's settings: the models that define them, the DAG's Params derived from those,
and the checks on a whole run before any work starts.

Every run setting is one field of one model in :data:`RUN_MODELS` (see
:mod:`simia.settings`): the stage models (generation, LLM, datasets, training, serving,
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from simia.errors import SimiaError
from simia.layout import DataRoot, RunLayout
from simia.settings.hosts import GpuHost
from simia.settings import (AnalysisSettings, CollectionSettings, ContainerSettings,
                            DatasetDesign, DataSettings, EvalSettings, GenerationSettings,
                            InputSettings, JudgingSettings,
                            LLMSettings, SeedSettings, ServerSettings, ServingRunSettings,
                            TrainingConfig, TrainingRunSettings, build, require, run_settings)

__all__ = ["calls_the_llm", "check_run_params", "datasets_dir", "eval_settings",
           "level_plans", "placement", "power_plan", "training_config"]

if TYPE_CHECKING:
    from simia.placement import Placement

M = TypeVar("M", bound=BaseModel)


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


def check_run_params(p: Mapping[str, Any], hosts: Sequence[GpuHost] = ()) -> list[str]:
    """Every problem with a run's Params (empty list: the run may start). ``hosts``: the
    GPU hosts of ``SIMIA_GPU_HOSTS`` (empty: one host, its GPUs in ``gpu_ids``)."""
    problems: list[str] = []
    data = _validated(problems, DataSettings, p)
    if data is None:
        return problems
    _validated(problems, InputSettings, p)
    _validated(problems, JudgingSettings, p)
    collection = _validated(problems, CollectionSettings, p)
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
    if start in ("beginning", "collect"):
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
    if start in ("beginning", "collect", "processed"):
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
    if collection is not None:
        problems += _collection_problems(p, collection, start)
    if start in ("beginning", "collect") and not data.tau2_data_dir \
            and not os.environ.get("TAU2_DATA_DIR"):
        problems.append("tau2_data_dir: processing needs tau2's telecom policy; set the Param "
                        "or TAU2_DATA_DIR on the workers")
    if start != "datasets":
        try:
            build(DatasetDesign, p)
        except SimiaError as exc:
            problems.append(f"datasets: {exc}")
    if p.get("train_models"):  # without trained models there is nothing to serve either
        problems += _training_problems(p, hosts)
    analysis = _validated(problems, AnalysisSettings, p)
    if analysis is not None and analysis.run_variance_from:
        _must_exist(problems, "run_variance_from", analysis.run_variance_from)
    return list(dict.fromkeys(problems))


#: yields per raw generation measured on the reference's real data (issue 15): kept by the
#: native validation about 27 %, clean about 26 %, flagged by the judge about 1 %
#: (benchmarks/bench_collection_cost.py)
REFERENCE_YIELDS = {"clean": 0.26, "sycophantic": 0.010}


def expected_attempts(clean: int, sycophantic: int, source: str) -> int:
    """Attempts a design needs at :data:`REFERENCE_YIELDS` (a prior, before the pilot)."""
    need = clean / REFERENCE_YIELDS["clean"]
    if source == "natural" and sycophantic:
        need = max(need, sycophantic / REFERENCE_YIELDS["sycophantic"])
    return int(need + 0.999)


def _collection_problems(p: Mapping[str, Any], c: CollectionSettings, start: str) -> list[str]:
    """A collection the caps can never fill, and settings that do not go together."""
    problems: list[str] = []
    collects = (c.collection == "design" and not p.get("raw_conversations")
                and start in ("beginning", "collect"))
    if start == "collect" and not collects:
        problems.append("start_from: collect continues a collection; it needs collection = "
                        "design and no raw_conversations file")
    if c.sycophancy_source == "twins" and p.get("label_source") == "rules" \
            and start != "datasets":
        problems.append("sycophancy_source: twins are checked by the LLM judge (the twin "
                        "flagged, its original clean); set label_source = judge (or "
                        "judge_file), or sycophancy_source = natural")
    try:
        design = build(DatasetDesign, p)
    except SimiaError:
        return problems  # reported with the design
    clean, syc = design.pool_needs(c.sycophancy_source)
    if collects:
        if p.get("label_source") != "judge":
            problems.append("label_source: collection = design labels each conversation with "
                            "the LLM judge as it goes; set label_source = judge, or "
                            "collection = fixed")
        least = clean + (syc if c.sycophancy_source == "natural" else 0)
        if c.collect_max_attempts < least:
            problems.append(
                f"collect_max_attempts: {c.collect_max_attempts:,} attempts can never fill "
                f"this design: each attempt yields at most one conversation and it needs "
                f"{clean} clean" + (f" and {syc} sycophantic" if c.sycophancy_source ==
                                    "natural" else "") + " conversations; at the yields "
                f"measured on the reference data it takes about "
                f"{expected_attempts(clean, syc, c.sycophancy_source):,}")
        if c.collect_pilot > c.collect_max_attempts:
            problems.append(f"collect_pilot: {c.collect_pilot:,} pilot attempts exceed "
                            f"collect_max_attempts ({c.collect_max_attempts:,})")
    elif start == "beginning" and not p.get("raw_conversations"):
        target = p.get("target_conversations", 0)
        least = clean + (syc if c.sycophancy_source == "natural" else 0)
        if target < least:
            problems.append(
                f"target_conversations: {target:,} generated conversations can never fill "
                f"this design (collection = fixed): it needs {clean} clean"
                + (f" and {syc} sycophantic" if c.sycophancy_source == "natural" else "")
                + f" conversations after validation; at the yields measured on the reference "
                f"data that takes about {expected_attempts(clean, syc, c.sycophancy_source):,}"
                " generations. Raise it, or use collection = design")
    return problems


def calls_the_llm(p: Mapping[str, Any]) -> bool:
    """Whether the run calls the LLM: it generates or collects (no raw file, nothing
    reused), the LLM judge labels what it processes, or it makes twins."""
    start = p.get("start_from", "beginning")
    generates = start in ("beginning", "collect") and not p.get("raw_conversations")
    judges = p.get("label_source") == "judge" and start in ("beginning", "collect",
                                                            "processed")
    twins = p.get("sycophancy_source") == "twins" and start != "datasets"
    return generates or judges or twins


def power_plan(p: Mapping[str, Any]) -> dict[str, Any] | None:
    """The power plan of a run that trains and evaluates (None otherwise): the replicates
    the declared smallest effect needs, and the power of this run's replicates. Raises
    ``SimiaError`` when an earlier analysis named by ``run_variance_from`` is unusable."""
    if not (p.get("train_models") and p.get("evaluate_models")):
        return None
    runs = p.get("replicates", 1)
    if len(set(p["levels"])) < 2:  # an A/A run: no slope to plan for
        return {"replicates": runs, "line": (
            f"one level, {runs} run(s): an A/A run; it measures the run-to-run variance "
            "(its analysis.json can plan later runs through run_variance_from), there is "
            "no level slope to plan for")}
    from simia.analysis.power import plan_power_for_run

    plan = plan_power_for_run(p["levels"], p["num_trials"], build(AnalysisSettings, p),
                              task_split=p["task_split"], num_tasks=p["num_tasks"])
    power = plan.power_by_replicates.get(str(runs))
    line = (f"{plan.summary} This run trains {runs} run(s) per level"
            + (f": power {power:.2f} for the smallest effect." if power is not None else "."))
    return {**plan.model_dump(mode="json"), "replicates": runs, "power_of_this_run": power,
            "line": line}


def _training_problems(p: Mapping[str, Any], hosts: Sequence[GpuHost] = ()) -> list[str]:
    from simia.containers.gpus import check_request, parse_gpu_ids

    problems: list[str] = []
    cfg = _validated(problems, TrainingConfig, p)
    _validated(problems, ContainerSettings, p)
    if hosts:  # the hosts' GPUs, not gpu_ids; the placement refuses what no host can run
        ids = [str(i) for i in range(max(h.gpus for h in hosts))]  # the largest host
        try:
            placement(p, hosts)
        except SimiaError as exc:
            problems.append(f"gpus_per_training / gpus_per_server: {exc}")
    else:
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


def _server_gpus(p: Mapping[str, Any]) -> int:
    """GPUs one model server leases (0 unless the run evaluates with vLLM)."""
    if not p.get("evaluate_models") or p.get("serve_backend") != "vllm":
        return 0
    return int(p.get("gpus_per_server") or 0)


def placement(p: Mapping[str, Any], hosts: Sequence[GpuHost]) -> Placement:
    """Which host of ``hosts`` trains each of the run's training runs (equal durations:
    the runs of a design train on equal datasets with equal settings). Raises
    :class:`simia.placement.PlacementError` when no host has the GPUs a training (or a
    server) needs."""
    from simia.placement import plan_placement, training_runs

    runs = training_runs(p["levels"], int(p.get("replicates", 1)))
    return plan_placement(runs, hosts, int(p["gpus_per_training"]),
                          gpus_per_server=_server_gpus(p))


def level_plans(p: Mapping[str, Any], *, run_dir: str | Path, run_id: str, dag_id: str,
                dataset_dir: str | Path, hosts: Sequence[GpuHost] = ()
                ) -> list[dict[str, Any]]:
    """Per level, everything its tasks need, as plain JSON-able data: the LLaMA-Factory
    YAML (written to ``train/<level>/train_config.yaml``, unchanged when identical) and
    the trainer container, then the server and evaluator settings. Empty when
    ``train_models`` is off. Bad training, GPU, serving or evaluation Params raise here,
    before any container starts; a missing one raises ``KeyError`` (a run.json written by
    another version of the DAG).

    The DAG's ``plan_levels`` task returns this (one mapped ``level`` group per entry),
    and ``simia commands`` prints the containers it describes as ``docker`` commands.

    With ``hosts`` (``SIMIA_GPU_HOSTS``) each plan is placed on a host
    (:func:`placement`): it records ``host`` and ``queue``, its ``gpu_ids`` are that
    host's and its ``lock_dir`` is the host's own (``.locks/gpus/<host>``), so GPU
    leases stay on the host even when the data root is shared.
    """
    from simia.containers.gpus import check_request, parse_gpu_ids
    from simia.containers.training import container_spec, plan_level
    from simia.placement import TrainingRun

    p = {"replicates": 1, **p}  # a run.json from before replicates: one run per level
    require(p, TrainingRunSettings, ServingRunSettings, DatasetDesign, TrainingConfig,
             ContainerSettings, ServerSettings, EvalSettings)
    if not p["train_models"]:
        return []
    placed = placement(p, hosts) if hosts else None
    if placed is None:
        gpu_ids = parse_gpu_ids(p["gpu_ids"])
        check_request(gpu_ids, p["gpus_per_training"])
    cfg = training_config(p)
    root = DataRoot(p["data_root"])
    cache = p["model_cache_dir"] or str(root.hf_cache)
    settings = build(ContainerSettings, p, model_cache_dir=cache)
    server = build(ServerSettings, p, model_cache_dir=cache)
    if server.backend != "vllm":
        server = server.model_copy(update={"gpus_per_server": 0})
    if placed is None:
        check_request(gpu_ids, server.gpus_per_server)
    evaluation = eval_settings(p)
    layout = RunLayout(run_dir)
    run = str(layout.root)
    run_key = f"{dag_id}/{run_id}"
    lock_dir = str(root.gpu_locks)
    out = []
    design = build(DatasetDesign, p)
    # replicate-major: every level's first run before any level's second
    for replicate in range(1, design.replicates + 1):
        run_cfg = cfg.for_replicate(replicate)
        for level in sorted(p["levels"]):
            plan = plan_level(run_cfg, datasets_dir=dataset_dir,
                              train_dir=str(layout.train_root), level=level, run_key=run_key,
                              replicate=replicate)
            spec = container_spec(run_cfg, plan, run, settings)
            where: dict[str, Any] = {"lock_dir": lock_dir, "gpu_ids": p["gpu_ids"]}
            if placed is not None:
                host = placed.host_of(TrainingRun(float(level), replicate))
                where = {"host": host.name, "queue": host.queue,
                         "lock_dir": str(root.host_gpu_locks(host.name)),
                         "gpu_ids": host.gpu_ids_text}
            lock_dir = where["lock_dir"]
            out.append({
                "level": float(level), "replicate": replicate, "run_dir": run,
                "run_key": run_key, "run_id": run_id, "data_root": str(root.root), **where,
                "train_dir": str(layout.train(level, replicate).dir),
                "evaluate": p["evaluate_models"],
                "train": {**spec, "plan": plan.as_dict(),
                          "labels": {"simia.dag_id": dag_id, "simia.run_id": run_id,
                                     "simia.level": f"{level:g}",
                                     "simia.replicate": str(replicate),
                                     "simia.stage": "train"},
                          "gpus_per_training": p["gpus_per_training"],
                          "gpu_ids": where["gpu_ids"], "lock_dir": lock_dir},
                "server": server.model_dump(mode="json"),
                "eval": evaluation.model_dump(mode="json")})
    return out

