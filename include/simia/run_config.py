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

__all__ = ["START_STAGES", "check_run_params", "eval_settings", "reused_files", "scores_file",
           "training_config"]

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
    """The run's :class:`simia.training.TrainingConfig` from the DAG's Params."""
    from simia.training import TrainingConfig

    return TrainingConfig(
        model=p["base_model"], template=p["template"], finetuning_type=p["finetuning_type"],
        num_train_epochs=p["epochs"], max_steps=p["max_steps"],
        learning_rate=p["learning_rate"], per_device_train_batch_size=p["batch_size"],
        gradient_accumulation_steps=p["grad_accum"], cutoff_len=p["cutoff_len"],
        neat_packing=p["neat_packing"], flash_attn=p["flash_attn"], bf16=p["bf16"],
        deepspeed=p["deepspeed"], preprocessing_num_workers=p["preprocessing_workers"],
        seed=p["seed"], extra=p["train_extra"])


def eval_settings(p: dict[str, Any]):
    """The run's :class:`simia.evaluation.EvalSettings` from the DAG's Params."""
    from simia.evaluation import EvalSettings

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
        from simia.datasets import DatasetDesign

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
    from simia.gpus import check_request, parse_gpu_ids

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
