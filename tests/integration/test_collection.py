"""Design-driven collection and counterfactual twins against the local Converse server
(the real boto3 client), with a judge whose flag rate is set to 5 %."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from simia.data.datasets import content_hash
from simia.data.stages import build_datasets_stage, validate_scores_file
from simia.errors import SimiaError
from simia.layout import RunLayout
from simia.llm.client import LLMSettings
from simia.llm.collect import CapReached, Collector, Needs, collect_all, merge_collection
from simia.llm.judge import JudgeSettings
from simia.llm.twins import make_twins
from simia.settings import CollectionSettings, DatasetDesign, GenerationSettings
from support.llm_clients import local_client

DESIGN = DatasetDesign(levels=(0, 10), size=10, shared_clean=8, replicates=2)


def _client(server, **extra):
    return local_client(server, **{"concurrency": 4, **extra})


def _collector(server, seeds, tau2_dir, mode="sycophantic"):
    return Collector(seeds, GenerationSettings(mode=mode), JudgeSettings(), _client(server),
                     tau2_data_dir=tau2_dir)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_natural_collection_fills_the_design(converse_server, tmp_path, seeds_file, tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    run = RunLayout(tmp_path / "run")
    needs = Needs(*DESIGN.pool_needs("natural"), "natural")
    assert (needs.clean, needs.sycophantic) == (10, 1)
    caps = CollectionSettings(collect_pilot=10, collect_max_attempts=400)
    summary = collect_all(_collector(converse_server, seeds_file, tau2_dir), run, needs, caps,
                          fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=2)
    found = summary["found"]
    assert found["counts"]["clean"] >= 10 and found["counts"]["sycophantic"] >= 1
    assert found["attempts"] == sum(found["counts"].values())
    pilot = json.loads(run.collect.projection.read_text())
    assert pilot["pilot"]["attempts"] <= 10 and pilot["outlook"] == "fill"
    # the stage files the datasets, the report and start_from read
    raw = json.loads(run.generate.raw.read_text())
    processed = json.loads(run.processed.processed.read_text())
    scores = _lines(run.judge.scores)
    assert len(processed) == found["kept_by_validation"] == len(scores)
    assert [s["conv_idx"] for s in scores] == [r["source_index"] for r in processed]
    assert all(raw[r["source_index"]]["item_id"] == r["item_id"] for r in processed)
    rejects = _lines(run.processed.rejects)
    assert len(rejects) == found["counts"]["rejected"]
    assert all(r["reason"] and r["step"] for r in rejects)
    # provenance: every merged file's sha256, the conversations' content hashes
    assert [s["content_sha256"] for s in scores] == [content_hash(r) for r in processed]
    assert summary["outputs_sha256"] == {"raw_conversations": _sha(run.generate.raw),
                                         "processed": _sha(run.processed.processed),
                                         "scores": _sha(run.judge.scores)}
    assert sorted(summary["inputs_sha256"]) == [
        "collect-pilot-shard-000-of-001.jsonl", "collect-shard-000-of-002.jsonl",
        "collect-shard-001-of-002.jsonl"]
    proc_summary = json.loads(run.processed.summary.read_text())
    assert proc_summary["outputs_sha256"]["processed"] == _sha(run.processed.processed)
    assert proc_summary["inputs_sha256"] == {"raw_conversations": _sha(run.generate.raw)}
    judge_summary = json.loads(run.judge.summary.read_text())
    assert judge_summary["processed_sha256"] == _sha(run.processed.processed)
    assert validate_scores_file(run.judge.scores, run.processed.processed)["matched"] == \
        len(processed)
    built = build_datasets_stage(run.processed.processed, run.judge.scores,
                                 run.datasets.dir, DESIGN)
    assert built["datasets"]["telecom_syc_10pct"]["sycophantic"] == 1
    # cost in the summary = the token counts at the table's prices
    llm = summary["llm"]
    prices = LLMSettings().prices.default
    expect = (llm["input_tokens"] * prices.input_per_mtok
              + llm["output_tokens"] * prices.output_per_mtok
              + llm["cache_read_tokens"] * prices.cache_read
              + llm["cache_write_tokens"] * prices.cache_write) / 1e6
    assert llm["cost_usd"] == pytest.approx(expect, abs=1e-5)


def test_capped_run_stops_with_projection_then_continues(converse_server, tmp_path,
                                                         seeds_file, tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    run = RunLayout(tmp_path / "run")
    needs = Needs(*DESIGN.pool_needs("natural"), "natural")
    low = CollectionSettings(collect_pilot=5, collect_max_attempts=12)
    collector = _collector(converse_server, seeds_file, tau2_dir)
    with pytest.raises(CapReached) as err:
        collect_all(collector, run, needs, low, fmt="native", tau2_data_dir=tau2_dir,
                    threshold=0, shards=2)
    text = str(err.value)
    assert "found" in text and "of 10 clean" in text and "Yields per attempt" in text
    assert "To continue: raise collect_max_attempts" in text
    assert "Traceback" not in text
    done = converse_server.stats["requests"]
    assert done > 0
    # the same folder, a higher cap: the finished items are not redone
    high = CollectionSettings(collect_pilot=5, collect_max_attempts=400)
    collector = _collector(converse_server, seeds_file, tau2_dir)
    summary = collect_all(collector, run, needs, high, fmt="native", tau2_data_dir=tau2_dir,
                          threshold=0, shards=2)
    assert summary["found"]["attempts"] > 12
    first = summary["found"]["attempts"]
    # a third call finds everything done: no LLM call at all
    calls = converse_server.stats["requests"]
    collect_all(_collector(converse_server, seeds_file, tau2_dir), run, needs, high,
                fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=2)
    assert converse_server.stats["requests"] == calls
    assert first >= 12


def test_continue_from_a_source_run_calls_only_for_what_is_left(converse_server, tmp_path,
                                                                seeds_file, tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    src, dst = RunLayout(tmp_path / "a"), RunLayout(tmp_path / "b")
    needs = Needs(*DESIGN.pool_needs("natural"), "natural")
    with pytest.raises(CapReached):
        collect_all(_collector(converse_server, seeds_file, tau2_dir), src, needs,
                    CollectionSettings(collect_pilot=5, collect_max_attempts=12),
                    fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=2)
    before = sorted(p.name for p in src.collect.dir.iterdir())
    done = sum(len(_lines(f)) for f in src.collect.dir.glob("*.jsonl"))
    gen_calls = converse_server.stats["by_kind"]["generate"]
    summary = collect_all(_collector(converse_server, seeds_file, tau2_dir), dst, needs,
                          CollectionSettings(collect_pilot=5, collect_max_attempts=400),
                          fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=3,
                          source=src)
    new_gen = converse_server.stats["by_kind"]["generate"] - gen_calls
    assert done >= 5 and new_gen == summary["found"]["attempts"] - done
    assert sorted(p.name for p in src.collect.dir.iterdir()) == before  # source untouched
    # other generation settings cannot continue it
    with pytest.raises(SimiaError, match="other settings"):
        collect_all(_collector(converse_server, seeds_file, tau2_dir, mode="strict"),
                    RunLayout(tmp_path / "c"), needs,
                    CollectionSettings(collect_pilot=5, collect_max_attempts=400),
                    fmt="native", tau2_data_dir=tau2_dir, threshold=0, source=src)


def test_pilot_stops_a_design_the_caps_cannot_fill(converse_server, tmp_path, seeds_file,
                                                   tau2_dir):
    converse_server.configure(judge_flag_rate=0.0)  # nothing is ever sycophantic
    run = RunLayout(tmp_path / "run")
    needs = Needs(9, 5, "natural")
    caps = CollectionSettings(collect_pilot=20, collect_max_attempts=30)
    with pytest.raises(CapReached, match="after the pilot") as err:
        collect_all(_collector(converse_server, seeds_file, tau2_dir), run, needs, caps,
                    fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=2)
    assert "0 of 5 sycophantic" in str(err.value)
    pilot = json.loads(run.collect.projection.read_text())
    assert pilot["outlook"] == "attempt cap"
    assert pilot["projection"]["attempts_more"] is None  # none found: unbounded
    assert pilot["projection"]["attempts_more_range"][0] > 10
    assert not list(run.collect.dir.glob("collect-shard-*"))


def test_twins_fill_the_design_and_differ_only_in_one_observation(converse_server, tmp_path,
                                                                  seeds_file, tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    run = RunLayout(tmp_path / "run")
    needs = Needs(*DESIGN.pool_needs("twins"), "twins")
    assert (needs.clean, needs.sycophantic) == (10, 1)
    collector = _collector(converse_server, seeds_file, tau2_dir, mode="strict")
    collect_all(collector, run, needs, CollectionSettings(collect_pilot=10,
                                                          collect_max_attempts=400),
                fmt="native", tau2_data_dir=tau2_dir, threshold=0, shards=2)
    client = collector.client
    summary = make_twins(run.processed.processed, run.judge.scores, run.twins.dir, client,
                         needed=3, threshold=0, seed=42, budget_usd=100)
    assert summary["accepted"] == 3
    assert summary["inputs_sha256"] == {"processed": _sha(run.processed.processed),
                                        "scores": _sha(run.judge.scores)}
    assert summary["outputs_sha256"] == {"twins": _sha(run.twins.twins),
                                         "rejects": _sha(run.twins.rejects)}
    twins = _lines(run.twins.twins)
    processed = {r["source_index"]: r for r in
                 json.loads(run.processed.processed.read_text())}
    for t in twins:
        orig = processed[t["source_index"]]["conversations"]
        changed = [i for i, (a, b) in enumerate(zip(orig, t["conversations"], strict=True))
                   if a != b]
        assert changed == [t["observation_turn_index"]]
        assert orig[changed[0]]["from"] == "observation"
        assert t["twin_score"] > 0 and t["original_score"] == 0
        assert t["diff"].startswith("--- turn")
    for r in _lines(run.twins.rejects):
        assert r["reason"] in ("no_candidate_observation", "judge_did_not_flag_twin",
                               "judge_flagged_another_turn", "unusable_rewrite")
    built = build_datasets_stage(run.processed.processed, run.judge.scores, run.datasets.dir,
                                 DESIGN, twins_path=run.twins.twins)
    assert built["sycophancy_source"] == "twins"
    base = json.loads((run.datasets.dir / "telecom_syc_0pct.json").read_text())
    top = json.loads((run.datasets.dir / "telecom_syc_10pct.json").read_text())
    assert [r["source_index"] for r in base] == [r["source_index"] for r in top]
    diffs = [(a, b) for a, b in zip(base, top, strict=True) if a != b]
    assert len(diffs) == 1
    a, b = diffs[0]
    turn_diffs = [i for i, (x, y) in enumerate(zip(a["conversations"], b["conversations"],
                                                    strict=True)) if x != y]
    assert len(turn_diffs) == 1 and b["twin_of"] == a["source_index"]
    # rerun: nothing is redone
    calls = converse_server.stats["requests"]
    make_twins(run.processed.processed, run.judge.scores, run.twins.dir, client,
               needed=3, threshold=0, seed=42, budget_usd=100)
    assert converse_server.stats["requests"] == calls


def test_twins_stop_when_candidates_run_out(converse_server, tmp_path, seeds_file, tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    run = RunLayout(tmp_path / "run")
    needs = Needs(4, 0, "twins")
    collector = _collector(converse_server, seeds_file, tau2_dir, mode="strict")
    collect_all(collector, run, needs, CollectionSettings(collect_pilot=4,
                                                          collect_max_attempts=400),
                fmt="native", tau2_data_dir=tau2_dir, threshold=0)
    clean = json.loads((run.judge.summary).read_text())["clean"]
    with pytest.raises(CapReached, match="candidates ran out"):
        make_twins(run.processed.processed, run.judge.scores, run.twins.dir,
                   collector.client, needed=clean + 1, threshold=0, seed=1, budget_usd=100)


def test_merge_without_full_pools_names_the_shortfall(tmp_path):
    run = RunLayout(tmp_path / "run")
    run.collect.dir.mkdir(parents=True)
    with pytest.raises(CapReached, match="found 0 of 3 clean"):
        merge_collection(run, Needs(3, 0, "twins"), CollectionSettings(), fmt="native",
                         tau2_data_dir=None, threshold=0)


def test_cli_collect_stops_at_a_cap_then_continues_and_makes_twins(converse_server, tmp_path,
                                                                   seeds_file, tau2_dir):
    import os
    import subprocess
    import sys

    converse_server.configure(judge_flag_rate=0.05)
    env = {**os.environ, "TAU2_DATA_DIR": str(tau2_dir)}

    def run(*a):
        return subprocess.run([sys.executable, "-m", "simia.cli", *a], capture_output=True,
                              text=True, timeout=300, env=env)

    common = ["--seeds", str(seeds_file), "-o", str(tmp_path / "run"), "--levels", "0,10",
              "--size", "10", "--shared-clean", "8", "--mode", "strict",
              "--collect-pilot", "5", "--shards", "2", "--endpoint-url", converse_server.url]
    capped = run("collect", *common, "--collect-max-attempts", "12")
    assert capped.returncode == 2, capped.stderr
    assert "simia collect: error: collection stopped" in capped.stderr
    assert "To continue: raise collect_max_attempts" in capped.stderr
    assert "Traceback" not in capped.stderr
    calls = converse_server.stats["by_kind"]["generate"]
    done = run("collect", *common, "--collect-max-attempts", "400")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["found"]["counts"]["clean"] >= 10
    assert converse_server.stats["by_kind"]["generate"] - calls < summary["found"]["attempts"]
    out = tmp_path / "run"
    twins = run("twins", "--conversations", str(out / "processed" / "processed.json"),
                "--scores", str(out / "judge" / "judge_scores.jsonl"), "-o",
                str(out / "twins"), "--needed", "1", "--endpoint-url", converse_server.url)
    assert twins.returncode == 0, twins.stderr
    assert json.loads(twins.stdout)["accepted"] == 1
    built = run("build-datasets", "--conversations", str(out / "processed" / "processed.json"),
                "--scores", str(out / "judge" / "judge_scores.jsonl"), "--twins",
                str(out / "twins" / "twins.jsonl"), "-o", str(out / "datasets"),
                "--levels", "0,10", "--size", "10", "--shared-clean", "8", "--replicates", "1")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["sycophancy_source"] == "twins"


def test_collection_whose_calls_fail_fails_then_a_rerun_retries(converse_server, tmp_path,
                                                                 seeds_file, tau2_dir):
    """Every call failing is an LLM failure naming the errors (was: "the attempt cap
    cannot fill the pools"); a re-run once the server works retries those items, and the
    collection's usage counts every request the server saw."""
    from simia.llm.failures import LLMStageFailed

    converse_server.configure(judge_flag_rate=0.05, fault_rate=1.0, fault_kinds=("error503",))
    run = RunLayout(tmp_path / "run")
    needs = Needs(*DESIGN.pool_needs("natural"), "natural")
    caps = CollectionSettings(collect_pilot=6, collect_max_attempts=400)

    def collect():
        collector = Collector(seeds_file, GenerationSettings(mode="sycophantic"),
                              JudgeSettings(), _client(converse_server, max_attempts=2),
                              tau2_data_dir=tau2_dir)
        return collect_all(collector, run, needs, caps, fmt="native", tau2_data_dir=tau2_dir,
                           threshold=0, shards=2)

    with pytest.raises(LLMStageFailed, match=r"collection pilot: 6 of 6 items failed .*"
                                             r"ServiceUnavailableException"):
        collect()
    failed = converse_server.stats["requests"]
    assert failed == 6 * 2 * 3
    converse_server.configure(fault_rate=0.0)
    summary = collect()
    assert summary["found"]["counts"]["generation_failed"] == 0
    assert summary["llm"]["calls"] == converse_server.stats["requests"]
    assert summary["llm"]["failed_calls"] == failed


def test_a_badly_continued_reply_is_a_failed_item(converse_server, tmp_path, seeds_file,
                                                  tau2_dir):
    converse_server.configure(fault_rate=1.0, fault_kinds=("truncated", "bad_continuation"))
    collector = _collector(converse_server, seeds_file, tau2_dir)
    rec = collector.work(collector.item(0), "pilot")
    assert (rec["status"], rec["error"]) == ("generation_failed", "bad_continuation")
    assert "conversation" not in rec and "I cannot comply" in rec["raw_text"]
    assert rec["usage"]["generate"]["calls"] == converse_server.stats["requests"] == 2
