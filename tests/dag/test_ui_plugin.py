"""The "Experiment runs" UI plugin: the FastAPI app (pages, report serving, traversal
refused, auth required), the plugin's shape, and Airflow's plugin manager loading it
from the plugins folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from simia_airflow import ui  # noqa: E402

EXPERIMENT = "simia_sycophancy_experiment"
RUN = "manual__2026-01-01T00-00-00-00-00"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
HEADLINE = ("More sycophancy lowered task success: with sycophancy in the training data varied "
            "over 0 and 20 % with 2 training runs per level (4 runs, 3 with results), pass^1 "
            "falls by 37.5 points per 10 points of sycophancy (95 % CI -52.0 to -23.0; "
            "p < 0.0001, one-sided (less)).")


def _jdump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Two runs (one reported, with a failure; one only seeded), a secret beside them."""
    exp = tmp_path / "data" / EXPERIMENT
    run = exp / RUN
    (run / "seeds").mkdir(parents=True)
    (run / "seeds" / "seeds.json").write_text("[]")
    _jdump(run / "eval" / "0pct" / "eval_summary.json", {"api_key": "sk-never-shown"})
    _jdump(run / "report" / "report.json", {
        "headline": {"verdict": "decrease", "text": HEADLINE,
                     "warnings": ["evaluated with <ci>, not tau2-bench"]},
        "settings": {"resamples": 200},
        "levels": [
            {"level": 0.0, "slug": "0pct", "runs": 2, "runs_with_results": 2,
             "tasks": 30, "trials": 4, "infrastructure_errors": 0,
             "pass_hat_k": {"1": {"estimate": 0.9167, "low": 0.85, "high": 0.97}},
             "agent": {"llm": "hosted_vllm/simia-0pct", "llm_args": {"api_key": "sk-x"}}},
            {"level": 20.0, "slug": "20pct", "runs": 2, "runs_with_results": 1,
             "tasks": 30, "trials": 4, "infrastructure_errors": 2,
             "pass_hat_k": {"1": {"estimate": 0.1667, "low": 0.1, "high": 0.25}},
             "problem": "no results for replicate 2 (no results.json: its evaluation never "
                        "ran)"}]})
    (run / "report" / "report.html").write_text("<html><body>the report</body></html>")
    (run / "report" / "report.md").write_text("# the report\n")
    (run / "report" / "pass_k_by_level.png").write_bytes(PNG)
    (run / "report" / "notes.txt").write_text("not served")
    _jdump(run / "failures" / "level.evaluate_tau2.1.json", {
        "dag_id": EXPERIMENT, "run_id": RUN_ID, "task_id": "level.evaluate_tau2",
        "map_index": 1, "try_number": 2, "error": "RuntimeError: <server> did not start",
        "log_hint": "Read the end of this task's log", "time": "2026-01-01T03:00:00+00:00"})
    (exp / "scheduled__2026-01-02").mkdir()
    (exp / "scheduled__2026-01-02" / "seeds").mkdir()
    (exp / "scheduled__2026-01-02" / "seeds" / "seeds.json").write_text("[]")
    (tmp_path / "data" / "secret.json").write_text('{"password": "hunter2"}')
    (run / "report" / "escape.json").symlink_to(tmp_path / "data" / "secret.json")
    for path in [run, *run.rglob("*")]:
        os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
    return tmp_path / "data"


@pytest.fixture
def client(data_root: Path, monkeypatch) -> TestClient:
    """The plugin's own app (data root from $SIMIA_DATA_ROOT), the auth check stubbed."""
    monkeypatch.setenv("SIMIA_DATA_ROOT", str(data_root))
    monkeypatch.setattr(ui, "airflow_runs", lambda: {})
    ui.app.dependency_overrides[ui.require_dag_run_access] = lambda: None
    try:
        yield TestClient(ui.app)
    finally:
        ui.app.dependency_overrides.clear()


def _ok(client: TestClient, url: str):
    res = client.get(url)
    assert res.status_code == 200, (url, res.status_code, res.text[:300])
    return res


def test_list_page_shows_runs_verdict_and_links(client):
    res = _ok(client, "/")
    assert res.headers["content-type"].startswith("text/html")
    assert "script-src" not in res.headers["content-security-policy"]  # no scripts at all
    page = res.text
    assert RUN in page and "scheduled__2026-01-02" in page
    assert "More sycophancy lowered task success</span>" in page  # the verdict badge
    assert "p &lt; 0.0001, one-sided" in page  # the headline, escaped
    # per level: pass^1 and its training runs
    assert '0 %: 0.92 [0.85, 0.97] <span class="muted">(2 runs)</span>' in page
    assert '20 %: 0.17 [0.10, 0.25] <span class="muted">(1 of 2 runs)</span>' in page
    assert "No report yet" in page
    assert f'href="runs/{RUN}/report"' in page
    # the run id comes from the failure record: a link to that DAG run in Airflow
    assert 'href="../dags/simia_sycophancy_experiment/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"' in page  # noqa: E501
    assert 'href="../dags/simia_sycophancy_experiment/runs"' in page  # the other run
    assert "sk-" not in page and "hunter2" not in page and "resamples" not in page
    # newest first: the seeded run was touched now, the reported one long ago
    assert page.index("scheduled__2026-01-02") < page.index(RUN)


def test_run_page_shows_headline_levels_stages_failures_and_report_links(client):
    res = client.get(f"/runs/{RUN}", follow_redirects=False)
    assert res.status_code == 307 and res.headers["location"] == f"{RUN}/"
    page = _ok(client, f"/runs/{RUN}/").text
    assert page.index("More sycophancy lowered task success") < page.index("pass^1 per level")
    assert "evaluated with &lt;ci&gt;, not tau2-bench" in page
    assert "<td>0 %</td><td>2 runs</td><td>30 x 4</td><td>0.92 [0.85, 0.97]</td>" in page
    assert "<td>1 of 2 runs</td>" in page and "no results for replicate 2" in page
    assert "RuntimeError: &lt;server&gt; did not start" in page and "<server>" not in page
    assert "level.evaluate_tau2" in page and "Failures (1)" in page
    assert f"<code>{RUN_ID}</code>" in page
    assert 'href="report"' in page and 'href="files/report.md"' in page
    assert 'src="files/pass_k_by_level.png"' in page and "notes.txt" not in page
    assert "sk-" not in page and "hunter2" not in page


@pytest.mark.parametrize("verdict, label", [
    ("invalid", "Invalid: no verdict"), ("insufficient", "Not enough training runs"),
    ("no_effect", "No detectable effect")])
def test_every_verdict_of_the_analysis_has_a_badge(tmp_path, verdict, label):
    _jdump(tmp_path / EXPERIMENT / "r" / "report" / "report.json",
           {"headline": {"verdict": verdict, "text": "the sentence", "warnings": []}})
    app = ui.create_app(tmp_path, run_lookup=dict, require_auth=False)
    page = _ok(TestClient(app), "/").text
    assert f"{label}</span>" in page and "the sentence" in page


def test_airflow_database_run_ids_and_states_are_used(data_root):
    app = ui.create_app(data_root, run_lookup=lambda: {
        "scheduled__2026-01-02": ui.AirflowRun("scheduled__2026-01-02", "running")},
        require_auth=False)
    page = _ok(TestClient(app), "/").text
    assert 'href="../dags/simia_sycophancy_experiment/runs/scheduled__2026-01-02"' in page
    assert "Airflow run</a> (running)" in page


def test_report_and_files_are_served_with_their_types(client):
    res = _ok(client, f"/runs/{RUN}/report")
    assert res.text == "<html><body>the report</body></html>"
    assert res.headers["content-type"] == "text/html; charset=utf-8"
    assert res.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in res.headers["content-security-policy"]
    res = _ok(client, f"/runs/{RUN}/files/pass_k_by_level.png")
    assert res.content == PNG and res.headers["content-type"] == "image/png"
    assert _ok(client, f"/runs/{RUN}/files/report.md").headers["content-type"] == (
        "text/markdown; charset=utf-8")
    res = _ok(client, f"/runs/{RUN}/files/report.json")
    assert res.headers["content-type"] == "application/json"
    assert res.json()["headline"]["verdict"] == "decrease"


@pytest.mark.parametrize("url", [
    f"/runs/{RUN}/files/notes.txt",  # suffix not allowed
    f"/runs/{RUN}/files/escape.json",  # a symlink out of the run
    f"/runs/{RUN}/files/missing.png",
    f"/runs/{RUN}/files/../../../secret.json",
    f"/runs/{RUN}/files/..%2F..%2F..%2Fsecret.json",
    f"/runs/{RUN}/files/%2e%2e%2f%2e%2e%2fseeds%2fseeds.json",
    f"/runs/{RUN}/files/%2e%2e",
    f"/runs/{RUN}/files/%2Fetc%2Fpasswd",
    f"/runs/{RUN}/files//etc/passwd",
    f"/runs/{RUN}/files/..%5c..%5csecret.json",
    "/runs/%2e%2e/files/secret.json",
    "/runs/../secret.json",
    "/runs/..%2F/report",
    "/runs/%2e%2e/",
    "/runs/nope/",
    "/runs/nope/report",
    "/runs/scheduled__2026-01-02/report",  # no report yet
    "/runs/%2Ftmp/report",
])
def test_traversal_and_unknown_paths_are_404(client, url):
    res = client.get(url)
    assert res.status_code == 404, (url, res.status_code)
    assert "hunter2" not in res.text


def test_without_an_airflow_session_every_page_is_refused(data_root, monkeypatch):
    """Airflow does not guard plugin apps: ours asks Airflow's auth manager itself and,
    outside the API server (no auth manager), refuses everything."""
    monkeypatch.setenv("SIMIA_DATA_ROOT", str(data_root))
    client = TestClient(ui.app)
    for url in ("/", f"/runs/{RUN}/", f"/runs/{RUN}/report",
                f"/runs/{RUN}/files/pass_k_by_level.png"):
        res = client.get(url, headers={"Authorization": "Bearer x"})
        assert res.status_code in (401, 403, 503), (url, res.status_code)
        assert "the report" not in res.text and RUN not in res.text


def test_plugin_shape():
    import simia_ui_plugin

    plugin = simia_ui_plugin.SimiaPlugin
    assert plugin.name == "simia"
    [app] = plugin.fastapi_apps
    assert app["app"] is ui.app and app["url_prefix"] == "/simia" and app["name"]
    [view] = plugin.external_views
    assert view == {"name": "Experiment runs", "href": "simia/", "url_route": "experiment-runs",
                    "destination": "nav", "category": "browse"}
    # Airflow's own response models accept them
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    ExternalViewResponse(**view)


def test_the_plugin_module_is_cheap_to_import():
    code = ("import sys, time; sys.path.insert(0, %r); t = time.time(); "
            "import simia_airflow.ui; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('airflow', 'sqlalchemy', 'matplotlib', 'numpy')))") % str(ROOT / "plugins")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stdout.strip() == "[]", res.stdout


def test_airflow_loads_mounts_and_guards_the_plugin(tmp_path, data_root):
    """A fresh Airflow with the project's plugins folder: the plugin manager registers the
    plugin (as `airflow plugins` reports it), the API server's app mounts it at /simia, and
    through that app a page needs an Airflow token (bearer or the UI's cookie)."""
    home = tmp_path / "home"
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__AUTH_MANAGER": ("airflow.api_fastapi.auth.managers.simple."
                                           "simple_auth_manager.SimpleAuthManager"),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "vic:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
           "SIMIA_DATA_ROOT": str(data_root)}
    code = f"""
import json
from airflow import plugins_manager
from airflow.utils.db import initdb
initdb()
plugins, errors = plugins_manager._get_plugins()
info = [p for p in plugins_manager.get_plugin_info() if p["name"] == "simia"]
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app
app = create_app()
mounts = [r.path for r in app.routes if type(r).__name__ == "Mount"]
client = TestClient(app)
status = {{"anonymous": client.get("/simia/").status_code,
          "bad token": client.get("/simia/", headers={{"Authorization": "Bearer x"}}).status_code}}
pw = json.load(open({str(home / "simple_auth_manager_passwords.json.generated")!r}))
token = client.post("/auth/token", json={{"username": "vic", "password": pw["vic"]}}
                    ).json()["access_token"]
page = client.get("/simia/", headers={{"Authorization": "Bearer " + token}})
status["bearer"] = page.status_code
cookie = TestClient(app, cookies={{"_token": token}})
status["cookie"] = cookie.get("/simia/runs/{RUN}/report").status_code
ui_plugins = client.get("/api/v2/plugins", headers={{"Authorization": "Bearer " + token}})
print(json.dumps({{"errors": errors, "info": info, "mounted": "/simia" in mounts,
                  "status": status, "has_run": {RUN!r} in page.text,
                  "api": ui_plugins.json()}}, default=str))
"""
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}, out["errors"]
    [info] = out["info"]
    assert info["fastapi_apps"] == [{"app": "fastapi.applications.FastAPI",
                                     "url_prefix": "/simia", "name": "simia experiment runs"}]
    assert info["external_views"][0]["href"] == "simia/"
    assert info["source"].endswith("simia_ui_plugin.py")
    assert out["mounted"]
    assert out["status"] == {"anonymous": 401, "bad token": 403, "bearer": 200, "cookie": 200}
    assert out["has_run"]
    # what the UI reads to build its navigation
    [api] = [p for p in out["api"]["plugins"] if p["name"] == "simia"]
    assert api["external_views"][0]["url_route"] == "experiment-runs"
