"""DAG integrity: imports cleanly, documented, retried, typed Params, light at parse time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_one_dag_per_file_named_after_it(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


def test_dag_settings(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert {"simia", "sycophancy"} <= set(dag.tags)
    assert dag.doc_md and "process_conversations" in dag.doc_md
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.topological_sort()][-1] == "report_results"
    for task in dag.tasks:
        # a bad Param combination does not fix itself: validation fails at once
        assert task.retries >= (0 if task.task_id == "validate_params" else 1), task.task_id
        assert task.on_failure_callback, f"{task.task_id} records no failure summary"
        assert task.doc_md, f"{task.task_id} has no doc"
        assert task.execution_timeout is not None


def test_outputs_are_assets(dagbag):
    dag = dagbag.dags[DAG_ID]
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets == {
        "merge_generation": ["simia_raw_conversations"],
        "process_conversations": ["simia_processed_conversations"],
        "score_sycophancy": ["simia_sycophancy_scores"],
        "merge_collection": ["simia_raw_conversations", "simia_processed_conversations",
                             "simia_sycophancy_scores"],
        "build_sft_datasets": ["simia_sft_datasets"],
        "level.train_model": ["simia_trained_models"],
        "level.evaluate_tau2": ["simia_tau2_results"],
        "report_results": ["simia_report"],
    }


def test_params_have_titles_and_reject_bad_values(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags[DAG_ID]
    for name, param in dag.params.items():
        assert param.schema.get("title") and param.description, name
        assert param.schema.get("section"), name
    dag.params.get_param("raw_conversations").resolve("/data/raw.json")
    dag.params.get_param("levels").resolve([0, 2.5, 100])
    for name, bad in [("levels", [150]), ("levels", []), ("dataset_size", 0),
                      ("output_format", "xml"), ("label_threshold", -1),
                      ("label_source", "llm"), ("shards", 0), ("simulator_mode", "lenient"),
                      ("target_conversations", 0), ("llm_backend", "azure"),
                      ("finetuning_type", "qlora"), ("deepspeed", "zero1"), ("epochs", 0),
                      ("learning_rate", 0), ("gpus_per_training", -1), ("cutoff_len", 8),
                      ("flash_attn", "fa3"), ("train_extra", "warmup"),
                      ("serve_backend", "tgi"), ("num_trials", 0), ("evaluator", "tau3"),
                      ("gpu_memory_utilization", 1.5), ("task_split", "all"),
                      ("server_extra_args", "--enforce-eager"), ("user_llm_args", "x")]:
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)


def test_generation_and_judging_are_mapped_shards(dagbag):
    dag = dagbag.dags[DAG_ID]
    mapped = {t.task_id for t in dag.tasks if type(t).__name__.endswith("MappedOperator")}
    assert mapped == {"generate_conversations", "judge_conversations", "collect_conversations"}
    order = [t.task_id for t in dag.topological_sort()]
    assert order.index("generate_seeds") < order.index("generate_conversations") \
        < order.index("merge_generation") < order.index("process_conversations") \
        < order.index("judge_conversations") < order.index("score_sycophancy")


# what parsing the DAG may import of simia: the settings models its Params derive from
# and their leaf dependencies (pydantic and the standard library only)
PARSE_TIME_MODULES = {"simia", "simia.errors", "simia.layout", "simia.redaction",
                      "simia.settings"}


def test_parse_time_imports_are_light():
    """Parsing the DAG file imports no pipeline logic (only the settings models) and does
    no I/O."""
    code = (
        "import sys, runpy\n"
        f"runpy.run_path({str(ROOT / 'dags' / (DAG_ID + '.py'))!r})\n"
        "print(sorted(m for m in sys.modules if m == 'simia' or m.startswith('simia.')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    imported = set(ast.literal_eval(res.stdout.strip().splitlines()[-1]))
    heavy = {m for m in imported
             if m not in PARSE_TIME_MODULES and not m.startswith("simia.settings.")}
    assert not heavy, heavy
    assert "simia.settings" in imported  # the Params come from the models


def test_each_level_trains_serves_evaluates_and_tears_down_in_a_mapped_group(dagbag):
    from airflow.providers.docker.operators.docker import DockerOperator

    dag = dagbag.dags[DAG_ID]
    group = dag.task_group_dict["level"]
    assert type(group).__name__ == "MappedTaskGroup"
    train, serve, evaluate, stop = (dag.get_task(f"level.{t}") for t in (
        "train_model", "serve_model", "evaluate_tau2", "stop_model_server"))
    assert isinstance(train, DockerOperator) and isinstance(evaluate, DockerOperator)
    assert train.max_active_tis_per_dag >= 1
    assert {t.task_id for t in dag.get_task("plan_levels").upstream_list} == {
        "build_sft_datasets"}
    assert {t.task_id for t in train.upstream_list} == {"plan_levels"}
    assert {t.task_id for t in serve.upstream_list} == {"level.train_model", "plan_levels"}
    assert serve.is_setup and stop.is_teardown and not evaluate.is_setup
    assert {t.task_id for t in stop.upstream_list} >= {"level.serve_model",
                                                       "level.evaluate_tau2"}
    report = dag.get_task("report_results")
    assert report.trigger_rule == "all_done"
    assert "level.evaluate_tau2" in {t.task_id for t in report.upstream_list}
