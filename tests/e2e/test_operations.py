"""Operating the DAG: bad Param combinations stop the run at its first task with every
problem listed; a run can start from an earlier run's artifacts without touching them;
a failed task leaves a failure summary in the run folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DAG_ID = "simia_sycophancy_experiment"


@pytest.fixture(scope="module")
def dag(experiment_dag):
    return experiment_dag


def _states(dr) -> dict:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_combinations_stop_the_run_before_any_work(dag, raw_file, tau2_dir, tmp_path,
                                                       capfd):
    conf = {"raw_conversations": str(raw_file), "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "levels": [0, 90],
            "dataset_size": 20, "shared_clean": 15, "label_source": "judge_file",
            "judge_scores": ""}
    dr = dag.test(run_conf=conf)
    assert dr.state == "failed"
    states = _states(dr)
    assert states["validate_params"] == "failed"
    assert states["process_conversations"] == "upstream_failed"
    text = "".join(capfd.readouterr())
    assert "judge_scores: label_source = judge_file needs" in text
    assert "datasets: shared_clean=15 does not fit" in text
    run = next((tmp_path / DAG_ID).iterdir())
    assert not (run / "processed").exists()
    failure = json.loads((run / "failures" / "validate_params.json").read_text())
    assert "judge_scores" in failure["error"] and failure["task_id"] == "validate_params"


def test_a_run_that_calls_the_llm_without_its_connection_stops_at_once(dag, tau2_dir,
                                                                        tmp_path, capfd):
    conf = {"raw_conversations": "", "seeds_file": "", "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "label_source": "rules",
            "aws_conn_id": "simia_missing_connection", "llm_backend": "bedrock"}
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert dr.state == "failed" and states["validate_params"] == "failed"
    assert states["generate_seeds"] == "upstream_failed"  # no LLM task tried (or retried)
    text = "".join(capfd.readouterr())
    assert "aws_conn_id: there is no Airflow connection 'simia_missing_connection'" in text
    assert "NoRegionError" not in text


def test_a_run_starts_from_an_earlier_runs_artifacts(dag, raw_file, tau2_dir, tmp_path):
    base = {"raw_conversations": str(raw_file), "tau2_data_dir": str(tau2_dir),
            "train_models": False, "levels": [0, 10, 20], "dataset_size": 20,
            "shared_clean": 15, "label_source": "rules", "sycophancy_source": "natural"}
    first = dag.test(run_conf={**base, "data_root": str(tmp_path / "a")})
    assert first.state == "success", _states(first)
    src = next((tmp_path / "a" / DAG_ID).iterdir())
    manifest = json.loads((src / "run.json").read_text())
    assert manifest["run_id"] == first.run_id and manifest["start_from"] == "beginning"
    before = _digest(src)

    # from the scores: new datasets with another seed, nothing processed or scored again
    second = dag.test(run_conf={**base, "data_root": str(tmp_path / "b"), "seed": 7,
                                "start_from": "scores", "source_run": str(src)})
    assert second.state == "success", _states(second)
    run = next((tmp_path / "b" / DAG_ID).iterdir())
    assert not (run / "processed").exists() and not (run / "scores").exists()
    meta = json.loads((run / "datasets" / "metadata.json").read_text())
    assert meta["design"]["seed"] == 7
    assert (run / "report" / "report.json").is_file()

    # from the datasets: the earlier datasets are used as they are
    third = dag.test(run_conf={**base, "data_root": str(tmp_path / "c"),
                               "start_from": "datasets", "source_run": str(src)})
    assert third.state == "success", _states(third)
    run = next((tmp_path / "c" / DAG_ID).iterdir())
    assert not (run / "datasets").exists()
    xcom = next(ti for ti in third.get_task_instances()
                if ti.task_id == "build_sft_datasets").xcom_pull(task_ids="build_sft_datasets")
    assert xcom["dataset_dir"] == str(src / "datasets")
    assert _digest(src) == before  # the earlier run is only read
