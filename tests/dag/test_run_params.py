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
         "gpus_per_training": 0, "gpu_ids": "", "source_run": str(src),
         "label_source": "rules", "sycophancy_source": "natural"}
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
    task = SimpleNamespace(level={"level": 10.0, "run_dir": "..."})  # the rendered plan
    record_failure({"ti": ti, "task": task, "params": {"data_root": str(tmp_path)},
                    "exception": RuntimeError("the server exited\nwith code 1")})
    run = tmp_path / DAG_ID / "manual__2026-01-01T00-00-00-00-00"
    record = json.loads((run / "failures" / "level.serve_model.1.json").read_text())
    assert record["error_line"] == "RuntimeError: the server exited"
    assert record["try_number"] == 2 and "clear the task" in record["log_hint"]
    assert record["by_hand"] == f"simia commands {run} --level 10"
    assert record["by_hand"] in record["log_hint"]
    # a broken context never raises out of the callback
    record_failure({"ti": None, "params": {"data_root": str(tmp_path)}})


@pytest.fixture(scope="module")
def recorded_run(defaults, tmp_path_factory, raw_file, tau2_dir):
    """A run folder as validate_params and build_sft_datasets leave it: run.json with the
    DAG's defaults (GPU settings of a 2-GPU host) and datasets for levels 0 and 10."""
    from support.runs import DESIGN_PARAMS, run_with_datasets

    root = tmp_path_factory.mktemp("commands")
    run = run_with_datasets(root / DAG_ID / "manual__2026-11-22", raw_file, tau2_dir)
    params = {**defaults, "data_root": str(root), "tau2_data_dir": str(tau2_dir),
              **DESIGN_PARAMS, "gpu_ids": "0,1",
              "gpus_per_training": 2, "serve_backend": "vllm", "gpus_per_server": 1}
    (run / "run.json").write_text(json.dumps(
        {"dag_id": DAG_ID, "run_id": "manual__2026-11-22", "params": params}))
    return run, params


def _fake_docker(bin_dir: Path, log: Path) -> None:
    """A `docker` that records its arguments (one JSON list per call) and reports every
    container as running and healthy."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["inspect"]:
    print("running healthy")
""")
    fake.chmod(0o755)


def test_simia_commands_prints_every_replicate_of_a_level(recorded_run, capsys):
    """Each training run of a level has its own folder, dataset draw, seed and containers."""
    from simia.cli import main

    run, _ = recorded_run
    assert main(["commands", str(run), "--level", "10"]) == 0
    script = capsys.readouterr().out
    assert "# ---- level 10 %, replicate 1" in script
    assert "# ---- level 10 %, replicate 2" in script
    assert str(run / "train" / "10pct-r2" / "train_config.yaml") in script
    assert "simia-serve-" in script and "-10pct-r2" in script
    one = (run / "train" / "10pct" / "train_config.yaml").read_text()
    two = (run / "train" / "10pct-r2" / "train_config.yaml").read_text()
    differ = {a.split(":")[0] for a, b in zip(one.splitlines(), two.splitlines()) if a != b}
    assert differ == {"dataset", "output_dir", "seed"}
    assert "dataset: telecom_syc_10pct_r2" in two and "seed: 43" in two
    assert main(["commands", str(run), "--replicate", "3"]) == 2
    assert "no replicate 3" in capsys.readouterr().err


def test_simia_commands_prints_the_levels_containers(recorded_run, tmp_path, capsys,
                                                     monkeypatch):
    """`simia commands`: what train_model, serve_model, evaluate_tau2 and stop_model_server
    start for a level, as a bash script of docker commands (run here against a docker that
    records its arguments); secrets by name only."""
    import os

    from simia.cli import main

    run, p = recorded_run
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-456")
    assert main(["commands", str(run), "--level", "10", "--replicate", "1",
                 "-o", str(tmp_path / "run.sh")]) == 0
    script = (tmp_path / "run.sh").read_text()
    assert "10pct-r2" not in script  # only the replicate asked for
    assert os.access(tmp_path / "run.sh", os.X_OK)
    assert "secret_value" not in script and "secret-value" not in script
    assert "/0pct" not in script and "-0pct" not in script  # only the level asked for
    _fake_docker(tmp_path / "bin", tmp_path / "calls.jsonl")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(tmp_path / "run.sh")], check=True, env=env, timeout=60)
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c[:2] for c in calls] == [["run", "--rm"], ["network", "create"], ["run", "-d"],
                                      ["inspect", "-f"], ["run", "--rm"], ["rm", "-f"],
                                      ["network", "rm"]]
    train, serve, evaluate = calls[0], calls[2], calls[4]

    config = run / "train" / "10pct" / "train_config.yaml"
    assert config.is_file()
    assert train[-4:] == [p["trainer_image"], "llamafactory-cli", "train", str(config)]
    assert train[train.index("--gpus") + 1] == '"device=0,1"'
    assert train[train.index("HF_TOKEN") - 1] == "-e"  # passed by name, no value
    assert f"type=bind,source={run},target={run}" in train

    assert serve[serve.index("--entrypoint") + 1] == "python3"
    at = serve.index(p["server_image"])
    assert serve[at + 1:at + 5] == ["-m", "vllm.entrypoints.openai.api_server", "--model",
                                    str(run / "train" / "10pct" / "output")]
    assert serve[serve.index("--gpus") + 1] == '"device=0"'
    assert "/v1/models" in serve[serve.index("--health-cmd") + 1]
    network = calls[1][2]
    assert serve[serve.index("--network") + 1] == network == calls[-1][2]
    assert evaluate[evaluate.index("--network") + 1] == network
    assert evaluate[evaluate.index("OPENAI_API_KEY") - 1] == "-e"
    tau2 = evaluate[evaluate.index(p["evaluator_image"]) + 1:]
    assert tau2[:2] == ["tau2", "run"]
    assert tau2[tau2.index("--save-to") + 1] == str(run / "eval" / "10pct")

    # a trained level is not trained again
    (run / "train" / "10pct" / "output").mkdir(parents=True)
    (run / "train" / "10pct" / "training_summary.json").write_text(json.dumps(
        {"level": 10.0, "model_path": str(run / "train" / "10pct" / "output"),
         "config_path": str(config)}))
    (tmp_path / "calls.jsonl").unlink()
    assert main(["commands", str(run), "--level", "10", "--replicate", "1"]) == 0
    (tmp_path / "again.sh").write_text(capsys.readouterr().out)
    subprocess.run(["bash", str(tmp_path / "again.sh")], check=True, env=env, timeout=60)
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls[0][:2] == ["network", "create"] and len(calls) == 6

    # an evaluation that fails still removes the server and its network (the teardown)
    (tmp_path / "calls.jsonl").unlink()
    fake = (tmp_path / "bin" / "docker").read_text()
    (tmp_path / "bin" / "docker").write_text(fake + """
if sys.argv[1:2] == ["run"] and "-d" not in sys.argv:
    sys.exit(3)
""")
    failed = subprocess.run(["bash", str(tmp_path / "again.sh")], env=env, timeout=60)
    assert failed.returncode == 3
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c[:2] for c in calls[-2:]] == [["rm", "-f"], ["network", "rm"]]
    assert calls[-1][2] == network


def test_simia_commands_errors_name_the_file(recorded_run, tmp_path, capsys):
    from simia.cli import main

    run, _ = recorded_run
    assert main(["commands", str(run), "--level", "5"]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "no level 5" in err and "0, 10" in err
    assert main(["commands", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err
    record = json.loads((run / "run.json").read_text())
    del record["params"]["trainer_image"]
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert main(["commands", str(tmp_path)]) == 2
    assert "'trainer_image'" in capsys.readouterr().err


def test_the_bedrock_connection_is_checked_before_any_work(defaults, tmp_path, monkeypatch):
    """A run that calls the LLM names a missing connection, or one without a region, at
    once (not botocore's NoRegionError traceback in the first LLM task, retried)."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from simia_airflow.llm import llm_connection_problems

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    p = {**defaults, "raw_conversations": "", "label_source": "rules",
         "sycophancy_source": "natural", "aws_conn_id": "simia_no_such_conn"}
    assert any(m.startswith("aws_conn_id: there is no Airflow connection 'simia_no_such_conn'")
               for m in llm_connection_problems(p))
    monkeypatch.setenv("AIRFLOW_CONN_SIMIA_REGIONLESS", json.dumps({"conn_type": "aws"}))
    assert any("names no region" in m for m in llm_connection_problems(
        {**p, "aws_conn_id": "simia_regionless"}))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # the workers' environment
    assert llm_connection_problems({**p, "aws_conn_id": "simia_regionless"}) == []
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AIRFLOW_CONN_SIMIA_WITH_REGION", json.dumps(
        {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}))
    assert llm_connection_problems({**p, "aws_conn_id": "simia_with_region"}) == []
    # runs that call no LLM, or an OpenAI-compatible server, need no AWS connection
    assert llm_connection_problems({**p, "raw_conversations": "/raw.json"}) == []
    assert llm_connection_problems({**p, "llm_backend": "openai"}) == []
    assert llm_connection_problems({**p, "raw_conversations": "/raw.json",
                                    "label_source": "judge"}) != []


def test_designs_the_caps_can_never_fill_are_rejected(defaults, tmp_path):
    p = {**defaults, "tau2_data_dir": str(tmp_path), "serve_backend": "transformers",
         "gpus_per_training": 0, "gpu_ids": ""}
    problems = check_run_params({**p, "collect_max_attempts": 300})
    assert any(m.startswith("collect_max_attempts: 300 attempts can never fill this design")
               and "500 clean conversations" in m for m in problems), problems
    problems = check_run_params({**p, "sycophancy_source": "natural",
                                 "collect_max_attempts": 550})
    assert any("500 clean and 100 sycophantic" in m and "about 10,000" in m
               for m in problems), problems
    # the fixed path: a target the design can never be built from (the old default run)
    problems = check_run_params({**p, "collection": "fixed", "target_conversations": 100})
    assert any(m.startswith("target_conversations: 100 generated conversations can never "
                            "fill this design") for m in problems), problems
    # twins need the judge; collection labels with the judge
    problems = check_run_params({**p, "label_source": "rules"})
    assert any(m.startswith("sycophancy_source: twins are checked by the LLM judge")
               for m in problems)
    assert any(m.startswith("label_source: collection = design labels each conversation")
               for m in problems)
    problems = check_run_params({**p, "start_from": "collect", "collection": "fixed",
                                 "source_run": str(tmp_path)})
    assert any(m.startswith("start_from: collect continues a collection") for m in problems)
    assert any("has no collect/collect-pilot-shard-000-of-001.jsonl" in m for m in problems)
    assert check_run_params({**p, "collect_pilot": 5000, "collect_max_attempts": 4000}) == [
        "collect_pilot: 5,000 pilot attempts exceed collect_max_attempts (4,000)"]
