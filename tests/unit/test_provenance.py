"""Trust boundaries of the file stages: content hashes in every summary, scores that must
belong to the conversations they label, damaged outputs redone on resume, stale dataset
files removed, and the same checks where the DAG takes scores or datasets over."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from simia import pipeline
from simia.cli import main
from simia.data.datasets import DatasetDesign, content_hash
from simia.data.stages import (build_datasets_stage, process_stage, score_rules_stage,
                               validate_scores_file)
from simia.errors import InputError
from simia.layout import RunLayout

DESIGN = DatasetDesign(levels=(0, 10, 20), size=20, shared_clean=15)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def run(tmp_path, raw_file, tau2_dir) -> RunLayout:
    """A run folder with processed (native) conversations and rule scores of them."""
    layout = RunLayout(tmp_path / "run")
    process_stage(raw_file, layout.processed.dir, tau2_data_dir=tau2_dir)
    score_rules_stage(layout.processed.processed, layout.rule_scores.scores)
    return layout


def processed_rows(run: RunLayout) -> list[dict]:
    return json.loads(run.processed.processed.read_text())


def judge_records(run: RunLayout) -> list[dict]:
    """Scores in the reference judge's format, one per processed row (labels taken from
    the rule scores, so the design can be filled)."""
    score = {r["source_index"]: r["score"] for r in lines(run.rule_scores.scores)}
    return [{"conv_idx": r["source_index"], "based_on_sample": r["based_on_sample"],
             "simulator_mode": r["simulator_mode"],
             "wm_sycophancy_score": score[r["source_index"]]} for r in processed_rows(run)]


# ------------------------------------------------------------------ hashes in summaries

def test_summaries_record_the_sha256_of_inputs_and_outputs(run, raw_file, tmp_path):
    proc = json.loads(run.processed.summary.read_text())
    assert proc["inputs_sha256"] == {"raw_conversations": sha(raw_file)}
    assert proc["outputs_sha256"] == {"processed": sha(run.processed.processed),
                                      "rejects": sha(run.processed.rejects)}
    rules = json.loads(run.rule_scores.summary.read_text())
    assert rules["inputs_sha256"] == {"conversations": sha(run.processed.processed)}
    assert rules["outputs_sha256"] == {"scores": sha(run.rule_scores.scores)}
    built = build_datasets_stage(run.processed.processed, run.rule_scores.scores,
                                 run.datasets.dir, DESIGN)
    assert built["inputs_sha256"] == {"conversations": sha(run.processed.processed),
                                      "scores": sha(run.rule_scores.scores)}
    files = sorted(p.name for p in run.datasets.dir.iterdir() if p.name != "summary.json")
    assert sorted(built["outputs_sha256"]) == files
    assert all(built["outputs_sha256"][n] == sha(run.datasets.dir / n) for n in files)
    meta = json.loads(run.datasets.metadata.read_text())
    assert meta["inputs"]["conversations_sha256"] == sha(run.processed.processed)


def test_rule_scores_carry_the_content_hash_or_the_raw_identity(run, raw_file, tmp_path):
    rows = processed_rows(run)
    scores = lines(run.rule_scores.scores)
    assert [s["content_sha256"] for s in scores] == [content_hash(r) for r in rows]
    score_rules_stage(raw_file, tmp_path / "raw_scores.jsonl")
    raw = json.loads(raw_file.read_text())
    assert [(s["based_on_sample"], s["simulator_mode"])
            for s in lines(tmp_path / "raw_scores.jsonl")] == \
        [(r["based_on_sample"], r["simulator_mode"]) for r in raw]


# ------------------------------------------------------------------ scores must belong

@pytest.mark.parametrize("change,field,expected,found", [
    (lambda recs, rows: recs.append({**recs[-1], "conv_idx": 500}), "conv_idx",
     "numbered 0..299", "conversation 500"),
    (lambda recs, rows: recs[3].update(index=9999), "index", "expected 3", "9999"),
    (lambda recs, rows: recs[2].update(content_sha256="0" * 64), "content_sha256",
     "expected '{h2}'", "'" + "0" * 64 + "'"),
    (lambda recs, rows: recs[1].update(based_on_sample="apigen_other"), "based_on_sample",
     "expected '{b1}'", "'apigen_other'"),
    (lambda recs, rows: [r.update(simulator_mode="strict") for r in recs], "simulator_mode",
     "expected 'sycophantic'", "'strict'"),
])
def test_build_datasets_refuses_scores_of_other_conversations(run, tmp_path, capsys, change,
                                                              field, expected, found):
    rows = processed_rows(run)
    recs = judge_records(run)
    change(recs, rows)
    path = write_lines(tmp_path / "judge.jsonl", recs)
    args = ["build-datasets", "--conversations", str(run.processed.processed), "--scores",
            str(path), "-o", str(tmp_path / "d"), "--levels", "0,10,20", "--size", "20",
            "--shared-clean", "15"]
    assert main(args) == 2
    err = capsys.readouterr().err
    expected = expected.format(h2=content_hash(rows[2]), b1=rows[1]["based_on_sample"])
    assert str(path) in err and f"field '{field}'" in err, err
    assert expected in err and found in err, err
    assert "line " in err and not (tmp_path / "d" / "summary.json").exists()


def test_scores_of_conversations_processing_rejected_are_accepted(run, tmp_path):
    rejected = [r["index"] for r in lines(run.processed.rejects)]
    assert rejected, "the synthetic raw file should have rejects"
    recs = judge_records(run) + [{"conv_idx": i, "wm_sycophancy_score": 0}
                                 for i in rejected]
    path = write_lines(tmp_path / "judge.jsonl", recs)
    checked = validate_scores_file(path, run.processed.processed)
    assert checked["matched"] == len(processed_rows(run))
    assert checked["conversations"] == len(recs)


def test_validate_scores_file_refuses_another_processed_files_scores(run, tmp_path, raw_file,
                                                                     tau2_dir):
    other = json.loads(raw_file.read_text())
    for conv in other:
        conv["based_on_sample"] = "x" + conv["based_on_sample"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    process_stage(tmp_path / "other.json", tmp_path / "other", tau2_data_dir=tau2_dir)
    path = write_lines(tmp_path / "judge.jsonl", judge_records(run))
    assert validate_scores_file(path, run.processed.processed)["matched"] > 0
    with pytest.raises(InputError, match="line 1: conversation .* does not belong to .*"
                       "other/processed.json: based_on_sample is 'seed_"):
        validate_scores_file(path, tmp_path / "other" / "processed.json")


def _params(run: RunLayout, **extra) -> dict:
    return {"collection": "fixed", "start_from": "beginning", "source_run": "",
            "label_source": "judge_file", "judge_scores": "", "output_format": "native",
            **extra}


def test_dag_score_refuses_a_judge_file_of_other_conversations(run, tmp_path):
    recs = judge_records(run)
    good = write_lines(tmp_path / "good.jsonl", recs)
    recs[5]["conv_idx"] = 500
    bad = write_lines(tmp_path / "bad.jsonl", recs)
    processed = {"processed": str(run.processed.processed)}
    done = pipeline.score(_params(run, judge_scores=str(good)), run, processed)
    assert done.value["conversations"] == len(recs)
    with pytest.raises(InputError, match="line 6: conversation 500 is not in"):
        pipeline.score(_params(run, judge_scores=str(bad)), run, processed)


def test_start_from_scores_refuses_changed_or_foreign_scores(run, tmp_path):
    p = _params(run, start_from="scores", source_run=str(run.root), label_source="rules")
    processed = pipeline.process(p, RunLayout(tmp_path / "new"), "unused").value
    assert pipeline.score(p, RunLayout(tmp_path / "new"), processed).value["scores"] == \
        str(run.rule_scores.scores)
    scores = lines(run.rule_scores.scores)
    scores[0]["score"] = 100 - scores[0]["score"]  # edited after the stage wrote it
    write_lines(run.rule_scores.scores, scores)
    with pytest.raises(InputError, match="rule_scores.jsonl: changed since its stage wrote"):
        pipeline.score(p, RunLayout(tmp_path / "new"), processed)
    # scores that were written as they are, but label another processed file
    scores[0]["source_index"] = 9999
    write_lines(run.rule_scores.scores, scores)
    summary = json.loads(run.rule_scores.summary.read_text())
    summary["outputs_sha256"]["scores"] = sha(run.rule_scores.scores)
    run.rule_scores.summary.write_text(json.dumps(summary))
    with pytest.raises(InputError, match="line 1: conversation 9999 is not in"):
        pipeline.score(p, RunLayout(tmp_path / "new"), processed)


def test_start_from_processed_refuses_a_damaged_processed_file(run, tmp_path):
    p = _params(run, start_from="processed", source_run=str(run.root))
    data = run.processed.processed.read_bytes()
    run.processed.processed.write_bytes(data[:1000])
    with pytest.raises(InputError, match="processed.json: changed since its stage wrote"):
        pipeline.process(p, RunLayout(tmp_path / "new"), "unused")


def test_start_from_datasets_checks_the_datasets_and_their_scores(run, tmp_path):
    from simia.data.stages import check_datasets_dir

    build_datasets_stage(run.processed.processed, run.rule_scores.scores, run.datasets.dir,
                         DESIGN)
    p = _params(run, start_from="datasets", source_run=str(run.root), label_source="rules")
    assert check_datasets_dir(run.datasets.dir)["datasets"]
    level = run.datasets.dir / "telecom_syc_10pct.json"
    kept = level.read_bytes()
    level.write_bytes(kept.replace(b'"value": "', b'"value": "edited ', 1))
    with pytest.raises(InputError, match="telecom_syc_10pct.json: changed since build-datasets"):
        pipeline.build_datasets(p, RunLayout(tmp_path / "new"), None, None)
    level.write_bytes(kept)
    assert pipeline.build_datasets(p, RunLayout(tmp_path / "new"), None, None).value[
        "dataset_dir"] == str(run.datasets.dir)
    scores = lines(run.rule_scores.scores)
    scores[0]["content_sha256"] = "0" * 64
    write_lines(run.rule_scores.scores, scores)
    with pytest.raises(InputError, match="rule_scores.jsonl, field 'scores_sha256': changed "
                       "since the datasets"):
        pipeline.build_datasets(p, RunLayout(tmp_path / "new"), None, None)


# ------------------------------------------------------------------ resume and stale files

def test_a_damaged_output_is_redone_on_resume(run, raw_file, tau2_dir):
    good = run.processed.processed.read_bytes()
    assert process_stage(raw_file, run.processed.dir, tau2_data_dir=tau2_dir)["resumed"]
    run.processed.processed.write_bytes(good[:1000])
    again = process_stage(raw_file, run.processed.dir, tau2_data_dir=tau2_dir)
    assert "resumed" not in again
    assert run.processed.processed.read_bytes() == good

    build_datasets_stage(run.processed.processed, run.rule_scores.scores, run.datasets.dir,
                         DESIGN)
    level = run.datasets.dir / "telecom_syc_20pct.json"
    built = level.read_bytes()
    level.write_bytes(built.replace(b"\n", b"\n ", 1))  # same JSON, other bytes
    assert "resumed" not in build_datasets_stage(run.processed.processed,
                                                 run.rule_scores.scores, run.datasets.dir,
                                                 DESIGN)
    assert level.read_bytes() == built
    assert build_datasets_stage(run.processed.processed, run.rule_scores.scores,
                                run.datasets.dir, DESIGN)["resumed"]


def test_rebuilding_with_fewer_levels_removes_only_the_old_level_files(run):
    out = run.datasets.dir
    build_datasets_stage(run.processed.processed, run.rule_scores.scores, out,
                         DatasetDesign(levels=(0, 10, 20), size=20, shared_clean=15,
                                       replicates=2))
    (out / "notes.json").write_text("{}")  # not an output of the stage: kept
    assert (out / "telecom_syc_20pct_r2.json").is_file()
    summary = build_datasets_stage(run.processed.processed, run.rule_scores.scores, out,
                                   DatasetDesign(levels=(0, 10), size=20, shared_clean=15,
                                                 replicates=1))
    assert summary["removed_stale"] == ["telecom_syc_0pct_r2.json", "telecom_syc_10pct_r2.json",
                                        "telecom_syc_20pct.json", "telecom_syc_20pct_r2.json"]
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset_info.json", "metadata.json", "notes.json", "rejects.jsonl", "summary.json",
        "telecom_syc_0pct.json", "telecom_syc_10pct.json"]
