"""Whole-run Param checks (simia.run_config) on the DAG's own defaults and on broken
combinations; the schedule setting; the failure summary callback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from simia.run_config import check_run_params

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"


@pytest.fixture(scope="module")
def defaults():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags[DAG_ID]
    return {name: param.value for name, param in dag.params.items()}


def test_the_defaults_are_a_valid_run(defaults, tmp_path):
    p = {**defaults, "tau2_data_dir": str(tmp_path), "serve_backend": "transformers",
         "gpus_per_training": 0, "gpu_ids": ""}
    assert check_run_params(p) == []


@pytest.mark.parametrize("over, expected", [
    ({"levels": [0, 50], "dataset_size": 100, "shared_clean": 80},
     "datasets: shared_clean=80 does not fit"),
    ({"label_source": "judge_file", "judge_scores": ""}, "judge_scores: label_source"),
    ({"label_source": "judge_file", "judge_scores": "/no/such.jsonl"}, "judge_scores: '/no"),
    ({"judge_scores": "/x.jsonl"}, "set label_source = judge_file"),
    ({"raw_conversations": "/no/raw.json"}, "raw_conversations: '/no/raw.json'"),
    ({"gpus_per_training": 2, "gpu_ids": "0"}, "gpu_ids / gpus_per_training"),
    ({"serve_backend": "vllm", "gpus_per_server": 0}, "the vllm backend needs"),
    ({"train_extra": {"learning_rate": 1}}, "training extra"),
    ({"user_llm_args": {"api_key": "sk-1"}}, "evaluation user_llm_args"),
    ({"start_from": "datasets", "source_run": ""}, "source_run: start_from = datasets"),
    ({"start_from": "scores", "source_run": "/nope"}, "is not a folder"),
    ({"llm_backend": "openai", "openai_base_url": ""}, "openai_base_url"),
])
def test_broken_combinations_name_their_param(defaults, tmp_path, over, expected):
    p = {**defaults, "tau2_data_dir": str(tmp_path), "serve_backend": "transformers",
         "gpus_per_training": 0, "gpu_ids": "", **over}
    problems = check_run_params(p)
    assert any(expected in msg for msg in problems), problems


def test_every_problem_is_reported_at_once(defaults, tmp_path):
    p = {**defaults, "tau2_data_dir": str(tmp_path), "serve_backend": "vllm",
         "gpus_per_server": 0, "gpu_ids": "", "gpus_per_training": 1,
         "levels": [0, 90], "label_source": "judge_file"}
    assert len(check_run_params(p)) >= 4


def test_reuse_needs_the_source_runs_files(defaults, tmp_path):
    src = tmp_path / "run1"
    (src / "processed").mkdir(parents=True)
    (src / "processed" / "processed.json").write_text("[]")
    p = {**defaults, "tau2_data_dir": str(tmp_path), "serve_backend": "transformers",
         "gpus_per_training": 0, "gpu_ids": "", "source_run": str(src)}
    assert check_run_params({**p, "start_from": "processed"}) == []
    problems = check_run_params({**p, "start_from": "scores"})
    assert problems == [f"source_run: {src} has no scores/rule_scores.jsonl (needed to start "
                        "from scores)"]
    assert "datasets/dataset_info.json" in " ".join(
        check_run_params({**p, "start_from": "datasets"}))


@pytest.mark.parametrize("value, expected", [("", "None"), ("manual", "None"),
                                             ("@weekly", "@weekly"),
                                             ("0 3 * * 1", "0 3 * * 1")])
def test_schedule_comes_from_the_environment(value, expected):
    code = ("import runpy, sys\n"
            f"ns = runpy.run_path({str(ROOT / 'dags' / (DAG_ID + '.py'))!r})\n"
            "dag = ns['simia_sycophancy_experiment']()\n"
            "print(dag.catchup, dag.max_active_runs)\n"
            "print(ns['SCHEDULE'])\n")
    env = {**__import__("os").environ, "SIMIA_SCHEDULE": value}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, check=True).stdout.strip().splitlines()
    assert out[-1] == expected and out[-2] == "False 1"  # no catchup, one run at a time


def test_a_failure_summary_is_written_to_the_run(tmp_path):
    sys.path.insert(0, str(ROOT / "plugins"))
    from simia_airflow.callbacks import record_failure

    ti = SimpleNamespace(dag_id=DAG_ID, run_id="manual__2026-01-01T00:00:00+00:00",
                         task_id="level.serve_model", map_index=1, try_number=2, max_tries=1)
    record_failure({"ti": ti, "params": {"data_root": str(tmp_path)},
                    "exception": RuntimeError("the server exited\nwith code 1")})
    path = (tmp_path / DAG_ID / "manual__2026-01-01T00-00-00-00-00" / "failures"
            / "level.serve_model.1.json")
    record = json.loads(path.read_text())
    assert record["error_line"] == "RuntimeError: the server exited"
    assert record["try_number"] == 2 and "clear the task" in record["log_hint"]
    # a broken context never raises out of the callback
    record_failure({"ti": None, "params": {"data_root": str(tmp_path)}})
