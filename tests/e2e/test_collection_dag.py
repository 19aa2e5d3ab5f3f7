"""The DAG collects by the design against our Converse server (a judge that flags 5 %):
natural sycophancy, counterfactual twins, and a capped run continued after the cap is
raised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DAG_ID = "simia_sycophancy_experiment"


@pytest.fixture(scope="module")
def dag(experiment_dag):
    return experiment_dag


@pytest.fixture()
def bedrock(converse_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SIMIA_TEST_BEDROCK", json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": converse_server.url,
                                       "region_name": "us-east-1"}}))
    converse_server.configure(judge_flag_rate=0.05)
    return converse_server


def _states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def _conf(tmp_path: Path, tau2_dir: Path, **over) -> dict:
    # every input Param explicitly: dag.test keeps the previous run's conf as defaults
    return {"raw_conversations": "", "seeds_file": "", "judge_scores": "",
            "output_format": "native", "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "train_models": False, "n_seeds": 6,
            "shards": 2, "aws_conn_id": "simia_test_bedrock", "label_source": "judge",
            "levels": [0, 10], "dataset_size": 10, "shared_clean": 8, "replicates": 2,
            "collection": "design", "collect_pilot": 10, "collect_max_attempts": 600,
            "start_from": "beginning", "source_run": None, **over}


def _run_dir(root: Path) -> Path:
    return next((root / DAG_ID).iterdir())


def test_collection_fills_a_two_level_design_with_natural_sycophancy(dag, bedrock, tmp_path,
                                                                     tau2_dir):
    conf = _conf(tmp_path, tau2_dir, simulator_mode="sycophantic",
                 sycophancy_source="natural")
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert dr.state == "success", states
    assert states[("generate_conversations", -1)] == "skipped"
    assert states[("process_conversations", -1)] == "skipped"
    assert states[("make_twins", -1)] == "skipped"
    assert states[("collect_conversations", 0)] == states[("collect_conversations", 1)] \
        == "success"
    run = _run_dir(tmp_path)
    pilot = json.loads((run / "collect" / "pilot.json").read_text())
    assert pilot["outlook"] == "fill" and pilot["needs"]["sycophantic"] == 1
    summary = json.loads((run / "collect" / "summary.json").read_text())
    assert summary["found"]["counts"]["sycophantic"] >= 1
    assert summary["found"]["counts"]["clean"] >= 10
    meta = json.loads((run / "datasets" / "metadata.json").read_text())
    assert meta["sycophancy_source"] == "natural" and meta["label_source"] == "judge"
    assert meta["datasets"]["telecom_syc_10pct_r2"]["sycophantic"] == 1
    report = (run / "report" / "report.md").read_text()
    assert "Collection" in report and "natural" in report


def test_collection_with_twins_builds_levels_that_differ_in_one_observation(
        dag, bedrock, tmp_path, tau2_dir):
    conf = _conf(tmp_path, tau2_dir, simulator_mode="strict", sycophancy_source="twins")
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert dr.state == "success", states
    assert states[("make_twins", -1)] == "success"
    run = _run_dir(tmp_path)
    twins = [json.loads(x) for x in (run / "twins" / "twins.jsonl").read_text().splitlines()]
    assert len(twins) == 1 and twins[0]["diff"]
    for rep in ("", "_r2"):
        base = json.loads((run / "datasets" / f"telecom_syc_0pct{rep}.json").read_text())
        top = json.loads((run / "datasets" / f"telecom_syc_10pct{rep}.json").read_text())
        changed = [(a, b) for a, b in zip(base, top, strict=True) if a != b]
        assert len(changed) == 1
        a, b = changed[0]
        turns = [i for i, (x, y) in enumerate(zip(a["conversations"], b["conversations"],
                                                   strict=True)) if x != y]
        assert turns == [twins[0]["observation_turn_index"]]
    report = (run / "report" / "report.md").read_text()
    assert "twins" in report


def test_a_capped_run_stops_with_the_projection_and_continues_when_raised(
        dag, bedrock, tmp_path, tau2_dir, capfd):
    low = _conf(tmp_path / "a", tau2_dir, simulator_mode="sycophantic",
                sycophancy_source="natural", collect_pilot=10, collect_max_attempts=20)
    first = dag.test(run_conf=low)
    states = _states(first)
    assert first.state == "failed", states
    # the report is written, then fails the run (the datasets were not built)
    failed = [ti for ti in first.get_task_instances() if ti.state == "failed"
              and ti.task_id != "report_results"]
    assert [ti.task_id for ti in failed] in (["collect_pilot"], ["merge_collection"]), states
    assert failed[0].try_number == 1  # a cap is not retried: retrying cannot help
    assert states[("build_sft_datasets", -1)] == "upstream_failed"
    text = "".join(capfd.readouterr())
    assert "To continue: raise collect_max_attempts" in text
    assert "Yields per attempt" in text
    src = _run_dir(tmp_path / "a")
    done = sum(len(p.read_text().splitlines()) for p in (src / "collect").glob("*.jsonl"))
    assert 0 < done <= 20
    calls = bedrock.stats["by_kind"]["generate"]

    high = _conf(tmp_path / "b", tau2_dir, simulator_mode="sycophantic",
                 sycophancy_source="natural", collect_pilot=10, collect_max_attempts=600,
                 start_from="collect", source_run=str(src))
    second = dag.test(run_conf=high)
    assert second.state == "success", _states(second)
    run = _run_dir(tmp_path / "b")
    summary = json.loads((run / "collect" / "summary.json").read_text())
    new_calls = bedrock.stats["by_kind"]["generate"] - calls
    assert new_calls == summary["found"]["attempts"] - done  # nothing redone
    assert json.loads((run / "collect" / "imported.json").read_text())["items"] == done
