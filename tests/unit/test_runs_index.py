"""simia.report.runs_index: run folders as the UI lists them; stages, the report's headline (the
run-aware verdict), training runs and pass^1 per level, failures; damaged files give notes, not
exceptions; only report files are served."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_report import build_data_half, decreasing_run

from simia.report import runs_index
from simia.report import write_report
from simia.report.runs_index import EXPERIMENT, list_runs, report_file, run_detail, run_id_index


def _run(root: Path, name: str) -> Path:
    path = root / EXPERIMENT / name
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """A data root with one run holding a real report (simia.report.build) of a clear decline
    over 4 levels x 2 training runs."""
    root = tmp_path_factory.mktemp("data")
    run = _run(root, "manual__2026-01-01T00-00-00-00-00")
    build_data_half(run, replicates=2)
    decreasing_run(run)
    write_report(run, resamples=200)
    return root


def test_a_reported_run_has_stages_headline_and_pass1(reported):
    [run] = list_runs(reported)
    assert run.name == "manual__2026-01-01T00-00-00-00-00"
    assert run.stages == ("seeds", "generate", "processed", "scores", "judge", "datasets",
                          "train", "eval", "report")
    assert run.train_levels == ("0pct", "0pct-r2", "10pct", "10pct-r2", "20pct", "20pct-r2",
                                "5pct", "5pct-r2")
    assert run.eval_levels == run.train_levels
    assert run.verdict == "decrease" and run.headline is not None
    assert run.headline.text.startswith("More sycophancy lowered task success: with sycophancy "
                                        "in the training data varied over 0, 5, 10 and 20 % "
                                        "with 2 training runs per level (8 runs)")
    assert [lv.level for lv in run.levels] == [0, 5, 10, 20]
    first = run.levels[0]
    # the mean of its two runs' pass^1 (27.5/30 and 27.75/30), with a CI over runs
    assert first.pass1 == pytest.approx(27.625 / 30) and first.tasks == 30 and first.trials == 4
    assert first.pass1_low is not None and first.pass1_low < first.pass1 < first.pass1_high
    assert (first.runs, first.runs_with_results) == (2, 2)
    assert first.infrastructure_errors == 0 and first.problem is None
    assert run.has_report_html and "report.md" in run.report_files
    assert "dose_response.png" in run.report_files
    assert run.failures == () and run.notes == ()
    assert run.modified > 0


def test_stages_are_what_has_output(tmp_path):
    run = _run(tmp_path, "r1")
    (run / "seeds").mkdir()
    (run / "seeds" / "seeds.json").write_text("[]")
    (run / "generate").mkdir()  # empty: no output yet
    (run / "processed").mkdir()
    (run / "processed" / ".processed.json.tmp").write_text("")  # a temporary file only
    (run / "train" / "5pct").mkdir(parents=True)
    (run / "train" / "5pct" / "train_config.yaml").write_text("x: 1\n")
    (run / "train" / "10pct").mkdir()
    (run / "collect").mkdir()  # a collection in progress: its checkpoints
    (run / "collect" / "collect-pilot-shard-000-of-001.jsonl").write_text("{}\n")
    (run / "twins").mkdir()  # no twins yet
    info = run_detail(tmp_path, "r1")
    assert info is not None
    assert info.stages == ("seeds", "collect", "train")
    assert info.train_levels == ("5pct",) and info.eval_levels == ()
    assert info.headline is None and info.levels == () and info.notes == ()
    assert info.report_files == () and not info.has_report_html


def test_runs_are_listed_newest_first_and_odd_entries_skipped(tmp_path):
    old, new = _run(tmp_path, "old"), _run(tmp_path, "new")
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    (tmp_path / EXPERIMENT / "stray.json").write_text("{}")  # a file, not a run
    (tmp_path / EXPERIMENT / ".hidden").mkdir()
    assert [r.name for r in list_runs(tmp_path)] == ["new", "old"]
    assert list_runs(tmp_path / "nowhere") == []


@pytest.mark.parametrize("content, note", [
    ("{not json", "report/report.json is not valid JSON (line 1, column 2)"),
    ("[1, 2]", "report/report.json is not a JSON object"),
    ('{"levels": []}', "report/report.json has no headline (verdict missing)"),
    ('{"headline": "decrease"}', "report/report.json has no headline (verdict missing)"),
])
def test_a_malformed_report_gives_a_note(tmp_path, content, note):
    run = _run(tmp_path, "bad")
    (run / "report").mkdir()
    (run / "report" / "report.json").write_text(content)
    info = run_detail(tmp_path, "bad")
    assert info is not None and info.headline is None
    assert info.notes == (note,)
    assert "report" in info.stages


def test_a_missing_report_json_beside_other_report_files_is_noted(tmp_path):
    run = _run(tmp_path, "half")
    (run / "report").mkdir()
    (run / "report" / "report.md").write_text("# r\n")
    info = run_detail(tmp_path, "half")
    assert info is not None and info.notes == ("report/report.json is missing",)
    assert info.report_files == ("report.md",)


def test_odd_level_rows_are_tolerated(tmp_path):
    run = _run(tmp_path, "odd")
    (run / "report").mkdir()
    (run / "report" / "report.json").write_text(json.dumps({
        "headline": {"verdict": "insufficient", "text": "Not enough", "warnings": ["w1", 3]},
        "levels": [{"level": 5.0, "slug": "5pct", "problem": "no results.json"},
                   {"level": "x"}, "junk",
                   {"level": 0, "pass_hat_k": {"1": {"estimate": 0.5, "low": "?"}},
                    "tasks": 10, "trials": True}]}))
    info = run_detail(tmp_path, "odd")
    assert info is not None and info.verdict == "insufficient"
    assert info.headline is not None and info.headline.warnings == ("w1", "3")
    zero, five = info.levels
    assert (zero.level, zero.pass1, zero.pass1_low, zero.tasks, zero.trials) == (
        0, 0.5, None, 10, None)
    assert zero.runs is None and zero.runs_with_results is None  # a report before replicates
    assert zero.slug == "0pct"
    assert five.pass1 is None and five.problem == "no results.json"
    assert info.notes == ("report/report.json: 2 level row(s) without a numeric level skipped",)


def test_failures_are_read_from_the_callback_files_and_a_summary(tmp_path):
    run = _run(tmp_path, "failed")
    (run / "failures").mkdir()
    (run / "failures" / "level.train_model.json").write_text(json.dumps({
        "task_id": "level.train_model", "map_index": 2, "try_number": 3,
        "error": "DockerContainerFailedException: exit 1", "log_hint": "see the task log",
        "time": "2026-01-02T10:00:00+00:00", "conf": {"aws_secret": "never shown"}}))
    (run / "failures" / "broken.json").write_text("{")
    (run / "failures" / "other.json").write_text('{"no": "task"}')
    (run / "failure_summary.json").write_text(json.dumps({"failures": [
        {"task_id": "level.train_model", "map_index": 2, "try_number": 3},  # the same one
        {"task_id": "report_results", "error": "x" * 10_000, "time": "2026-01-02T11:00"}]}))
    info = run_detail(tmp_path, "failed")
    assert info is not None
    assert [(f.task_id, f.map_index, f.try_number, f.source) for f in info.failures] == [
        ("level.train_model", 2, 3, "failures/level.train_model.json"),
        ("report_results", None, None, "failure_summary.json")]
    assert info.failures[0].error == "DockerContainerFailedException: exit 1"
    assert len(info.failures[1].error) < 4100 and info.failures[1].error.endswith("[...]")
    assert "never shown" not in repr(info)
    assert info.notes == ("failures/broken.json is not valid JSON (line 1, column 2)",
                          "failures/other.json is not a failure record (no task_id)")


def test_run_names_must_be_plain_folders_inside_the_experiment(tmp_path):
    _run(tmp_path, "ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / EXPERIMENT / "link").symlink_to(outside)
    for bad in ("..", ".", "", "a/b", "../ok", "/etc", ".hidden", "link", "missing"):
        assert run_detail(tmp_path, bad) is None, bad
    assert run_detail(tmp_path, "ok") is not None
    assert [r.name for r in list_runs(tmp_path)] == ["ok"]


def test_only_report_files_with_allowed_suffixes_are_served(tmp_path):
    run = _run(tmp_path, "r")
    (run / "report").mkdir()
    for name in ("report.html", "report.md", "report.json", "plot.png", "notes.txt",
                 ".report.json.tmp"):
        (run / "report" / name).write_text("x")
    (run / "datasets").mkdir()
    (run / "datasets" / "metadata.json").write_text("{}")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (run / "report" / "escape.json").symlink_to(secret)
    (run / "report" / "inside.json").symlink_to(run / "datasets" / "metadata.json")
    for name in ("report.html", "report.md", "report.json", "plot.png", "inside.json"):
        path = report_file(tmp_path, "r", name)
        assert path is not None and path.is_file(), name
    for name in ("notes.txt", ".report.json.tmp", "escape.json", "..", "../datasets",
                 "missing.png", "/etc/passwd", "report", ""):
        assert report_file(tmp_path, "r", name) is None, name
    assert report_file(tmp_path, "..", "report.html") is None
    assert runs_index.content_type("a/report.html") == "text/html; charset=utf-8"
    assert runs_index.content_type("x.png") == "image/png"


def test_run_ids_map_to_folder_names():
    ids = ["manual__2026-01-01T00:00:00+00:00", "scheduled__x", "!!!"]
    assert run_id_index(ids) == {"manual__2026-01-01T00-00-00-00-00": ids[0],
                                 "scheduled__x": "scheduled__x"}


def test_data_root_from_env():
    assert runs_index.data_root_from_env({}) == Path("/opt/simia/data")
    assert runs_index.data_root_from_env({"SIMIA_DATA_ROOT": "/d"}) == Path("/d")
