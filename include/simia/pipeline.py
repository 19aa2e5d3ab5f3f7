"""The experiment's tasks as the DAG runs them, one function per task, without Airflow.

Each function takes the run's Params (``p``), its :class:`~simia.layout.RunLayout` and
what the task receives from upstream, does the stage's work (or reuses an earlier run's
artifacts when ``start_from`` says so: that decision is made here, in one place), and
returns a :class:`Done`: the task's XCom value and what its Asset event records. A stage
that has nothing to do raises :class:`Skipped` (the DAG turns it into a skipped task).
LLM stages get a client *factory*, so a skipped stage never needs a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simia.errors import ConfigError, SimiaError
from simia.layout import DataRoot, RunLayout, starts_after
from simia.settings.hosts import GpuHost, format_gpu_hosts, level_task_id

__all__ = ["Done", "Skipped", "build_datasets", "collect_pilot", "collect_shard", "collecting",
           "generate_seeds", "generate_shard", "judge_shard", "make_twins", "merge_collection",
           "merge_generation", "plan_generation", "plan_judging", "plan_levels", "process",
           "report", "run_layout", "score", "validate"]

Params = Mapping[str, Any]
ClientFactory = Callable[[], Any]


class Skipped(SimiaError):
    """The stage has nothing to do in this run (the message says why)."""


@dataclass(frozen=True)
class Done:
    """A task's result: ``value`` for XCom, ``asset`` for its Asset event's ``extra``."""

    value: Any
    asset: dict[str, Any] = field(default_factory=dict)


def run_layout(p: Params, dag_id: str, run_id: str) -> RunLayout:
    """``<data_root>/<dag_id>/<run_id>`` (created), run ids made filesystem-safe."""
    return DataRoot(p["data_root"]).run(dag_id, run_id)


def _source(p: Params) -> RunLayout:
    """The earlier run a ``start_from`` run reuses (only read, never written)."""
    return RunLayout(p["source_run"])


def _reusing(p: Params, stage: str) -> bool:
    return starts_after(p.get("start_from", "beginning"), stage)


def collecting(p: Params) -> bool:
    """Whether this run collects by the design (the collect tasks) instead of the
    separate generate / process / judge stages: ``collection = design``, nothing reused
    and no raw file given."""
    return (p.get("collection", "fixed") == "design" and not p.get("raw_conversations")
            and p.get("start_from", "beginning") in ("beginning", "collect"))


_BY_COLLECTION = "collection = design: the collect tasks generate, validate and judge"


# --------------------------------------------------------------------------- data half

def validate(p: Params, run: RunLayout, *, dag_id: str, run_id: str, run_type: str = "",
             logical_date: str = "",
             check_connections: Callable[[Params], list[str]] | None = None,
             hosts: Sequence[GpuHost] = ()) -> Done:
    """Check the run's Params together (and, with ``check_connections``, the connections
    they name) and record them in ``run.json`` (kept when it exists: a retried run keeps
    its first record). With ``hosts`` (``SIMIA_GPU_HOSTS``) it prints where each
    training run goes and records the hosts; with ``SIMIA_DATA_ROOT_ID`` set it checks
    that the data root is the shared one."""
    from simia import __version__
    from simia.io import write_json
    from simia.placement import check_shared_data_root
    from simia.run_config import check_run_params, placement, power_plan

    power = None
    problems = check_run_params(p, hosts)
    try:
        check_shared_data_root(p["data_root"])
    except SimiaError as exc:
        problems.append(f"data_root: {exc}")
    if check_connections is not None:
        problems += check_connections(p)
    if not problems:
        try:
            power = power_plan(p)
        except SimiaError as exc:  # e.g. an unusable earlier analysis (run_variance_from)
            problems.append(f"power plan: {exc}")
    if problems:
        raise ConfigError("this run's settings cannot work; fix these Params and trigger "
                          "again:\n- " + "\n- ".join(problems))
    if power is not None:
        print(f"power plan: {power['line']}")
    if hosts and p["train_models"]:
        if p.get("gpu_ids"):
            print(f"gpu_ids = {p['gpu_ids']} is not used: with SIMIA_GPU_HOSTS each host's "
                  "GPUs are those it lists")
        print("placement of the training runs on SIMIA_GPU_HOSTS:")
        for line in placement(p, hosts).lines():
            print(f"  {line}")
    manifest = {"dag_id": dag_id, "run_id": run_id, "run_type": run_type,
                "logical_date": logical_date, "simia_version": __version__,
                "start_from": p["start_from"], "source_run": p["source_run"],
                "params": dict(p), "power_plan": power,
                "gpu_hosts": format_gpu_hosts(tuple(hosts)) or None}
    if not run.run_json.exists():
        write_json(run.run_json, manifest, indent=True)
    return Done({"run_dir": str(run.root), "start_from": p["start_from"]})


def _generation_settings(p: Params):
    from simia.llm.generation import GenerationSettings
    from simia.run_config import build

    return build(GenerationSettings, p)


def generate_seeds(p: Params, run: RunLayout, client: ClientFactory) -> Done:
    """Seed conversations from the tau2 policy (skipped with a seed or raw file)."""
    from simia.llm.generation import SeedSettings, generate_seeds_stage
    from simia.run_config import build

    if _reusing(p, "generate"):
        raise Skipped(f"start_from = {p['start_from']}: reusing {p['source_run']}")
    if p["raw_conversations"] or p["seeds_file"]:
        raise Skipped("a seed file or a raw-conversations file was given")
    generate_seeds_stage(run.seeds.dir, build(SeedSettings, p), client(),
                         tau2_data_dir=p["tau2_data_dir"] or None)
    return Done(str(run.seeds.seeds))


def plan_generation(p: Params, run: RunLayout, generated_seeds: str | None) -> Done:
    """One entry per generation shard (none when a raw file is given or reused)."""
    from simia.llm.generation import load_seeds

    if p["raw_conversations"] or _reusing(p, "generate") or collecting(p):
        return Done([])
    seeds = p["seeds_file"] or generated_seeds
    load_seeds(seeds)  # a bad seed file fails here, once, with file/record/field
    return Done([{"shard": k, "seeds": seeds} for k in range(p["shards"])])


def generate_shard(p: Params, run: RunLayout, plan: dict[str, Any],
                   client: ClientFactory) -> Done:
    """This shard's share of the target conversations, checkpointed per item."""
    from simia.llm.generation import generate_shard as run_shard

    s = run_shard(plan["seeds"], run.generate.dir, _generation_settings(p), client(),
                  shard=plan["shard"], shards=p["shards"])
    return Done({k: s[k] for k in ("shard", "target", "valid", "failed", "failed_by_error")})


def merge_generation(p: Params, run: RunLayout) -> Done:
    """All shards -> ``generate/raw_conversations.json`` (or the given or reused raw
    file)."""
    from simia.llm.generation import merge_generation as merge

    if collecting(p):
        raise Skipped(_BY_COLLECTION)
    if _reusing(p, "generate"):
        path = str(_source(p).generate.raw)
        print(f"start_from = {p['start_from']}: not generating; the earlier run is "
              f"{p['source_run']}")
    elif p["raw_conversations"]:
        path = p["raw_conversations"]
    else:
        summary = merge(run.generate.dir, _generation_settings(p), shards=p["shards"])
        path = summary["outputs"]["raw_conversations"]
    return Done(path, {"path": path})


def process(p: Params, run: RunLayout, raw: str) -> Done:
    """Validate and convert the raw conversations; every drop is recorded."""
    from simia.data.stages import check_reused_output, process_stage
    from simia.io import read_json

    if _reusing(p, "process"):
        files = _source(p).processed
        print(f"start_from = {p['start_from']}: reusing {files.processed} (not processing "
              "again)")
        summary = read_json(files.summary, what="processing summary")
        check_reused_output(files.processed, files.summary, "processed")
        return Done({"processed": str(files.processed),
                     "raw": summary.get("input_file") or raw,
                     "kept": summary.get("kept"), "input": summary.get("input"),
                     "rejected_by_reason": summary.get("rejected_by_reason", {})},
                    {"path": str(files.processed), "reused": True})
    files = run.processed
    summary = process_stage(raw, files.dir, fmt=p["output_format"],
                            tau2_data_dir=p["tau2_data_dir"] or None,
                            skip_invalid_records=p["skip_invalid_records"])
    return Done({"processed": str(files.processed), "raw": raw, "kept": summary["kept"],
                 "input": summary["input"], "rejected_by_reason": summary["rejected_by_reason"]},
                {"path": str(files.processed)})


def plan_judging(p: Params, run: RunLayout) -> Done:
    """Shard numbers for the LLM judge (none unless ``label_source = judge``)."""
    if _reusing(p, "score") or p["label_source"] != "judge":
        return Done([])
    return Done(list(range(p["shards"])))


def judge_shard(p: Params, run: RunLayout, shard: int, processed: dict[str, Any],
                client: ClientFactory) -> Done:
    """The LLM judge on one shard of the processed conversations."""
    from simia.llm.judge import JudgeSettings, judge_shard as run_shard

    s = run_shard(processed["processed"], run.judge.dir, JudgeSettings(), client(),
                  shard=shard, shards=p["shards"])
    return Done({k: s[k] for k in ("shard", "judged", "scored", "failed")})


def score(p: Params, run: RunLayout, processed: dict[str, Any]) -> Done:
    """Judge shards merged, rule scores of what is trained on, a judge-score file checked
    against the processed conversations, or the reused scores of an earlier run (checked
    the same way, and against the hash its stage recorded)."""
    from simia.data.stages import check_reused_output, score_rules_stage, validate_scores_file
    from simia.llm.judge import merge_judge

    if collecting(p):
        raise Skipped(_BY_COLLECTION)
    source = p["label_source"]
    if _reusing(p, "score") and source != "judge_file":
        earlier = _source(p)
        path = str(earlier.scores(source))
        print(f"start_from = {p['start_from']}: reusing the scores {path}")
        check_reused_output(path, earlier.judge.summary if source == "judge"
                            else earlier.rule_scores.summary, "scores")
        validate_scores_file(path, processed["processed"])
        return Done({"scores": path, "source": source},
                    {"path": path, "source": source, "reused": True})
    if source == "judge_file":
        path = p["judge_scores"]
        summary = validate_scores_file(path, processed["processed"])
        counts = {"conversations": summary["conversations"], "flagged": summary["flagged"]}
    elif source == "judge":
        summary = merge_judge(run.judge.dir, shards=p["shards"], threshold=p["label_threshold"])
        path = summary["outputs"]["scores"]
        counts = {k: summary[k] for k in ("conversations", "scored", "failed", "sycophantic")}
    else:
        path = str(run.rule_scores.scores)
        scored = processed["processed"] if p["output_format"] == "native" else processed["raw"]
        summary = score_rules_stage(scored, path)
        counts = {"conversations": summary["conversations"], "flagged": summary["flagged"]}
    return Done({"scores": path, "source": source, **counts}, {"path": path, "source": source})


# --------------------------------------------------------------------------- collection

def _collection(p: Params):
    """(design needs, caps) of a run."""
    from simia.llm.collect import Needs
    from simia.run_config import build
    from simia.settings import CollectionSettings, DatasetDesign

    caps = build(CollectionSettings, p)
    source = caps.sycophancy_source
    return Needs(*build(DatasetDesign, p).pool_needs(source), source), caps


def _collector(p: Params, seeds: str, client: Any):
    from simia.llm.collect import Collector
    from simia.llm.judge import JudgeSettings

    return Collector(seeds, _generation_settings(p), JudgeSettings(), client,
                     fmt=p["output_format"], tau2_data_dir=p["tau2_data_dir"] or None,
                     threshold=p["label_threshold"])


def collect_pilot(p: Params, run: RunLayout, generated_seeds: str | None,
                  client: ClientFactory) -> Done:
    """The collection's pilot (continuing the source run's collection with
    ``start_from = collect``); returns one plan per shard. Raises
    :class:`~simia.llm.collect.CapReached` when the caps cannot fill the design."""
    from simia.llm.collect import run_pilot

    if not collecting(p):
        raise Skipped("collection = fixed (or a raw file, or start_from reuse): the separate "
                      "generate / process / judge stages run")
    needs, caps = _collection(p)
    source = _source(p).collect if p.get("start_from") == "collect" else None
    seeds = p["seeds_file"] or generated_seeds
    record = run_pilot(_collector(p, seeds, client()), run.collect, needs, caps,
                       shards=p["shards"], source=source)
    print(f"collection pilot: {record['text']}")
    return Done([{"shard": k, "seeds": seeds} for k in range(p["shards"])])


def collect_shard(p: Params, run: RunLayout, plan: dict[str, Any],
                  client: ClientFactory) -> Done:
    """One shard of the collection: its share of what the pilot left to find."""
    from simia.llm.collect import run_shard

    needs, caps = _collection(p)
    s = run_shard(_collector(p, plan["seeds"], client()), run.collect, needs, caps,
                  shard=plan["shard"], shards=p["shards"])
    return Done({"shard": plan["shard"], "full": s["full"], "plan": s["plan"],
                 "counts": s["found"]["counts"], "cost_usd": s["found"]["cost_usd"]})


def merge_collection(p: Params, run: RunLayout) -> Done:
    """Every collected item -> the generate, processed and judge files; fails (without
    retries) naming what is missing when the caps stopped the collection short."""
    from simia.llm.collect import merge_collection as merge
    from simia.run_config import build
    from simia.settings import LLMSettings

    if not collecting(p):
        raise Skipped("collection = fixed: nothing was collected")
    needs, caps = _collection(p)
    llm = build(LLMSettings, p)
    s = merge(run, needs, caps, fmt=p["output_format"],
              tau2_data_dir=p["tau2_data_dir"] or None, threshold=p["label_threshold"],
              model_id=llm.model_id, prices=llm.prices)
    out = s["outputs"]
    return Done({"processed": out["processed"], "raw": out["raw_conversations"],
                 "scores": out["scores"], "source": "judge",
                 "kept": s["found"]["kept_by_validation"], "input": s["found"]["attempts"],
                 "counts": s["found"]["counts"]},
                {"path": out["processed"], "scores": out["scores"]})


def _pool(processed: dict[str, Any] | None, scores: dict[str, Any] | None,
          collected: dict[str, Any] | None) -> tuple[str, str]:
    """(processed file, score file) the datasets are built from: the collection's, else
    the separate stages'."""
    if collected:
        return collected["processed"], collected["scores"]
    if not processed or not scores:
        raise SimiaError("no labelled conversations: neither the collection nor the "
                         "process and score stages produced any (see their logs)")
    return processed["processed"], scores["scores"]


def make_twins(p: Params, run: RunLayout, processed: dict[str, Any] | None,
               scores: dict[str, Any] | None, collected: dict[str, Any] | None,
               client: ClientFactory) -> Done:
    """Counterfactual twins of clean conversations, as many as the highest level swaps
    (``sycophancy_source = twins``), within the budget the collection left."""
    from simia.io import read_json
    from simia.llm.twins import make_twins as make

    if p.get("sycophancy_source", "natural") != "twins":
        raise Skipped("sycophancy_source = natural: the sycophantic slots hold conversations "
                      "the judge flagged")
    if _reusing(p, "build"):
        raise Skipped(f"start_from = datasets: reusing {p['source_run']}")
    needs, caps = _collection(p)
    conversations, labels = _pool(processed, scores, collected)
    spent = 0.0
    if run.collect.summary.is_file():
        spent = float(read_json(run.collect.summary).get("llm", {}).get("cost_usd", 0.0))
    s = make(conversations, labels, run.twins.dir, client(), needed=needs.sycophantic,
             threshold=p["label_threshold"], seed=p["seed"],
             budget_usd=max(0.0, caps.collect_budget_usd - spent))
    return Done({"twins": s["outputs"]["twins"], "accepted": s["accepted"],
                 "discarded_by_reason": s["discarded_by_reason"]},
                {"path": s["outputs"]["twins"]})


def build_datasets(p: Params, run: RunLayout, processed: dict[str, Any] | None,
                   scores: dict[str, Any] | None, collected: dict[str, Any] | None = None,
                   twins: dict[str, Any] | None = None) -> Done:
    """One LLaMA-Factory dataset per sycophancy level (or the reused datasets), from the
    collection's pools or the separate stages', with the twins swapped in when the
    source is ``twins``."""
    from simia.data.datasets import DatasetDesign
    from simia.data.stages import build_datasets_stage, check_datasets_dir
    from simia.run_config import build, datasets_dir

    out = datasets_dir(p, run.root)  # the source run's with start_from = datasets
    if _reusing(p, "build"):
        meta = check_datasets_dir(out)
        print(f"start_from = datasets: training on the datasets of {out}")
        return Done({"dataset_dir": str(out), "datasets": meta.get("datasets", {})},
                    {"path": str(out), "reused": True})
    conversations, labels = _pool(processed, scores, collected)
    twins_path = None
    if p.get("sycophancy_source", "natural") == "twins":
        if not twins:
            raise SimiaError("sycophancy_source = twins, but make_twins produced no twins "
                             "(see its log)")
        twins_path = twins["twins"]
    summary = build_datasets_stage(conversations, labels, out, build(DatasetDesign, p),
                                   twins_path=twins_path)
    return Done({"dataset_dir": str(out), "datasets": summary["datasets"]}, {"path": str(out)})


# --------------------------------------------------------------------------- models and report

def plan_levels(p: Params, run: RunLayout, built: dict[str, Any], *, dag_id: str,
                run_id: str, hosts: Sequence[GpuHost] = ()) -> Done:
    """Per level: its training YAML and containers (see
    :func:`simia.run_config.level_plans`). With ``hosts`` (``SIMIA_GPU_HOSTS``): the
    plans by host name (every host, an empty list for one without runs), each host's in
    the order its runs are planned to start, and the placement in ``placement.json``."""
    from simia.io import write_json
    from simia.run_config import level_plans, placement

    plans = level_plans(p, run_dir=run.root, run_id=run_id, dag_id=dag_id,
                        dataset_dir=built["dataset_dir"], hosts=hosts)
    if not hosts:
        return Done(plans)
    by_host: dict[str, list[dict[str, Any]]] = {h.name: [] for h in hosts}
    if plans:
        placed = placement(p, hosts)
        write_json(run.placement, placed.as_dict(), indent=True)
        index = {(pl["level"], pl["replicate"]): pl for pl in plans}
        for name, runs in placed.by_host().items():
            by_host[name] = [index[(r.level, r.replicate)] for r in runs]
        for line in placed.lines():
            print(line)
    return Done(by_host)


def _runs(runs: list[tuple[float, int]], hosts: Mapping[tuple[float, int], str] | None = None,
          task: str = "") -> str:
    """``5 % (replicate 2), 10 % (replicate 1)``; with the placement's hosts, each run's
    task: ``5 % (replicate 2, level_gpu-b.train_model)``."""
    def where(level: float, k: int) -> str:
        host = (hosts or {}).get((level, k))
        return f", {level_task_id(task, host)}" if host and task else ""
    return ", ".join(f"{level:g} % (replicate {k}{where(level, k)})" for level, k in runs)


def _placed_hosts(run: RunLayout) -> dict[tuple[float, int], str]:
    """(level, replicate) -> host name, from the run's ``placement.json`` (empty on one
    host, or when it cannot be read)."""
    from simia.io import read_json

    if not run.placement.is_file():
        return {}
    try:
        placed = read_json(run.placement, what="placement")
        return {(float(r["level"]), int(r["replicate"])): str(r["host"])
                for r in placed["runs"]}
    except (SimiaError, KeyError, TypeError, ValueError):
        return {}


def report(p: Params, run: RunLayout, *, validated: bool, datasets_built: bool) -> Done:
    """Write the report, then fail (``SimiaError``) when a level that should have been
    trained or evaluated was not: the report says what is missing either way."""
    from simia.evaluation.evaluator import missing_evaluations, missing_trainings
    from simia.report import write_report

    if not validated:
        raise ConfigError("no report: validate_params rejected this run's settings (its log "
                          "lists each problem); fix the Params and trigger again")
    written = write_report(run.root)
    problems = []
    if not datasets_built:
        problems.append("the datasets were not built (see the failed data stage)")
    if p["train_models"]:
        replicates = p.get("replicates", 1)
        hosts = _placed_hosts(run)
        untrained = missing_trainings(run.root, p["levels"], replicates)
        if untrained:
            problems.append(f"training run(s) {_runs(untrained, hosts, 'train_model')} were "
                            "not trained (see train_model)")
        if p["evaluate_models"]:
            missing = [m for m in missing_evaluations(run.root, p["levels"], p["num_trials"],
                                                      replicates) if m not in untrained]
            if missing:
                problems.append(f"training run(s) {_runs(missing, hosts, 'evaluate_tau2')} "
                                "have no complete evaluation results (see serve_model and "
                                "evaluate_tau2)")
    if problems:
        raise SimiaError(f"the report is written ({run.report.markdown}), but "
                         f"{'; '.join(problems)}. Fix the failed task of that level and clear "
                         "it; then clear this task.")
    return Done(written, {"path": written["report_dir"]})
