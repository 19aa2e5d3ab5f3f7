"""LLaMA-Factory acceptance: every dataset the pipeline builds loads through
LLaMA-Factory's own data pipeline (template qwen, tiny local tokenizer) with no row
dropped or broken, in both output formats and on the real reference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simia.data.datasets import DatasetDesign
from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage

from conftest import run_lf_verify  # tests/llamafactory/conftest.py

pytestmark = pytest.mark.llamafactory


def _assert_all_rows_survive(report: dict, dataset_dir: Path) -> None:
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    assert report["exit_code"] == 0 and report["ok"], report["problems"] or report["output"]
    assert sorted(report["datasets"]) == sorted(info)
    for name, entry in info.items():
        rows = len(json.loads((dataset_dir / entry["file_name"]).read_text()))
        got = report["datasets"][name]
        assert got["rows_in_file"] == rows and got["rows_after_conversion"] == rows, got
        assert got["rows_after_pipeline"] == rows, got
        assert got["broken_rows"] == [] and got["all_labels_ignored_rows"] == [], got


@pytest.mark.parametrize("fmt", ["native", "hermes"])
def test_built_datasets_load_in_llamafactory(fmt, tmp_path, raw_file, tau2_dir, lf_python,
                                             tiny_tokenizer_dir):
    process_stage(raw_file, tmp_path / "processed", fmt=fmt, tau2_data_dir=tau2_dir)
    scores_input = tmp_path / "processed" / "processed.json" if fmt == "native" else raw_file
    score_rules_stage(scores_input, tmp_path / "scores.jsonl")
    out = tmp_path / "datasets"
    build_datasets_stage(tmp_path / "processed" / "processed.json", tmp_path / "scores.jsonl",
                         out, DatasetDesign(levels=(0, 10, 20), size=20, shared_clean=15))
    _assert_all_rows_survive(run_lf_verify(lf_python, out, tiny_tokenizer_dir), out)


@pytest.mark.reference
def test_real_conversations_load_in_llamafactory(reference_data, tmp_path, lf_python,
                                                 tiny_tokenizer_dir):
    """All 50 native conversations kept from the real strict file, labelled by the real
    judge (2 sycophantic among them), in a 0 % and a 4 % dataset of 48."""
    ref = reference_data / "simia-wm-exp"
    process_stage(ref / "tau2_telecom_strict_200.json", tmp_path / "processed",
                  tau2_data_dir=reference_data / "tau2-telecom")
    out = tmp_path / "datasets"
    summary = build_datasets_stage(
        tmp_path / "processed" / "processed.json",
        ref / "sycophancy_llm_scores_v2_strict_telecom_200.jsonl", out,
        DatasetDesign(levels=(0, 4), size=48, shared_clean=46))
    assert summary["pools"]["processed"] == 50
    _assert_all_rows_survive(run_lf_verify(lf_python, out, tiny_tokenizer_dir), out)
