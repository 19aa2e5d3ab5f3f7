"""The operator's path through the real Airflow UI, in a real browser.

`airflow standalone` (started as `make run` starts it, on a free port, with its own
AIRFLOW_HOME and data root) and Debian's Chromium driven by Playwright: log in, open the
DAG, trigger it through the form with changed values, see the run succeed, open a task's
log; a run made to fail shows the failing task's clear error in its log, and clearing
the task after the fix makes the run succeed. The LLM judge runs against our local
Converse server with AWS keys, an OpenAI key and an HF token set in connections: none
of them may appear in any task log, XCom, rendered template or report. Screenshots go to
``$SIMIA_TEST_ARTIFACTS`` (default ``.artifacts/browser``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.airflow_api import AirflowAPI, free_port

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
CHROMIUM = os.environ.get("SIMIA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SIMIA_TEST_ARTIFACTS", ROOT / ".artifacts" / "browser"))
SECRETS = {"aws_key": "AKIASIMIATESTKEY0042", "aws_secret": "simiaTestSecret/K7MDENG+bPxRfiCY",
           "openai": "sk-simia-test-openai-5e1f", "hf": "hf_simiaTestToken9b2"}
pytestmark = [pytest.mark.browser, pytest.mark.timeout(1500)]


def _unavailable(reason: str) -> None:
    hint = "run scripts/browser_deps.sh (as root: Debian's chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser test must run: {reason}; {hint}")
    pytest.skip(f"{reason}; {hint}")


class Airflow(AirflowAPI):
    """A running `airflow standalone` and a small REST client for checks."""

    def __init__(self, url: str, home: Path, data_root: Path, password: str) -> None:
        super().__init__(url, password)
        self.home, self.data_root = home, data_root

    def wait_run(self, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        quoted = urllib.request.quote(run_id, safe="")
        while time.monotonic() < deadline:
            state = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AssertionError(f"run {run_id} did not finish in {timeout:.0f} s")

    def task_states(self, run_id: str) -> dict:
        quoted = urllib.request.quote(run_id, safe="")
        tis = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances"
                              "?limit=200")["task_instances"]
        return {(t["task_id"], t["map_index"]): t["state"] for t in tis}


@pytest.fixture(scope="module")
def converse(tmp_path_factory):
    from converse_server import ConverseServer, ServerConfig

    # the form's defaults label with the LLM judge and make twins: a judge that flags 10 %
    with ConverseServer(ServerConfig(judge_flag_rate=0.1)) as server:
        yield server


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, converse, tau2_dir):
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")
    base = tmp_path_factory.mktemp("airflow_ui")
    home, data = base / "home", base / "data"
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "SIMIA_DATA_ROOT": str(data),
           "SIMIA_AIRFLOW_PORT": str(port), "TAU2_DATA_DIR": str(tau2_dir),
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
           "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
               "conn_type": "aws", "login": SECRETS["aws_key"],
               "password": SECRETS["aws_secret"],
               "extra": {"endpoint_url": converse.url, "region_name": "us-east-1"}}),
           "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps({"conn_type": "generic",
                                                      "password": SECRETS["openai"]}),
           "AIRFLOW_CONN_HUGGINGFACE_DEFAULT": json.dumps({"conn_type": "generic",
                                                           "password": SECRETS["hf"]})}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(name, None)
    log = open(base / "standalone.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_airflow.py")],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    password = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as r:
                health = json.load(r)
            pw_file = home / "simple_auth_manager_passwords.json.generated"
            if health["scheduler"]["status"] == "healthy" and pw_file.exists():
                password = json.loads(pw_file.read_text())["admin"]
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(2)
    if password is None:
        proc.kill()
        pytest.fail("airflow standalone did not come up:\n"
                    + (base / "standalone.log").read_text()[-4000:])
    af = Airflow(url, home, data, password)
    # wait until the dag processor has parsed the DAG
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            af.api("GET", f"/api/v2/dags/{DAG_ID}")
            break
        except OSError:
            time.sleep(3)
    yield af
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on `make run` sends
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    # Ctrl-C stops every component: none of this instance's processes is left running
    left = _processes_with(f"AIRFLOW_HOME={home}")
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after Ctrl-C: {left}"


def _processes_with(env_entry: str) -> list[int]:
    """Live (not zombie) processes whose environment holds ``env_entry``."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            if env_entry.encode() not in (proc_dir / "environ").read_bytes().split(b"\0"):
                continue
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(proc_dir.name))
    return found


@pytest.fixture()
def page(airflow):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(30_000)
        pg.goto(airflow.url + "/")
        pg.locator("input[name=username]").fill("admin")
        pg.locator("input[name=password]").fill(airflow.password)
        pg.locator("button[type=submit]").click()
        pg.wait_for_url(airflow.url + "/")
        yield pg
        browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _open_section(dialog, title: str) -> None:
    dialog.get_by_text(title, exact=True).first.click()


def _select(dialog, name: str, value: str) -> None:
    box = dialog.locator(f"#element_{name} input[role=combobox]")
    box.click()
    box.fill(value)
    box.press("Enter")


def _task_log_text(page, airflow, run_id: str, task_id: str) -> str:
    quoted = urllib.request.quote(run_id, safe="")
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{quoted}/tasks/{task_id}")
    page.wait_for_timeout(4000)
    return page.locator("body").inner_text()


def test_trigger_through_the_form_watch_it_succeed_and_read_a_log(page, airflow, raw_file):
    page.goto(f"{airflow.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    _open_section(dialog, "Generation")
    dialog.locator("input[name=element_raw_conversations]").fill(str(raw_file))
    _open_section(dialog, "Datasets")
    dialog.locator("input[name=element_dataset_size]").fill("20")
    dialog.locator("input[name=element_shared_clean]").fill("15")
    _open_section(dialog, "Training")
    dialog.locator("input[name=element_train_models]").locator("xpath=..").click()
    _shot(page, "01_trigger_form")
    dialog.get_by_role("button", name="Trigger").click()
    page.wait_for_timeout(3000)
    runs = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-start_date&limit=1")
    run = runs["dag_runs"][0]
    assert run["conf"]["dataset_size"] == 20 and run["conf"]["train_models"] is False
    assert run["conf"]["raw_conversations"] == str(raw_file)
    assert airflow.wait_run(run["dag_run_id"]) == "success", airflow.task_states(
        run["dag_run_id"])
    quoted = urllib.request.quote(run["dag_run_id"], safe="")
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{quoted}")
    page.wait_for_timeout(3000)
    _shot(page, "02_run_succeeded")
    assert "success" in page.locator("body").inner_text().lower()
    text = _task_log_text(page, airflow, run["dag_run_id"], "process_conversations")
    _shot(page, "03_task_log")
    assert "process: kept" in text and "rejected by reason" in text  # the task's own log
    # the run and its report in the plugin's "Experiment runs" page
    page.goto(f"{airflow.url}/simia/")
    page.wait_for_timeout(2000)
    _shot(page, "03b_experiment_runs")
    body = page.locator("body").inner_text()
    assert "Not enough evaluations to answer" in body


def test_a_failed_task_shows_its_error_and_clearing_after_the_fix_succeeds(
        page, airflow, raw_file, tmp_path):
    missing = tmp_path / "later" / "raw.json"
    conf = {"raw_conversations": str(missing), "dataset_size": 10, "shared_clean": 8,
            "levels": [0, 10], "train_models": False, "label_source": "judge", "shards": 2,
            "llm_concurrency": 4}
    run = airflow.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                      {"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]
    assert airflow.wait_run(run_id) == "failed"
    text = _task_log_text(page, airflow, run_id, "validate_params")
    _shot(page, "04_failed_task_log")
    assert f"raw_conversations: '{missing}' is not a file the workers can read" in text
    assert "fix these Params" in text
    failure = airflow.data_root / DAG_ID
    assert list(failure.glob("*/failures/validate_params.json"))
    # the fix: the file appears; then clear the failed task in the UI
    missing.parent.mkdir(parents=True)
    shutil.copy(raw_file, missing)
    page.get_by_role("button", name="Clear").first.click()
    page.wait_for_timeout(1500)
    _shot(page, "05_clear_dialog")
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    page.wait_for_timeout(3000)
    assert airflow.wait_run(run_id) == "success", airflow.task_states(run_id)
    page.reload()
    page.wait_for_timeout(3000)
    _shot(page, "06_cleared_and_succeeded")


def test_no_secret_in_logs_xcom_rendered_templates_or_outputs(airflow):
    runs = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=20")["dag_runs"]
    assert runs, "the earlier tests made runs"
    seen = []
    for run in runs:
        quoted = urllib.request.quote(run["dag_run_id"], safe="")
        tis = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances"
                                 "?limit=200")["task_instances"]
        for ti in tis:
            seen.append(json.dumps(ti.get("rendered_fields") or {}))
            if ti["state"] != "success":
                continue
            path = (f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/{ti['task_id']}"
                    f"/xcomEntries?map_index={ti['map_index']}")
            for entry in airflow.api("GET", path).get("xcom_entries", []):
                value = airflow.api("GET", f"{path.split('?')[0]}/{entry['key']}"
                                           f"?map_index={ti['map_index']}&deserialize=true")
                seen.append(json.dumps(value))
    files = [p for base in (airflow.home / "logs", airflow.data_root) for p in base.rglob("*")
             if p.is_file() and p.stat().st_size < 20_000_000]
    assert files and any("process_conversations" in str(p) for p in files)
    blobs = [p.read_bytes() for p in files] + [s.encode() for s in seen]
    for name, secret in SECRETS.items():
        variants = {secret.encode(), base64.b64encode(secret.encode())}
        leaked = [i for i, blob in enumerate(blobs) if any(v in blob for v in variants)]
        assert not leaked, f"the {name} secret appears in {len(leaked)} log/XCom/output(s)"
