"""
### World-model sycophancy experiment

Does training an agent on LLM-simulated tool-use data, whose simulated tool responses
are sometimes *sycophantic* (they forgive invalid agent actions), make the agent worse?

This DAG builds the training data of the experiment, from telecom seed conversations to
LLaMA-Factory-ready SFT datasets at controlled sycophancy levels, and trains one model
per level:

1. **generate_seeds** (skipped when a seed file or a raw-conversations file is given):
   seed conversations from the tau2 telecom policy, workflow and DB examples over a
   scenario x persona x outcome x complexity taxonomy (`seeds/seeds.json`).
2. **generate_conversations** (one mapped task per shard; skipped when a raw file is
   given): an LLM simulates the environment in the chosen simulator mode until the target
   count of parseable conversations is reached; every finished item is checkpointed, so
   a retried shard only calls the LLM for what is left. **merge_generation** writes
   `generate/raw_conversations.json` and `generate/generation_failures.jsonl`.
3. **process_conversations**: split embedded turns, repair arguments, validate every tool
   call against the tau2 telecom schemas, remove think tags, install tau2's system prompt,
   fix turn order. Every drop is in `processed/rejects.jsonl` with its step and reason.
4. **judge_conversations** (mapped shards, with `label_source = judge`): the LLM judge
   scores each processed conversation; **score_sycophancy** merges them into
   `judge/judge_scores.jsonl`, or computes rule scores (`rules`), or validates an
   existing judge file (`judge_file`).
5. **build_sft_datasets**: one dataset per level with a shared clean core and a fixed
   seed, `dataset_info.json`, and `metadata.json` with the chosen conversation indices
   and content hashes per level.
6. **plan_training** writes each level's LLaMA-Factory YAML (identical hyperparameters;
   only the dataset and output folder differ); **train_model** (one mapped
   `DockerOperator` per level) runs `llamafactory-cli train` in the trainer image on
   leased GPUs (or the CPU image), streams its log here and returns final loss, steps,
   runtime and the model path. A level already trained with the same config is skipped.
7. Per level, right after its training (the `level` task group, one mapped instance per
   level): **serve_model** (setup) starts an OpenAI-compatible server (vLLM on GPUs, or
   the same chat template and tool parser with transformers on the CPU) on a Docker
   network of its own and waits for its health check; **evaluate_tau2** runs tau2-bench
   telecom (or, where tau2 cannot be installed, our small CI evaluator) against it and
   writes `eval/<level>/results.json`;
   **stop_model_server** (teardown) always removes the server and its network, also when
   the evaluation fails or is cleared.
8. **report_results**: `report/report.md` and `report/report.html` with plots: pass^k by
   level with bootstrap confidence intervals, the paired comparison with 0 %, a trend test,
   the smallest detectable effect, the data funnel, tokens and cost, training losses. It
   runs even when a level failed (the report says what is missing) and then fails the run.

Every run writes under `<data_root>/simia_sycophancy_experiment/<run_id>/`; each stage
writes atomically and, when retried or cleared, skips work already done. LLM usage
(calls, tokens, estimated cost) is in each stage's `summary.json` and in the task logs,
one line per call.

**Needs**: a tau2 data directory with the telecom policy (`TAU2_DATA_DIR` or the
`tau2_data_dir` Param); for the LLM stages an AWS connection (`aws_conn_id`, default
`aws_default`: credentials, `region_name` and optionally `endpoint_url` in its extras)
with Bedrock access, or an OpenAI-compatible server (`llm_backend = openai`); for
training a Docker engine with the trainer image (`docker/trainer/`), the NVIDIA runtime
for GPUs (`SIMIA_GPU_IDS`), and optionally a `huggingface_default` connection whose
password is a Hugging Face token; for tau2's user simulator an `openai_default`
connection whose password is the OpenAI key (or another litellm model in `user_llm`).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, TriggerRule, dag, get_current_context, task, task_group
from simia_airflow.callbacks import record_failure
from simia_airflow.evaluation import EvaluateTau2Operator
from simia_airflow.serving import ServeModelOperator, StopModelServerOperator
from simia_airflow.training import TrainModelOperator

DAG_ID = "simia_sycophancy_experiment"
# cron ("0 3 * * 1") or preset ("@weekly"); empty, "none" or "manual": triggered by hand
_SCHEDULE = os.environ.get("SIMIA_SCHEDULE", "").strip()
SCHEDULE = None if _SCHEDULE.lower() in ("", "none", "manual") else _SCHEDULE
DEFAULT_DATA_ROOT = os.environ.get("SIMIA_DATA_ROOT", "/opt/simia/data")
DEFAULT_TAU2_DATA_DIR = os.environ.get("TAU2_DATA_DIR", "")
# GPUs of this host that the pipeline may use ("0,1,2,3"; empty: train on the CPU)
GPU_IDS = os.environ.get("SIMIA_GPU_IDS", "")
N_GPUS = len([g for g in GPU_IDS.split(",") if g.strip()])
# at most one training per GPU can ever run; GPU leases enforce the exact split
TRAINING_SLOTS = max(1, N_GPUS)
DEFAULT_TRAINER_IMAGE = os.environ.get("SIMIA_TRAINER_IMAGE",
                                       "simia/trainer:cuda" if N_GPUS else "simia/trainer:cpu")

# production: vLLM + tau2-bench; without GPUs: simia.containers.chat_server (CPU evaluator image)
DEFAULT_SERVE_BACKEND = "vllm" if N_GPUS else "transformers"
DEFAULT_SERVER_IMAGE = os.environ.get(
    "SIMIA_SERVER_IMAGE", "vllm/vllm-openai:v0.10.1.1" if N_GPUS else "simia/evaluator:cpu")
DEFAULT_EVALUATOR = os.environ.get("SIMIA_EVALUATOR", "tau2")
DEFAULT_EVALUATOR_IMAGE = os.environ.get(
    "SIMIA_EVALUATOR_IMAGE",
    "simia/evaluator:tau2" if DEFAULT_EVALUATOR == "tau2" else "simia/evaluator:cpu")

RAW = Asset(name="simia_raw_conversations", uri="simia://experiment/raw_conversations")
PROCESSED = Asset(name="simia_processed_conversations", uri="simia://experiment/processed")
SCORES = Asset(name="simia_sycophancy_scores", uri="simia://experiment/scores")
DATASETS = Asset(name="simia_sft_datasets", uri="simia://experiment/sft_datasets")
MODELS = Asset(name="simia_trained_models", uri="simia://experiment/models")
EVALUATIONS = Asset(name="simia_tau2_results", uri="simia://experiment/tau2_results")
REPORT = Asset(name="simia_report", uri="simia://experiment/report")

# mapped tasks do not take their doc from the docstring
GENERATE_DOC = ("Generate this shard's share of the target conversations. Every finished item "
                "is checkpointed (generate/generate-shard-K-of-N.jsonl), so a retry only calls "
                "the LLM for what is left.")
TRAIN_DOC = ("Fine-tune one model on this level's dataset with `llamafactory-cli train` in the "
             "trainer container (identical hyperparameters across levels; only the dataset "
             "and output folder differ). Writes train/<level>/train_config.yaml, output/ "
             "(LLaMA-Factory's files) and training_summary.json. A level already trained "
             "with the same config is skipped; leftovers of an earlier try are removed first. "
             "GPUs are leased by id, so concurrent trainings never share one. Needs a Docker "
             "engine; the HF token (if any) comes from the `huggingface_default` connection.")
SERVE_DOC = ("Start this level's model server (setup): vLLM on leased GPUs, or a "
             "vLLM-compatible transformers server on the CPU, on a Docker network of its "
             "own; no port is published. Waits for the container's health check "
             "(GET /v1/models) and fails fast with the server's last log lines if it exits "
             "or times out, removing what it started.")
EVAL_DOC = ("Run tau2-bench telecom (`tau2 run`, or the CI evaluator where tau2 cannot be "
            "installed) against this level's server; writes eval/<level>/results.json and "
            "eval_summary.json. A finished evaluation is not repeated; an interrupted one "
            "continues (--auto-resume). The user simulator's key comes from the "
            "`openai_default` connection.")
STOP_DOC = ("Remove this level's server, any evaluator container left on its network, the "
            "network and its GPU claims (teardown: runs also when the evaluation failed).")
JUDGE_DOC = ("The LLM judge on this shard's processed conversations, checkpointed per "
             "conversation (judge/judge-shard-K-of-N.jsonl); unparseable replies are kept as "
             "failures with their raw text.")


def _generation_settings(p: dict):
    from simia.llm.generation import GenerationSettings

    return GenerationSettings(target=p["target_conversations"],
                              max_attempts=p["max_attempts"] or None,
                              mode=p["simulator_mode"], seed=p["seed"],
                              show_tool_schemas=p["show_tool_schemas"])


def _reused(params: dict, rel: str) -> str | None:
    """``source_run/rel`` when this run starts after the stage that wrote it."""
    if params.get("start_from", "beginning") == "beginning":
        return None
    return str(Path(params["source_run"]) / rel)


def _starts_after(params: dict, stage: str) -> bool:
    """True when ``start_from`` skips ``stage`` (generate, process, score, build)."""
    order = {"beginning": 0, "processed": 2, "scores": 3, "datasets": 4}
    return order[params.get("start_from", "beginning")] >= {
        "generate": 1, "process": 2, "score": 3, "build": 4}[stage]


def _run_dir() -> str:
    """``<data_root>/<dag_id>/<run_id>`` with the run id made filesystem-safe."""
    from simia.layout import DataRoot

    ctx = get_current_context()
    return str(DataRoot(ctx["params"]["data_root"]).run(DAG_ID, ctx["run_id"]).root)


@dag(
    dag_id=DAG_ID,
    description="Raw LLM-simulated telecom conversations -> SFT datasets at controlled "
                "sycophancy levels",
    doc_md=__doc__,
    schedule=SCHEDULE,
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
        "on_failure_callback": record_failure,
    },
    params={
        "start_from": Param(
            "beginning", type="string", enum=["beginning", "processed", "scores", "datasets"],
            title="Start from an earlier run's artifacts",
            description="beginning: generate (or read the raw file below). processed / scores "
                        "/ datasets: reuse that stage's outputs (and those before it) from "
                        "the source run folder below; the stages before it do no work. The "
                        "earlier run is only read, never written.", section="Data"),
        "source_run": Param(
            None, type=["null", "string"], title="Source run folder",
            description="With start_from: <data_root>/simia_sycophancy_experiment/<run_id> of "
                        "an earlier run.", section="Data"),
        "raw_conversations": Param(
            None, type=["null", "string"], title="Raw conversations file (skips generation)",
            description="Path (as the workers see it) to an existing JSON list of generated "
                        "conversations, e.g. the reference run's tau2_telecom_base_3000.json. "
                        "Empty: generate them with the LLM.", section="Generation"),
        "seeds_file": Param(
            None, type=["null", "string"], title="Seed file (skips seed generation)",
            description="JSON list of seed conversations in the raw record shape. Empty: "
                        "generate seeds from the tau2 policy.", section="Generation"),
        "n_seeds": Param(50, type="integer", minimum=1, title="Seeds to generate",
                         description="Used when no seed file is given.", section="Generation"),
        "simulator_mode": Param(
            "base", type="string", enum=["base", "strict", "sycophantic"],
            title="Simulator mode", description="base: no extra instructions; strict: the "
            "simulated backend never repairs invalid calls; sycophantic: it may forgive them.",
            section="Generation"),
        "target_conversations": Param(
            100, type="integer", minimum=1, title="Target conversations",
            description="Parseable conversations to generate (all shards together).",
            section="Generation"),
        "max_attempts": Param(
            0, type="integer", minimum=0, title="Attempt bound",
            description="At most this many conversations are tried. 0: 3 x target + 10.",
            section="Generation"),
        "show_tool_schemas": Param(
            False, type="boolean", title="Show tool parameter schemas",
            description="Put full parameter schemas in the generation prompt (fewer "
                        "conversations fail validation; longer prompts). Off = the "
                        "reference's behaviour.", section="Generation"),
        "shards": Param(4, type="integer", minimum=1, maximum=64, title="Shards",
                        description="Generation and judging run as this many mapped tasks; "
                                    "a failed shard is retried alone.", section="Generation"),
        "llm_backend": Param(
            "bedrock", type="string", enum=["bedrock", "openai"], title="LLM backend",
            description="bedrock: Converse API through the AWS connection. openai: an "
                        "OpenAI-compatible server (e.g. a local vLLM).", section="LLM"),
        "aws_conn_id": Param("aws_default", type="string", minLength=1,
                             title="AWS connection",
                             description="Connection with Bedrock access (region and "
                                         "endpoint_url in its extras).", section="LLM"),
        "model_id": Param(None, type=["null", "string"], title="Model",
                          description="Empty: us.anthropic.claude-sonnet-4-20250514-v1:0. "
                                      "For openai: the served model's name.", section="LLM"),
        "openai_base_url": Param(None, type=["null", "string"], title="OpenAI-compatible base URL",
                                 description="e.g. http://127.0.0.1:8000/v1", section="LLM"),
        "llm_concurrency": Param(
            8, type="integer", minimum=1, maximum=256, title="Calls in flight per shard",
            description="Concurrent LLM calls of one shard task (shards x this = the run's "
                        "total); throttling is retried with backoff.", section="LLM"),
        "llm_timeout_s": Param(
            300, type="number", minimum=1, title="Seconds per call",
            description="A call that takes longer is retried (long generations need "
                        "minutes).", section="LLM"),
        "data_root": Param(
            DEFAULT_DATA_ROOT, type="string", minLength=1, title="Data root",
            description="Every run writes under <data_root>/simia_sycophancy_experiment/"
                        "<run_id>/.", section="Data"),
        "tau2_data_dir": Param(
            DEFAULT_TAU2_DATA_DIR or None, type=["null", "string"], title="tau2 data directory",
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
            "rules", type="string", enum=["rules", "judge", "judge_file"],
            title="Label source",
            description="rules: the rule-based scorer. judge: the LLM judge (mapped shards). "
                        "judge_file: an existing LLM-judge score file.", section="Judging"),
        "judge_scores": Param(
            None, type=["null", "string"], title="Judge score file",
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
        "train_models": Param(True, type="boolean", title="Train models",
                              description="Off: stop after the datasets.", section="Training"),
        "base_model": Param(
            "Qwen/Qwen2.5-7B-Instruct", type="string", minLength=1, title="Base model",
            description="Hub id, or a local folder the workers and Docker can see.",
            section="Training"),
        "template": Param("qwen", type="string", minLength=1, title="Chat template",
                          description="LLaMA-Factory template (qwen renders what vLLM "
                                      "serves).", section="Training"),
        "finetuning_type": Param("full", type="string", enum=["full", "lora"],
                                 title="Fine-tuning", description="full (the reference) or "
                                 "lora (rank 8, all linear layers).", section="Training"),
        "epochs": Param(2.0, type="number", exclusiveMinimum=0, title="Epochs",
                        description="Passes over each level's dataset.", section="Training"),
        "max_steps": Param(0, type="integer", minimum=0, title="Max steps",
                           description="0: by epochs. A cap for smoke runs.",
                           section="Training"),
        "learning_rate": Param(5e-6, type="number", exclusiveMinimum=0,
                               title="Learning rate", description="Peak, cosine schedule.",
                               section="Training"),
        "batch_size": Param(1, type="integer", minimum=1, title="Batch size per device",
                            description="Packed sequences per GPU and step.",
                            section="Training"),
        "grad_accum": Param(2, type="integer", minimum=1, title="Gradient accumulation",
                            description="Steps accumulated per optimizer update.",
                            section="Training"),
        "cutoff_len": Param(12000, type="integer", minimum=16, title="Cutoff length",
                            description="Tokens per packed sequence.", section="Training"),
        "neat_packing": Param(True, type="boolean", title="Neat packing",
                              description="Pack conversations without cross-attention "
                                          "between them.", section="Training"),
        "flash_attn": Param("fa2", type="string", enum=["fa2", "sdpa", "auto", "disabled"],
                            title="Attention kernel", description="fa2 falls back to SDPA "
                            "where flash-attn is absent.", section="Training"),
        "bf16": Param(True, type="boolean", title="bf16",
                      description="Off on CPUs (or set use_cpu in extra keys).",
                      section="Training"),
        "deepspeed": Param("zero3", type="string",
                           enum=["none", "zero2", "zero3", "zero3_offload"], title="DeepSpeed",
                           description="zero3_offload: ZeRO-3 with CPU offload (8x40 GB); "
                                       "zero2 for 80 GB GPUs.", section="Training"),
        "preprocessing_workers": Param(32, type="integer", minimum=1,
                                       title="Preprocessing workers",
                                       description="Tokenization processes.",
                                       section="Training"),
        "train_extra": Param({}, type="object", title="Extra LLaMA-Factory keys",
                             description='e.g. {"warmup_ratio": 0.1}. May not redefine the '
                                         "settings above.", section="Training"),
        "trainer_image": Param(DEFAULT_TRAINER_IMAGE, type="string", minLength=1,
                               title="Trainer image",
                               description="simia/trainer:cuda (docker/trainer/Dockerfile) or "
                                           "simia/trainer:cpu for machines without a GPU.",
                               section="Training"),
        "gpu_ids": Param(GPU_IDS or None, type=["null", "string"], title="GPU ids",
                         description="GPUs the trainings may use, e.g. 0,1,2,3 (default: "
                                     "SIMIA_GPU_IDS). Empty: CPU.", section="Training"),
        "gpus_per_training": Param(
            N_GPUS, type="integer", minimum=0, title="GPUs per training",
            description="Each level trains on this many leased GPUs; with 8 GPUs and 2 per "
                        "training, 4 levels train at once. 0: CPU.", section="Training"),
        "model_cache_dir": Param(
            os.environ.get("SIMIA_HF_CACHE") or None, type=["null", "string"],
            title="Model cache (HF_HOME)",
            description="Host folder for hub downloads, mounted at the same path. Empty: "
                        "$SIMIA_HF_CACHE, else <data_root>/hf-cache.", section="Training"),
        "hub_offline": Param(False, type="boolean", title="Hub offline",
                             description="HF_HUB_OFFLINE=1: only the cache or local paths.",
                             section="Training"),
        "shm_size_gb": Param(16, type="number", exclusiveMinimum=0, title="Shared memory (GB)",
                             description="/dev/shm of the trainer container.",
                             section="Training"),

        "evaluate_models": Param(True, type="boolean", title="Serve and evaluate",
                                 description="Off: stop after training.", section="Serving"),
        "serve_backend": Param(
            DEFAULT_SERVE_BACKEND, type="string",
            enum=["vllm", "transformers", "llamafactory-api"], title="Server backend",
            description="vllm (GPUs; the production server); transformers (CPU, machines "
                        "without a GPU: the chat template + hermes tool parser as vLLM, in "
                        "simia/evaluator:cpu); llamafactory-api (llamafactory-cli api: rejects "
                        "tau2's greeting-first conversations).", section="Serving"),
        "server_image": Param(DEFAULT_SERVER_IMAGE, type="string", minLength=1,
                              title="Server image",
                              description="vllm/vllm-openai (pinned) for vllm; "
                                          "simia/evaluator:cpu for transformers; the trainer "
                                          "image for llamafactory-api.", section="Serving"),
        "max_model_len": Param(32768, type="integer", minimum=256, title="Max model length",
                               description="Tokens per request; tau2's system prompt and 13 "
                                           "tools take about 8k.", section="Serving"),
        "gpu_memory_utilization": Param(0.9, type="number", exclusiveMinimum=0, maximum=1,
                                        title="GPU memory fraction",
                                        description="vLLM's --gpu-memory-utilization.",
                                        section="Serving"),
        "gpus_per_server": Param(1, type="integer", minimum=0, title="GPUs per server",
                                 description="Leased like training GPUs (tensor parallel). "
                                             "0 with llamafactory-api.", section="Serving"),
        "server_startup_timeout_s": Param(
            1200, type="number", minimum=10, title="Server start timeout (s)",
            description="serve_model fails (with the server's log) if the server is not "
                        "healthy by then.", section="Serving"),
        "server_extra_args": Param([], type="array", items={"type": "string"},
                                   title="Extra server arguments",
                                   description='e.g. ["--enforce-eager"].', section="Serving"),
        "evaluator": Param(DEFAULT_EVALUATOR, type="string", enum=["tau2", "simia-ci"],
                           title="Evaluator",
                           description="tau2: tau2-bench v1.0.1 (docker/evaluator). simia-ci: "
                                       "our small tau2-format evaluator for machines where tau2 "
                                       "cannot be installed (not comparable with tau2 scores).",
                           section="Evaluation"),
        "evaluator_image": Param(DEFAULT_EVALUATOR_IMAGE, type="string", minLength=1,
                                 title="Evaluator image", description="simia/evaluator:tau2 "
                                 "or simia/evaluator:cpu.", section="Evaluation"),
        "eval_domain": Param("telecom", type="string", enum=["telecom"], title="tau2 domain",
                             description="The domain the data simulates.",
                             section="Evaluation"),
        "task_split": Param("base", type="string", enum=["base", "train", "test", "small"],
                            title="Task split", description="tau2 telecom: base 114 tasks, "
                            "train 74, test 40, small 20.", section="Evaluation"),
        "num_tasks": Param(0, type="integer", minimum=0, title="Tasks",
                           description="0: every task of the split.", section="Evaluation"),
        "num_trials": Param(4, type="integer", minimum=1, maximum=32, title="Trials",
                            description="Trials per task (pass^k up to k = trials).",
                            section="Evaluation"),
        "user_llm": Param("gpt-4.1-2025-04-14", type="string", minLength=1,
                          title="User simulator model", description="litellm model name.",
                          section="Evaluation"),
        "user_llm_args": Param({}, type="object", title="User simulator arguments",
                               description='e.g. {"api_base": "http://host:8001/v1"}; '
                                           "temperature is set below. No keys here.",
                               section="Evaluation"),
        "user_llm_conn_id": Param("openai_default", type="string", title="User simulator "
                                  "connection", description="Its password is passed as "
                                  "OPENAI_API_KEY (never logged).", section="Evaluation"),
        "agent_temperature": Param(0.0, type="number", minimum=0, maximum=2,
                                   title="Agent temperature", section="Evaluation",
                                   description="Always passed explicitly."),
        "user_temperature": Param(0.0, type="number", minimum=0, maximum=2,
                                  title="User temperature", section="Evaluation",
                                  description="Always passed explicitly."),
        "agent_llm_args": Param({}, type="object", title="Agent request arguments",
                                description='e.g. {"max_tokens": 1024}.', section="Evaluation"),
        "eval_max_concurrency": Param(8, type="integer", minimum=1, maximum=128,
                                      title="Concurrent simulations", section="Evaluation",
                                      description="tau2's --max-concurrency."),
        "eval_max_steps": Param(200, type="integer", minimum=1, title="Max steps",
                                description="Per simulation.", section="Evaluation"),
        "eval_seed": Param(300, type="integer", title="Evaluation seed",
                           description="tau2's --seed.", section="Evaluation"),
        "eval_data_dir": Param(None, type=["null", "string"], title="tau2 data for the evaluator",
                               description="Empty: the data inside the evaluator image.",
                               section="Evaluation"),
        "eval_timeout_h": Param(12, type="number", exclusiveMinimum=0,
                                title="Evaluation timeout (h)", section="Evaluation",
                                description="Per level."),
    },
)
def simia_sycophancy_experiment():
    @task(retries=0)
    def validate_params() -> dict:
        """Check the run's Params together (what one Param's schema cannot) and record the
        run in run.json; every problem is listed, each naming its Param."""
        from simia import __version__
        from simia.io import write_json
        from simia.run_config import check_run_params

        ctx = get_current_context()
        p = ctx["params"]
        problems = check_run_params(p)
        if problems:
            raise ValueError("this run's settings cannot work; fix these Params and trigger "
                             "again:\n- " + "\n- ".join(problems))
        run = Path(_run_dir())
        manifest = {"dag_id": DAG_ID, "run_id": ctx["run_id"],
                    "run_type": str(getattr(ctx["dag_run"], "run_type", "")),
                    "logical_date": str(ctx.get("logical_date") or ""),
                    "simia_version": __version__, "start_from": p["start_from"],
                    "source_run": p["source_run"], "params": dict(p)}
        if not (run / "run.json").exists():
            write_json(run / "run.json", manifest, indent=True)
        return {"run_dir": str(run), "start_from": p["start_from"]}

    @task(execution_timeout=timedelta(hours=6))
    def generate_seeds(valid: dict) -> str:
        """Seed conversations from the tau2 policy (skipped with a seed or raw file)."""
        from airflow.sdk.exceptions import AirflowSkipException
        from simia.llm.generation import SeedSettings, generate_seeds_stage
        from simia_airflow.llm import llm_client

        p = get_current_context()["params"]
        if _starts_after(p, "generate"):
            raise AirflowSkipException(f"start_from = {p['start_from']}: reusing {p['source_run']}")
        if p["raw_conversations"] or p["seeds_file"]:
            raise AirflowSkipException("a seed file or a raw-conversations file was given")
        out = f"{_run_dir()}/seeds"
        generate_seeds_stage(out, SeedSettings(n_seeds=p["n_seeds"], seed=p["seed"]),
                             llm_client(p), tau2_data_dir=p["tau2_data_dir"] or None)
        return f"{out}/seeds.json"

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def plan_generation(generated_seeds: str | None) -> list[dict]:
        """One entry per generation shard (none when a raw file is given)."""
        from simia.llm.generation import load_seeds

        p = get_current_context()["params"]
        if p["raw_conversations"] or _starts_after(p, "generate"):
            return []
        seeds = p["seeds_file"] or generated_seeds
        load_seeds(seeds)  # a bad seed file fails here, once, with file/record/field
        return [{"shard": k, "seeds": seeds} for k in range(p["shards"])]

    @task(max_active_tis_per_dagrun=16, doc_md=GENERATE_DOC,
          execution_timeout=timedelta(hours=12))
    def generate_conversations(plan: dict) -> dict:
        from simia.llm.generation import generate_shard
        from simia_airflow.llm import llm_client

        p = get_current_context()["params"]
        s = generate_shard(plan["seeds"], f"{_run_dir()}/generate", _generation_settings(p),
                           llm_client(p), shard=plan["shard"], shards=p["shards"])
        return {k: s[k] for k in ("shard", "target", "valid", "failed", "failed_by_error")}

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[RAW])
    def merge_generation(shards: list | None) -> str:
        """All shards -> generate/raw_conversations.json (or the given raw file)."""
        from simia.llm.generation import merge_generation as merge

        ctx = get_current_context()
        p = ctx["params"]
        if _starts_after(p, "generate"):
            path = _reused(p, "generate/raw_conversations.json")
            print(f"start_from = {p['start_from']}: not generating; the earlier run is "
                  f"{p['source_run']}")
        elif p["raw_conversations"]:
            path = p["raw_conversations"]
        else:
            summary = merge(f"{_run_dir()}/generate", _generation_settings(p),
                            shards=p["shards"])
            path = summary["outputs"]["raw_conversations"]
        ctx["outlet_events"][RAW].extra = {"path": path}
        return path

    @task(outlets=[PROCESSED])
    def process_conversations(raw: str) -> dict:
        """Validate and convert the raw conversations; every drop is recorded with its
        step and reason in processed/rejects.jsonl."""
        from simia.data.stages import process_stage

        ctx = get_current_context()
        p = ctx["params"]
        if _starts_after(p, "process"):
            from simia.io import read_json

            out = _reused(p, "processed")
            print(f"start_from = {p['start_from']}: reusing {out}/processed.json (not "
                  "processing again)")
            summary = read_json(f"{out}/summary.json", what="processing summary")
            ctx["outlet_events"][PROCESSED].extra = {"path": f"{out}/processed.json",
                                                     "reused": True}
            return {"processed": f"{out}/processed.json",
                    "raw": summary.get("input_file") or raw,
                    "kept": summary.get("kept"), "input": summary.get("input"),
                    "rejected_by_reason": summary.get("rejected_by_reason", {})}
        out = f"{_run_dir()}/processed"
        summary = process_stage(
            raw, out, fmt=p["output_format"], tau2_data_dir=p["tau2_data_dir"] or None,
            skip_invalid_records=p["skip_invalid_records"])
        ctx["outlet_events"][PROCESSED].extra = {"path": f"{out}/processed.json"}
        return {"processed": f"{out}/processed.json", "raw": raw, "kept": summary["kept"],
                "input": summary["input"], "rejected_by_reason": summary["rejected_by_reason"]}

    @task
    def plan_judging(processed: dict) -> list[int]:
        """Shard numbers for the LLM judge (none unless label_source = judge)."""
        p = get_current_context()["params"]
        if _starts_after(p, "score"):
            return []
        return list(range(p["shards"])) if p["label_source"] == "judge" else []

    @task(max_active_tis_per_dagrun=16, doc_md=JUDGE_DOC,
          execution_timeout=timedelta(hours=12))
    def judge_conversations(shard: int, processed: dict) -> dict:
        from simia.llm.judge import JudgeSettings, judge_shard
        from simia_airflow.llm import llm_client

        p = get_current_context()["params"]
        s = judge_shard(processed["processed"], f"{_run_dir()}/judge", JudgeSettings(),
                        llm_client(p), shard=shard, shards=p["shards"])
        return {k: s[k] for k in ("shard", "judged", "scored", "failed")}

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[SCORES])
    def score_sycophancy(processed: dict, judged: list | None) -> dict:
        """Judge shards merged, rule scores of what is trained on, or a validated judge
        score file."""
        from simia.llm.judge import merge_judge
        from simia.data.stages import score_rules_stage, validate_scores_file

        ctx = get_current_context()
        p = ctx["params"]
        if _starts_after(p, "score") and p["label_source"] != "judge_file":
            from simia.run_config import scores_file

            path = _reused(p, scores_file(p["label_source"]))
            print(f"start_from = {p['start_from']}: reusing the scores {path}")
            ctx["outlet_events"][SCORES].extra = {"path": path, "source": p["label_source"],
                                                  "reused": True}
            return {"scores": path, "source": p["label_source"]}
        if p["label_source"] == "judge_file":
            path = p["judge_scores"]
            summary = validate_scores_file(path)
            counts = {"conversations": summary["conversations"], "flagged": summary["flagged"]}
        elif p["label_source"] == "judge":
            summary = merge_judge(f"{_run_dir()}/judge", shards=p["shards"],
                                  threshold=p["label_threshold"])
            path = summary["outputs"]["scores"]
            counts = {k: summary[k] for k in ("conversations", "scored", "failed",
                                              "sycophantic")}
        else:
            path = f"{_run_dir()}/scores/rule_scores.jsonl"
            source = (processed["processed"] if p["output_format"] == "native"
                      else processed["raw"])
            summary = score_rules_stage(source, path)
            counts = {"conversations": summary["conversations"], "flagged": summary["flagged"]}
        ctx["outlet_events"][SCORES].extra = {"path": path, "source": p["label_source"]}
        return {"scores": path, "source": p["label_source"], **counts}

    @task(outlets=[DATASETS])
    def build_sft_datasets(processed: dict, scores: dict) -> dict:
        """One LLaMA-Factory dataset per sycophancy level + dataset_info.json + metadata."""
        from simia.data.datasets import DatasetDesign
        from simia.run_config import datasets_dir
        from simia.data.stages import build_datasets_stage

        ctx = get_current_context()
        p = ctx["params"]
        out = str(datasets_dir(p, _run_dir()))  # the source run's with start_from=datasets
        if _starts_after(p, "build"):
            from simia.io import read_json

            meta = read_json(f"{out}/metadata.json", what="dataset metadata")
            print(f"start_from = datasets: training on the datasets of {out}")
            ctx["outlet_events"][DATASETS].extra = {"path": out, "reused": True}
            return {"dataset_dir": out, "datasets": meta.get("datasets", {})}
        design = DatasetDesign(levels=tuple(p["levels"]), size=p["dataset_size"],
                               shared_clean=p["shared_clean"], seed=p["seed"],
                               threshold=p["label_threshold"])
        summary = build_datasets_stage(processed["processed"], scores["scores"], out, design)
        ctx["outlet_events"][DATASETS].extra = {"path": out}
        return {"dataset_dir": out, "datasets": summary["datasets"]}

    shards = generate_conversations.expand(plan=plan_generation(generate_seeds(
        validate_params())))
    processed = process_conversations(merge_generation(shards))
    judged = judge_conversations.partial(processed=processed).expand(
        shard=plan_judging(processed))
    @task
    def plan_levels(built: dict) -> list[dict]:
        """Per level: the LLaMA-Factory YAML (train/<level>/train_config.yaml) and the
        trainer container, then the server and evaluator settings; none when
        train_models is off. Bad training, GPU, serving or evaluation Params fail here,
        once, before any container starts."""
        from simia.run_config import level_plans

        ctx = get_current_context()
        return level_plans(ctx["params"], run_dir=_run_dir(), run_id=ctx["run_id"],
                           dag_id=DAG_ID, dataset_dir=built["dataset_dir"])

    @task_group(group_id="level")
    def level(plan):
        """One level: train, then serve and evaluate (server torn down on every path)."""
        trained = TrainModelOperator(
            task_id="train_model", level=plan, doc_md=TRAIN_DOC, outlets=[MODELS],
            max_active_tis_per_dag=TRAINING_SLOTS, retries=1,
            execution_timeout=timedelta(hours=48))
        served = ServeModelOperator(task_id="serve_model", level=plan, doc_md=SERVE_DOC,
                                    retries=1, execution_timeout=timedelta(hours=8))
        evaluated = EvaluateTau2Operator(
            task_id="evaluate_tau2", level=plan, server=served.output, doc_md=EVAL_DOC,
            outlets=[EVALUATIONS], retries=1, execution_timeout=timedelta(hours=48))
        stopped = StopModelServerOperator(task_id="stop_model_server", level=plan,
                                          doc_md=STOP_DOC, retries=3)
        trained >> served >> evaluated >> stopped
        stopped.as_teardown(setups=served)

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[REPORT], retries=1)
    def report_results() -> dict:
        """report/report.md + report.html with plots; fails the run (after writing the
        report) when a level that should have been trained or evaluated was not."""
        from simia.evaluation.evaluator import missing_evaluations, missing_trainings
        from simia.report import write_report

        ctx = get_current_context()
        p = ctx["params"]
        run = _run_dir()
        if ctx["ti"].xcom_pull(task_ids="validate_params") is None:
            raise RuntimeError("no report: validate_params rejected this run's settings (its "
                               "log lists each problem); fix the Params and trigger again")
        written = write_report(run)
        ctx["outlet_events"][REPORT].extra = {"path": written["report_dir"]}
        problems = []
        if ctx["ti"].xcom_pull(task_ids="build_sft_datasets") is None:
            problems.append("the datasets were not built (see the failed data stage)")
        if p["train_models"]:
            untrained = missing_trainings(run, p["levels"])
            if untrained:
                problems.append(f"level(s) {', '.join(f'{m:g} %' for m in untrained)} were "
                                "not trained (see train_model)")
            if p["evaluate_models"]:
                missing = [m for m in missing_evaluations(run, p["levels"], p["num_trials"])
                           if m not in untrained]
                if missing:
                    problems.append(
                        f"level(s) {', '.join(f'{m:g} %' for m in missing)} have no "
                        "complete evaluation results (see serve_model and evaluate_tau2)")
        if problems:
            raise RuntimeError(
                f"the report is written ({written['report_dir']}/report.md), but "
                f"{'; '.join(problems)}. Fix the failed task of that level and clear it; "
                "then clear this task.")
        return written

    built = build_sft_datasets(processed, score_sycophancy(processed, judged))
    level.expand(plan=plan_levels(built)) >> report_results()

simia_sycophancy_experiment()
