"""The whole DAG, in-process with dag.test(), on a synthetic fixture and a real SQLite DB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dag(experiment_dag):
    return experiment_dag


def _states(dr):
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def test_dag_runs_end_to_end_with_rule_labels(dag, raw_file, tau2_dir, tmp_path):
    conf = {"raw_conversations": str(raw_file), "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "levels": [0, 10, 20],
            "dataset_size": 20, "shared_clean": 15, "replicates": 1, "label_source": "rules",
            "sycophancy_source": "natural"}
    dr = dag.test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    run = next((tmp_path / "simia_sycophancy_experiment").iterdir())
    info = json.loads((run / "datasets" / "dataset_info.json").read_text())
    assert sorted(info) == ["telecom_syc_0pct", "telecom_syc_10pct", "telecom_syc_20pct"]
    meta = json.loads((run / "datasets" / "metadata.json").read_text())
    assert meta["datasets"]["telecom_syc_20pct"]["sycophantic"] == 4
    assert meta["label_source"] == "rules"
    assert (run / "processed" / "rejects.jsonl").stat().st_size > 0
    assert (run / "scores" / "rule_scores.jsonl").is_file()
    # without trained models the report still shows the data half, and says so
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["headline"]["verdict"] == "insufficient"
    assert report["headline"]["text"].startswith("Not enough evaluations to answer: sycophancy "
                                                 "in the training data varied over 0, 10 and "
                                                 "20 % with 1 training run per level")
    assert report["design"]["runs_per_level"] == {"0": 1, "10": 1, "20": 1}
    assert report["analysis"] is None  # nothing was trained or evaluated, by design
    assert (run / "report" / "data_funnel.png").stat().st_size > 1000


def test_dag_uses_a_judge_score_file(dag, raw_file, tau2_dir, tmp_path):
    raw = json.loads(raw_file.read_text())
    judge = tmp_path / "judge.jsonl"
    judge.write_text("\n".join(json.dumps({"conv_idx": i, "wm_sycophancy_score": 85 if i % 5 == 0
                                           else 0}) for i in range(len(raw))))
    conf = {"raw_conversations": str(raw_file), "data_root": str(tmp_path / "data"),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "label_source": "judge_file",
            "judge_scores": str(judge), "levels": [0, 20], "dataset_size": 20,
            "shared_clean": 15, "output_format": "hermes", "sycophancy_source": "natural"}
    dr = dag.test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    run = next((tmp_path / "data" / "simia_sycophancy_experiment").iterdir())
    meta = json.loads((run / "datasets" / "metadata.json").read_text())
    assert meta["label_source"] == "judge" and meta["format"] == "hermes"
    assert all(i % 5 == 0 for i in meta["datasets"]["telecom_syc_20pct"]["sycophantic_indices"])


def test_dag_from_seeds_to_datasets_with_the_llm_judge(dag, tau2_dir, tmp_path,
                                                       converse_server, monkeypatch):
    """No input files: seeds, mapped generation and judge shards against our Converse
    server through the amazon provider's hook (endpoint_url from the connection)."""
    monkeypatch.setenv("AIRFLOW_CONN_SIMIA_TEST_BEDROCK", json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": converse_server.url,
                                       "region_name": "us-east-1"}}))
    # every input Param explicitly: dag.test keeps the previous run's conf as defaults
    conf = {"raw_conversations": "", "seeds_file": "", "judge_scores": "",
            "output_format": "native", "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "n_seeds": 6,
            "target_conversations": 60, "shards": 3, "simulator_mode": "sycophantic",
            "aws_conn_id": "simia_test_bedrock", "label_source": "judge",
            "levels": [0, 10], "dataset_size": 10, "shared_clean": 8, "collection": "fixed",
            "sycophancy_source": "natural"}
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert dr.state == "success", states
    assert states["generate_seeds"] == "success"
    run = next((tmp_path / "simia_sycophancy_experiment").iterdir())
    raw = json.loads((run / "generate" / "raw_conversations.json").read_text())
    assert len(raw) == 60 and len({r["item_id"] for r in raw}) == 60
    judged = json.loads((run / "judge" / "summary.json").read_text())
    kept = json.loads((run / "processed" / "summary.json").read_text())["kept"]
    assert judged["conversations"] == kept and judged["llm"]["calls"] >= kept
    meta = json.loads((run / "datasets" / "metadata.json").read_text())
    assert meta["label_source"] == "judge"
    assert converse_server.stats["by_kind"]["seed"] >= 6
    # the hook's client keeps our fixed User-Agent (botocore_config) and adds Airflow's
    agents = converse_server.stats["user_agents"]
    assert agents and all(a.startswith("Botocore/") and " simia/" in a and " Airflow/" in a
                          for a in agents), agents


def test_on_several_hosts_a_run_without_trainings_skips_every_hosts_group(
        experiment_dag, raw_file, tau2_dir, tmp_path, monkeypatch):
    """SIMIA_GPU_HOSTS: plan_levels hands every host an empty list when nothing is trained;
    each host's group is skipped and the run succeeds."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("SIMIA_GPU_HOSTS", "gpu-a:0,1;cpu-a:")
    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags[experiment_dag.dag_id]
    defaults = {name: param.value for name, param in dag.params.items()}
    conf = {**defaults, "raw_conversations": str(raw_file), "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "levels": [0, 10],
            "dataset_size": 20, "shared_clean": 15, "replicates": 1, "label_source": "rules",
            "sycophancy_source": "natural"}
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert dr.state == "success", states
    assert states["plans_gpu-a"] == states["plans_cpu-a"] == "success"
    for host in ("gpu-a", "cpu-a"):
        assert states[f"level_{host}.train_model"] == "skipped", states
    assert states["report_results"] == "success"
    run = next((tmp_path / "simia_sycophancy_experiment").iterdir())
    assert json.loads((run / "run.json").read_text())["gpu_hosts"] == "gpu-a:0,1;cpu-a:"
