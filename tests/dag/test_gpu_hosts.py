"""The experiment on several GPU hosts (SIMIA_GPU_HOSTS): the DAG's per-host groups and
queues, the plans per host (GPU ids, lock folders), the placement logged and recorded,
`simia commands`, the report naming a host's task, and the failure summary."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from simia.errors import ConfigError, SimiaError
from simia.layout import RunLayout
from simia.settings.hosts import parse_gpu_hosts

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
HOSTS = "gpu-a:0,1,2,3;gpu-b:0,1,2,3,4,5,6,7;cpu-a:"
TASKS = ("train_model", "serve_model", "evaluate_tau2", "stop_model_server")


def _bag(monkeypatch, hosts: str | None):
    from airflow.dag_processing.dagbag import DagBag

    if hosts is None:
        monkeypatch.delenv("SIMIA_GPU_HOSTS", raising=False)
    else:
        monkeypatch.setenv("SIMIA_GPU_HOSTS", hosts)
    return DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)


@pytest.fixture(scope="module")
def defaults():
    """The DAG's Params on one host (this test machine's environment)."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags[DAG_ID]
    return {name: param.value for name, param in dag.params.items()}


def test_each_host_has_its_mapped_group_on_its_queue(monkeypatch):
    from airflow.configuration import conf

    bag = _bag(monkeypatch, HOSTS)
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    default_queue = conf.get("operators", "default_queue")
    assert "level" not in dag.task_group_dict
    slots = {"gpu-a": 4, "gpu-b": 8, "cpu-a": 1}
    report = {t.task_id for t in dag.get_task("report_results").upstream_list}
    for host, most in slots.items():
        group = dag.task_group_dict[f"level_{host}"]
        assert type(group).__name__ == "MappedTaskGroup"
        tasks = [dag.get_task(f"level_{host}.{t}") for t in TASKS]
        assert {t.queue for t in tasks} == {f"simia-{host}"}
        assert tasks[0].max_active_tis_per_dag == most
        assert tasks[1].is_setup and tasks[3].is_teardown
        picker = dag.get_task(f"plans_{host}")
        assert {t.task_id for t in picker.upstream_list} == {"plan_levels"}
        assert {t.task_id for t in tasks[0].upstream_list} == {f"plans_{host}"}
        assert f"level_{host}.evaluate_tau2" in report
    # the CPU stages stay on the default queue; every task is documented and retried
    on_hosts = {t.task_id for t in dag.tasks if t.queue != default_queue}
    assert on_hosts == {f"level_{h}.{t}" for h in slots for t in TASKS}
    for task in dag.tasks:
        assert task.doc_md and task.on_failure_callback, task.task_id
        assert task.execution_timeout, task.task_id
        assert task.retries >= (0 if task.task_id == "validate_params" else 1), task.task_id
    assert [t.task_id for t in dag.topological_sort()][-1] == "report_results"
    assert dag.params["gpus_per_training"] == 4  # the smallest GPU host's


def test_without_hosts_the_dag_is_unchanged(monkeypatch):
    from airflow.configuration import conf

    dag = _bag(monkeypatch, "").dags[DAG_ID]
    assert not [g for g in dag.task_group_dict if g.startswith("level_")]
    assert not [t for t in dag.task_ids if t.startswith("plans_")]
    train = dag.get_task("level.train_model")
    assert train.queue == conf.get("operators", "default_queue")
    assert {t.task_id for t in train.upstream_list} == {"plan_levels"}


def test_a_bad_hosts_value_fails_the_dag_import_naming_it(monkeypatch):
    bag = _bag(monkeypatch, "gpu-a.lab.example:0,1")
    [error] = bag.import_errors.values()
    assert "SIMIA_GPU_HOSTS: host name 'gpu-a.lab.example'" in error


def test_parse_time_imports_stay_light_with_hosts():
    code = ("import sys, runpy\n"
            f"runpy.run_path({str(ROOT / 'dags' / (DAG_ID + '.py'))!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith('simia')))\n")
    env = {**__import__("os").environ, "SIMIA_GPU_HOSTS": HOSTS}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = set(ast.literal_eval(res.stdout.strip().splitlines()[-1]))
    simia = {m for m in imported if m == "simia" or m.startswith("simia.")}
    assert simia <= {"simia", "simia.errors", "simia.layout", "simia.redaction",
                     "simia.settings"} | {m for m in simia if m.startswith("simia.settings.")}
    assert "simia.settings.hosts" in simia


# --------------------------------------------------------------------------- plans per host

@pytest.fixture(scope="module")
def built_run(defaults, tmp_path_factory, raw_file, tau2_dir):
    """A run with datasets for levels 0 and 10, two replicates, 2 GPUs per training."""
    from support.runs import DESIGN_PARAMS, run_with_datasets

    root = tmp_path_factory.mktemp("hosts")
    run = run_with_datasets(root / DAG_ID / "manual__2026-12-01", raw_file, tau2_dir)
    params = {**defaults, "data_root": str(root), "tau2_data_dir": str(tau2_dir),
              **DESIGN_PARAMS, "gpu_ids": "", "gpus_per_training": 2, "serve_backend": "vllm",
              "gpus_per_server": 1, "train_models": True, "evaluate_models": True}
    return run, params


def test_plans_carry_their_hosts_gpus_queue_and_own_lock_folder(built_run):
    from simia.run_config import level_plans

    run, p = built_run
    hosts = parse_gpu_hosts("gpu-a:0,1;gpu-b:4,5,6,7;cpu-a:")
    plans = level_plans(p, run_dir=run, run_id=run.name, dag_id=DAG_ID,
                        dataset_dir=run / "datasets", hosts=hosts)
    root = Path(p["data_root"])
    assert [(pl["level"], pl["replicate"]) for pl in plans] == [(0, 1), (10, 1), (0, 2),
                                                               (10, 2)]
    ids = {"gpu-a": "0,1", "gpu-b": "4,5,6,7"}
    for pl in plans:
        assert pl["queue"] == f"simia-{pl['host']}" and pl["host"] in ids
        assert pl["gpu_ids"] == pl["train"]["gpu_ids"] == ids[pl["host"]]
        assert pl["lock_dir"] == pl["train"]["lock_dir"] == str(
            root / ".locks" / "gpus" / pl["host"])
        assert pl["data_root"] == str(root)
    # gpu-a runs one training of 2 GPUs at a time, gpu-b two: 4 runs share 3 slots
    assert sorted(pl["host"] for pl in plans) == ["gpu-a", "gpu-a", "gpu-b", "gpu-b"]
    # one host: the plans as before (no host, the gpu_ids Param, the one lock folder)
    single = level_plans({**p, "gpu_ids": "0,1"}, run_dir=run, run_id=run.name,
                         dag_id=DAG_ID, dataset_dir=run / "datasets")
    assert all("host" not in pl and pl["gpu_ids"] == "0,1" for pl in single)
    assert {pl["lock_dir"] for pl in single} == {str(root / ".locks" / "gpus")}


def test_plan_levels_returns_each_hosts_plans_and_records_the_placement(built_run, capsys):
    from simia import pipeline

    run, p = built_run
    hosts = parse_gpu_hosts("gpu-a:0,1;gpu-b:4,5,6,7;cpu-a:")
    done = pipeline.plan_levels(p, RunLayout(run), {"dataset_dir": str(run / "datasets")},
                                dag_id=DAG_ID, run_id=run.name, hosts=hosts)
    assert list(done.value) == ["gpu-a", "gpu-b", "cpu-a"]
    assert done.value["cpu-a"] == []  # no GPUs: its group is skipped
    assert all(pl["host"] == name for name, pls in done.value.items() for pl in pls)
    placed = json.loads((run / "placement.json").read_text())
    assert {r["slug"]: r["host"] for r in placed["runs"]} == {
        pl["train"]["labels"]["simia.level"] + "pct" + (
            "" if pl["replicate"] == 1 else f"-r{pl['replicate']}"): pl["host"]
        for pls in done.value.values() for pl in pls}
    out = capsys.readouterr().out
    assert "0pct-r2 -> " in out and "cpu-a: no runs (0 GPUs, a training needs 2)" in out
    assert "planned makespan 2 run-lengths vs ideal 1.33" in out
    off = pipeline.plan_levels({**p, "train_models": False}, RunLayout(run), {
        "dataset_dir": str(run / "datasets")}, dag_id=DAG_ID, run_id=run.name, hosts=hosts)
    assert off.value == {"gpu-a": [], "gpu-b": [], "cpu-a": []}


def test_validate_logs_the_placement_and_records_the_hosts(built_run, tmp_path, capsys,
                                                          monkeypatch):
    from simia import pipeline

    _, p = built_run
    p = {**p, "data_root": str(tmp_path)}
    hosts = parse_gpu_hosts("gpu-a:0,1;gpu-b:4,5,6,7")
    run = RunLayout(tmp_path / "run")
    run.root.mkdir()
    pipeline.validate({**p, "gpu_ids": "0"}, run, dag_id=DAG_ID, run_id="r1", hosts=hosts)
    out = capsys.readouterr().out
    assert "gpu_ids = 0 is not used: with SIMIA_GPU_HOSTS" in out
    assert "placement of the training runs on SIMIA_GPU_HOSTS:" in out
    from simia.run_config import placement

    for line in placement(p, hosts).lines():
        assert f"  {line}\n" in out
    assert out.count(" -> gpu-") == 4
    assert json.loads(run.run_json.read_text())["gpu_hosts"] == "gpu-a:0,1;gpu-b:4,5,6,7"
    # a design no host can run, and a data root that is not the shared one
    monkeypatch.setenv("SIMIA_DATA_ROOT_ID", "lab-1")
    with pytest.raises(ConfigError) as err:
        pipeline.validate({**p, "gpus_per_training": 8}, run, dag_id=DAG_ID, run_id="r1",
                          hosts=hosts)
    assert "gpus_per_training / gpus_per_server: gpus_per_training = 8: no host" in str(
        err.value)
    assert f"data_root: the data root {tmp_path} is not the shared one" in str(err.value)
    (tmp_path / ".simia-data-root").write_text("lab-1\n")
    pipeline.validate(p, run, dag_id=DAG_ID, run_id="r1", hosts=hosts)


def test_simia_commands_says_where_each_run_goes(built_run, capsys):
    from simia.cli import main

    run, p = built_run
    (run / "run.json").write_text(json.dumps({"dag_id": DAG_ID, "run_id": run.name,
                                              "params": p, "gpu_hosts": "gpu-a:0,1;"
                                                                        "gpu-b:4,5,6,7"}))
    assert main(["commands", str(run), "--level", "10", "--replicate", "2"]) == 0
    script = capsys.readouterr().out
    [where] = [ln for ln in script.splitlines() if ln.startswith("# placed on host")]
    host = where.split()[4]
    ids = {"gpu-a": "0,1", "gpu-b": "4,5,6,7"}[host]
    assert where == f"# placed on host {host} (GPUs {ids}, queue simia-{host}): run these there"
    # 2 GPUs per training: the first two of its host's
    assert f'--gpus \'"device={",".join(ids.split(",")[:2])}"\'' in script


def test_the_report_names_the_hosts_task_of_a_missing_run(built_run, tmp_path):
    from simia import pipeline
    from simia.run_config import placement

    run, p = built_run
    hosts = parse_gpu_hosts("gpu-a:0,1;gpu-b:4,5,6,7")
    layout = RunLayout(run)
    placed = placement(p, hosts)
    layout.placement.write_text(json.dumps(placed.as_dict()))
    with pytest.raises(SimiaError) as err:
        pipeline.report(p, layout, validated=True, datasets_built=True)
    host = placed.host_of(placed.assignments[3].run).name
    assert f"10 % (replicate 2, level_{host}.train_model)" in str(err.value)


def test_a_failure_summary_names_the_host(tmp_path):
    sys.path.insert(0, str(ROOT / "plugins"))
    from simia_airflow.callbacks import record_failure

    ti = SimpleNamespace(dag_id=DAG_ID, run_id="r1", task_id="level_gpu-b.train_model",
                         map_index=0, try_number=1, max_tries=1)
    task = SimpleNamespace(level={"level": 5.0, "replicate": 2, "host": "gpu-b",
                                  "queue": "simia-gpu-b"})
    record_failure({"ti": ti, "task": task, "params": {"data_root": str(tmp_path)},
                    "exception": RuntimeError("CUDA out of memory")})
    record = json.loads((tmp_path / DAG_ID / "r1" / "failures" /
                         "level_gpu-b.train_model.0.json").read_text())
    assert record["host"] == "gpu-b" and record["queue"] == "simia-gpu-b"
    assert "(on host gpu-b, whose worker serves queue simia-gpu-b)" in record["log_hint"]
