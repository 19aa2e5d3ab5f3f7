"""``simia report``: a run directory in, report.md/html/json and PNGs out. The headline is
the run-aware analysis's verdict over every declared training run (level x replicate): a
clear drop over two replicates is a decrease, a replicate whose evaluation never ran makes
it invalid (named), one run per level is insufficient (the checkpoints still shown); old
run folders still open; missing parts are named, secrets never appear."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_tau2_results import FIXTURE, make_results, write_results

from simia import cli
from simia.analysis import format_p
from simia.layout import run_slug
from simia.report import write_report
from simia.report.formatting import p_value

LEVELS = (0, 5, 10, 20)
PLOTS = {"dose_response.png", "data_funnel.png", "llm_usage_cost.png", "training_loss.png",
         "score_distribution.png"}


def _jdump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _usage(calls: int, tin: int, tout: int) -> dict[str, Any]:
    return {"model_id": "us.anthropic.claude-sonnet-4-20250514-v1:0", "calls": calls,
            "failed_calls": 1, "errors": {"ThrottlingException": 1}, "input_tokens": tin,
            "output_tokens": tout, "call_seconds": 12.5,
            "cost_usd": round((tin * 3 + tout * 15) / 1e6, 4)}


def write_run_json(run: Path, levels: Any = LEVELS, replicates: int | None = 2,
                   **params: Any) -> None:
    """``run.json`` as validate_params writes it (``replicates`` None: a run.json from
    before replicates)."""
    p = {"levels": list(levels), "num_trials": 4, "train_models": True,
         "evaluate_models": True, "user_llm_args": {"api_key": "sk-run-json-secret"}, **params}
    if replicates is not None:
        p["replicates"] = replicates
    _jdump(run / "run.json", {"dag_id": "simia_sycophancy_experiment", "run_id": "manual__x",
                              "params": p})


def build_data_half(run: Path, replicates: int = 1) -> None:
    """The files the stages before evaluation write (as simia's stages write them), and a
    training summary per level and replicate."""
    _jdump(run / "seeds" / "summary.json", {
        "stage": "seeds", "requested": 50, "seeds": 49, "failed": 1,
        "failed_by_error": {"unparseable": 1}, "llm": _usage(52, 410_000, 95_000)})
    _jdump(run / "generate" / "summary.json", {
        "stage": "generate", "target": 120, "valid": 120, "extra_valid_dropped": 2,
        "failed": 9, "failed_by_error": {"unparseable": 7, "LLMCallError": 2},
        "attempted": 131, "mode": "sycophantic", "llm": _usage(140, 2_100_000, 880_000)})
    _jdump(run / "judge" / "summary.json", {
        "stage": "judge", "conversations": 110, "scored": 108, "failed": 2,
        "sycophantic": 40, "clean": 68, "threshold": 0.0,
        "llm": {**_usage(112, 900_000, 60_000), "cache_read_tokens": 700_000,
                "cache_write_tokens": 20_000}})
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
    for (i, lv), k in ((x, k) for x in enumerate(LEVELS) for k in range(1, replicates + 1)):
        slug = run_slug(lv, k)
        curve = [[s, 1.2 - 0.02 * s + 0.01 * i + 0.001 * k] for s in range(1, 31)]
        if lv == 20:  # only LLaMA-Factory's trainer_state.json
            _jdump(run / "train" / slug / "output" / "trainer_state.json", {
                "global_step": 30, "max_steps": 30,
                "log_history": [{"step": s, "loss": v, "learning_rate": 1e-6}
                                for s, v in curve] + [{"step": 30, "train_loss": 0.8}]})
        else:
            _jdump(run / "train" / slug / "training_summary.json", {
                "level": float(lv), "replicate": k, "dataset": f"telecom_syc_{slug}",
                "config_sha256": "x",
                "final_loss": curve[-1][1], "train_loss": 0.8, "steps": 30,
                "total_steps": 30, "train_runtime_s": 321.0, "model_path": "/m",
                "loss_curve": curve})


def add_eval(run: Path, level: float, rows: dict[str, list[Any]], *, replicate: int = 1,
             evaluator: str = "tau2", summary: bool = True) -> None:
    slug = run_slug(level, replicate)
    path = write_results(run / "eval" / slug / "results.json",
                         make_results(rows, agent_llm=f"hosted_vllm/simia-{slug}"))
    if summary:
        _jdump(run / "eval" / slug / "eval_summary.json", {
            "level": float(level), "replicate": replicate, "slug": slug, "backend": "vllm",
            "evaluator": evaluator, "model": f"simia-{slug}", "results": str(path)})


def decreasing(level: float, tasks: int = 30, replicate: int = 1) -> dict[str, list[Any]]:
    """Task i succeeds in max(0, base_i - drop) of 4 trials; base 4 (i < 20) or 3; the drop
    grows with the level (0, 1, 2, 3 trials): a clean monotone decline. Replicate 2 solves
    one more trial of every sixth task (runs of a level differ a little)."""
    drop = {0: 0, 5: 1, 10: 2, 20: 3}[int(level)]
    out = {}
    for i in range(tasks):
        extra = 1 if replicate == 2 and i % 6 == 0 else 0
        c = min(4, max(0, (4 if i < 20 else 3) - drop + extra))
        out[f"[mms_issue]task_{i:02d}[PERSONA:None]"] = [t < c for t in range(4)]
    return out


def decreasing_run(run: Path, levels: Any = LEVELS, replicates: int = 2, **kw: Any) -> None:
    """run.json and every (level, replicate)'s evaluation of a clean decline."""
    write_run_json(run, levels, replicates, **kw)
    for lv in levels:
        for k in range(1, replicates + 1):
            add_eval(run, lv, decreasing(lv, replicate=k), replicate=k)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """A complete run, 4 levels x 2 replicates with a monotone decline; reported once."""
    run = tmp_path_factory.mktemp("report") / "run"
    build_data_half(run, replicates=2)
    decreasing_run(run)
    return run, write_report(run, resamples=300)


def _first_screen(md: str) -> str:
    """Everything before the first detail section."""
    return md.split("\n## ", 1)[0]


def _section(md: str, title: str) -> str:
    return md.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def _report(run: Path) -> dict[str, Any]:
    return json.loads((run / "report" / "report.json").read_text())


def test_a_clear_drop_over_replicates_is_a_decrease_with_every_file(full_run):
    run, out = full_run
    rdir = run / "report"
    assert out["verdict"] == "decrease"
    assert {p.name for p in rdir.iterdir()} == {"report.md", "report.html", "report.json"} | PLOTS
    for png in PLOTS:
        assert (rdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = _report(run)
    a = report["analysis"]
    assert a["kind"] == "simia.analysis/1" and a["verdict"] == "decrease"
    assert report["headline"]["verdict"] == "decrease"
    assert a["replicates_per_level"] == {"0": 2, "5": 2, "10": 2, "20": 2}
    assert a["settings"]["alternative"] == "less"  # the declared default (none in run.json)
    md = (rdir / "report.md").read_text()
    first = _first_screen(md)
    # one sentence: what was varied, how many runs, the slope with its CI and p
    assert first.count("**More sycophancy lowered task success: with sycophancy in the "
                       "training data varied over 0, 5, 10 and 20 % with 2 training runs per "
                       "level (8 runs), pass^1 falls by ") == 1
    assert f"{p_value(a['p_value'])}, one-sided (less))." in first
    assert p_value(a["p_value"]) == "p < 0.0001"
    assert a["p_value_text"] == format_p(a["p_value"])
    # the dose response, then the per-level table (runs, pass^1 with a CI over runs), then
    # the method note
    assert first.index("](dose_response.png)") < first.index("| Level |")
    assert "| Level | Training runs (with results / declared) | pass^1 [95 % CI over runs] |" \
        in first
    lv0 = report["levels"][0]
    runs0 = [r["pass_hat_k"]["1"] for r in a["runs"] if r["level"] == 0]
    assert lv0["runs"] == 2 and lv0["runs_with_results"] == 2
    assert lv0["pass_hat_k"]["1"]["estimate"] == pytest.approx(sum(runs0) / 2)
    assert lv0["pass_hat_k"]["1"]["low"] < lv0["pass_hat_k"]["1"]["estimate"] \
        < lv0["pass_hat_k"]["1"]["high"]
    assert lv0["pass_hat_k"]["1"]["sd"] == pytest.approx(a["run_to_run"]["sd_pass1"])
    assert re.search(r"\| 20 % \| 2 / 2 \| 0\.1\d\d \[", first)
    assert "Method note:" in first and "Unit of inference: the training run" in first
    assert "Not covered:" in first
    assert "trend" not in report and "power" not in report  # the old verdict is gone
    # detail sections: secondary outcomes declared as such, lack of fit, sensitivity,
    # checkpoints, per-run numbers
    sec = _section(md, "Secondary outcomes (declared as such")
    assert "| env_assertions_met |" not in sec  # the fixture has no assertions
    assert "| pass^1 | 20 % | " in sec and "| termination:user_stop |" in sec
    assert "p Holm-adjusted within each outcome" in sec and "| issue_type | mms_issue |" in sec
    assert "F(2, 4) = " in _section(md, "Lack of fit")
    assert "| infrastructure errors and missing simulations counted as failures |" in \
        _section(md, "Sensitivity")
    assert "| 20 % r2 | 30 |" in _section(md, "How the checkpoints differ")
    assert [(r["level"], r["replicate"]) for r in report["runs"]] == [
        (lv, k) for lv in LEVELS for k in (1, 2)]
    by = {(r["level"], r["replicate"]): r for r in report["runs"]}
    assert by[(0, 1)]["pass_hat_k"]["1"]["estimate"] == pytest.approx(27.5 / 30)
    assert by[(0, 1)]["pass1_as_failures"] == pytest.approx(27.5 / 30)
    # the training table: numerically by level, then replicate
    assert list(report["training"]) == ["0pct", "0pct-r2", "5pct", "5pct-r2", "10pct",
                                        "10pct-r2", "20pct", "20pct-r2"]
    assert report["training"]["5pct-r2"]["replicate"] == 2
    assert report["training"]["20pct"]["source"].endswith("trainer_state.json")
    rows = [line for line in _section(md, "Training\n").splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[2] for r in rows[1:]] == list(report["training"])
    assert report["missing"] == [] and report["problems"] == []
    assert report["data"]["processed"]["rejected_by_reason"]["unknown_tool"] == 3
    assert report["scores"]["count"] == 110 and report["scores"]["above_threshold"] == 40
    assert report["llm_usage"]["stages"]["generate"]["input_tokens"] == 2_100_000
    # prompt caching: the judge's cached input is shown beside the rest (0 where a stage's
    # summary predates caching)
    assert report["llm_usage"]["stages"]["judge"]["cache_read_tokens"] == 700_000
    assert report["llm_usage"]["stages"]["generate"]["cache_read_tokens"] == 0
    usage = _section(md, "LLM usage and cost\n")
    assert "| Cache read | Cache write |" in usage and "| 700000 | 20000 |" in usage
    html = (rdir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert "More sycophancy lowered task success" in html
    for name in ("report.md", "report.html", "report.json"):
        assert "sk-run-json-secret" not in (rdir / name).read_text()


def test_p_values_have_two_significant_digits():
    assert [p_value(x) for x in (0.046, 0.054, 0.05, 0.5, 3e-5, None)] == [
        "p = 0.046", "p = 0.054", "p = 0.050", "p = 0.50", "p < 0.0001", "n/a"]


def test_a_replicate_whose_evaluation_never_ran_makes_it_invalid_and_is_named(tmp_path):
    run = tmp_path / "run"
    decreasing_run(run, levels=(0, 10))
    shutil.rmtree(run / "eval" / "10pct-r2")
    out = write_report(run, resamples=200)
    assert out["verdict"] == "invalid"
    assert out["headline"].startswith("No verdict (invalid): with sycophancy in the training "
                                      "data varied over 0 and 10 % with 2 training runs per "
                                      "level (4 runs, 3 with results), 10 % replicate 2 has no "
                                      "results (no results.json: its evaluation never ran)")
    report = _report(run)
    assert report["analysis"]["verdict"] == "invalid"
    assert "eval/10pct-r2/results.json" in report["missing"]
    lv10 = report["levels"][1]
    assert (lv10["runs"], lv10["runs_with_results"]) == (2, 1)
    assert lv10["problem"].startswith("no results for replicate 2")
    assert "no evaluation for 10 % replicate 2" in out["warnings"][0]


def test_one_run_per_level_is_insufficient_and_shows_how_the_checkpoints_differ(tmp_path):
    run = tmp_path / "run"
    write_run_json(run, (0, 20), replicates=None)  # a run.json from before replicates
    for lv in (0, 20):
        add_eval(run, lv, decreasing(lv))
    out = write_report(run, resamples=200)
    assert out["verdict"] == "insufficient"
    md = (run / "report" / "report.md").read_text()
    assert _first_screen(md).count("**Not enough training runs to answer the data question: "
                                   "with sycophancy in the training data varied over 0 and 20 "
                                   "% with 1 training run per level (2 runs), only 0 level(s) "
                                   "with two or more training runs") == 1
    assert "(no run-to-run SD)" in _first_screen(md)
    checkpoints = _section(md, "How the checkpoints differ")
    assert "reference run 0:r1" in checkpoints and "| 20 % r1 | 30 | -75.0 [" in checkpoints
    report = _report(run)
    assert report["levels"][0]["pass_hat_k"]["1"]["low"] is None
    assert report["analysis"]["checkpoints"][0]["diff"] == pytest.approx(-0.75)


def test_an_a_a_run_s_report_supplies_the_run_to_run_sd_declared_in_run_json(tmp_path):
    """One level, three runs (A/A): insufficient, with the measured run-to-run SD; a later
    run with one run per level that declares that report.json as run_variance_from is
    tested with it."""
    aa = tmp_path / "aa"
    write_run_json(aa, (0,), 3)
    for k in (1, 2, 3):
        add_eval(aa, 0, decreasing(0, replicate=k), replicate=k)
    out = write_report(aa, resamples=100)
    assert out["verdict"] == "insufficient"
    assert "Run-to-run SD of pass^1: " in out["headline"]
    assert "give this run's report.json as run_variance_from" in out["headline"]
    run = tmp_path / "run"
    write_run_json(run, (0, 20), 1, run_variance_from=str(aa / "report" / "report.json"),
                   analysis_alternative="two-sided")
    for lv in (0, 20):
        add_eval(run, lv, decreasing(lv))
    out = write_report(run, resamples=100)
    report = _report(run)
    assert out["verdict"] == "decrease"
    assert report["analysis"]["alternative"] == "two-sided"
    assert report["analysis"]["run_to_run"]["source"].startswith("supplied: measured in ")
    assert report["levels"][0]["pass_hat_k"]["1"]["low"] is not None  # a CI from that SD


def test_equal_levels_over_replicates_give_no_effect_with_the_bound(tmp_path):
    run = tmp_path / "run"
    write_run_json(run, LEVELS, 2)
    for lv in LEVELS:
        for k in (1, 2):
            add_eval(run, lv, decreasing(5, replicate=k), replicate=k)
    out = write_report(run, resamples=200)
    assert out["verdict"] == "no_effect"
    assert out["headline"].startswith("No detectable effect of sycophancy on task success: "
                                      "with sycophancy in the training data varied over 0, 5, "
                                      "10 and 20 % with 2 training runs per level (8 runs), a "
                                      "drop larger than ")
    assert "is excluded at 95 %" in out["headline"]
    report = _report(run)
    assert report["analysis"]["slope_per_10pp"]["estimate"] == pytest.approx(0, abs=1e-12)
    # nothing but evaluations: the rest is listed as missing, and the report still exists
    assert "generate/summary.json" in report["missing"]
    assert "datasets/metadata.json" in report["missing"]
    assert "train/0pct-r2/training_summary.json" in report["missing"]
    assert (run / "report" / "dose_response.png").is_file()
    assert not (run / "report" / "data_funnel.png").exists()
    assert "missing: generate/summary.json" in (run / "report" / "report.md").read_text()


def test_an_old_run_folder_without_run_json_opens(tmp_path):
    """Evaluation folders only (eval/<slug>/, no run.json, no replicates): the design is the
    runs found, one per level, so the data question is insufficient."""
    run = tmp_path / "run"
    for lv in (0, 10):
        add_eval(run, lv, decreasing(lv))
    (run / "eval" / "10pct" / "eval_summary.json").unlink()  # an older run: results only
    out = write_report(run, resamples=200)
    assert out["verdict"] == "insufficient"
    report = _report(run)
    assert report["design"]["runs_per_level"] == {"0": 1, "10": 1}
    assert report["design"]["source"].startswith("the evaluation folders")
    assert [(r["level"], r["replicate"], r["slug"]) for r in report["runs"]] == [
        (0, 1, "0pct"), (10, 1, "10pct")]


def test_levels_the_datasets_declare_without_results_make_it_invalid(tmp_path):
    run = tmp_path / "run"
    build_data_half(run)
    add_eval(run, 0, decreasing(0), summary=False)
    add_eval(run, 10, decreasing(10), summary=False)
    out = write_report(run, resamples=200)
    report = _report(run)
    assert [r["level"] for r in report["levels"]] == [0, 5, 10, 20]
    assert report["design"]["source"] == "datasets/metadata.json"
    assert "eval/5pct/results.json" in report["missing"]
    assert "eval/20pct/results.json" in report["missing"]
    assert out["verdict"] == "invalid"  # was "decrease" from 0 vs 10 % alone
    assert "5 % replicate 1 has no results" in out["headline"]
    assert "20 % replicate 1 has no results" in out["headline"]


def test_a_run_that_evaluates_no_models_is_insufficient(tmp_path):
    run = tmp_path / "run"
    build_data_half(run)
    write_run_json(run, LEVELS, 1, train_models=False)
    out = write_report(run, resamples=200)
    assert out["verdict"] == "insufficient"
    assert out["headline"].startswith("Not enough evaluations to answer: sycophancy in the "
                                      "training data varied over 0, 5, 10 and 20 %")
    assert "train_models or evaluate_models is off" in out["headline"]
    report = _report(run)
    assert report["analysis"] is None and report["missing"] == []
    assert (run / "report" / "data_funnel.png").is_file()


def test_infrastructure_errors_are_missing_data_and_secrets_never_printed(tmp_path):
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
    report = _report(run)
    run5 = next(r for r in report["runs"] if r["level"] == 5)
    assert run5["infrastructure_errors"] == 1 and run5["missing_cells"] == 1
    # over the trials that ran: (2/3 + 0/3 + 0/2 + 1/2) / 4 = 7/24; as failures 0.25
    assert run5["pass_hat_k"]["1"]["estimate"] == pytest.approx(7 / 24)
    assert run5["pass1_as_failures"] == pytest.approx(0.25)
    assert run5["tau2_pass_hat_k"]["1"] == pytest.approx(7 / 24)
    assert run5["termination_counts"]["context_window_exceeded"] == 1
    a5 = next(r for r in report["analysis"]["runs"] if r["level"] == 5)
    assert a5["pass_hat_k"]["1"] == pytest.approx(7 / 24)
    md = (run / "report" / "report.md").read_text()
    assert ("1 infrastructure error(s) and 1 missing simulation(s) are analysed as missing "
            "data, not failures") in md
    for name in ("report.md", "report.html", "report.json"):
        text = (run / "report" / name).read_text()
        for secret in ("sk-test-should-never-appear", "secretpw", "Bearer abc",
                       "sk-local-secret", "sk-eval-summary-secret"):
            assert secret not in text, (name, secret)


def test_stand_in_evaluator_and_unreadable_results_are_flagged(tmp_path):
    run = tmp_path / "run"
    for lv in (0, 10, 20):
        add_eval(run, lv, decreasing(lv), evaluator="simia-ci")
    (run / "eval" / "20pct" / "results.json").write_text('{"info": {}}')
    out = write_report(run, resamples=200)
    assert any("simia-ci, not tau2-bench" in w for w in out["warnings"])
    assert out["verdict"] == "invalid"
    assert "20 % replicate 1 has no results (unreadable: " in out["headline"]
    report = _report(run)
    run20 = next(r for r in report["runs"] if r["level"] == 20)
    assert run20["problem"].startswith("unreadable:") and "info.num_trials" in run20["problem"]
    assert any("info.num_trials" in p for p in report["problems"])


def test_a_results_file_with_an_impossible_trial_is_not_carried_into_the_report(tmp_path):
    """A simulation numbered trial 99 of 4 used to widen the matrix to 100 trials (pass^1
    of the run a hundredth of its value): the run now has no results, named as unreadable."""
    run = tmp_path / "run"
    for lv in (0, 10, 20):
        add_eval(run, lv, decreasing(lv))
    path = run / "eval" / "20pct" / "results.json"
    doc = json.loads(path.read_text())
    doc["simulations"][5]["trial"] = 99
    path.write_text(json.dumps(doc))
    out = write_report(run, resamples=200)
    assert out["verdict"] == "invalid"
    run20 = next(r for r in _report(run)["runs"] if r["level"] == 20)
    assert run20["problem"].startswith("unreadable:")
    assert "simulations[5]" in run20["problem"] and "trial 99 is outside 0..3" in run20["problem"]


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
