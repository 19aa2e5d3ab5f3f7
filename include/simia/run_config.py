"""Checks on a whole run's settings, before any work starts.

Each Param is validated on its own by its JSON schema (type, bounds, enum) when a run
is triggered. What a schema cannot express is checked here, once, at the start of the
run (the DAG's first task): combinations (levels against dataset size and the shared
clean core, a judge-score file with ``label_source = judge_file``, GPUs against the GPU
list, the vLLM backend without GPUs), files that must exist, and every typed stage
config (pydantic) built from the Params. All problems are reported together, each naming
its Param, so one fix-and-retrigger is enough.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simia.errors import SimiaError

__all__ = ["START_STAGES", "check_run_params", "datasets_dir", "eval_settings", "level_plans",
           "reused_files", "scores_file", "training_config"]

# where a run may start from an earlier run's artifacts (see the DAG's start_from Param)
START_STAGES = ("beginning", "processed", "scores", "datasets")


def scores_file(label_source: str) -> str:
    """Where a run keeps the scores its datasets were built from (relative to the run)."""
    return "judge/judge_scores.jsonl" if label_source == "judge" else "scores/rule_scores.jsonl"


def reused_files(start: str, label_source: str) -> list[str]:
    """Files of the source run that a run starting at ``start`` reads (relative paths)."""
    if start == "processed":
        return ["processed/processed.json"]
    if start == "scores":
        files = ["processed/processed.json"]
        if label_source != "judge_file":
            files.append(scores_file(label_source))
        return files
    if start == "datasets":
        return ["datasets/dataset_info.json", "datasets/metadata.json"]
    return []


def training_config(p: dict[str, Any]):
    """The run's :class:`simia.containers.training.TrainingConfig` from the DAG's Params."""
    from simia.containers.training import TrainingConfig

    return TrainingConfig(
        model=p["base_model"], template=p["template"], finetuning_type=p["finetuning_type"],
        num_train_epochs=p["epochs"], max_steps=p["max_steps"],
        learning_rate=p["learning_rate"], per_device_train_batch_size=p["batch_size"],
        gradient_accumulation_steps=p["grad_accum"], cutoff_len=p["cutoff_len"],
        neat_packing=p["neat_packing"], flash_attn=p["flash_attn"], bf16=p["bf16"],
        deepspeed=p["deepspeed"], preprocessing_num_workers=p["preprocessing_workers"],
        seed=p["seed"], extra=p["train_extra"])


def eval_settings(p: dict[str, Any]):
    """The run's :class:`simia.evaluation.evaluator.EvalSettings` from the DAG's Params."""
    from simia.evaluation.evaluator import EvalSettings

    return EvalSettings(
        evaluator=p["evaluator"], image=p["evaluator_image"], domain=p["eval_domain"],
        task_split=p["task_split"], num_tasks=p["num_tasks"], num_trials=p["num_trials"],
        user_llm=p["user_llm"], user_llm_args=p["user_llm_args"],
        agent_temperature=p["agent_temperature"], user_temperature=p["user_temperature"],
        agent_llm_args=p["agent_llm_args"], max_concurrency=p["eval_max_concurrency"],
        max_steps=p["eval_max_steps"], seed=p["eval_seed"],
        tau2_data_dir=p["eval_data_dir"] or "", timeout_s=p["eval_timeout_h"] * 3600)


def _pydantic_problems(prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "?"
        out.append(f"{prefix} {where}: {err.get('msg')}")
    return out


def _must_exist(problems: list[str], name: str, path: str, *, folder: bool = False) -> None:
    p = Path(path)
    ok = p.is_dir() if folder else p.is_file()
    if not ok:
        problems.append(f"{name}: {path!r} is not {'a folder' if folder else 'a file'} the "
                        "workers can read")


def check_run_params(p: dict[str, Any]) -> list[str]:
    """Every problem with a run's Params (empty list: the run may start)."""
    problems: list[str] = []
    start = p.get("start_from", "beginning")
    if start not in START_STAGES:
        problems.append(f"start_from: {start!r} is not one of {', '.join(START_STAGES)}")
    if start != "beginning":
        src = p.get("source_run") or ""
        if not src:
            problems.append(f"source_run: start_from = {start} needs the folder of an earlier "
                            "run (<data_root>/simia_sycophancy_experiment/<run_id>)")
        elif not Path(src).is_dir():
            problems.append(f"source_run: {src!r} is not a folder the workers can read")
        else:
            for rel in reused_files(start, p.get("label_source", "rules")):
                if not (Path(src) / rel).is_file():
                    problems.append(f"source_run: {src} has no {rel} (needed to start from "
                                    f"{start})")
    if start == "beginning":
        if p.get("raw_conversations"):
            _must_exist(problems, "raw_conversations", p["raw_conversations"])
        elif p.get("seeds_file"):
            _must_exist(problems, "seeds_file", p["seeds_file"])
        if not p.get("raw_conversations") and p.get("llm_backend") == "openai" and not p.get(
                "openai_base_url"):
            problems.append("openai_base_url: the openai LLM backend needs the server's base "
                            "URL (e.g. http://127.0.0.1:8000/v1)")
        if not p.get("raw_conversations") and p.get("llm_backend") == "openai" and not p.get(
                "model_id"):
            problems.append("model_id: the openai LLM backend needs the served model's name")
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
    if start == "beginning" and not p.get("tau2_data_dir"):
        if not os.environ.get("TAU2_DATA_DIR"):
            problems.append("tau2_data_dir: processing needs tau2's telecom policy; set the "
                            "Param or TAU2_DATA_DIR on the workers")
    if start != "datasets":
        from simia.data.datasets import DatasetDesign

        try:
            DatasetDesign(levels=tuple(p["levels"]), size=p["dataset_size"],
                          shared_clean=p["shared_clean"], seed=p["seed"],
                          threshold=p["label_threshold"])
        except SimiaError as exc:
            problems.append(f"datasets: {exc}")
    if p.get("train_models"):  # without trained models there is nothing to serve either
        problems += _training_problems(p)
    return problems


def _training_problems(p: dict[str, Any]) -> list[str]:
    from simia.containers.gpus import check_request, parse_gpu_ids

    problems: list[str] = []
    try:
        training_config(p)
    except ValidationError as exc:
        problems += _pydantic_problems("training", exc)
    try:
        ids = parse_gpu_ids(p["gpu_ids"])
        check_request(ids, p["gpus_per_training"])
    except SimiaError as exc:
        problems.append(f"gpu_ids / gpus_per_training: {exc}")
        ids = []
    if Path(p["base_model"]).is_absolute() and not Path(p["base_model"]).is_dir():
        problems.append(f"base_model: {p['base_model']!r} looks like a local path but is not a "
                        "folder the workers can see")
    if p.get("evaluate_models"):
        if p["serve_backend"] == "vllm":
            if p["gpus_per_server"] < 1:
                problems.append("gpus_per_server: the vllm backend needs at least one GPU "
                                "(use serve_backend = transformers on machines without one)")
            elif p["gpus_per_server"] > len(ids):
                problems.append(f"gpus_per_server: {p['gpus_per_server']} GPUs per server but "
                                f"only {len(ids)} in gpu_ids")
        if p["max_model_len"] < p["cutoff_len"] and p["serve_backend"] == "vllm":
            problems.append(f"max_model_len: {p['max_model_len']} is shorter than the training "
                            f"cutoff_len {p['cutoff_len']}; tau2's conversations would be cut")
        try:
            eval_settings(p)
        except ValidationError as exc:
            problems += _pydantic_problems("evaluation", exc)
        if p["eval_data_dir"]:
            _must_exist(problems, "eval_data_dir", p["eval_data_dir"], folder=True)
    return problems


def datasets_dir(p: dict[str, Any], run_dir: str | Path) -> Path:
    """Where a run's datasets are: its own ``datasets/``, or the source run's when it
    starts from datasets (``start_from``)."""
    if p.get("start_from", "beginning") == "datasets":
        return Path(p["source_run"]) / "datasets"
    return Path(run_dir) / "datasets"


def level_plans(p: dict[str, Any], *, run_dir: str | Path, run_id: str, dag_id: str,
                dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Per level, everything its tasks need, as plain JSON-able data: the LLaMA-Factory
    YAML (written to ``train/<level>/train_config.yaml``, unchanged when identical) and
    the trainer container, then the server and evaluator settings. Empty when
    ``train_models`` is off. Bad training, GPU, serving or evaluation Params raise here,
    before any container starts.

    The DAG's ``plan_levels`` task returns this (one mapped ``level`` group per entry),
    and ``simia commands`` prints the containers it describes as ``docker`` commands.
    """
    from simia.containers.gpus import check_request, parse_gpu_ids
    from simia.layout import DataRoot
    from simia.containers.serving import ServerSettings
    from simia.containers.training import ContainerSettings, container_spec, plan_level

    if not p["train_models"]:
        return []
    gpu_ids = parse_gpu_ids(p["gpu_ids"])
    check_request(gpu_ids, p["gpus_per_training"])
    cfg = training_config(p)
    cache = p["model_cache_dir"] or str(DataRoot(p["data_root"]).hf_cache)
    settings = ContainerSettings(
        image=p["trainer_image"], gpus_per_training=p["gpus_per_training"],
        model_cache_dir=cache, hub_offline=p["hub_offline"], shm_size_gb=p["shm_size_gb"])
    gpus_per_server = p["gpus_per_server"] if p["serve_backend"] == "vllm" else 0
    check_request(gpu_ids, gpus_per_server)
    server = ServerSettings(
        backend=p["serve_backend"], image=p["server_image"],
        max_model_len=p["max_model_len"], gpu_memory_utilization=p["gpu_memory_utilization"],
        gpus_per_server=gpus_per_server, template=p["template"],
        startup_timeout_s=p["server_startup_timeout_s"], seed=p["seed"],
        extra_args=tuple(p["server_extra_args"]), model_cache_dir=cache,
        hub_offline=p["hub_offline"])
    evaluation = eval_settings(p)
    run = str(run_dir)
    run_key = f"{dag_id}/{run_id}"
    lock_dir = str(DataRoot(p["data_root"]).gpu_locks)
    out = []
    for level in sorted(p["levels"]):
        plan = plan_level(cfg, datasets_dir=dataset_dir, train_dir=f"{run}/train",
                          level=level, run_key=run_key)
        spec = container_spec(cfg, plan, run, settings)
        out.append({
            "level": float(level), "run_dir": run, "run_key": run_key,
            "run_id": run_id, "lock_dir": lock_dir, "gpu_ids": p["gpu_ids"],
            "train_dir": str(Path(plan.output_dir).parent),
            "evaluate": p["evaluate_models"],
            "train": {**spec, "plan": plan.as_dict(),
                      "labels": {"simia.dag_id": dag_id, "simia.run_id": run_id,
                                 "simia.level": f"{level:g}", "simia.stage": "train"},
                      "gpus_per_training": p["gpus_per_training"],
                      "gpu_ids": p["gpu_ids"], "lock_dir": lock_dir},
            "server": server.model_dump(mode="json"),
            "eval": evaluation.model_dump(mode="json")})
    return out
