"""Registers the "Experiment runs" pages with Airflow 3 (the API server mounts the app at
``/simia``; the UI shows them in its navigation, under Browse, framed in Airflow's page).

Airflow's plugin manager imports every ``.py`` file in the plugins folder and registers
the ``AirflowPlugin`` subclasses it finds; this one is kept cheap to import (FastAPI and
``simia.report.runs_index``; Airflow's auth and database modules load on the first request).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from simia_airflow.ui import URL_PREFIX, app


class SimiaPlugin(AirflowPlugin):
    name = "simia"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "simia experiment runs"}]
    external_views = [{
        "name": "Experiment runs",
        # relative to Airflow's base URL (the UI's <base href>), so a sub-path deployment works
        "href": URL_PREFIX.lstrip("/") + "/",
        "url_route": "experiment-runs",
        "destination": "nav",
        "category": "browse",
    }]
