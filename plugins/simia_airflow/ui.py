"""The "Experiment runs" pages: a small FastAPI app the Airflow API server mounts at
``/simia`` (see ``plugins/simia_ui_plugin.py``).

Routes (relative to the mount point):

* ``/``                          every run folder, newest first, with its verdict and,
                                 per level, its training runs and pass^1
* ``/runs/{run}/``               one run: headline, training runs and pass^1 per level,
                                 stages, failures
* ``/runs/{run}/report``         the run's HTML report
* ``/runs/{run}/files/{name}``   a file of the run's report folder (.html, .md, .png,
                                 .json only)

Reading run folders is :mod:`simia.report.runs_index` (plain Python, no Airflow); the pages
are Jinja2 templates (``templates/`` beside this module: ``page.html.j2`` the frame,
``runs.html.j2`` the list, ``run.html.j2`` one run, ``_run.html.j2`` the pieces both show),
plain HTML (no JavaScript) with every value escaped. Airflow does not guard
plugin apps itself: every request must carry an Airflow session (the UI's ``_token``
cookie, which the embedded view sends) or a bearer token, and the auth manager must
allow reading the DAG's runs. Airflow modules are imported when a request comes, so
importing this module costs no more than FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from simia.report import runs_index
from simia.report.formatting import pct
from simia.report.runs_index import RunInfo

log = logging.getLogger(__name__)

DAG_ID = runs_index.EXPERIMENT
URL_PREFIX = "/simia"
TEMPLATES = Path(__file__).with_name("templates")

#: no scripts anywhere; images from here or embedded; framed only by Airflow's own UI
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src 'self' data:; "
                                "style-src 'unsafe-inline'; frame-ancestors 'self'; "
                                "base-uri 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

#: the run-aware verdict (the report's headline) -> badge label and CSS class
VERDICTS = {
    "decrease": ("More sycophancy lowered task success", "bad"),
    "increase": ("More sycophancy raised task success", "warn"),
    "no_effect": ("No detectable effect", "neutral"),
    "invalid": ("Invalid: no verdict", "bad"),
    "insufficient": ("Not enough training runs", "warn"),
}


@dataclass(frozen=True)
class AirflowRun:
    """The Airflow DAG run a folder belongs to (when the metadata database knows it)."""

    run_id: str
    state: str | None = None


RunLookup = Callable[[], Mapping[str, AirflowRun]]


# ------------------------------------------------------------------------------ Airflow

async def require_dag_run_access(request: Request) -> None:
    """Let the request through only for an Airflow user allowed to read the DAG's runs.

    The token is the ``Authorization: Bearer`` header, else Airflow's ``_token`` session
    cookie. Without an initialized auth manager (the app outside the API server) every
    request is refused."""
    try:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
        from airflow.api_fastapi.auth.managers.models.resource_details import (
            DagAccessEntity,
            DagDetails,
        )
        from airflow.api_fastapi.core_api.security import resolve_user_from_token

        manager = get_auth_manager()
    except (ImportError, RuntimeError) as exc:
        log.warning("simia UI: no Airflow auth manager (%s); refusing the request", exc)
        raise HTTPException(status_code=503,
                            detail="Airflow's auth manager is not available") from None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else ""
    user = await resolve_user_from_token(token or request.cookies.get(COOKIE_NAME_JWT_TOKEN))
    allowed = manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                        details=DagDetails(id=DAG_ID), user=user)
    if not allowed:
        raise HTTPException(status_code=403, detail="Not allowed to read this DAG's runs")


_lookup_warned = False


def airflow_runs() -> dict[str, AirflowRun]:
    """Folder name -> the DAG run, from Airflow's metadata database ({} when it cannot be
    read: links then go to the DAG's list of runs)."""
    global _lookup_warned
    try:
        from sqlalchemy import select

        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.execute(
                select(DagRun.run_id, DagRun.state).where(DagRun.dag_id == DAG_ID)).all()
    except Exception as exc:  # a UI page must not fail for the lookup
        if not _lookup_warned:
            log.warning("simia UI: cannot read the DAG runs from Airflow's database: %s", exc)
            _lookup_warned = True
        return {}
    states = {run_id: (str(state) if state is not None else None) for run_id, state in rows}
    return {folder: AirflowRun(run_id, states[run_id])
            for folder, run_id in runs_index.run_id_index(states).items()}


# ------------------------------------------------------------------------------ HTML

def _when(ts: float) -> str:
    if not ts:
        return "unknown"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _runs(lv: runs_index.LevelResult) -> str:
    """A level's training runs: ``2 runs``, ``1 of 2 runs``; empty for a report written
    before replicates (no counts)."""
    if lv.runs is None:
        return ""
    done = lv.runs_with_results
    plural = "s" if lv.runs != 1 else ""
    if done is None or done == lv.runs:
        return f"{lv.runs} run{plural}"
    return f"{done} of {lv.runs} run{plural}"


def _quote(text: str, safe: str = "/") -> str:
    return quote(text, safe=safe)


def _verdict(run: RunInfo) -> tuple[str, str]:
    """The verdict badge's label and CSS class."""
    if run.headline is None:
        return (("Report unreadable", "warn") if run.notes and run.has_report_output
                else ("No report yet", "none"))
    return VERDICTS.get(run.headline.verdict, (run.headline.verdict, "neutral"))


@cache
def _templates() -> jinja2.Environment:
    """The pages' templates (``templates/`` beside this module), every value escaped."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(when=_when, num=_num, pct=pct, quote=_quote, runs=_runs)
    env.globals.update(dag_id=DAG_ID, stage_names=runs_index.STAGES, verdict_of=_verdict)
    return env


def _page(template: str, title: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page rendered from ``template`` (which extends ``page.html.j2``)."""
    doc = _templates().get_template(template).render(title=title, **context)
    return HTMLResponse(doc, status_code=status_code, headers=SECURITY_HEADERS)


def _airflow_run(run: RunInfo, known: Mapping[str, AirflowRun]) -> AirflowRun | None:
    """The run from Airflow's database, else the run id a failure record names."""
    found = known.get(run.name)
    if found is None and run.run_id:
        found = AirflowRun(run.run_id)
    return found


# ------------------------------------------------------------------------------ app

def _not_found() -> HTMLResponse:
    return _page("not_found.html.j2", "Not found", status_code=404)


def create_app(data_root: str | Path | None = None, run_lookup: RunLookup | None = None,
               *, require_auth: bool = True) -> FastAPI:
    """The app; ``data_root`` None reads ``$SIMIA_DATA_ROOT`` on each request,
    ``run_lookup`` maps folder names to Airflow runs (default: Airflow's database)."""
    deps = [Depends(require_dag_run_access)] if require_auth else []
    app = FastAPI(title="simia experiment runs", docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=deps)

    def lookup() -> Mapping[str, AirflowRun]:
        return (run_lookup or airflow_runs)()

    def root() -> Path:
        return Path(data_root) if data_root is not None else runs_index.data_root_from_env()

    @app.get("/", response_class=HTMLResponse)
    def list_page() -> HTMLResponse:
        base = root()
        runs = runs_index.list_runs(base)
        known = lookup() if runs else {}
        return _page("runs.html.j2", "Experiment runs - simia",
                     runs=[(run, _airflow_run(run, known)) for run in runs],
                     exp_dir=runs_index.experiment_dir(base))

    @app.get("/runs/{name}")
    def run_redirect(name: str) -> Response:
        if runs_index.run_detail(root(), name) is None:
            return _not_found()
        return RedirectResponse(f"{quote(name)}/", status_code=307)

    @app.get("/runs/{name}/", response_class=HTMLResponse)
    def run_page(name: str) -> HTMLResponse:
        run = runs_index.run_detail(root(), name)
        if run is None:
            return _not_found()
        return _page("run.html.j2", f"{run.name} - simia", run=run,
                     af=_airflow_run(run, lookup()))

    def serve(name: str, file_name: str) -> Response:
        path = runs_index.report_file(root(), name, file_name)
        if path is None:
            return _not_found()
        return FileResponse(path, media_type=runs_index.content_type(path),
                            headers=SECURITY_HEADERS)

    @app.get("/runs/{name}/report")
    def report_page(name: str) -> Response:
        return serve(name, runs_index.REPORT_HTML)

    @app.get("/runs/{name}/files/{file_name}")
    def report_files(name: str, file_name: str) -> Response:
        return serve(name, file_name)

    return app


app = create_app()
