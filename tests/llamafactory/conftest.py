"""Fixtures that drive the CPU LLaMA-Factory venv by subprocess.

The main test venv does not have LLaMA-Factory; these tests run its interpreter from
``$SIMIA_LF_VENV`` (default ``<repo>/.venv-lf``, built by ``scripts/make_lf_env.sh``).
Without that venv they skip, except when ``$CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from lf_support import TIMEOUT_S, build_tiny_model, lf_env, require_lf_python

__all__ = ["TIMEOUT_S", "lf_env", "run_lf_verify"]


@pytest.fixture(scope="session")
def lf_python() -> Path:
    """Path to the LLaMA-Factory venv's python (skip, or fail under CI, when missing)."""
    return require_lf_python()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(lf_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 model + tokenizer, built once per session with ``support.tiny_model``."""
    return build_tiny_model(lf_python, tmp_path_factory.mktemp("tiny_qwen2") / "model")


def run_lf_verify(lf_python: Path, dataset_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Run ``python -m support.lf_verify`` in the LF venv and return its JSON report.

    The report (see ``support.lf_verify.verify_datasets``) gets two extra keys:
    ``exit_code`` (0 when every row survived) and ``output`` (the CLI's summary lines
    plus the tail of stderr, for assertion messages).
    """
    with tempfile.TemporaryDirectory(prefix="lf_verify_report_") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.run(
            [
                str(lf_python),
                "-m",
                "support.lf_verify",
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
            f"support.lf_verify wrote no report (rc={proc.returncode}):\n{output}"
        )
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    report["exit_code"] = proc.returncode
    report["output"] = output
    return report
