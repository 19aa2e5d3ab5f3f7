"""
### World-model sycophancy experiment

Does training an agent on LLM-simulated tool-use data, whose simulated tool responses
are sometimes *sycophantic* (they forgive invalid agent actions), make the agent worse?

This DAG runs the data half of the experiment from a file of raw generated telecom
conversations (the `raw_conversations` Param) to LLaMA-Factory-ready SFT datasets at
controlled sycophancy levels:

1. **process_conversations**: split embedded turns, repair arguments, validate every tool
   call against the tau2 telecom schemas, remove think tags, install tau2's system prompt,
   fix turn order. Writes `processed/processed.json`, `processed/rejects.jsonl` (every
   dropped conversation with its step and reason) and `processed/summary.json`.
2. **score_sycophancy**: rule-based scores (`scores/rule_scores.jsonl`) of the processed
   conversations, i.e. of what will be trained on (of the raw file in `hermes` format,
   whose tool calls are text), or, with `label_source = judge_file`, validates an
   existing LLM-judge score file (e.g. the reference judge's JSONL) and uses it.
3. **build_sft_datasets**: one dataset per level with a shared clean core and a fixed
   seed, `dataset_info.json`, and `metadata.json` with the chosen conversation indices
   and content hashes per level.

Every run writes under `<data_root>/simia_sycophancy_experiment/<run_id>/`; each stage
writes atomically and, when retried or cleared, skips work whose inputs and parameters
have not changed.

**Needs**: read access to the raw conversations file and a tau2 data directory with the
telecom policy (`TAU2_DATA_DIR` or the `tau2_data_dir` Param). No connections.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

DAG_ID = "simia_sycophancy_experiment"
DEFAULT_DATA_ROOT = os.environ.get("SIMIA_DATA_ROOT", "/opt/simia/data")
DEFAULT_TAU2_DATA_DIR = os.environ.get("TAU2_DATA_DIR", "")

PROCESSED = Asset(name="simia_processed_conversations", uri="simia://experiment/processed")
SCORES = Asset(name="simia_sycophancy_scores", uri="simia://experiment/scores")
DATASETS = Asset(name="simia_sft_datasets", uri="simia://experiment/sft_datasets")


def _run_dir() -> str:
    """``<data_root>/<dag_id>/<run_id>`` with the run id made filesystem-safe."""
    from simia.paths import run_dir

    ctx = get_current_context()
    return str(run_dir(ctx["params"]["data_root"], DAG_ID, ctx["run_id"]))


@dag(
    dag_id=DAG_ID,
    description="Raw LLM-simulated telecom conversations -> SFT datasets at controlled "
                "sycophancy levels",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["simia", "sycophancy", "tau2", "telecom"],
    default_args={
        "owner": "simia",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
    },
    params={
        "raw_conversations": Param(
            "", type="string", minLength=1, title="Raw conversations file",
            description="Path (as the workers see it) to the generator's JSON list of "
                        "conversations, e.g. the reference run's tau2_telecom_base_3000.json.",
            section="Data"),
        "data_root": Param(
            DEFAULT_DATA_ROOT, type="string", minLength=1, title="Data root",
            description="Every run writes under <data_root>/simia_sycophancy_experiment/"
                        "<run_id>/.", section="Data"),
        "tau2_data_dir": Param(
            DEFAULT_TAU2_DATA_DIR, type="string", title="tau2 data directory",
            description="Folder with tau2's telecom main_policy.md and "
                        "tech_support_manual.md (tau2's data/ folder works too). Empty: "
                        "TAU2_DATA_DIR of the worker.", section="Data"),
        "output_format": Param(
            "native", type="string", enum=["native", "hermes"], title="Output format",
            description="native: function_call/observation roles + tools column, rendered "
                        "by the qwen template exactly as vLLM serves the model. hermes: the "
                        "reference scripts' format, for comparison.", section="Data"),
        "skip_invalid_records": Param(
            False, type="boolean", title="Skip malformed records",
            description="Reject malformed records (listed in rejects.jsonl) instead of "
                        "failing the task.", section="Data"),
        "label_source": Param(
            "rules", type="string", enum=["rules", "judge_file"], title="Label source",
            description="rules: score the raw conversations with the rule-based scorer. "
                        "judge_file: use an existing LLM-judge score file.",
            section="Judging"),
        "judge_scores": Param(
            "", type="string", title="Judge score file",
            description="With label_source = judge_file: JSONL with conv_idx (position in "
                        "the raw file) and wm_sycophancy_score, as the reference judge wrote.",
            section="Judging"),
        "levels": Param(
            [0, 5, 10, 20], type="array", items={"type": "number", "minimum": 0,
                                                 "maximum": 100},
            minItems=1, title="Sycophancy levels (%)",
            description="One SFT dataset per level.", section="Datasets"),
        "dataset_size": Param(500, type="integer", minimum=1, title="Dataset size",
                              description="Conversations per dataset.", section="Datasets"),
        "shared_clean": Param(
            400, type="integer", minimum=0, title="Shared clean core",
            description="Clean conversations common to every level.", section="Datasets"),
        "seed": Param(42, type="integer", title="Seed", description="Selection seed.",
                      section="Datasets"),
        "label_threshold": Param(
            0, type="number", minimum=0, maximum=100, title="Label threshold",
            description="Score above this = sycophantic; otherwise clean.",
            section="Datasets"),
    },
)
def simia_sycophancy_experiment():
    @task(outlets=[PROCESSED])
    def process_conversations() -> dict:
        """Validate and convert the raw conversations; every drop is recorded with its
        step and reason in processed/rejects.jsonl."""
        from simia.stages import process_stage

        ctx = get_current_context()
        p = ctx["params"]
        out = f"{_run_dir()}/processed"
        summary = process_stage(
            p["raw_conversations"], out, fmt=p["output_format"],
            tau2_data_dir=p["tau2_data_dir"] or None,
            skip_invalid_records=p["skip_invalid_records"])
        ctx["outlet_events"][PROCESSED].extra = {"path": f"{out}/processed.json"}
        return {"processed": f"{out}/processed.json", "kept": summary["kept"],
                "input": summary["input"], "rejected_by_reason": summary["rejected_by_reason"]}

    @task(outlets=[SCORES])
    def score_sycophancy(processed: dict) -> dict:
        """Rule scores of the processed (native) or raw (hermes) conversations, or a
        validated judge score file."""
        from simia.stages import score_rules_stage, validate_scores_file

        ctx = get_current_context()
        p = ctx["params"]
        if p["label_source"] == "judge_file":
            path = p["judge_scores"]
            summary = validate_scores_file(path)
        else:
            path = f"{_run_dir()}/scores/rule_scores.jsonl"
            source = (processed["processed"] if p["output_format"] == "native"
                      else p["raw_conversations"])
            summary = score_rules_stage(source, path)
        ctx["outlet_events"][SCORES].extra = {"path": path, "source": p["label_source"]}
        return {"scores": path, "source": p["label_source"],
                "conversations": summary["conversations"], "flagged": summary["flagged"]}

    @task(outlets=[DATASETS])
    def build_sft_datasets(processed: dict, scores: dict) -> dict:
        """One LLaMA-Factory dataset per sycophancy level + dataset_info.json + metadata."""
        from simia.datasets import DatasetDesign
        from simia.stages import build_datasets_stage

        ctx = get_current_context()
        p = ctx["params"]
        design = DatasetDesign(levels=tuple(p["levels"]), size=p["dataset_size"],
                               shared_clean=p["shared_clean"], seed=p["seed"],
                               threshold=p["label_threshold"])
        out = f"{_run_dir()}/datasets"
        summary = build_datasets_stage(processed["processed"], scores["scores"], out, design)
        ctx["outlet_events"][DATASETS].extra = {"path": out}
        return {"dataset_dir": out, "datasets": summary["datasets"]}

    processed = process_conversations()
    build_sft_datasets(processed, score_sycophancy(processed))


simia_sycophancy_experiment()
