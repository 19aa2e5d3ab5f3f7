"""Fixtures that drive the CPU LLaMA-Factory venv by subprocess.

The main test venv does not have LLaMA-Factory; these tests run its interpreter from
``$SIMIA_LF_VENV`` (default ``<repo>/.venv-lf``, built by ``scripts/make_lf_env.sh``).
Without that venv they skip, except when ``$CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600


def lf_venv() -> Path:
    """The LLaMA-Factory venv: ``$SIMIA_LF_VENV`` or ``<repo>/.venv-lf``."""
    return Path(os.environ.get("SIMIA_LF_VENV") or REPO / ".venv-lf")


def lf_env() -> dict[str, str]:
    """Environment for LF-venv subprocesses: repo package importable, no network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "include"), *filter(None, [os.environ.get("PYTHONPATH")])]
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


@pytest.fixture(scope="session")
def lf_python() -> Path:
    """Path to the LLaMA-Factory venv's python (skip, or fail under CI, when missing)."""
    python = lf_venv() / "bin" / "python"
    if not python.is_file():
        _unavailable(f"LLaMA-Factory venv not found: {python}")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('llamafactory') is None)"
    if subprocess.run([str(python), "-c", probe], env=lf_env(), check=False).returncode != 0:
        _unavailable(f"llamafactory is not installed in {python}")
    return python


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(lf_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 model + tokenizer, built once per session with ``simia.tiny_model``."""
    out = tmp_path_factory.mktemp("tiny_qwen2") / "model"
    proc = subprocess.run(
        [str(lf_python), "-m", "simia.tiny_model", str(out)],
        env=lf_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"simia.tiny_model failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def run_lf_verify(lf_python: Path, dataset_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Run ``python -m simia.lf_verify`` in the LF venv and return its JSON report.

    The report (see ``simia.lf_verify.verify_datasets``) gets two extra keys:
    ``exit_code`` (0 when every row survived) and ``output`` (the CLI's summary lines
    plus the tail of stderr, for assertion messages).
    """
    with tempfile.TemporaryDirectory(prefix="lf_verify_report_") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.run(
            [
                str(lf_python),
                "-m",
                "simia.lf_verify",
                "--dataset-dir",
                str(dataset_dir),
                "--tokenizer",
                str(tokenizer_dir),
                "--json-out",
                str(report_path),
            ],
            env=lf_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        summary = [line for line in proc.stdout.splitlines() if line.startswith("lf_verify:")]
        output = "\n".join([*summary, "--- stderr (tail) ---", proc.stderr[-8_000:]])
        assert report_path.is_file(), (
            f"simia.lf_verify wrote no report (rc={proc.returncode}):\n{output}"
        )
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    report["exit_code"] = proc.returncode
    report["output"] = output
    return report
