"""Helpers for tests that drive the CPU LLaMA-Factory venv by subprocess.

The main test venv does not have LLaMA-Factory; these helpers run its interpreter from
``$SIMIA_LF_VENV`` (default ``<repo>/.venv-lf``, built by ``scripts/make_lf_env.sh``).
Without that venv the tests skip, except when ``$CI`` is set: then they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def lf_venv() -> Path:
    """The LLaMA-Factory venv: ``$SIMIA_LF_VENV`` or ``<repo>/.venv-lf``."""
    return Path(os.environ.get("SIMIA_LF_VENV") or REPO / ".venv-lf")


def lf_env() -> dict[str, str]:
    """Environment for LF-venv subprocesses: the repo's package (``include/``) and the test
    support (``tests/``, for ``python -m support.<module>``) importable, no network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "include"), str(REPO / "tests"),
         *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _unavailable(reason: str) -> None:
    message = f"{reason} (build it with `make lf-env` or scripts/make_lf_env.sh; set SIMIA_LF_VENV)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the LLaMA-Factory venv is required: {message}")
    pytest.skip(message)


def require_lf_python() -> Path:
    """Path to the LLaMA-Factory venv's python (skip, or fail under CI, when missing)."""
    python = lf_venv() / "bin" / "python"
    if not python.is_file():
        _unavailable(f"LLaMA-Factory venv not found: {python}")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('llamafactory') is None)"
    if subprocess.run([str(python), "-c", probe], env=lf_env(), check=False).returncode != 0:
        _unavailable(f"llamafactory is not installed in {python}")
    return python


def build_tiny_model(lf_python: Path, out: Path) -> Path:
    """A tiny Qwen2 model + tokenizer (``support.tiny_model``) built in the LF venv."""
    proc = subprocess.run(
        [str(lf_python), "-m", "support.tiny_model", str(out)],
        env=lf_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"support.tiny_model failed:\n{proc.stdout}\n{proc.stderr}"
    return out
