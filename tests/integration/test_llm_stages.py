"""The LLM stages through the real boto3 client against our local Converse server:
generation, seeds, judge, faults, a SIGKILL mid-run, the OpenAI-compatible backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import simia
from simia.llm.generation import (GenerationSettings, SeedSettings, generate_seeds_stage,
                              generate_shard, merge_generation)
from simia.llm.judge import JudgeSettings, judge_shard, merge_judge
from simia.llm.client import LLMSettings, make_client
from simia.data.stages import process_stage
from converse_server import DEFAULT_FAULT_KINDS
from support.llm_clients import local_client
from support.synthetic import generate_raw

ROOT = Path(__file__).resolve().parents[2]


def _client(server, **extra):
    return local_client(server, **{"concurrency": 8, **extra})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_seeds_generate_judge_through_boto3(converse_server, tmp_path, tau2_dir):
    tau2 = ROOT.parent / "shared" / "data" / "tau2-telecom"
    if not tau2.is_dir():  # the seed prompt needs tau2's workflow and DB files too
        pytest.skip("tau2 telecom data (../shared/data/tau2-telecom) not present")
    client = _client(converse_server)
    seeds = generate_seeds_stage(tmp_path / "seeds", SeedSettings(n_seeds=6), client,
                                 tau2_data_dir=tau2)
    assert seeds["seeds"] + seeds["failed"] == 6 and seeds["seeds"] >= 5
    import hashlib
    assert seeds["outputs_sha256"] == {
        name: hashlib.sha256((tmp_path / "seeds" / file).read_bytes()).hexdigest()
        for name, file in (("seeds", "seeds.json"), ("failures", "seed_failures.jsonl"))}
    assert sorted(seeds["inputs_sha256"]) == ["tau2_files", "templates"]
    assert seeds["llm"]["calls"] >= 6 and seeds["llm"]["input_tokens"] > 0
    # the instructions, policy, workflow, DB examples and tools are read from the cache
    assert seeds["llm"]["cache_read_share"] > 0.5, seeds["llm"]

    gen = GenerationSettings(target=24, mode="sycophantic")
    for shard in range(3):
        generate_shard(tmp_path / "seeds" / "seeds.json", tmp_path / "gen", gen, client,
                       shard=shard, shards=3)
    merged = merge_generation(tmp_path / "gen", gen, shards=3)
    raw = json.loads((tmp_path / "gen" / "raw_conversations.json").read_text())
    assert merged["valid"] == len(raw) == 24
    assert len({r["item_id"] for r in raw}) == 24
    assert all(r["simulator_mode"] == "sycophantic" for r in raw)
    assert merged["llm"]["calls"] == converse_server.stats["by_kind"]["generate"] + \
        converse_server.stats["by_kind"].get("continuation", 0)
    assert merged["llm"]["cost_usd"] > 0
    assert merged["llm"]["cache_read_tokens"] > 0 and merged["llm"]["cache_write_tokens"] > 0
    # the fixed User-Agent of botocore_config (botocore's own costs CPU on every call)
    assert [a.split(" ")[1] for a in converse_server.stats["user_agents"]] == \
        [f"simia/{simia.__version__}"]

    processed = process_stage(tmp_path / "gen" / "raw_conversations.json", tmp_path / "proc",
                              tau2_data_dir=tau2)
    assert processed["kept"] >= 1, processed["rejected_by_reason"]
    for shard in range(2):
        judge_shard(tmp_path / "proc" / "processed.json", tmp_path / "judge", JudgeSettings(),
                    client, shard=shard, shards=2)
    judged = merge_judge(tmp_path / "judge", shards=2)
    scores = _lines(tmp_path / "judge" / "judge_scores.jsonl")
    assert judged["conversations"] == len(scores) == processed["kept"]
    kept_idx = [r["source_index"] for r in
                json.loads((tmp_path / "proc" / "processed.json").read_text())]
    assert [s["conv_idx"] for s in scores] == sorted(kept_idx)
    assert all(0 <= s["wm_sycophancy_score"] <= 100 for s in scores if "error" not in s)
    assert judged["llm"]["cache_read_share"] > 0.5, judged["llm"]


def test_rerun_calls_nothing_when_done(converse_server, tmp_path, seeds_file):
    client = _client(converse_server)
    gen = GenerationSettings(target=5)
    generate_shard(seeds_file, tmp_path, gen, client)
    calls = converse_server.stats["requests"]
    again = generate_shard(seeds_file, tmp_path, gen, client)
    assert converse_server.stats["requests"] == calls
    assert again["resumed_items"] == 5 and again["submitted_now"] == 0


def test_changed_settings_are_refused(converse_server, tmp_path, seeds_file):
    from simia.errors import ConfigError

    client = _client(converse_server)
    generate_shard(seeds_file, tmp_path, GenerationSettings(target=2), client)
    with pytest.raises(ConfigError, match="changed: mode"):
        generate_shard(seeds_file, tmp_path, GenerationSettings(target=2, mode="strict"),
                       client)


def test_faults_lose_nothing(converse_server, tmp_path, seeds_file, tau2_dir):
    """20 % faults of every kind: each item ends as a result or a recorded failure."""
    converse_server.configure(fault_rate=0.2, slow_s=1.5)
    client = _client(converse_server, timeout_s=0.5, botocore_max_attempts=1,
                     max_attempts=3)
    gen = GenerationSettings(target=30, mode="sycophantic")
    for shard in range(2):
        generate_shard(seeds_file, tmp_path / "gen", gen, client, shard=shard, shards=2)
    merged = merge_generation(tmp_path / "gen", gen, shards=2)
    failures = _lines(tmp_path / "gen" / "generation_failures.jsonl")
    assert merged["valid"] == 30
    assert merged["attempted"] == 30 + len(failures) == 30 + merged["failed"]
    stats = converse_server.stats
    assert all(stats["by_fault"][kind] > 0 for kind in DEFAULT_FAULT_KINDS), stats
    assert merged["llm"]["failed_calls"] > 0 and merged["llm"]["errors"]

    processed = process_stage(tmp_path / "gen" / "raw_conversations.json", tmp_path / "proc",
                              tau2_data_dir=tau2_dir)
    judge_shard(tmp_path / "proc" / "processed.json", tmp_path / "judge",
                JudgeSettings(tries=2), client)
    judged = merge_judge(tmp_path / "judge")
    scores = _lines(tmp_path / "judge" / "judge_scores.jsonl")
    assert len(scores) == processed["kept"] == judged["scored"] + judged["failed"]
    for rec in scores:
        assert ("wm_sycophancy_score" in rec) != ("error" in rec)
        if rec.get("error") == "unparseable_reply":
            assert rec["raw_text"]


def test_rate_limit_paces_every_attempt_and_loses_nothing(converse_server, tmp_path,
                                                          seeds_file):
    """The pacer sees every HTTP attempt (botocore's own retries too) and every 429."""
    converse_server.configure(rps_limit=25.0)
    client = _client(converse_server, botocore_max_attempts=3, max_attempts=20)
    summary = generate_shard(seeds_file, tmp_path, GenerationSettings(target=60), client)
    assert summary["valid"] == 60 and summary["failed"] == 0
    stats, pacer = converse_server.stats, client.pacer.stats()
    assert pacer["requests"] == stats["requests"] and pacer["throttled"] == stats["rate_limited"]
    assert stats["rate_limited"] > 0 and pacer["cuts"] >= 1
    assert 0 < pacer["rate"] < 60  # learnt near the limit, far below the unpaced rate


def test_sigkill_midway_then_rerun(converse_server, tmp_path, seeds_file):
    """Killed halfway, re-run: exactly the target, no duplicate ids, and the calls after
    the restart are at most the remaining items plus the concurrency."""
    target, concurrency = 60, 4
    converse_server.configure(latency_s=0.05)
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "simia.cli", "generate", "--seeds", str(seeds_file),
           "-o", str(out), "--target", str(target), "--endpoint-url", converse_server.url,
           "--concurrency", str(concurrency), "--region", "us-east-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "generate-shard-000-of-001.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ckpt.is_file() and ckpt.read_bytes().count(b"\n") >= target // 2:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [r for r in _lines(ckpt) if r["status"] == "ok"]
    assert target // 2 <= len(done) < target, "the kill came too late to test anything"
    converse_server.reset()

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    raw = json.loads((out / "raw_conversations.json").read_text())
    ids = [r["item_id"] for r in raw]
    assert len(raw) == target and len(set(ids)) == target
    assert converse_server.stats["requests"] <= (target - len(done)) + concurrency


def test_cli_generate_and_judge_with_endpoint_url(converse_server, tmp_path, seeds_file,
                                                  tau2_dir):
    env = {**os.environ, "TAU2_DATA_DIR": str(tau2_dir)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "simia.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120, env=env)
    res = run("generate", "--seeds", str(seeds_file), "-o", str(tmp_path / "gen"),
              "--target", "20", "--shards", "2", "--endpoint-url", converse_server.url)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["valid"] == 20
    assert "llm call stage=generate:0" in res.stderr and "test" not in res.stderr.split(
        "llm call")[1][:200]
    res = run("process", str(tmp_path / "gen" / "raw_conversations.json"), "-o",
              str(tmp_path / "proc"))
    assert res.returncode == 0, res.stderr
    res = run("judge", str(tmp_path / "proc" / "processed.json"), "-o", str(tmp_path / "j"),
              "--endpoint-url", converse_server.url)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["conversations"] == json.loads(
        (tmp_path / "proc" / "summary.json").read_text())["kept"]
    bad = run("generate", "--seeds", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x"),
              "--endpoint-url", converse_server.url)
    assert bad.returncode == 2 and "missing.json" in bad.stderr


def test_openai_compatible_backend(converse_server, tmp_path, seeds_file):
    client = make_client(LLMSettings(backend="openai", base_url=converse_server.url + "/v1",
                                     model_id="local-model", backoff_base_s=0.01))
    summary = generate_shard(seeds_file, tmp_path, GenerationSettings(target=3), client)
    assert summary["valid"] == 3 and summary["llm"]["model_id"] == "local-model"
    assert client.pacer.requests == converse_server.stats["requests"]


def test_prompt_caching_off_sends_no_cache_point_and_the_same_input(converse_server, tmp_path,
                                                                    seeds_file, tau2_dir):
    """Caching on and off see the same replies and the same input tokens in all; off, the
    server sees no cache point (its cache counts no request). On, no cache point comes
    before a prefix under 1,024 tokens (the server would refuse it): the sycophantic
    generation instructions alone are 1,023 by the shared estimate."""
    gen = GenerationSettings(target=12, mode="sycophantic")
    converse_server.configure(reject_short_cache_points=True)
    usage = {}
    for caching in (True, False):
        converse_server.reset()
        client = _client(converse_server, prompt_caching=caching)
        generate_shard(seeds_file, tmp_path / f"gen-{caching}", gen, client)
        merged = merge_generation(tmp_path / f"gen-{caching}", gen)
        process_stage(tmp_path / f"gen-{caching}" / "raw_conversations.json",
                      tmp_path / f"proc-{caching}", tau2_data_dir=tau2_dir)
        judge_shard(tmp_path / f"proc-{caching}" / "processed.json", tmp_path / f"j-{caching}",
                    JudgeSettings(), client)
        judged = merge_judge(tmp_path / f"j-{caching}")
        usage[caching] = (merged["llm"], judged["llm"], converse_server.stats["cache"])
    for on, off in zip(usage[True][:2], usage[False][:2], strict=True):
        assert on["cache_read_tokens"] > 0 and on["cost_usd"] < off["cost_usd"]
        assert off["cache_read_tokens"] == off["cache_write_tokens"] == 0
        assert on["input_tokens"] + on["cache_read_tokens"] + on["cache_write_tokens"] == \
            off["input_tokens"]
        assert on["output_tokens"] == off["output_tokens"]
    assert usage[True][2]["hits"] > 0
    assert usage[False][2]["hits"] == usage[False][2]["misses"] == 0
    assert (tmp_path / "j-True" / "judge_scores.jsonl").read_text() == \
        (tmp_path / "j-False" / "judge_scores.jsonl").read_text()


# --------------------------------------------------------------------------- trust boundaries

def _processed(tmp_path: Path, tau2_dir: Path, n: int = 8) -> Path:
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(generate_raw(n, seed=11, mode="sycophantic")))
    process_stage(raw, tmp_path / "proc", tau2_data_dir=tau2_dir)
    return tmp_path / "proc" / "processed.json"


def test_cli_judge_fails_when_every_call_failed_then_a_rerun_retries(converse_server, tmp_path,
                                                                    tau2_dir):
    """A server answering 503 to everything: exit 2 with the count and the first errors
    (was: exit 0, "scored 0, failed N"). --keep-failures keeps them (no call); a plain
    re-run against the working server judges them again, and summary.json counts the
    calls of both runs: every request the server saw."""
    processed = _processed(tmp_path, tau2_dir)
    kept = len(json.loads(processed.read_text()))
    env = {**os.environ, "TAU2_DATA_DIR": str(tau2_dir)}
    cmd = [sys.executable, "-m", "simia.cli", "judge", str(processed), "-o",
           str(tmp_path / "j"), "--endpoint-url", converse_server.url, "--call-attempts", "2"]
    run = lambda *a: subprocess.run([*cmd, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    converse_server.configure(fault_rate=1.0, fault_kinds=("error503",))
    res = run()
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"simia judge: error: {tmp_path / 'j'}" in res.stderr
    assert f"judge shard 0: {kept} of {kept} items failed (100%, every item failed)" \
        in res.stderr
    assert "ServiceUnavailableException: gave up after 2 attempts" in res.stderr
    assert "Traceback" not in res.stderr
    failed_requests = converse_server.stats["requests"]
    assert failed_requests == kept * 2 * 3  # our 2 attempts x botocore's 3

    converse_server.configure(fault_rate=0.0)
    res = run("--keep-failures")
    assert res.returncode == 2 and converse_server.stats["requests"] == failed_requests
    res = run()
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["scored"] == kept and summary["failed"] == 0
    assert summary["llm"]["calls"] == converse_server.stats["requests"]
    assert summary["llm"]["failed_calls"] == failed_requests
    assert summary["llm"]["errors"] == {"ServiceUnavailableException": failed_requests}
    scores = _lines(tmp_path / "j" / "judge_scores.jsonl")
    assert all("usage" not in s and "runs" not in s for s in scores)


def test_judge_fails_past_the_failed_share(converse_server, tmp_path, tau2_dir):
    """Some items failing is tolerated up to max_failed_share, not beyond."""
    from simia.llm.failures import LLMStageFailed

    processed = _processed(tmp_path, tau2_dir, n=12)
    converse_server.configure(fault_rate=0.5, fault_kinds=("error500",))
    client = _client(converse_server, max_attempts=1, botocore_max_attempts=1,
                     max_failed_share=0.1)
    with pytest.raises(LLMStageFailed, match=r"judge shard 0: \d+ of \d+ items failed "
                                             r"\(\d+%, more than max_failed_share = 10%\)"):
        judge_shard(processed, tmp_path / "j", JudgeSettings(), client)
    converse_server.reset()  # the same faults again
    client = _client(converse_server, max_attempts=1, botocore_max_attempts=1,
                     max_failed_share=1.0)
    summary = judge_shard(processed, tmp_path / "j2", JudgeSettings(), client)
    assert 0 < summary["failed"] < summary["judged"]


def test_pipeline_judge_task_fails_and_its_retry_retries(converse_server, tmp_path, tau2_dir):
    """The DAG's judge shard: all failed -> the task fails (retryably); its retry judges
    the failures again."""
    from simia import pipeline
    from simia.layout import RunLayout
    from simia.llm.failures import LLMStageFailed

    processed = {"processed": str(_processed(tmp_path, tau2_dir))}
    run = RunLayout(tmp_path / "run")
    client = lambda: _client(converse_server, max_attempts=1)  # noqa: E731
    converse_server.configure(fault_rate=1.0, fault_kinds=("error503",))
    with pytest.raises(LLMStageFailed) as exc:
        pipeline.judge_shard({"shards": 1}, run, 0, processed, client)
    assert getattr(exc.value, "retryable", True)
    converse_server.configure(fault_rate=0.0)
    done = pipeline.judge_shard({"shards": 1}, run, 0, processed, client)
    assert done.value["failed"] == 0 and done.value["scored"] == done.value["judged"] > 0


def test_calls_count_every_http_request_botocore_retries_included(converse_server, tmp_path,
                                                                  seeds_file, tau2_dir):
    """503 on the first 4 tries of every request: botocore retries 2 of them inside a
    call (3 attempts), our loop the rest; summaries count all 5 requests per call."""
    converse_server.configure(fault_first=4, fault_kinds=("error503",))
    client = _client(converse_server, botocore_max_attempts=3, max_attempts=3)
    gen = GenerationSettings(target=4)
    shard = generate_shard(seeds_file, tmp_path / "gen", gen, client)
    merged = merge_generation(tmp_path / "gen", gen)
    stats = converse_server.stats
    assert stats["requests"] == stats["by_kind"]["generate"] == 5 * 4
    assert shard["llm"]["calls"] == merged["llm"]["calls"] == stats["requests"]
    assert merged["llm"]["failed_calls"] == stats["by_fault"]["error503"] == 4 * 4
    converse_server.reset()
    processed = process_stage(tmp_path / "gen" / "raw_conversations.json", tmp_path / "proc",
                              tau2_data_dir=tau2_dir)
    judge_shard(tmp_path / "proc" / "processed.json", tmp_path / "j", JudgeSettings(), client)
    judged = merge_judge(tmp_path / "j")
    assert judged["llm"]["calls"] == converse_server.stats["requests"] == 5 * processed["kept"]


def test_generation_all_failed_is_reported_then_retried(converse_server, tmp_path, seeds_file):
    """Every call fails: the shard fails naming the call errors (not "raise
    max_attempts"); once the server works, a re-run retries the failed items and the
    summary counts both runs' requests."""
    from simia.llm.failures import LLMStageFailed

    converse_server.configure(fault_rate=1.0, fault_kinds=("error503",))
    client = _client(converse_server, max_attempts=1, botocore_max_attempts=1)
    gen = GenerationSettings(target=3)
    with pytest.raises(LLMStageFailed, match=r"generate shard 0: 19 of 19 items failed "
                                             r"\(100%, every item failed\); first failures: "
                                             r"item 0 .*ServiceUnavailableException"):
        generate_shard(seeds_file, tmp_path, gen, client)
    converse_server.configure(fault_rate=0.0)
    summary = generate_shard(seeds_file, tmp_path, gen, client)
    assert summary["valid"] == 3 and summary["resumed_items"] == 0
    assert summary["llm"]["calls"] == converse_server.stats["requests"] == 19 + 3
    assert summary["llm"]["failed_calls"] == 19


def test_truncated_and_badly_continued_replies_are_failures(converse_server, tmp_path,
                                                            seeds_file):
    """A reply still cut after the last round, or whose continuation refuses and starts
    over, is a recorded failure with its raw text (a yield: not retried, no LLM-stage
    failure), never a valid conversation."""
    from simia.errors import InputError

    converse_server.configure(fault_rate=0.5, fault_kinds=("truncated",))
    client = _client(converse_server)
    gen = GenerationSettings(target=6, max_rounds=1)
    summary = generate_shard(seeds_file, tmp_path / "cut", gen, client)
    records = _lines(tmp_path / "cut" / "generate-shard-000-of-001.jsonl")
    cut = [r for r in records if r.get("error") == "truncated"]
    assert summary["valid"] == 6 and cut and summary["failed_by_error"] == {"truncated": len(cut)}
    assert all(r["raw_text"] and "max_tokens" in r["detail"] for r in cut)
    assert not any(r["conversation"]["truncated"] for r in records if r["status"] == "ok")

    converse_server.reset()
    converse_server.configure(fault_rate=1.0, fault_kinds=("truncated", "bad_continuation"))
    gen = GenerationSettings(target=2, max_attempts=4)
    with pytest.raises(InputError, match="reached the attempt bound"):
        generate_shard(seeds_file, tmp_path / "bad", gen, client)
    records = _lines(tmp_path / "bad" / "generate-shard-000-of-001.jsonl")
    assert [r["error"] for r in records] == ["bad_continuation"] * 4
    assert all("I cannot comply" in r["raw_text"] for r in records)
    calls = converse_server.stats["requests"]
    with pytest.raises(InputError):  # a yield stays: the re-run calls nothing
        generate_shard(seeds_file, tmp_path / "bad", gen, client)
    assert converse_server.stats["requests"] == calls


def test_seeds_fail_past_the_share_and_a_rerun_retries(converse_server, tmp_path):
    from simia.llm.failures import LLMStageFailed

    tau2 = ROOT.parent / "shared" / "data" / "tau2-telecom"
    if not tau2.is_dir():
        pytest.skip("tau2 telecom data (../shared/data/tau2-telecom) not present")
    converse_server.configure(fault_rate=0.4, fault_kinds=("error503",))
    client = _client(converse_server, max_attempts=1, botocore_max_attempts=1,
                     max_failed_share=0.1)
    settings = SeedSettings(n_seeds=6)
    with pytest.raises(LLMStageFailed, match="seeds: [1-6] of 6 items failed"):
        generate_seeds_stage(tmp_path, settings, client, tau2_data_dir=tau2)
    assert not (tmp_path / "seeds.json").exists()
    converse_server.configure(fault_rate=0.0)
    summary = generate_seeds_stage(tmp_path, settings, client, tau2_data_dir=tau2)
    assert summary["seeds"] + summary["failed"] == 6 and summary["failed"] <= 1
    assert summary["llm"]["calls"] == converse_server.stats["requests"]


def test_no_usable_seed_fails_pointing_to_the_failures_it_wrote(converse_server, tmp_path,
                                                                tau2_dir):
    from pathlib import Path as _Path

    from simia.errors import SimiaError

    converse_server.configure(fault_rate=1.0, fault_kinds=("unparseable",))
    with pytest.raises(SimiaError, match="2 of 2 items failed") as exc:
        generate_seeds_stage(tmp_path / "seeds", SeedSettings(n_seeds=2, tries=1),
                             _client(converse_server), tau2_data_dir=tau2_dir)
    # every file the error (or the summary) points to was written
    named = str(exc.value).split(":")[0]
    assert _Path(named).is_file()
    failures = tmp_path / "seeds" / "seed_failures.jsonl"
    assert [r["status"] for r in _lines(failures)] == ["failed", "failed"]
    assert not (tmp_path / "seeds" / "seeds.json").exists()


def test_judge_records_and_merges_carry_their_provenance(converse_server, tmp_path, seeds_file,
                                                        tau2_dir):
    import hashlib

    from simia.data.datasets import content_hash
    from simia.data.stages import validate_scores_file
    from simia.errors import InputError

    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    client = _client(converse_server)
    gen = GenerationSettings(target=6)
    for shard in range(2):
        generate_shard(seeds_file, tmp_path / "gen", gen, client, shard=shard, shards=2)
    merged = merge_generation(tmp_path / "gen", gen, shards=2)
    assert merged["seeds_sha256"] == sha(seeds_file)
    assert merged["outputs_sha256"] == {
        "raw_conversations": sha(tmp_path / "gen" / "raw_conversations.json"),
        "failures": sha(tmp_path / "gen" / "generation_failures.jsonl")}
    assert sorted(merged["inputs_sha256"]) == ["generate-shard-000-of-002.jsonl",
                                               "generate-shard-001-of-002.jsonl"]
    raw = tmp_path / "gen" / "raw_conversations.json"
    process_stage(raw, tmp_path / "proc", tau2_data_dir=tau2_dir)
    processed = tmp_path / "proc" / "processed.json"
    judge_shard(processed, tmp_path / "judge", JudgeSettings(), client, shard=0, shards=2)
    judge_shard(processed, tmp_path / "judge", JudgeSettings(), client, shard=1, shards=2)
    judged = merge_judge(tmp_path / "judge", shards=2)
    assert judged["processed_sha256"] == sha(processed)
    scores = tmp_path / "judge" / "judge_scores.jsonl"
    assert judged["outputs_sha256"] == {"scores": sha(scores)}
    rows = {r["source_index"]: r for r in json.loads(processed.read_text())}
    assert all(s["content_sha256"] == content_hash(rows[s["conv_idx"]]) for s in _lines(scores))
    assert validate_scores_file(scores, processed)["matched"] == len(rows)

    # a shard judged on another processed file: the merge refuses to mix them
    other = json.loads(raw.read_text())
    (tmp_path / "other.json").write_text(json.dumps(other[::-1]))
    process_stage(tmp_path / "other.json", tmp_path / "proc2", tau2_data_dir=tau2_dir)
    judge_shard(tmp_path / "proc2" / "processed.json", tmp_path / "judge", JudgeSettings(),
                client, shard=1, shards=2, force=True)
    with pytest.raises(InputError, match="processed_sha256 .* cannot be merged"):
        merge_judge(tmp_path / "judge", shards=2)
