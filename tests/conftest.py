"""Fixtures shared by every test layer.

Airflow is pointed at a throw-away AIRFLOW_HOME (SQLite) before anything imports it,
so the suite never touches a developer's own Airflow state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="simia-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__PARALLELISM"] = "4"


def reference_dir() -> Path | None:
    """``$SIMIA_REFERENCE_DATA`` (the shared real data), or None."""
    value = os.environ.get("SIMIA_REFERENCE_DATA")
    if not value:
        return None
    path = Path(value)
    return path if (path / "simia-wm-exp").is_dir() else None


@pytest.fixture(scope="session")
def reference_data() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip("real reference data not available: set SIMIA_REFERENCE_DATA to the "
                    "shared data folder (holding simia-wm-exp/ and tau2-telecom/)")
    return path


@pytest.fixture(scope="session")
def tau2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tau2-like data folder with a synthetic telecom policy (not tau2's text)."""
    from support.synthetic import synthetic_policy

    folder = tmp_path_factory.mktemp("tau2") / "tau2" / "domains" / "telecom"
    folder.mkdir(parents=True)
    policy = synthetic_policy(seed=3)
    (folder / "main_policy.md").write_text(policy)
    (folder / "tech_support_manual.md").write_text("# Tech support manual\n\nCheck the SIM.\n")
    (folder / "tech_support_workflow.md").write_text(
        "# Workflow\n\n1. Check the line status.\n2. Check the SIM card.\n")
    (folder / "db.toml").write_text('[[plans]]\nplan_id = "P1001"\nname = "Basic Plan"\n')
    return folder.parent.parent.parent


@pytest.fixture(scope="session")
def raw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic raw conversations (sycophantic mode)."""
    from support.synthetic import generate_raw

    path = tmp_path_factory.mktemp("raw") / "raw.json"
    path.write_text(json.dumps(generate_raw(300, seed=7)))
    return path


@pytest.fixture()
def converse_server(monkeypatch: pytest.MonkeyPatch):
    """Our local Bedrock Converse server (tests/converse_server.py), fresh per test, with
    dummy AWS credentials in the environment for the real boto3 client."""
    from converse_server import ConverseServer

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with ConverseServer() as server:
        yield server


@pytest.fixture(scope="session")
def experiment_dag():
    """The experiment DAG parsed from dags/, with the test Airflow DB migrated (dag.test)."""
    import subprocess
    import sys

    airflow = Path(sys.executable).with_name("airflow")
    res = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)
    dag = bag.dags["simia_sycophancy_experiment"]
    # dag.test() starts from the previous run's conf, not the Params' defaults: merge every
    # test's conf over the defaults, so no setting leaks from one test into the next
    defaults = {name: param.value for name, param in dag.params.items()}
    run_test = dag.test

    def test(*args, run_conf=None, **kwargs):
        return run_test(*args, run_conf={**defaults, **(run_conf or {})}, **kwargs)

    dag.test = test
    return dag
