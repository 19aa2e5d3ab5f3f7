"""The simia command line over the file-level stages: outputs, resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simia.cli import main


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simia.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def pipeline(tmp_path, raw_file, tau2_dir):
    out = tmp_path / "run"
    assert main(["process", str(raw_file), "-o", str(out / "processed"),
                 "--tau2-data-dir", str(tau2_dir)]) == 0
    assert main(["score-rules", str(raw_file), "-o", str(out / "scores.jsonl")]) == 0
    return out


def test_whole_data_half(pipeline, capsys):
    out = pipeline
    summary = json.loads((out / "processed" / "summary.json").read_text())
    processed = json.loads((out / "processed" / "processed.json").read_text())
    rejects = [json.loads(x) for x in (out / "processed" / "rejects.jsonl").read_text().split("\n")
               if x]
    assert summary["kept"] == len(processed) and summary["rejected"] == len(rejects)
    assert summary["kept"] + summary["rejected"] == summary["input"] == 300
    assert {r["index"] for r in rejects}.isdisjoint({p["source_index"] for p in processed})
    assert all({"index", "step", "reason", "detail"} <= set(r) for r in rejects)
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in scores] == list(range(300))
    capsys.readouterr()
    assert main(["build-datasets", "--conversations", str(out / "processed" / "processed.json"),
                 "--scores", str(out / "scores.jsonl"), "-o", str(out / "datasets"),
                 "--levels", "0,10,20", "--size", "20", "--shared-clean", "15",
                     "--replicates", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["datasets"]["telecom_syc_20pct"]["sycophantic"] == 4
    info = json.loads((out / "datasets" / "dataset_info.json").read_text())
    assert sorted(info) == ["telecom_syc_0pct", "telecom_syc_10pct", "telecom_syc_20pct"]
    for entry in info.values():
        assert len(json.loads((out / "datasets" / entry["file_name"]).read_text())) == 20
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_rerun_resumes_without_rewriting(pipeline, raw_file, tau2_dir, capsys):
    processed = pipeline / "processed" / "processed.json"
    before = processed.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["process", str(raw_file), "-o", str(pipeline / "processed"),
                 "--tau2-data-dir", str(tau2_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] is True
    assert processed.stat().st_mtime_ns == before
    # a changed parameter is not a resume
    assert main(["process", str(raw_file), "-o", str(pipeline / "processed"), "--format",
                 "hermes", "--tau2-data-dir", str(tau2_dir)]) == 0
    assert "resumed" not in json.loads(capsys.readouterr().out)
    assert processed.stat().st_mtime_ns != before


def test_crash_before_summary_redoes_the_stage(pipeline, raw_file, tau2_dir, capsys):
    (pipeline / "processed" / "summary.json").unlink()
    (pipeline / "processed" / "processed.json").write_text("[half")
    capsys.readouterr()
    assert main(["process", str(raw_file), "-o", str(pipeline / "processed"),
                 "--tau2-data-dir", str(tau2_dir)]) == 0
    assert "resumed" not in json.loads(capsys.readouterr().out)
    json.loads((pipeline / "processed" / "processed.json").read_text())


def test_errors_exit_2_with_a_clear_message(tmp_path, raw_file, tau2_dir):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"conversations": [{"from": "human", "value": 1}]}]')
    res = run_cli("process", str(bad), "-o", str(tmp_path / "o"), "--tau2-data-dir",
                  str(tau2_dir))
    assert res.returncode == 2
    assert "record 0, field 'conversations[0].value'" in res.stderr and str(bad) in res.stderr
    assert not (tmp_path / "o" / "processed.json").exists()

    res = run_cli("process", str(raw_file), "-o", str(tmp_path / "o"),
                  env={"TAU2_DATA_DIR": ""})
    assert res.returncode == 2 and "TAU2_DATA_DIR" in res.stderr
    res = run_cli("process", str(raw_file), "-o", str(tmp_path / "o"), "--tau2-data-dir",
                  str(tmp_path))
    assert res.returncode == 2 and "main_policy.md" in res.stderr

    res = run_cli("build-datasets", "--conversations", str(raw_file), "--scores",
                  str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "d"))
    assert res.returncode == 2 and "none.jsonl: scores file does not exist" in res.stderr
    scores = tmp_path / "s.jsonl"
    scores.write_text('{"index": 0, "score": 0}\n')
    res = run_cli("build-datasets", "--conversations", str(raw_file), "--scores",
                  str(scores), "-o", str(tmp_path / "d"))
    assert res.returncode == 2 and "field 'source_index'" in res.stderr  # raw, not processed

    res = run_cli("build-datasets", "--conversations", "x", "--scores", "y", "-o", "z",
                  "--levels", "a,b")
    assert res.returncode == 2 and "comma-separated percentages" in res.stderr


def test_score_rules_refuses_hermes_processed(tmp_path, raw_file, tau2_dir):
    assert main(["process", str(raw_file), "-o", str(tmp_path / "h"), "--format", "hermes",
                 "--tau2-data-dir", str(tau2_dir)]) == 0
    res = run_cli("score-rules", str(tmp_path / "h" / "processed.json"), "-o",
                  str(tmp_path / "s.jsonl"))
    assert res.returncode == 2 and "score the raw conversations" in res.stderr


def test_score_rules_on_native_processed_keeps_source_index(tmp_path, pipeline):
    assert main(["score-rules", str(pipeline / "processed" / "processed.json"), "-o",
                 str(tmp_path / "s.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    processed = json.loads((pipeline / "processed" / "processed.json").read_text())
    assert [r["source_index"] for r in rows] == [p["source_index"] for p in processed]


def test_skip_invalid_records_lists_them(tmp_path, tau2_dir):
    from support.synthetic import generate_raw

    raw = generate_raw(5, seed=2)
    raw[3] = {"conversations": "oops"}
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(raw))
    assert main(["process", str(path), "-o", str(tmp_path / "p"), "--skip-invalid-records",
                 "--tau2-data-dir", str(tau2_dir)]) == 0
    rejects = [json.loads(x) for x in (tmp_path / "p" / "rejects.jsonl").read_text().splitlines()]
    assert {"index": 3, "step": "load", "reason": "invalid_record"}.items() <= \
        next(r for r in rejects if r["index"] == 3).items()


def test_simia_is_installed_as_a_command():
    exe = Path(sys.executable).with_name("simia")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for sub in ("process", "score-rules", "build-datasets"):
        assert sub in res.stdout


def test_eval_results_counts_infrastructure_errors_as_failures(capsys, tmp_path):
    fixture = Path(__file__).resolve().parents[1] / "fixtures/tau2/results_every_reason.json"
    assert main(["eval-results", str(fixture)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["infrastructure_errors"] >= 1 and out["missing_runs"] >= 1
    # tau2 drops infrastructure errors, so its pass^1 is never below ours
    assert out["tau2_pass_hat_k"]["1"] >= out["pass_hat_k"]["1"]
    assert set(out["termination_reasons"]) >= {"infrastructure_error", "user_stop"}
    bad = tmp_path / "results.json"
    bad.write_text('{"tasks": [], "simulations": [{"task_id": 3}]}')
    assert main(["eval-results", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("change, record, words", [
    ({"trial": 99}, 0, "trial 99 is outside 0..2"),
    ({"reward_info": {"reward": 7.5}}, 0, "must be within [0, 1], got 7.5"),
    # simulations[0] becomes trial 1 of its task, which simulations[1] runs again
    ({"trial": 1}, 1, "already has simulations[0]"),
])
def test_eval_results_refuses_an_impossible_simulation(capsys, tmp_path, change, record, words):
    """trial 99 of 3 made pass^1 0.0075 and 389 "missing" runs; a reward of 7.5 and a
    duplicated simulation went into the averages: each now exits 2 naming the simulation."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures/tau2/results_every_reason.json"
    doc = json.loads(fixture.read_text())
    doc["simulations"][0] = {**doc["simulations"][0], **change}
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(doc))
    assert main(["eval-results", str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err and "Traceback" not in err
    sim_id = doc["simulations"][record]["id"]
    assert err.startswith(f"simia eval-results: error: {bad}, record {record}")
    assert f"simulations[{record}] (id {sim_id!r})" in err and words in err
