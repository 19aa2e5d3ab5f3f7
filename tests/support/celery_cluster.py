"""A real Airflow deployment with the CeleryExecutor on one machine, for tests and benchmarks.

Debian's ``redis-server`` (the broker) on a free loopback port; the metadata DB on SQLite,
which is also Celery's result backend (``db+sqlite://``, as Postgres is in Compose);
``airflow api-server``, ``scheduler`` and ``dag-processor``; and any number of
``airflow celery worker`` processes, each with its own queues, Celery hostname, log server
port and extra environment (``SIMIA_GPU_IDS`` ...), the way every GPU host runs one.

Each worker reports its own name as the task instances' ``hostname`` through
``[core] hostname_callable`` = :func:`worker_hostname` (several workers share this machine,
whose FQDN would be the same for all): the variable it reads exists only in that
worker's process tree, so the name in the DB says which worker ran the task.

Every process runs in a session of its own and is stopped (SIGTERM, then SIGKILL) by
:meth:`CeleryCluster.stop`; their output goes to ``<base>/logs/<name>.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.airflow_api import AirflowAPI, free_port

WORKER_NAME_VAR = "SIMIA_TEST_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the cluster: the worker's name, else the FQDN."""
    return os.environ.get(WORKER_NAME_VAR) or socket.getfqdn()


def redis_server_binary() -> str | None:
    """Path of Debian's redis-server (scripts/redis_deps.sh installs it), or None."""
    return shutil.which("redis-server")


@dataclass
class Worker:
    """One ``airflow celery worker``: what a host of the deployment runs."""

    name: str
    queues: list[str]
    concurrency: int = 2
    env: dict[str, str] = field(default_factory=dict)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class CeleryCluster:
    """Redis + Airflow (CeleryExecutor, SQLite) + Celery workers, as subprocesses.

    ``base`` holds AIRFLOW_HOME, the Redis dump folder and the processes' logs;
    ``dags_folder`` is what the dag-processor parses; ``env`` is added to every process
    (the workers' own ``env`` on top of it).
    """

    def __init__(self, base: Path, dags_folder: Path, env: dict[str, str] | None = None,
                 python_path: list[Path] | None = None) -> None:
        self.base = base
        self.home = base / "home"
        self.logs = base / "logs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self._procs: dict[str, subprocess.Popen] = {}
        self._client = AirflowAPI(self.url, "admin")
        root = Path(__file__).resolve().parents[2]
        paths = [str(p) for p in (python_path or [])] + [
            str(root / "tests"), str(root / "include"), str(root / "plugins")]
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.url,
            # one secret for every component: the workers' log servers check the
            # api-server's signed requests with it, as on several hosts
            "AIRFLOW__API__SECRET_KEY": "simia-celery-cluster-test-key",
            "AIRFLOW__API_AUTH__JWT_SECRET": "simia-celery-cluster-test-jwt-secret-0123456789",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            # the result backend: Celery's database backend on the metadata DB itself
            # (db+sqlite://..., what the provider derives from sql_alchemy_conn when
            # [celery] result_backend is unset; Airflow 3.3.2 + Celery 5.6 accept SQLite)
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        }
        self.env.update(env or {})
        self.env.pop(WORKER_NAME_VAR, None)
        (self.home / "passwords.json").write_text(json.dumps({"admin": "admin"}))

    # --- lifecycle --------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self._procs[name] = subprocess.Popen(argv, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.base,
                                             start_new_session=True)
        log.close()

    def start(self, workers: list[Worker], timeout: float = 180) -> None:
        """Redis, ``db migrate``, the Airflow components, the workers; wait until healthy."""
        redis = redis_server_binary()
        if redis is None:
            raise RuntimeError("redis-server is not installed (scripts/redis_deps.sh)")
        self._spawn("redis", [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(self.base)],
                    self.env)
        airflow = str(Path(sys.executable).with_name("airflow"))
        done = subprocess.run([airflow, "db", "migrate"], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stderr[-3000:]}")
        for component in ("api-server", "scheduler", "dag-processor"):
            self._spawn(component, [airflow, component], self.env)
        for worker in workers:
            env = {**self.env, **worker.env, WORKER_NAME_VAR: worker.name,
                   "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
            self._spawn(f"worker-{worker.name}",
                        [airflow, "celery", "worker", "--queues", ",".join(worker.queues),
                         "--concurrency", str(worker.concurrency),
                         "--celery-hostname", worker.name, "--without-mingle",
                         "--without-gossip"], env)
        self._wait_healthy(timeout)
        self._wait_workers([w.name for w in workers], timeout)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                   + self.log_tail(name))

    def log_tail(self, name: str, chars: int = 4000) -> str:
        """The end of a process's output."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health",
                                            timeout=3) as resp:
                    health = json.load(resp)
                if health["scheduler"]["status"] == "healthy" and \
                        health.get("dag_processor", {}).get("status") == "healthy":
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(1)
        raise RuntimeError("Airflow did not get healthy:\n" + self.log_tail("scheduler"))

    def _wait_workers(self, names: list[str], timeout: float) -> None:
        """Until every worker answers a Celery ping through the broker."""
        from celery import Celery

        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                replies = app.control.ping(timeout=1.0) or []
                answered = {name.split("@", 1)[-1] for reply in replies for name in reply}
                if set(names) <= answered:
                    return
                time.sleep(1)
        finally:
            app.close()
        raise RuntimeError(f"Celery workers {names} did not answer:\n"
                           + "\n".join(self.log_tail(f"worker-{n}", 1500) for n in names))

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the workers, then the Airflow components, then Redis: SIGTERM to each
        process group, SIGKILL after ``grace_s``."""
        names = list(self._procs)
        stages = [[n for n in names if n.startswith("worker-")],
                  [n for n in names if not n.startswith("worker-") and n != "redis"],
                  [n for n in names if n == "redis"]]
        for stage in stages:
            for name in stage:
                if self._procs[name].poll() is None:
                    _signal_group(self._procs[name].pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for name in stage:
                proc = self._procs[name]
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                # the group too: a worker's forked task runners may outlive it
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> CeleryCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- REST -------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call to the REST API as the admin user (token fetched once)."""
        return self._client.api(method, path, body)

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has stored ``dag_id``; then unpause it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.api("GET", f"/api/v2/dags/{dag_id}")
                break
            except OSError:  # not up yet, or the DAG not stored yet
                time.sleep(2)
        else:
            raise RuntimeError(f"DAG {dag_id} was not parsed:\n"
                               + self.log_tail("dag-processor"))
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Trigger a run with ``conf``; its run id."""
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                       {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """The run's final state (success or failed); raises after ``timeout``."""
        quoted = urllib.request.quote(run_id, safe="")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise RuntimeError(f"run {run_id} of {dag_id} did not finish in {timeout:.0f} s: "
                           f"{self.task_instances(dag_id, run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run (mapped ones one per map index)."""
        quoted = urllib.request.quote(run_id, safe="")
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances"
                               "?limit=1000")["task_instances"]
