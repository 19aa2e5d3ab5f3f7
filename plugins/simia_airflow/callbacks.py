"""Task callbacks of the experiment DAG.

``record_failure`` (every task's ``on_failure_callback``) writes a short summary of a
failed try into the run directory, ``<run>/failures/<task_id>[.<map_index>].json``: what
failed, on which try, the error's last line, what to do and, for a level's task with
``SIMIA_GPU_HOSTS``, the host it ran on (task ids ``level_<host>.<task>``). The UI
plugin shows these next to the run, so a researcher sees at a glance which level or
shard failed and why, without opening every task log. It never raises (a callback
error must not hide the task's own error) and never writes secrets (only the exception
text, which the pipeline keeps free of them, cut to 2,000 characters).

Imported when the DAG is parsed: no ``simia`` import at module level.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

HINT = ("Read the end of this task's log for the cause; fix it (Params, data, images, "
        "connections) and clear the task: finished work is kept and skipped.")


def failure_record(context: dict[str, Any]) -> dict[str, Any]:
    """The summary of a failed task try, from the callback's context."""
    ti = context["ti"]
    exc = context.get("exception")
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    last = [ln for ln in text.strip().splitlines() if ln.strip()]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1),
            "try_number": getattr(ti, "try_number", None),
            "max_tries": getattr(ti, "max_tries", None),
            "error": text[:2000], "error_line": (last[0] if last else text)[:500],
            "log_hint": HINT, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def record_failure(context: dict[str, Any]) -> None:
    """``on_failure_callback``: write ``<run>/failures/<task>[.<map_index>].json``."""
    try:
        from simia.io import write_json
        from simia.layout import DataRoot

        record = failure_record(context)
        params = context.get("params") or {}
        if not params.get("data_root"):
            return
        run = DataRoot(params["data_root"]).run(record["dag_id"], record["run_id"])
        level = getattr(context.get("task"), "level", None)  # the per-level tasks' plan
        if isinstance(level, dict) and isinstance(level.get("level"), (int, float)):
            record["by_hand"] = f"simia commands {run.root} --level {level['level']:g}"
            if "replicate" in level:
                record["by_hand"] += f" --replicate {level['replicate']}"
            record["log_hint"] += (f" To run this training run's containers by hand: "
                                   f"{record['by_hand']}")
            if level.get("host"):  # SIMIA_GPU_HOSTS: the host its tasks run on
                record["host"], record["queue"] = level["host"], level.get("queue")
                record["log_hint"] += (f" (on host {level['host']}, whose worker serves "
                                       f"queue {level.get('queue')})")
        path = run.failure(record["task_id"], record["map_index"])
        write_json(path, record, indent=True)
        log.info("failure summary written to %s", path)
    except Exception as exc:  # noqa: BLE001 - never hide the task's own error
        log.warning("could not write the failure summary: %s", exc)
