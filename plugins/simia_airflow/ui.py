"""The "Experiment runs" pages: a small FastAPI app the Airflow API server mounts at
``/simia`` (see ``plugins/simia_ui_plugin.py``).

Routes (relative to the mount point):

* ``/``                          every run folder, newest first, with its verdict
* ``/runs/{run}/``               one run: headline, pass^1 per level, stages, failures
* ``/runs/{run}/report``         ``report/report.html`` of the run
* ``/runs/{run}/files/{name}``   ``report/{name}`` (.html, .md, .png, .json only)

Reading run folders is :mod:`simia.report.runs_index` (plain Python, no Airflow); this module
renders plain HTML (no JavaScript) with every value escaped. Airflow does not guard
plugin apps itself: every request must carry an Airflow session (the UI's ``_token``
cookie, which the embedded view sends) or a bearer token, and the auth manager must
allow reading the DAG's runs. Airflow modules are imported when a request comes, so
importing this module costs no more than FastAPI.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from simia.report import runs_index
from simia.report.runs_index import RunInfo

log = logging.getLogger(__name__)

DAG_ID = runs_index.EXPERIMENT
URL_PREFIX = "/simia"

#: no scripts anywhere; images from here or embedded; framed only by Airflow's own UI
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src 'self' data:; "
                                "style-src 'unsafe-inline'; frame-ancestors 'self'; "
                                "base-uri 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

VERDICTS = {
    "decrease": ("More sycophancy lowered task success", "bad"),
    "increase": ("More sycophancy raised task success", "warn"),
    "no_effect": ("No detectable effect", "neutral"),
    "insufficient": ("Not enough evaluations", "warn"),
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

def e(value: object) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#1a202c;
line-height:1.45;max-width:1400px}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}
a{color:#2b6cb0}.muted{color:#4a5568;font-size:.9rem}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{border-bottom:1px solid #e2e8f0;padding:.45rem .5rem;text-align:left;vertical-align:top}
th{background:#f7fafc;font-weight:600}
.verdict{display:inline-block;border-radius:.3rem;padding:.15rem .5rem;font-weight:700;
white-space:nowrap}
.bad{background:#fed7d7;color:#822727}.warn{background:#feebc8;color:#7b341e}
.neutral{background:#e2e8f0;color:#1a365d}.none{background:#edf2f7;color:#4a5568}
.good{background:#c6f6d5;color:#22543d}
.headline{border-left:6px solid #2b6cb0;background:#f7fafc;padding:.8rem 1rem;margin:1rem 0}
.headline .verdict{font-size:1.2rem}.headline p{font-size:1.05rem;margin:.5rem 0 0}
.chip{display:inline-block;border:1px solid #cbd5e0;border-radius:1rem;padding:0 .45rem;
margin:0 .2rem .2rem 0;font-size:.8rem;background:#fff}
.missing{color:#a0aec0;border-style:dashed}
.fail{color:#822727;font-weight:600}.note{color:#7b341e}.nowrap{white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;background:#f7fafc;padding:.4rem;margin:0;
font-size:.82rem;max-height:16rem;overflow:auto}
.plots img{max-width:440px;border:1px solid #e2e8f0;margin:0 .5rem .5rem 0}
"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    doc = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>")
    return HTMLResponse(doc, status_code=status_code, headers=SECURITY_HEADERS)


def _when(ts: float) -> str:
    if not ts:
        return "unknown"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _verdict(run: RunInfo) -> str:
    if run.headline is None:
        label, css = ("Report unreadable", "warn") if run.notes and "report" in run.stages \
            else ("No report yet", "none")
        return f"<span class=\"verdict {css}\">{e(label)}</span>"
    label, css = VERDICTS.get(run.headline.verdict, (run.headline.verdict, "neutral"))
    return f"<span class=\"verdict {css}\">{e(label)}</span>"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pass1(level: runs_index.LevelResult) -> str:
    if level.pass1 is None:
        return f"<span class=\"muted\">{e(level.problem or 'not evaluated')}</span>"
    ci = ""
    if level.pass1_low is not None and level.pass1_high is not None:
        ci = f" [{_num(level.pass1_low)}, {_num(level.pass1_high)}]"
    return f"{_num(level.pass1)}{e(ci)}"


def _stages(run: RunInfo) -> str:
    chips = []
    for stage in runs_index.STAGES:
        extra = {"train": run.train_levels, "eval": run.eval_levels}.get(stage)
        label = stage + (f" ({len(extra)})" if extra else "")
        css = "chip" if stage in run.stages else "chip missing"
        chips.append(f"<span class=\"{css}\" title=\"{e(', '.join(extra or ()))}\">"
                     f"{e(label)}</span>")
    return "".join(chips)


def _airflow_link(run: RunInfo, af: AirflowRun | None, up: str) -> str:
    """A link (leaving the frame) to the DAG run in Airflow's UI; ``up`` leads from the
    current page to Airflow's root."""
    if af is None:
        return (f"<a target=\"_top\" href=\"{e(up)}dags/{e(quote(DAG_ID))}/runs\">"
                "DAG runs in Airflow</a>")
    state = f" ({e(af.state)})" if af.state else ""
    return (f"<a target=\"_top\" href=\"{e(up)}dags/{e(quote(DAG_ID))}/runs/"
            f"{e(quote(af.run_id, safe=''))}\">Airflow run</a>{state}")


def _airflow_run(run: RunInfo, known: Mapping[str, AirflowRun]) -> AirflowRun | None:
    """The run from Airflow's database, else the run id a failure record names."""
    found = known.get(run.name)
    if found is None and run.run_id:
        found = AirflowRun(run.run_id)
    return found


def render_list(runs: list[RunInfo], exp_dir: Path, known: Mapping[str, AirflowRun]) -> str:
    rows = []
    for run in runs:
        href = f"runs/{quote(run.name)}/"
        levels = "<br>".join(f"{e(f'{lv.level:g} %')}: {_pass1(lv)}" for lv in run.levels)
        af = _airflow_run(run, known)
        links = [f"<a href=\"{e(href)}\">details</a>"]
        if run.has_report_html:
            links.append(f"<a href=\"{e(href)}report\">report</a>")
        links.append(_airflow_link(run, af, "../"))
        failures = (f"<span class=\"fail\">{len(run.failures)}</span>" if run.failures
                    else "0")
        notes = (f"<div class=\"note\">{e('; '.join(run.notes))}</div>" if run.notes else "")
        headline = (f"<div>{e(run.headline.text)}</div>" if run.headline else "")
        run_id = (f"<div class=\"muted\">{e(af.run_id)}</div>" if af and af.run_id != run.name
                  else "")
        rows.append(
            f"<tr><td><a href=\"{e(href)}\"><b>{e(run.name)}</b></a>{run_id}</td>"
            f"<td>{e(_when(run.modified))}</td><td>{_verdict(run)}{headline}{notes}</td>"
            f"<td class=\"nowrap\">{levels or '<span class=muted>-</span>'}</td>"
            f"<td>{_stages(run)}</td>"
            f"<td>{failures}</td><td>{' &middot; '.join(links)}</td></tr>")
    if rows:
        table = ("<table><thead><tr><th>Run</th><th>Last modified</th><th>Verdict</th>"
                 "<th>pass^1 [95 % CI]</th><th>Stages with output</th><th>Failures</th>"
                 "<th>Links</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    else:
        table = f"<p>No runs found under <code>{e(exp_dir)}</code>.</p>"
    return (f"<h1>Experiment runs</h1><p class=\"muted\">Runs of the DAG <b>{e(DAG_ID)}</b> "
            f"found under <code>{e(exp_dir)}</code>, newest first: {len(runs)}.</p>{table}")


def render_run(run: RunInfo, af: AirflowRun | None) -> str:
    parts = [f"<p class=\"muted\"><a href=\"../../\">&larr; all runs</a> &middot; "
             f"{_airflow_link(run, af, '../../../')}</p>",
             f"<h1>{e(run.name)}</h1>"]
    if af is not None:
        parts.append(f"<p class=\"muted\">Airflow run id <code>{e(af.run_id)}</code>"
                     f"{', state ' + e(af.state) if af.state else ''}</p>")
    parts.append(f"<p class=\"muted\">Last modified {e(_when(run.modified))}</p>")
    head = [f"<div class=\"headline\">{_verdict(run)}"]
    if run.headline:
        head.append(f"<p>{e(run.headline.text)}</p>")
        if run.headline.warnings:
            head.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in run.headline.warnings)
                        + "</ul>")
    head.append("</div>")
    parts.append("".join(head))
    if run.notes:
        parts.append("<h2>Could not read</h2><ul class=\"note\">"
                     + "".join(f"<li>{e(n)}</li>" for n in run.notes) + "</ul>")
    if run.levels:
        rows = "".join(
            f"<tr><td>{e(f'{lv.level:g} %')}</td><td>{e(lv.slug)}</td>"
            f"<td>{e(f'{lv.tasks} x {lv.trials}') if lv.tasks is not None else '-'}</td>"
            f"<td>{_pass1(lv)}</td>"
            f"<td>{e(lv.infrastructure_errors) if lv.infrastructure_errors is not None else '-'}"
            f"</td></tr>" for lv in run.levels)
        parts.append("<h2>pass^1 per level</h2><table><thead><tr><th>Level</th><th>Slug</th>"
                     "<th>Tasks x trials</th><th>pass^1 [95 % CI]</th>"
                     "<th>Infrastructure errors</th></tr></thead><tbody>" + rows
                     + "</tbody></table>")
    parts.append(f"<h2>Stages with output</h2><p>{_stages(run)}</p>")
    if run.train_levels or run.eval_levels:
        parts.append(f"<p class=\"muted\">train: {e(', '.join(run.train_levels) or '-')}; "
                     f"eval: {e(', '.join(run.eval_levels) or '-')}</p>")
    if run.failures:
        rows = "".join(
            f"<tr><td>{e(f.task_id)}</td>"
            f"<td>{e(f.map_index) if f.map_index is not None and f.map_index >= 0 else ''}"
            f"</td><td>{e(f.try_number) if f.try_number is not None else ''}</td>"
            f"<td>{e(f.time)}</td><td><pre>{e(f.error)}</pre></td><td>{e(f.log_hint)}</td></tr>"
            for f in run.failures)
        parts.append(f"<h2 class=\"fail\">Failures ({len(run.failures)})</h2>"
                     "<p class=\"muted\">Recorded by the failed tasks' failure callback; a "
                     "task cleared and run again since may have succeeded (Airflow has its "
                     "current state).</p><table><thead><tr>"
                     "<th>Task</th><th>Map index</th><th>Try</th><th>Time</th><th>Error</th>"
                     "<th>Log</th></tr></thead><tbody>" + rows + "</tbody></table>")
    if run.report_files:
        links = []
        if run.has_report_html:
            links.append("<a href=\"report\"><b>Open the report</b></a>")
        links += [f"<a href=\"files/{e(quote(n))}\">{e(n)}</a>" for n in run.report_files
                  if not n.endswith(".png")]
        parts.append("<h2>Report</h2><p>" + " &middot; ".join(links) + "</p>")
        pngs = [n for n in run.report_files if n.endswith(".png")]
        if pngs:
            parts.append("<div class=\"plots\">" + "".join(
                f"<a href=\"files/{e(quote(n))}\"><img alt=\"{e(n)}\" "
                f"src=\"files/{e(quote(n))}\"></a>" for n in pngs) + "</div>")
    return "".join(parts)


# ------------------------------------------------------------------------------ app

def _not_found() -> HTMLResponse:
    return _page("Not found", "<h1>Not found</h1>", status_code=404)


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
        body = render_list(runs, runs_index.experiment_dir(base), lookup() if runs else {})
        return _page("Experiment runs - simia", body)

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
        return _page(f"{run.name} - simia", render_run(run, _airflow_run(run, lookup())))

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
