"""Secrets from Airflow connections, read at run time (never templated, logged or
returned to XCom). Imported when the DAG is parsed: no heavy imports at module level."""

from __future__ import annotations

from collections.abc import Callable


def connection_secret(conn_id: str | None, extra_key: str, *,
                      log: Callable[..., None], missing: str) -> str | None:
    """The connection's password, else its ``extra_key`` extra; None (after logging
    ``missing``) when the connection does not exist or no id is given."""
    if not conn_id:
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log("no connection %r: %s", conn_id, missing)
        return None
    return conn.password or (conn.extra_dejson or {}).get(extra_key) or None
