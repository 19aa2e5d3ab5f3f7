"""Format consistency (the reference's failure): a training conversation with tool calls
and tool results, rendered by LLaMA-Factory's ``qwen`` template, is identical (text and
token ids) to the same conversation rendered by the served model's chat template with
the ``tools`` list, as vLLM applies it at evaluation. The reference's Hermes format is
shown to differ, so the check can fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simia.data.datasets import DatasetDesign
from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage

from conftest import TIMEOUT_S, lf_env  # tests/llamafactory/conftest.py

pytestmark = pytest.mark.llamafactory


def _datasets(raw: Path, tmp: Path, fmt: str, tau2_dir: Path, size: int) -> Path:
    process_stage(raw, tmp / "processed", fmt=fmt, tau2_data_dir=tau2_dir)
    score_rules_stage(tmp / "processed" / "processed.json" if fmt == "native" else raw,
                      tmp / "scores.jsonl")
    out = tmp / "datasets"
    build_datasets_stage(tmp / "processed" / "processed.json", tmp / "scores.jsonl", out,
                         DatasetDesign(levels=(0,), size=size, shared_clean=size,
                                       replicates=1))
    return out


def _check(lf_python: Path, dataset_dir: Path, model_dir: Path, tmp: Path) -> dict:
    report = tmp / "format_check.json"
    proc = subprocess.run([str(lf_python), "-m", "support.format_check", "--dataset-dir",
                           str(dataset_dir), "--tokenizer", str(model_dir), "--json-out",
                           str(report)], env=lf_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert report.is_file(), proc.stderr[-4000:]
    out = json.loads(report.read_text())
    out["exit_code"] = proc.returncode
    return out


def test_native_training_format_is_what_the_served_model_sees(raw_file, tau2_dir, tmp_path,
                                                              lf_python, tiny_tokenizer_dir):
    ds = _datasets(raw_file, tmp_path, "native", tau2_dir, size=20)
    report = _check(lf_python, ds, tiny_tokenizer_dir, tmp_path)
    assert report["checked"] == 20 and report["tool_calls"] > 20
    assert report["mismatches"] == [] and report["exit_code"] == 0


def test_the_reference_hermes_format_is_not(raw_file, tau2_dir, tmp_path, lf_python,
                                            tiny_tokenizer_dir):
    ds = _datasets(raw_file, tmp_path, "hermes", tau2_dir, size=20)
    report = _check(lf_python, ds, tiny_tokenizer_dir, tmp_path)
    assert report["exit_code"] == 1 and report["tool_calls"] > 0
    assert len(report["mismatches"]) == report["checked"] == 20


@pytest.mark.reference
def test_real_conversations_render_identically(reference_data, tmp_path, lf_python,
                                               tiny_tokenizer_dir):
    ds = _datasets(reference_data / "simia-wm-exp" / "tau2_telecom_strict_200.json", tmp_path,
                   "native", reference_data / "tau2-telecom", size=50)
    report = _check(lf_python, ds, tiny_tokenizer_dir, tmp_path)
    assert report["checked"] == 50 and report["tool_calls"] > 100
    assert report["mismatches"] == [], report["mismatches"][:2]
