"""Fixtures of the LLM-stage integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.synthetic import generate_raw


@pytest.fixture()
def seeds_file(tmp_path: Path) -> Path:
    """8 synthetic strict-mode seed conversations."""
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(generate_raw(8, seed=5, mode="strict")))
    return path
