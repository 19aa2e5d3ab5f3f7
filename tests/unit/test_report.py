"""``simia report``: a run directory in, report.md/html/json and PNGs out; the headline
states the right verdict; missing parts are named, secrets never appear."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_tau2_results import FIXTURE, make_results, write_results

from simia import cli
from simia.report import write_report

LEVELS = (0, 5, 10, 20)
PLOTS = {"pass_k_by_level.png", "paired_diff_vs_reference.png", "data_funnel.png",
         "llm_usage_cost.png", "training_loss.png", "score_distribution.png"}


def _jdump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _usage(calls: int, tin: int, tout: int) -> dict[str, Any]:
    return {"model_id": "us.anthropic.claude-sonnet-4-20250514-v1:0", "calls": calls,
            "failed_calls": 1, "errors": {"ThrottlingException": 1}, "input_tokens": tin,
            "output_tokens": tout, "call_seconds": 12.5,
            "cost_usd": round((tin * 3 + tout * 15) / 1e6, 4)}


def build_data_half(run: Path) -> None:
    """The files the stages before evaluation write (as simia's stages write them)."""
    _jdump(run / "seeds" / "summary.json", {
        "stage": "seeds", "requested": 50, "seeds": 49, "failed": 1,
        "failed_by_error": {"unparseable": 1}, "llm": _usage(52, 410_000, 95_000)})
    _jdump(run / "generate" / "summary.json", {
        "stage": "generate", "target": 120, "valid": 120, "extra_valid_dropped": 2,
        "failed": 9, "failed_by_error": {"unparseable": 7, "LLMCallError": 2},
        "attempted": 131, "mode": "sycophantic", "llm": _usage(140, 2_100_000, 880_000)})
    _jdump(run / "judge" / "summary.json", {
        "stage": "judge", "conversations": 110, "scored": 108, "failed": 2,
        "sycophantic": 40, "clean": 68, "threshold": 0.0, "llm": _usage(112, 900_000, 60_000)})
    _jdump(run / "processed" / "summary.json", {
        "format": "native", "input": 120, "kept": 110, "rejected": 10, "kept_fraction": 0.9167,
        "rejected_by_reason": {"bad_json_arguments": 4, "unknown_tool": 3, "empty_turn": 3},
        "rejected_by_step": {}, "repairs": {}})
    scores = ([{"index": i, "source_index": i, "score": 0, "kinds": [], "flags": []}
               for i in range(70)] +
              [{"index": i, "source_index": i, "score": 10 + (i % 9) * 10,
                "kinds": ["missing_required_arg"], "flags": []} for i in range(70, 110)])
    (run / "scores").mkdir(parents=True)
    (run / "scores" / "rule_scores.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in scores))
    datasets = {}
    for lv in LEVELS:
        syc = lv * 40 // 100
        datasets[f"telecom_syc_{lv}pct"] = {
            "level_pct": lv, "file": f"telecom_syc_{lv}pct.json", "total": 40,
            "clean": 40 - syc, "sycophantic": syc, "sycophantic_pct": 100 * syc / 40,
            "indices": [], "sycophantic_indices": [], "content_sha256": {}}
    _jdump(run / "datasets" / "metadata.json", {
        "design": {"levels_pct": list(LEVELS), "size": 40, "shared_clean": 30, "seed": 42,
                   "threshold": 0, "label_rule": "sycophantic if score > 0, else clean"},
        "format": "native", "label_source": "rules",
        "pools": {"processed": 110, "clean": 70, "sycophantic": 40, "unlabeled": 0},
        "shared_clean_core": [], "datasets": datasets})
    for i, lv in enumerate(LEVELS):
        slug = f"{lv}pct"
        curve = [[s, 1.2 - 0.02 * s + 0.01 * i] for s in range(1, 31)]
        if lv == 20:  # only LLaMA-Factory's trainer_state.json
            _jdump(run / "train" / slug / "output" / "trainer_state.json", {
                "global_step": 30, "max_steps": 30,
                "log_history": [{"step": s, "loss": v, "learning_rate": 1e-6}
                                for s, v in curve] + [{"step": 30, "train_loss": 0.8}]})
        else:
            _jdump(run / "train" / slug / "training_summary.json", {
                "level": float(lv), "dataset": f"telecom_syc_{slug}", "config_sha256": "x",
                "final_loss": curve[-1][1], "train_loss": 0.8, "steps": 30,
                "total_steps": 30, "train_runtime_s": 321.0, "model_path": "/m",
                "loss_curve": curve})


def add_eval(run: Path, level: float, rows: dict[str, list[Any]], *,
             evaluator: str = "tau2", summary: bool = True) -> None:
    slug = f"{level:g}pct"
    path = write_results(run / "eval" / slug / "results.json",
                         make_results(rows, agent_llm=f"hosted_vllm/simia-{slug}"))
    if summary:
        _jdump(run / "eval" / slug / "eval_summary.json", {
            "level": float(level), "slug": slug, "backend": "vllm", "evaluator": evaluator,
            "model": f"simia-{slug}", "results": str(path)})


def decreasing(level: float, tasks: int = 30) -> dict[str, list[Any]]:
    """Task i succeeds in max(0, base_i - drop) of 4 trials; base 4 (i < 20) or 3; the drop
    grows with the level (0, 1, 2, 3 trials): a clean monotone decline."""
    drop = {0: 0, 5: 1, 10: 2, 20: 3}[int(level)]
    out = {}
    for i in range(tasks):
        c = max(0, (4 if i < 20 else 3) - drop)
        out[f"[mms_issue]task_{i:02d}[PERSONA:None]"] = [t < c for t in range(4)]
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """A complete run with a monotone decline, and the report written once."""
    run = tmp_path_factory.mktemp("report") / "run"
    build_data_half(run)
    for lv in LEVELS:
        add_eval(run, lv, decreasing(lv))
    return run, write_report(run, resamples=300)


def _first_screen(md: str) -> str:
    """Everything before the first detail section."""
    return md.split("\n## ", 1)[0]


def test_decreasing_matrix_gives_a_decrease_verdict_and_every_file(full_run):
    run, out = full_run
    rdir = run / "report"
    assert out["verdict"] == "decrease"
    assert {p.name for p in rdir.iterdir()} == {"report.md", "report.html", "report.json"} | PLOTS
    for png in PLOTS:
        assert (rdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (rdir / "report.md").read_text()
    first = _first_screen(md)
    # pass^1 at 0 %: (20 * 4/4 + 10 * 3/4) / 30 = 27.5/30 = 0.92; at 20 %: (20 * 1/4) / 30 = 0.17
    assert "More sycophancy lowered task success: pass^1 fell from 0.92" in first
    assert "to 0.17" in first and "(one-sided)" in first
    assert "the design detects differences of >=" in first
    # the per-level table is on the first screen, with pass^1..4, the paired diff and tau2's
    assert "| 20 % | 30 x 4 |" in first and "pass^4" in first and "tau2 pass^1" in first
    assert first.index("More sycophancy") < first.index("| Level |")
    report = json.loads((rdir / "report.json").read_text())
    assert report["headline"]["verdict"] == "decrease"
    assert report["trend"]["slope_per_10pp"] < 0 and report["trend"]["p_decreasing"] < 0.001
    by = {r["level"]: r for r in report["levels"]}
    assert by[0]["pass_hat_k"]["1"]["estimate"] == pytest.approx(27.5 / 30)
    assert by[20]["paired_vs_reference"]["mean_diff"] == pytest.approx(-0.75)
    assert by[20]["paired_vs_reference"]["worse"] == 30
    assert report["missing"] == [] and report["problems"] == []
    assert set(report["training"]) == {"0pct", "5pct", "10pct", "20pct"}
    assert report["training"]["20pct"]["source"].endswith("trainer_state.json")
    assert report["data"]["processed"]["rejected_by_reason"]["unknown_tool"] == 3
    assert report["scores"]["count"] == 110 and report["scores"]["above_threshold"] == 40
    assert report["llm_usage"]["stages"]["generate"]["input_tokens"] == 2_100_000
    html = (rdir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert "More sycophancy lowered task success" in html


def test_identical_levels_give_no_detectable_effect(tmp_path):
    run = tmp_path / "run"
    same = decreasing(5)
    for lv in LEVELS:
        add_eval(run, lv, same)
    out = write_report(run, resamples=300)
    assert out["verdict"] == "no_effect"
    first = _first_screen((run / "report" / "report.md").read_text())
    assert first.count("No detectable effect of sycophancy on task success") == 1
    assert "a smaller effect cannot be ruled out" in first
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["trend"]["p_two_sided"] == 1.0 and report["trend"]["slope_per_10pp"] == 0
    # nothing but evaluations: the rest is listed as missing, and the report still exists
    assert "generate/summary.json" in report["missing"]
    assert "datasets/metadata.json" in report["missing"]
    assert (run / "report" / "pass_k_by_level.png").is_file()
    assert not (run / "report" / "data_funnel.png").exists()
    assert "missing: generate/summary.json" in (run / "report" / "report.md").read_text()


def test_not_enough_evaluations(tmp_path):
    run = tmp_path / "run"
    build_data_half(run)
    add_eval(run, 0, decreasing(0))
    out = write_report(run, resamples=200)
    assert out["verdict"] == "insufficient"
    md = (run / "report" / "report.md").read_text()
    assert _first_screen(md).startswith("# ")
    assert "Not enough evaluations to answer" in _first_screen(md)
    # the levels come from the eval summaries: only 0 % has one
    report = json.loads((run / "report" / "report.json").read_text())
    assert [r["level"] for r in report["levels"]] == [0.0]


def test_levels_from_dataset_metadata_when_no_eval_summary(tmp_path):
    run = tmp_path / "run"
    build_data_half(run)
    add_eval(run, 0, decreasing(0), summary=False)
    add_eval(run, 10, decreasing(10), summary=False)
    out = write_report(run, resamples=200)
    report = json.loads((run / "report" / "report.json").read_text())
    assert [r["level"] for r in report["levels"]] == [0, 5, 10, 20]
    assert "eval/5pct/results.json" in report["missing"]
    assert "eval/20pct/results.json" in report["missing"]
    assert out["verdict"] == "decrease"  # 0 vs 10 %, 30 tasks all worse
    md = (run / "report" / "report.md").read_text()
    assert "no evaluation for 5 % (no results.json)" in _first_screen(md)


def test_infrastructure_errors_counted_and_secrets_never_printed(tmp_path):
    run = tmp_path / "run"
    build_data_half(run)
    add_eval(run, 0, decreasing(0))
    (run / "eval" / "5pct").mkdir(parents=True)
    shutil.copy(FIXTURE, run / "eval" / "5pct" / "results.json")
    _jdump(run / "eval" / "5pct" / "eval_summary.json", {
        "level": 5.0, "slug": "5pct", "backend": "vllm", "evaluator": "tau2",
        "model": "simia-5pct", "results": "eval/5pct/results.json",
        "llm_args": {"api_key": "sk-eval-summary-secret"}})
    write_report(run, resamples=200)
    report = json.loads((run / "report" / "report.json").read_text())
    lvl5 = next(r for r in report["levels"] if r["level"] == 5)
    assert lvl5["infrastructure_errors"] == 1 and lvl5["missing_cells"] == 1
    assert lvl5["pass_hat_k"]["1"]["estimate"] == pytest.approx(0.25)
    assert lvl5["tau2_pass_hat_k"]["1"] == pytest.approx(7 / 24)
    assert lvl5["termination_counts"]["context_window_exceeded"] == 1
    # the 5 % level shares no task with 0 %: no paired comparison, no trend
    assert lvl5["paired_vs_reference"] is None
    md = (run / "report" / "report.md").read_text()
    assert "1 infrastructure error(s) and 1 missing simulation(s) are counted as failures" in md
    for name in ("report.md", "report.html", "report.json"):
        text = (run / "report" / name).read_text()
        for secret in ("sk-test-should-never-appear", "secretpw", "Bearer abc",
                       "sk-local-secret", "sk-eval-summary-secret"):
            assert secret not in text, (name, secret)


def test_stand_in_evaluator_and_unreadable_results_are_flagged(tmp_path):
    run = tmp_path / "run"
    add_eval(run, 0, decreasing(0), evaluator="simia-ci")
    add_eval(run, 10, decreasing(10), evaluator="simia-ci")
    add_eval(run, 20, decreasing(20), evaluator="simia-ci")
    (run / "eval" / "20pct" / "results.json").write_text('{"info": {}}')
    out = write_report(run, resamples=200)
    assert any("simia-ci, not tau2-bench" in w for w in out["warnings"])
    report = json.loads((run / "report" / "report.json").read_text())
    lvl20 = next(r for r in report["levels"] if r["level"] == 20)
    assert lvl20["problem"].startswith("unreadable:") and "info.num_trials" in lvl20["problem"]
    assert any("info.num_trials" in p for p in report["problems"])


def test_same_inputs_same_bytes(full_run, tmp_path):
    run, _ = full_run
    first = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    write_report(run, tmp_path / "again", resamples=300)
    again = {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()}
    assert first == again


def test_cli_report(full_run, tmp_path, capsys):
    out_dir = tmp_path / "elsewhere"
    assert cli.main(["report", str(full_run[0]), "-o", str(out_dir), "--resamples", "200"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"] == "decrease" and printed["report_dir"] == str(out_dir)
    assert (out_dir / "report.html").is_file()
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory does not exist" in capsys.readouterr().err
