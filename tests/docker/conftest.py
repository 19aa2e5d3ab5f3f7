"""Fixtures for tests that need a real Docker engine and the CPU trainer image.

Without an engine (or the locally built base image) these tests skip with the reason,
except when ``$CI`` is set: then they fail (``.ci/run`` prepares both).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from lf_support import build_tiny_model, require_lf_python

REPO = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    hint = "run scripts/docker_engine.sh (as root) to install and start one"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so a Docker engine is required: {reason}; {hint}")
    pytest.skip(f"{reason}; {hint}")


@pytest.fixture(scope="session")
def docker_api():
    """A docker SDK client to a reachable engine."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable engine
        _unavailable(f"no Docker engine reachable ({type(exc).__name__}: {exc})")
    return client


@pytest.fixture(scope="session")
def trainer_cpu_image(docker_api) -> str:
    """The CPU trainer image, built (or found up to date) by scripts/build_images.sh."""
    base = os.environ.get("SIMIA_BASE_IMAGE", "local/debian:bookworm")
    try:
        docker_api.images.get(base)
    except Exception:  # noqa: BLE001
        _unavailable(f"base image {base} is missing")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_images.sh"), "trainer-cpu"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, f"building the CPU trainer image failed:\n{proc.stderr[-4000:]}"
    return os.environ.get("SIMIA_TRAINER_CPU_IMAGE", "simia/trainer:cpu")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Qwen2 model (2 layers, hidden 64) built locally: no downloads."""
    return build_tiny_model(require_lf_python(), tmp_path_factory.mktemp("tiny") / "qwen2")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """HF_HOME for the containers, shared by the session (DeepSpeed's compiled ops)."""
    return tmp_path_factory.mktemp("hf-cache")



@pytest.fixture(scope="session")
def evaluator_cpu_image(trainer_cpu_image) -> str:
    """The CPU evaluator image (trainer + the simia package: the CI evaluator and the
    CPU chat server), rebuilt when the package changed."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_images.sh"), "evaluator-cpu"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, f"building the CPU evaluator image failed:\n{proc.stderr[-4000:]}"
    return os.environ.get("SIMIA_EVALUATOR_CPU_IMAGE", "simia/evaluator:cpu")
