#!/usr/bin/env python3
"""Start Airflow standalone for this project on 127.0.0.1:8080 and print how to log in.

SQLite lives in the git-ignored ``.airflow/`` folder; DAGs and plugins come from this
repository; example DAGs are off. Ctrl-C (or SIGTERM) stops every Airflow component:
standalone only shuts its children down on SIGINT, and a second SIGINT during that
shutdown aborts it and leaves the scheduler running. So standalone runs in a session of
its own (the terminal's Ctrl-C reaches only this wrapper), gets exactly one SIGINT, and
whatever of its process group is still alive when it exits is terminated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = os.environ.get("SIMIA_AIRFLOW_HOST", "127.0.0.1")
PORT = int(os.environ.get("SIMIA_AIRFLOW_PORT", "8080"))


def airflow_env() -> dict[str, str]:
    """The environment every Airflow process of this project runs with."""
    env = dict(os.environ)
    # standalone starts its components as `airflow ...` found on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    home = Path(env.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow")))
    home.mkdir(parents=True, exist_ok=True)
    env.setdefault("SIMIA_DATA_ROOT", str(ROOT / ".data"))
    defaults = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(PORT),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{PORT}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def _healthy(timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORT}/api/v2/monitor/health",
                                    timeout=timeout) as resp:
            body = json.load(resp)
    except (OSError, ValueError):
        return False
    return body.get("metadatabase", {}).get("status") == "healthy" and \
        body.get("scheduler", {}).get("status") == "healthy"


def _password(home: Path) -> str | None:
    path = home / "simple_auth_manager_passwords.json.generated"
    try:
        return json.loads(path.read_text()).get("admin")
    except (OSError, ValueError):
        return None


def main() -> int:
    env = airflow_env()
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.Popen([str(airflow), "standalone"], env=env, cwd=ROOT,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if proc.poll() is None and not stopping:
            stopping = True
            print("\nStopping Airflow (a few seconds)...", flush=True)
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not _healthy():
        time.sleep(1)
    if proc.poll() is None and _healthy():
        home = Path(env["AIRFLOW_HOME"])
        password = _password(home) or \
            f"(see {home}/simple_auth_manager_passwords.json.generated)"
        tau2 = env.get("TAU2_DATA_DIR") or \
            "NOT SET: set TAU2_DATA_DIR or the tau2_data_dir Param"
        print(
            "\n" + "=" * 72 + f"\nAirflow is up: http://{HOST}:{PORT}\n"
            f"Log in as: admin / {password}\n"
            f"DAG: simia_sycophancy_experiment (starts paused; trigger it with the form)\n"
            f"Run outputs: {env['SIMIA_DATA_ROOT']}\n"
            f"tau2 data dir: {tau2}\n"
            "Stop with Ctrl-C.\n" + "=" * 72, flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop()
        return proc.wait()
    finally:
        _end_group(proc.pid)


def _end_group(pgid: int, grace_s: float = 10.0) -> None:
    """Terminate what is left of standalone's process group (SIGTERM, then SIGKILL)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
