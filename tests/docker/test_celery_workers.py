"""The experiment on Airflow's CeleryExecutor, one Celery worker per host.

A real deployment on this machine (tests/support/celery_cluster.py): Debian's
redis-server as the broker on a free loopback port, the api-server, scheduler and
dag-processor with ``CeleryExecutor`` on SQLite, and three ``airflow celery worker``
processes standing in for three hosts: ``a`` (queue ``simia-a``), ``b`` (queue
``simia-b``), each with its own Celery hostname, log server port and environment, and
``cpu`` on the default queue for the data and report stages. ``SIMIA_GPU_HOSTS`` names the
two hosts (CPU hosts: the tiny model trains on the CPU trainer image), the data root
carries its marker (``simia init-data-root``) and every process has its id.

The DAG runs 2 levels x 2 replicates end to end (the docker layer's conf: train, serve
with the CPU chat server, evaluate with the CI evaluator, report). The task instances in
the REST API show that each training run's four tasks ran on one worker, the one whose
queue the run was placed on, that both hosts got work, and the report is written.

Needs redis-server (scripts/redis_deps.sh), a Docker engine and the CPU images: without
them the test skips with the reason, except when ``$CI`` is set: then it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from test_training_containers import _conf, containers_with

from support.celery_cluster import CeleryCluster, Worker, redis_server_binary

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
LEVEL_TASKS = {"train_model", "serve_model", "evaluate_tau2", "stop_model_server"}
HOSTS = {"a": "simia-a", "b": "simia-b"}
pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.celery,
              pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def redis_server() -> str:
    path = redis_server_binary()
    if path is None:
        hint = "run scripts/redis_deps.sh (as root: Debian's redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so redis-server is required; {hint}")
        pytest.skip(f"redis-server is not installed; {hint}")
    return path


def test_each_training_run_stays_on_its_hosts_worker(redis_server, docker_api,
                                                     evaluator_cpu_image, tiny_model,
                                                     model_cache, raw_file, tau2_dir,
                                                     tmp_path):
    data_root = tmp_path / "data"
    root_id = f"celery-test-{tmp_path.name}"
    made = subprocess.run([sys.executable, "-m", "simia.cli", "init-data-root", str(data_root),
                           "--id", root_id], capture_output=True, text=True, timeout=60,
                          check=False)
    assert made.returncode == 0, made.stderr
    env = {"SIMIA_GPU_HOSTS": "a:;b:", "SIMIA_DATA_ROOT": str(data_root),
           "SIMIA_DATA_ROOT_ID": root_id, "TAU2_DATA_DIR": str(tau2_dir),
           "SIMIA_GPU_IDS": ""}
    # hosts a and b: their own queue, name and GPU ids (none: CPU hosts, as in
    # SIMIA_GPU_HOSTS); cpu: the default queue (data stages, plan, report)
    workers = [Worker("a", [HOSTS["a"]], concurrency=3, env={"SIMIA_GPU_IDS": ""}),
               Worker("b", [HOSTS["b"]], concurrency=3, env={"SIMIA_GPU_IDS": ""}),
               Worker("cpu", ["default"], concurrency=2)]
    conf = _conf(data_root, raw_file, tau2_dir, "simia/trainer:cpu", tiny_model, model_cache,
                 levels=[0, 20], replicates=2, evaluate_models=True,
                 server_image=evaluator_cpu_image, evaluator_image=evaluator_cpu_image,
                 num_tasks=2, num_trials=1)
    with CeleryCluster(tmp_path / "cluster", ROOT / "dags", env) as cluster:
        cluster.start(workers)
        cluster.wait_dag(DAG_ID)
        run_id = cluster.trigger(DAG_ID, conf)
        state = cluster.wait_run(DAG_ID, run_id, timeout=720)
        tis = cluster.task_instances(DAG_ID, run_id)
        failed = [(t["task_id"], t["map_index"], t["state"]) for t in tis
                  if t["state"] not in ("success", "skipped")]
        assert state == "success", (failed, cluster.log_tail("worker-a"),
                                    cluster.log_tail("worker-b"))

    # one training run = one (level group, map index): its four tasks on one worker, the
    # worker of the queue its group is bound to
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ti in tis:
        group, _, name = ti["task_id"].rpartition(".")
        if group.startswith("level") and name in LEVEL_TASKS:
            runs[(group, ti["map_index"])].append(ti)
    assert {group for group, _ in runs} <= {f"level_{host}" for host in HOSTS}
    assert len(runs) == 4, sorted(runs)
    used = set()
    for (group, index), run_tis in runs.items():
        host = group.removeprefix("level_")
        assert {t["task_id"].rpartition(".")[2] for t in run_tis} == LEVEL_TASKS
        where = {(t["queue"], t["hostname"]) for t in run_tis}
        assert where == {(HOSTS[host], host)}, (group, index, where)
        used.add(host)
    assert used == set(HOSTS), "both hosts' workers got training runs"
    # every other task ran on the default queue's worker
    others = [t for t in tis if t["state"] == "success"
              and not t["task_id"].startswith("level_")]
    assert others and {(t["queue"], t["hostname"]) for t in others} == {("default", "cpu")}
    reports = list((data_root / DAG_ID).glob("*/report/report.md"))
    assert len(reports) == 1 and reports[0].stat().st_size > 0
    assert containers_with(docker_api, **{"simia.run_id": run_id}) == []
