"""Run-scoped locations: every run of the experiment writes under its own folder."""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of a run id (``manual__2026-01-01T00:00:00+00:00`` ->
    ``manual__2026-01-01T00-00-00-00-00``)."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    if not cleaned:
        raise ValueError(f"cannot make a folder name from {text!r}")
    return cleaned


def run_dir(data_root: str | Path, experiment: str, run_id: str) -> Path:
    """``<data_root>/<experiment>/<run_id>`` (created if missing)."""
    path = Path(data_root) / safe_name(experiment) / safe_name(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root_child(data_root: str | Path, name: str) -> Path:
    """A folder shared by every run under the data root (caches, locks); created."""
    path = Path(data_root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
