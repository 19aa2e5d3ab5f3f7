"""
### World-model sycophancy experiment

Does training an agent on LLM-simulated tool-use data, whose simulated tool responses
are sometimes *sycophantic* (they forgive invalid agent actions), make the agent worse?

This DAG builds the training data of the experiment, from telecom seed conversations to
LLaMA-Factory-ready SFT datasets at controlled sycophancy levels, trains each level
several times (`replicates`: training runs are the unit of the verdict), evaluates every
model on tau2-bench telecom and reports the answer:

0. **validate_params** checks the Params together, logs the power plan of the declared
   test (the replicates the smallest effect of interest needs) and writes `run.json`.
1. **generate_seeds** (skipped when a seed file or a raw-conversations file is given):
   seed conversations from the tau2 telecom policy, workflow and DB examples over a
   scenario x persona x outcome x complexity taxonomy (`seeds/seeds.json`).

With `collection = design` (the default), steps 2-4 are one loop driven by the design:
**collect_pilot** generates, validates and judges conversation by conversation, records
the yields (kept, clean, sycophantic, each with its reasons) and the projected attempts,
tokens, cost and time to fill the pools (`collect/pilot.json`), and stops at once when
the caps (`collect_max_attempts`, `collect_budget_usd`) cannot fill them;
**collect_conversations** (mapped shards) fills the rest, checkpointed per item;
**merge_collection** writes the files of steps 2-4 and fails, naming what was found,
what is needed and how to continue (`start_from = collect`), when a cap stopped it.
With `sycophancy_source = twins` (the default), **make_twins** then rewrites one tool
observation of clean conversations so that the environment forgives an invalid action;
a twin the judge does not flag is discarded (`twins/rejects.jsonl`), and the levels swap
twins in for their originals. With `collection = fixed`:

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
5. **build_sft_datasets**: per replicate, one dataset per level (a shared clean core,
   nested selections, the replicate's own seed), `dataset_info.json`, and `metadata.json`
   with the chosen conversation indices and content hashes.
6. **plan_levels** writes each training run's LLaMA-Factory YAML (identical
   hyperparameters; only the dataset, output folder and replicate seed differ); per
   training run (the `level` task group, mapped over level x replicate):
   **train_model** runs `llamafactory-cli train` in the trainer image on leased GPUs (or
   the CPU image), streams its log here and returns final loss, steps, runtime and the
   model path (a run already trained with the same config is skipped);
   **serve_model** (setup) starts an OpenAI-compatible server (vLLM on GPUs, or the same
   chat template and tool parser with transformers on the CPU) on a Docker network of its
   own and waits for its health check; **evaluate_tau2** runs tau2-bench telecom (or,
   where tau2 cannot be installed, our small CI evaluator) against it and writes
   `eval/<run>/results.json`, re-running simulations that ended in infrastructure errors
   on retry; **stop_model_server** (teardown) always removes the server and its network.
7. **report_results**: `report/report.md` and `report.html` with plots: the verdict of
   the declared run-aware test (decrease, increase, no_effect, invalid or insufficient)
   with the slope per 10 points of sycophancy and its confidence interval, one point
   per training run, secondary outcomes, the data funnel, tokens and cost, training
   losses. It runs even when a training run failed (the report says what is missing) and
   then fails the run.

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

**Several GPU hosts** (CeleryExecutor): `SIMIA_GPU_HOSTS=gpu-a:0,1,2,3;gpu-b:0,1,2,3`
(the same on every component and worker) makes one `level_<host>` group per host, its
tasks on the Celery queue `simia-<host>`; `validate_params` logs which host trains each
run and `placement.json` records it. The data root is shared by every host
(`.simia-data-root`, checked against `SIMIA_DATA_ROOT_ID`).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, TriggerRule, dag, get_current_context, task, task_group
from simia.settings.fields import gpu_count
from simia.settings.hosts import LEVEL_GROUP, gpu_hosts
from simia.settings import param_specs
from simia_airflow.callbacks import record_failure
from simia_airflow.evaluation import EvaluateTau2Operator
from simia_airflow.serving import ServeModelOperator, StopModelServerOperator
from simia_airflow.training import TrainModelOperator

DAG_ID = "simia_sycophancy_experiment"
# cron ("0 3 * * 1") or preset ("@weekly"); empty, "none" or "manual": triggered by hand
_SCHEDULE = os.environ.get("SIMIA_SCHEDULE", "").strip()
SCHEDULE = None if _SCHEDULE.lower() in ("", "none", "manual") else _SCHEDULE
# at most one training per GPU can ever run; GPU leases enforce the exact split
TRAINING_SLOTS = max(1, gpu_count())
# SIMIA_GPU_HOSTS ("gpu-a:0,1,2,3;gpu-b:0,1,2,3,4,5,6,7"): one level_<host> group per host,
# its tasks on the host's Celery queue simia-<host>; empty: one `level` group, default queue.
# Every Airflow component and worker needs the same value (a worker parses this file).
GPU_HOSTS = gpu_hosts()

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
                "the LLM for what is left and the items whose calls failed. Short of its "
                "target with more than llm_max_failed_share of its items' calls failed, it "
                "fails naming the errors.")
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
COLLECT_DOC = ("This shard's share of what the collection pilot left to find: generate, "
               "validate and judge conversation by conversation until its share of the clean "
               "(and sycophantic) pool is found or its share of a cap is used. Every item is "
               "checkpointed (collect/collect-shard-K-of-N.jsonl), so a retry only calls the "
               "LLM for what is left.")
JUDGE_DOC = ("The LLM judge on this shard's processed conversations, checkpointed per "
             "conversation (judge/judge-shard-K-of-N.jsonl); unparseable replies are kept as "
             "failures with their raw text. It fails when every conversation or more than "
             "llm_max_failed_share of them failed; a retry judges the failures again.")



def _step(name: str, *args, asset: Asset | tuple[Asset, ...] | None = None, llm: bool = False,
          **kwargs):
    """Run ``simia.pipeline.<name>`` for this task: Params and run folder from the
    context, an LLM client factory when the stage calls the LLM, a skip when the stage
    has nothing to do, the Asset event's extra from its result."""
    from airflow.sdk.exceptions import AirflowSkipException
    from simia import pipeline

    from airflow.sdk.exceptions import AirflowFailException

    ctx = get_current_context()
    p = ctx["params"]
    run = pipeline.run_layout(p, DAG_ID, ctx["run_id"])
    if llm:
        from simia_airflow.llm import llm_client

        kwargs["client"] = lambda: llm_client(p)
    try:
        done = getattr(pipeline, name)(p, run, *args, **kwargs)
    except pipeline.Skipped as exc:
        raise AirflowSkipException(str(exc)) from None
    except pipeline.SimiaError as exc:
        if getattr(exc, "retryable", True):
            raise
        raise AirflowFailException(str(exc)) from None  # a retry cannot help (e.g. a cap)
    for outlet in (asset if isinstance(asset, tuple) else (asset,)):
        if outlet is not None:
            ctx["outlet_events"][outlet].extra = done.asset
    return done.value


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
    # every Param is a field of a settings model (simia.settings.RUN_MODELS)
    params={name: Param(**spec) for name, spec in param_specs().items()},
)
def simia_sycophancy_experiment():
    @task(retries=0)
    def validate_params() -> dict:
        """Check the run's Params together (what one Param's schema cannot) and record the
        run in run.json; every problem is listed, each naming its Param. With
        SIMIA_GPU_HOSTS it logs which host trains each run; with SIMIA_DATA_ROOT_ID it
        checks the data root is the shared one."""
        from simia_airflow.llm import llm_connection_problems

        ctx = get_current_context()
        return _step("validate", dag_id=DAG_ID, run_id=ctx["run_id"],
                     run_type=str(getattr(ctx["dag_run"], "run_type", "")),
                     logical_date=str(ctx.get("logical_date") or ""),
                     check_connections=llm_connection_problems, hosts=GPU_HOSTS)

    @task(execution_timeout=timedelta(hours=6))
    def generate_seeds(valid: dict) -> str:
        """Seed conversations from the tau2 policy (skipped with a seed or raw file)."""
        return _step("generate_seeds", llm=True)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def plan_generation(generated_seeds: str | None) -> list[dict]:
        """One entry per generation shard (none when a raw file is given)."""
        return _step("plan_generation", generated_seeds)

    @task(max_active_tis_per_dagrun=16, doc_md=GENERATE_DOC,
          execution_timeout=timedelta(hours=12))
    def generate_conversations(plan: dict) -> dict:
        return _step("generate_shard", plan, llm=True)

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[RAW])
    def merge_generation(shards: list | None) -> str:
        """All shards -> generate/raw_conversations.json (or the given raw file)."""
        return _step("merge_generation", asset=RAW)

    @task(outlets=[PROCESSED])
    def process_conversations(raw: str) -> dict:
        """Validate and convert the raw conversations; every drop is recorded with its
        step and reason in processed/rejects.jsonl."""
        return _step("process", raw, asset=PROCESSED)

    @task
    def plan_judging(processed: dict) -> list[int]:
        """Shard numbers for the LLM judge (none unless label_source = judge)."""
        return _step("plan_judging")

    @task(max_active_tis_per_dagrun=16, doc_md=JUDGE_DOC,
          execution_timeout=timedelta(hours=12))
    def judge_conversations(shard: int, processed: dict) -> dict:
        return _step("judge_shard", shard, processed, llm=True)

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[SCORES])
    def score_sycophancy(processed: dict, judged: list | None) -> dict:
        """Judge shards merged, rule scores of what is trained on, or a validated judge
        score file."""
        return _step("score", processed, asset=SCORES)

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(hours=12))
    def collect_pilot(generated_seeds: str | None) -> list[dict]:
        """The collection's first attempts: yields and the projection to fill the pools
        (collect/pilot.json); stops, without retries, when the caps cannot fill them."""
        return _step("collect_pilot", generated_seeds, llm=True)

    @task(max_active_tis_per_dagrun=16, doc_md=COLLECT_DOC,
          execution_timeout=timedelta(hours=12))
    def collect_conversations(plan: dict) -> dict:
        return _step("collect_shard", plan, llm=True)

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[RAW, PROCESSED, SCORES])
    def merge_collection(shards: list | None) -> dict:
        """Every collected item -> generate/, processed/ and judge/ (as the separate stages
        write them) and collect/summary.json; fails naming the shortfall and how to
        continue when a cap stopped the collection."""
        return _step("merge_collection", asset=(RAW, PROCESSED, SCORES))

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(hours=12))
    def make_twins(processed: dict | None, scores: dict | None, collected: dict | None) -> dict:
        """Counterfactual twins (sycophancy_source = twins): one observation of a clean
        conversation rewritten to forgive an invalid action, kept only when the judge
        flags it (twins/twins.jsonl, twins/rejects.jsonl)."""
        return _step("make_twins", processed, scores, collected, llm=True)

    @task(trigger_rule=TriggerRule.NONE_FAILED, outlets=[DATASETS])
    def build_sft_datasets(processed: dict | None, scores: dict | None,
                           collected: dict | None, twins: dict | None) -> dict:
        """One LLaMA-Factory dataset per level + dataset_info.json + metadata."""
        return _step("build_datasets", processed, scores, collected, twins, asset=DATASETS)

    @task
    def plan_levels(built: dict) -> list[dict] | dict[str, list[dict]]:
        """Per level: the LLaMA-Factory YAML (train/<level>/train_config.yaml) and the
        trainer container, then the server and evaluator settings; none when
        train_models is off. Bad training, GPU, serving or evaluation Params fail here,
        once, before any container starts. With SIMIA_GPU_HOSTS: the plans by host
        (placement.json says which host trains each run)."""
        return _step("plan_levels", built, dag_id=DAG_ID,
                     run_id=get_current_context()["run_id"], hosts=GPU_HOSTS)

    def level_group(group_id: str, slots: int, queue: str | None):
        """The per-level task group ``group_id``: its tasks on ``queue`` (None: the
        default queue), at most ``slots`` trainings at once."""
        on_queue = {"queue": queue} if queue else {}  # a partial argument (not mappable)

        @task_group(group_id=group_id)
        def level(plan):
            """One level: train, then serve and evaluate (server torn down on every path)."""
            trained = TrainModelOperator(
                task_id="train_model", level=plan, doc_md=TRAIN_DOC, outlets=[MODELS],
                max_active_tis_per_dag=slots, retries=1,
                execution_timeout=timedelta(hours=48), **on_queue)
            served = ServeModelOperator(task_id="serve_model", level=plan, doc_md=SERVE_DOC,
                                        retries=1, execution_timeout=timedelta(hours=8),
                                        **on_queue)
            evaluated = EvaluateTau2Operator(
                task_id="evaluate_tau2", level=plan, server=served.output, doc_md=EVAL_DOC,
                outlets=[EVALUATIONS], retries=1, execution_timeout=timedelta(hours=48),
                **on_queue)
            stopped = StopModelServerOperator(task_id="stop_model_server", level=plan,
                                              doc_md=STOP_DOC, retries=3, **on_queue)
            trained >> served >> evaluated >> stopped
            stopped.as_teardown(setups=served)

        return level

    def host_plans(host):
        """The task that hands ``host``'s plans to its group (Airflow maps over a task's
        whole return value only)."""
        @task(task_id=f"plans_{host.name}",
              doc_md=f"The plans of the training runs placed on host {host.name} (from "
                     f"plan_levels); none: its `{host.group_id}` group is skipped.")
        def pick(plans: dict) -> list[dict]:
            if host.name not in plans:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(
                    f"plan_levels made no plans for host {host.name} (it planned for "
                    f"{', '.join(plans) or 'no host'}): the worker that ran it has another "
                    "SIMIA_GPU_HOSTS; give every component and worker the same value")
            print(f"{len(plans[host.name])} training run(s) placed on host {host.name}: "
                  f"their tasks go to the Celery queue {host.queue} and wait there until a "
                  f"worker serving it is up (airflow celery worker --queues {host.queue})")
            return plans[host.name]

        return pick

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[REPORT], retries=1)
    def report_results() -> dict:
        """report/report.md + report.html with plots; fails the run (after writing the
        report) when a level that should have been trained or evaluated was not."""
        ti = get_current_context()["ti"]
        return _step("report", asset=REPORT,
                     validated=ti.xcom_pull(task_ids="validate_params") is not None,
                     datasets_built=ti.xcom_pull(task_ids="build_sft_datasets") is not None)

    seeds = generate_seeds(validate_params())
    # collection = fixed: the separate stages
    shards = generate_conversations.expand(plan=plan_generation(seeds))
    processed = process_conversations(merge_generation(shards))
    judged = judge_conversations.partial(processed=processed).expand(
        shard=plan_judging(processed))
    scores = score_sycophancy(processed, judged)
    # collection = design: one loop until the pools are full
    collected = merge_collection(collect_conversations.expand(plan=collect_pilot(seeds)))
    twins = make_twins(processed, scores, collected)
    built = build_sft_datasets(processed, scores, collected, twins)
    plans = plan_levels(built)
    report = report_results()
    if not GPU_HOSTS:
        level_group(LEVEL_GROUP, TRAINING_SLOTS, None).expand(plan=plans) >> report
    for host in GPU_HOSTS:  # an empty list for a host skips its group
        level_group(host.group_id, host.max_trainings, host.queue).expand(
            plan=host_plans(host)(plans)) >> report


simia_sycophancy_experiment()
