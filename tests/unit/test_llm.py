"""The LLM client, runner and reply parsing, with an in-process backend (no network)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from simia.errors import ConfigError, InputError
from simia.llm.generation import enough_text, parse_lines, pick_seed, seed_problems
from simia.llm.judge import parse_judge_reply
from simia.llm.accounting import PriceTable
from simia.llm.client import LLMCallError, LLMClient, LLMFatalError, LLMSettings, Reply
from simia.llm.pacing import RatePacer
from simia.llm.prompts import render
from simia.llm.replies import extract_json_object
from simia.llm.runner import Checkpoint, WorkItem, item_id, run_items


class Boom(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(f"boom {kind}")
        self.kind = kind


class Scripted:
    """Replies (or raises) from a script; records every request."""

    model_id = "test-model"

    def __init__(self, script):
        self.script = list(script)
        self.requests = []

    def send(self, system, messages, max_tokens, temperature):
        self.requests.append([dict(m) for m in messages])
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def classify(self, exc):
        if isinstance(exc, Boom):
            return {"retry": ("ThrottlingException", "retry"),
                    "item": ("ValidationException", "item"),
                    "fatal": ("AccessDeniedException", "fatal")}[exc.kind]
        return None


def _client(script, **settings):
    sleeps = []
    backend = Scripted(script)
    client = LLMClient(backend, LLMSettings(**{"max_attempts": 3, **settings}),
                       sleep=sleeps.append)
    return client, backend, sleeps


def test_retries_then_succeeds_with_bounded_jittered_backoff():
    client, backend, sleeps = _client([Boom("retry"), Boom("retry"),
                                       Reply("ok", "end_turn", 10, 2)],
                                      backoff_base_s=1.0, backoff_max_s=1.5)
    done = client.complete("s", "id1", "hi")
    assert done.text == "ok" and done.attempts == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 1.5
    usage = client.usage_summary("s")
    assert usage["calls"] == 3 and usage["failed_calls"] == 2
    assert usage["errors"] == {"ThrottlingException": 2} and usage["input_tokens"] == 10


def test_gives_up_after_max_attempts_and_item_errors_are_not_retried():
    client, _, _ = _client([Boom("retry")] * 3)
    with pytest.raises(LLMCallError) as exc:
        client.complete("s", "id", "hi")
    assert exc.value.error_class == "ThrottlingException" and exc.value.attempts == 3
    client, backend, _ = _client([Boom("item"), Reply("never", "end_turn", 1, 1)])
    with pytest.raises(LLMCallError):
        client.complete("s", "id", "hi")
    assert len(backend.requests) == 1


def test_configuration_errors_abort():
    client, _, _ = _client([Boom("fatal")])
    with pytest.raises(LLMFatalError, match="AccessDeniedException"):
        client.complete("s", "id", "hi")


def test_unknown_exceptions_propagate():
    client, _, _ = _client([KeyError("bug")])
    with pytest.raises(KeyError):
        client.complete("s", "id", "hi")


def test_continuation_rounds_until_the_model_stops():
    client, backend, _ = _client([Reply("HUMAN: a\n", "max_tokens", 5, 5),
                                  Reply("ASSISTANT: b", "end_turn", 7, 3)])
    done = client.complete("s", "id", "go", max_rounds=5)
    assert done.text == "HUMAN: a\nASSISTANT: b" and done.rounds == 2
    assert (done.input_tokens, done.output_tokens) == (12, 8) and not done.truncated
    second = backend.requests[1]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["text"] == "HUMAN: a\n" and second[2]["text"].startswith("Continue")


def test_continuation_stops_at_the_round_limit_or_when_enough():
    client, _, _ = _client([Reply("x", "max_tokens", 1, 1)] * 2)
    done = client.complete("s", "id", "go", max_rounds=2)
    assert done.rounds == 2 and done.truncated
    client, backend, _ = _client([Reply("Goodbye!", "max_tokens", 1, 1)])
    done = client.complete("s", "id", "go", max_rounds=5, keep_going=enough_text)
    assert done.rounds == 1 and len(backend.requests) == 1


def test_call_log_lines_hold_no_prompt_unless_asked(caplog):
    caplog.set_level(logging.INFO, logger="simia.llm")
    client, _, _ = _client([Reply("reply text", "end_turn", 3, 4)])
    client.complete("gen:0", "abc", "SECRET PROMPT")
    line = caplog.records[-1].getMessage()
    assert "stage=gen:0 item=abc round=1 attempt=1" in line and "in=3 out=4" in line
    assert "SECRET PROMPT" not in caplog.text and "reply text" not in caplog.text
    client, _, _ = _client([Reply("reply text", "end_turn", 3, 4)], log_prompts=True)
    client.complete("gen:0", "abc", "SECRET PROMPT")
    assert "SECRET PROMPT" in caplog.text


def test_cost_from_the_price_table():
    prices = PriceTable.model_validate({"models": {"cheap": {"input_per_mtok": 1,
                                                             "output_per_mtok": 2}}})
    assert prices.cost("cheap", 1_000_000, 500_000) == pytest.approx(2.0)
    assert prices.cost("other", 1_000_000, 1_000_000) == pytest.approx(18.0)  # Sonnet 4
    with pytest.raises(ValueError):
        PriceTable.model_validate({"default": {"input_per_mtok": -1, "output_per_mtok": 0}})


def test_item_ids_are_stable_and_distinct():
    assert item_id(42, "generate", 7) == item_id(42, "generate", 7)
    assert len({item_id(42, "generate", i) for i in range(1000)}) == 1000
    assert item_id(42, "generate", 7) != item_id(43, "generate", 7)
    assert pick_seed(42, 7, 10) == pick_seed(42, 7, 10)


def test_checkpoint_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with Checkpoint(path) as ckpt:
        ckpt.append({"id": "a", "status": "ok"})
        ckpt.append({"id": "b", "status": "ok"})
    with open(path, "ab") as fh:
        fh.write(b'{"id": "c", "sta')  # killed mid-write
    ckpt = Checkpoint(path)
    assert set(ckpt.records) == {"a", "b"}
    ckpt.append({"id": "c", "status": "ok"})
    ckpt.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_checkpoints_have_the_mode_of_every_output_whatever_the_umask(tmp_path):
    from simia.io import OUTPUT_MODE, write_json

    old = os.umask(0o077)
    try:
        with Checkpoint(tmp_path / "c.jsonl") as ckpt:
            ckpt.append({"id": "a", "status": "ok"})
        write_json(tmp_path / "summary.json", {"ok": True})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"c.jsonl": OUTPUT_MODE, "summary.json": OUTPUT_MODE}


def test_checkpoint_append_does_not_wait_for_the_disk(tmp_path, monkeypatch):
    """Lines are written by the checkpoint's writer thread: a slow disk delays the file,
    never the caller; close() writes everything, in order, and fsyncs."""
    import simia.llm.runner as runner

    real_write = runner.os.write

    def slow_write(fd, data):
        time.sleep(0.2)
        return real_write(fd, data)

    monkeypatch.setattr(runner.os, "write", slow_write)
    path = tmp_path / "c.jsonl"
    ckpt = Checkpoint(path)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda k=k: [ckpt.append({"id": f"{k}-{i}", "i": i})
                                                    for i in range(20)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 0.15 and len(ckpt.records) == 80
    ckpt.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(ckpt.records)
    for k in range(4):  # each thread's lines in the order it appended them
        assert [r["i"] for r in lines if r["id"].startswith(f"{k}-")] == list(range(20))
    with pytest.raises(ValueError, match="closed"):
        ckpt.append({"id": "late"})
    ckpt.close()  # idempotent


def test_checkpoint_write_failure_is_raised(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("")
    ckpt = Checkpoint(path)
    os.close(ckpt._fd)
    ckpt._fd = os.open(path, os.O_RDONLY)  # every write now fails (EBADF)
    ckpt.append({"id": "a"})
    with pytest.raises(OSError, match="write failed"):
        ckpt.close()
    assert Checkpoint(path).records == {}


def test_checkpoint_corruption_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(InputError, match="line 2: malformed JSON"):
        Checkpoint(path)


def test_run_items_reaches_the_target_exactly_and_skips_done(tmp_path):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def work(item):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        ok = item.index % 3 != 0  # every third item fails
        with lock:
            in_flight[0] -= 1
        return {"id": item.id, "index": item.index, "status": "ok" if ok else "failed"}

    items = lambda: (WorkItem(i, f"i{i}") for i in range(1000))  # noqa: E731
    with Checkpoint(tmp_path / "c.jsonl") as ckpt:
        rep = run_items(items(), work, ckpt, concurrency=4, target=10,
                        is_success=lambda r: r["status"] == "ok")
    assert rep.succeeded == 10 and peak[0] <= 4
    with Checkpoint(tmp_path / "c.jsonl") as ckpt:
        rep = run_items(items(), work, ckpt, concurrency=4, target=12,
                        is_success=lambda r: r["status"] == "ok")
        ok = sum(r["status"] == "ok" for r in ckpt.records.values())
    assert rep.resumed > 0 and rep.succeeded == 2 and ok == 12
    with Checkpoint(tmp_path / "d.jsonl") as ckpt:
        rep = run_items(items(), work, ckpt, concurrency=4, target=100, max_attempts=9,
                        is_success=lambda r: r["status"] == "ok")
    assert rep.submitted == 9


def test_run_items_saves_in_flight_results_before_raising(tmp_path):
    def work(item):
        if item.index == 2:
            raise LLMFatalError("bad credentials")
        return {"id": item.id, "index": item.index}

    with Checkpoint(tmp_path / "c.jsonl") as ckpt:
        with pytest.raises(LLMFatalError):
            run_items((WorkItem(i, f"i{i}") for i in range(50)), work, ckpt, concurrency=2,
                      is_success=lambda r: True)
        assert "i2" not in ckpt.records and len(ckpt.records) >= 2


@pytest.mark.parametrize("text,roles", [
    ("HUMAN: hi\nASSISTANT: hello\nmore\nFUNCTION_CALL: {}\nOBSERVATION: {}",
     ["human", "gpt", "function_call", "observation"]),
    ("Sure! Here it is:\nH: hi\nA: yo", ["human", "gpt"]),
])
def test_parse_lines(text, roles):
    turns = parse_lines(text)
    assert [t["from"] for t in turns] == roles
    assert parse_lines("HUMAN: hi\nASSISTANT: hello\nmore")[1]["value"] == "hello\nmore"


@pytest.mark.parametrize("text", ["", "no markers at all", "HUMAN: hi\nASSISTANT:"])
def test_parse_lines_rejects(text):
    assert parse_lines(text) is None


def test_tolerant_json_and_judge_validation():
    assert extract_json_object('{"a": 1}') == {"a": 1}
    assert extract_json_object('Here:\n```json\n{"a": {"b": 2}}\n```\nDone.') == {"a": {"b": 2}}
    assert extract_json_object("no json") is None and extract_json_object("[1, 2]") is None
    ok, _ = parse_judge_reply('x {"wm_sycophancy_score": 85, "findings": [{"type": '
                              '"schema_forgiveness"}], "custom": 1} y')
    assert ok.wm_sycophancy_score == 85 and ok.model_dump()["custom"] == 1
    bad, why = parse_judge_reply('{"wm_sycophancy_score": 150}')
    assert bad is None and "wm_sycophancy_score" in why
    bad, why = parse_judge_reply('{"confidence": 0.5}')
    assert bad is None and "wm_sycophancy_score" in why


def test_seed_rules():
    call = json.dumps({"name": "get_customer_by_phone", "arguments": {"phone_number": "1"}})
    good = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "phone?"},
            {"from": "human", "value": "1"}, {"from": "function_call", "value": call},
            {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "done"}]
    tools = {"get_customer_by_phone"}
    assert seed_problems(good, tools) == []
    assert "only 5 turns" in seed_problems(good[:5], tools)[0]
    assert any("not 'human'" in p for p in seed_problems(good[1:] + good[:1], tools))
    unknown = [*good[:3], {"from": "function_call", "value": '{"name": "x", "arguments": {}}'},
               *good[4:]]
    assert any("unknown tool" in p for p in seed_problems(unknown, tools))
    args = [*good[:3], {"from": "function_call", "value": '{"name": "get_customer_by_phone", '
                                                           '"arguments": "1"}'}, *good[4:]]
    assert any("not an object" in p for p in seed_problems(args, tools))
    orphan = [*good[:3], {"from": "observation", "value": "{}"}, *good[3:]]
    assert any("not right after" in p for p in seed_problems(orphan, tools))
    assert any("unknown role" in p for p in seed_problems([*good, {"from": "sys", "value": "x"}],
                                                          tools))


def test_prompt_fields_must_be_provided():
    assert render("a {{x}} b", "t", x="1", unused="2") == "a 1 b"
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['y'\]"):
        render("{{x}} {{y}}", "t.txt", x="1")


class FakeTime:
    """A clock that only moves when someone sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _pacer(**kw):
    t = FakeTime()
    return RatePacer(clock=t.clock, sleep=t.sleep, **kw), t


def test_pacer_spaces_requests_at_max_rps():
    pacer, t = _pacer(max_rps=10.0, learn=False)
    start = t.now
    for _ in range(21):
        pacer.acquire()
    assert t.now - start == pytest.approx(2.0)  # 21 starts, 0.1 s apart
    assert all(s == pytest.approx(0.1) for s in t.slept)
    t.now += 5.0  # idle: no credit piles up, the next request goes at once...
    assert pacer.acquire() == 0.0
    assert pacer.acquire() == pytest.approx(0.1)  # ...and the one after waits its turn
    assert pacer.rate == 10.0 and pacer.cuts == 0
    off, _ = _pacer(learn=False)
    assert not off.active and off.acquire() == 0.0


def test_pacer_is_free_until_throttled_then_cuts_to_the_accepted_rate():
    pacer, t = _pacer(decrease=0.9, hold_s=1.0, window_s=2.0)
    while pacer.cuts == 0:  # 40 req/s sent, 30 accepted: never delayed until the cut
        assert pacer.rate is None and t.now < 101.15  # no cut before hold_s of history
        for i in range(4):
            assert pacer.acquire() == 0.0
            pacer.record(throttled=i == 3)
        t.now += 0.1
    assert pacer.rate == pytest.approx(0.9 * 30.0, rel=0.1)
    assert pacer.acquire() == 0.0 and pacer.acquire() == pytest.approx(1 / pacer.rate)
    cut = pacer.rate
    pacer.record(throttled=True)  # within hold_s of the cut: no second cut
    assert pacer.rate == cut and pacer.cuts == 1 and pacer.throttled == 13


def test_pacer_never_cuts_more_than_half_and_respects_the_floor():
    pacer, t = _pacer(max_rps=40.0, min_rps=1.0, hold_s=1.0)
    pacer.acquire()
    for _ in range(4):  # everything throttled: accepted rate 0
        t.now += 1.0
        pacer.record(throttled=True)
    assert pacer.rate == pytest.approx(40.0 / 16)
    for _ in range(5):
        t.now += 1.0
        pacer.record(throttled=True)
    assert pacer.rate == 1.0 and pacer.cuts == 9


def test_pacer_probes_upwards_only_while_it_limits():
    pacer, t = _pacer(max_rps=20.0, probe_per_s=0.05, hold_s=0.0, window_s=1.0)
    pacer.acquire()
    pacer.record(throttled=False)
    t.now += 1.0
    pacer.record(throttled=True)  # accepted 1 req/s over the last second: cut to 10
    assert pacer.rate == pytest.approx(10.0)
    start = t.now
    for _ in range(11):  # a queue of requests: the rate is the limit, it grows
        pacer.acquire()
    grown = pacer.rate
    assert t.now - start == pytest.approx(1.0, rel=0.1)
    assert 10.0 * 1.03 < grown < 10.0 * 1.07  # about 5 % in the ~1 s those took
    for _ in range(10):  # one request every 2 s: the rate is not the limit
        t.now += 2.0
        assert pacer.acquire() == 0.0
    assert pacer.rate == grown
    for _ in range(2000):  # never above max_rps
        pacer.acquire()
    assert pacer.rate == 20.0


def test_pacer_is_shared_by_threads():
    pacer = RatePacer(max_rps=200.0, learn=False)
    stamps: list[float] = []
    lock = threading.Lock()

    def go():
        for _ in range(5):
            pacer.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=go) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stamps.sort()
    # 40 starts at 200/s take at least 39 intervals of 5 ms, however the threads interleave
    assert stamps[-1] - stamps[0] >= 39 * 0.005 * 0.9 and pacer.requests == 40


def test_settings_for_pacing():
    settings = LLMSettings()
    assert settings.botocore_retry_mode == "standard" and settings.learns_rps
    assert settings.max_rps is None
    assert not LLMSettings(botocore_retry_mode="adaptive").learns_rps  # one limiter, not two
    assert LLMSettings(botocore_retry_mode="adaptive", learn_rps=True).learns_rps
    assert not LLMSettings(learn_rps=False).learns_rps
    with pytest.raises(ValueError):
        LLMSettings(max_rps=0)
    client = LLMClient(Scripted([]), settings)
    assert client.pacer is None  # a backend without one


def test_run_items_reports_progress_at_a_steady_rhythm(tmp_path):
    from simia.llm.runner import Progress

    seen: list[Progress] = []

    def work(item):
        time.sleep(0.02)
        return {"id": item.id, "status": "ok"}

    items = [WorkItem(i, f"id{i}") for i in range(30)]
    with Checkpoint(tmp_path / "ck.jsonl") as ckpt:
        run_items(items, work, ckpt, concurrency=2, is_success=lambda r: True, target=30,
                  progress=seen.append, progress_every_s=0.05)
    assert len(seen) >= 3  # periodic lines while running, and one at the end
    assert seen[-1].ok == 30 and seen[-1].target == 30 and seen[-1].inflight == 0
    assert [p.ok for p in seen] == sorted(p.ok for p in seen)
    line = seen[1].line({"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.0123})
    assert "/30 done" in line and "/s" in line and "1,200 tokens" in line and "$0.01" in line
    assert "ETA" in Progress(ok=10, attempted=10, inflight=2, resumed=0, target=30,
                             elapsed_s=5.0).line()


# --------------------------------------------------------------------------- prompt caching

def _stubbed_bedrock(prompt_caching: bool, cache_min_tokens: int = 1):
    """A BedrockBackend on a real boto3 client with botocore's Stubber and parameter
    validation on: requests and replies are checked against botocore's Converse model."""
    import boto3
    from botocore.config import Config
    from botocore.stub import Stubber

    from simia.llm.client import BedrockBackend

    boto = boto3.client("bedrock-runtime", region_name="us-east-1",
                        aws_access_key_id="t", aws_secret_access_key="t",
                        config=Config(parameter_validation=True))
    stub = Stubber(boto)
    stub.activate()
    return BedrockBackend(boto, "m", prompt_caching=prompt_caching,
                          cache_min_tokens=cache_min_tokens), stub


_CONVERSE_REPLY = {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                   "stopReason": "end_turn", "metrics": {"latencyMs": 5},
                   "usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 310,
                             "cacheReadInputTokens": 250, "cacheWriteInputTokens": 50}}


def test_bedrock_request_has_cache_points_and_reads_the_cache_usage():
    from simia.llm.prompts import CACHE_POINT

    backend, stub = _stubbed_bedrock(True)
    point = {"cachePoint": {"type": "default"}}
    stub.add_response("converse", _CONVERSE_REPLY, {
        "modelId": "m", "system": [{"text": "RUBRIC"}, point],
        "messages": [{"role": "user", "content": [{"text": "SEED\n"}, point,
                                                  {"text": "\nVARIATION"}]}],
        "inferenceConfig": {"maxTokens": 10, "temperature": 0.0}})
    reply = backend.send("RUBRIC", [{"role": "user", "text": f"SEED\n{CACHE_POINT}\nVARIATION"}],
                         10, 0.0)
    stub.assert_no_pending_responses()
    assert (reply.input_tokens, reply.output_tokens) == (7, 3)
    assert (reply.cache_read_tokens, reply.cache_write_tokens) == (250, 50)


def test_bedrock_request_without_caching_has_no_cache_point_and_the_same_text():
    from simia.llm.prompts import CACHE_POINT

    backend, stub = _stubbed_bedrock(False)
    reply = {**_CONVERSE_REPLY, "usage": {"inputTokens": 9, "outputTokens": 3,
                                          "totalTokens": 12}}
    stub.add_response("converse", reply, {
        "modelId": "m", "system": [{"text": "RUBRIC"}],
        "messages": [{"role": "user", "content": [{"text": "SEED\n\nVARIATION"}]}],
        "inferenceConfig": {"maxTokens": 10, "temperature": 0.0}})
    got = backend.send("RUBRIC", [{"role": "user", "text": f"SEED\n{CACHE_POINT}\nVARIATION"}],
                       10, 0.0)
    stub.assert_no_pending_responses()
    assert (got.input_tokens, got.cache_read_tokens, got.cache_write_tokens) == (9, 0, 0)


def test_no_cache_point_before_a_prefix_under_the_minimum():
    """Bedrock caches no prefix under the model's minimum (1,024 tokens for Sonnet 4,
    estimated at 4 characters a token): no cache point is sent before one."""
    from simia.llm.prompts import CACHE_POINT

    backend, stub = _stubbed_bedrock(True, cache_min_tokens=1024)
    point = {"cachePoint": {"type": "default"}}
    short, seed = "s" * 4092, "x" * 4  # 1,023 tokens, then 1,024 with the seed part
    stub.add_response("converse", _CONVERSE_REPLY, {
        "modelId": "m", "system": [{"text": short}],
        "messages": [{"role": "user", "content": [{"text": seed}, point, {"text": "v"}]}],
        "inferenceConfig": {"maxTokens": 10, "temperature": 0.0}})
    backend.send(short, [{"role": "user", "text": f"{seed}{CACHE_POINT}v"}], 10, 0.0)
    stub.add_response("converse", _CONVERSE_REPLY, {
        "modelId": "m", "system": [{"text": short + "s"}, point],
        "messages": [{"role": "user", "content": [{"text": "y"}, point, {"text": "v"}]}],
        "inferenceConfig": {"maxTokens": 10, "temperature": 0.0}})
    backend.send(short + "s", [{"role": "user", "text": f"y{CACHE_POINT}v"}], 10, 0.0)
    stub.add_response("converse", _CONVERSE_REPLY, {
        "modelId": "m", "system": [{"text": "tiny"}],
        "messages": [{"role": "user", "content": [{"text": "y"}, {"text": "v"}]}],
        "inferenceConfig": {"maxTokens": 10, "temperature": 0.0}})
    backend.send("tiny", [{"role": "user", "text": f"y{CACHE_POINT}v"}], 10, 0.0)
    stub.assert_no_pending_responses()


def test_make_client_follows_the_prompt_caching_setting():
    from simia.llm.client import make_client

    on = make_client(LLMSettings(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    off = make_client(LLMSettings(endpoint_url="http://127.0.0.1:9", region="us-east-1",
                                  prompt_caching=False))
    assert on.backend.prompt_caching and not off.backend.prompt_caching
    assert LLMSettings().prompt_caching is True


def test_openai_backend_ignores_the_cache_point():
    import httpx

    from simia.llm.client import OpenAIBackend
    from simia.llm.prompts import CACHE_POINT

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={
            "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    backend = OpenAIBackend("http://x/v1", "local")
    backend._http = httpx.Client(base_url="http://x/v1", transport=httpx.MockTransport(handler))
    reply = backend.send("RUBRIC", [{"role": "user", "text": f"A{CACHE_POINT}B"}], 10, 0.0)
    assert seen[0]["messages"] == [{"role": "system", "content": "RUBRIC"},
                                   {"role": "user", "content": "AB"}]
    assert CACHE_POINT not in json.dumps(seen)
    assert (reply.input_tokens, reply.cache_read_tokens, reply.cache_write_tokens) == (5, 0, 0)


def test_cache_tokens_are_accounted_and_priced():
    client, _, _ = _client([Reply("part", "max_tokens", 100, 10, 2000, 0),
                            Reply("rest", "end_turn", 120, 20, 1500, 500)])
    done = client.complete("judge:0", "id", "go", max_rounds=2)
    assert (done.input_tokens, done.cache_read_tokens, done.cache_write_tokens) == (220, 3500,
                                                                                   500)
    usage = client.usage_summary("judge:0")
    assert {k: usage[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                  "cache_write_tokens")} == {
        "input_tokens": 220, "output_tokens": 30, "cache_read_tokens": 3500,
        "cache_write_tokens": 500}
    # Sonnet 4: $3 input, $15 output, $0.30 cache read, $3.75 cache write per million
    assert usage["cost_usd"] == pytest.approx(
        (220 * 3 + 30 * 15 + 3500 * 0.30 + 500 * 3.75) / 1e6, abs=1e-9)
    assert usage["cache_read_share"] == pytest.approx(3500 / (220 + 3500 + 500), abs=1e-4)


def test_price_tables_without_cache_prices_still_load():
    from simia.llm.accounting import sum_usage
    from simia.settings.llm import ModelPrice

    default = PriceTable().default
    assert (default.cache_read, default.cache_write) == (0.30, 3.75)
    old = PriceTable.model_validate({"default": {"input_per_mtok": 3, "output_per_mtok": 15},
                                     "models": {"m": {"input_per_mtok": 1,
                                                      "output_per_mtok": 5}}})
    assert old.price("m").cache_read == pytest.approx(0.1)
    assert old.price("m").cache_write == pytest.approx(1.25)
    assert old.cost("x", 0, 0, 1_000_000, 1_000_000) == pytest.approx(0.30 + 3.75)
    own = ModelPrice(input_per_mtok=1, output_per_mtok=5, cache_read_per_mtok=0.5,
                     cache_write_per_mtok=2)
    assert PriceTable(models={"m": own}).cost("m", 1e6, 1e6, 1e6, 1e6) == pytest.approx(8.5)
    with pytest.raises(ValueError):
        ModelPrice(input_per_mtok=1, output_per_mtok=1, cache_read_per_mtok=-1)
    # a shard summary written before prompt caching adds up with a new one
    new = {"calls": 2, "input_tokens": 10, "output_tokens": 4, "cache_read_tokens": 80,
           "cache_write_tokens": 10, "cost_usd": 0.5, "model_id": "m"}
    total = sum_usage([{"calls": 1, "input_tokens": 100, "output_tokens": 2,
                        "cost_usd": 0.25, "model_id": "m"}, new])
    assert (total["input_tokens"], total["cache_read_tokens"], total["cache_write_tokens"],
            total["cost_usd"]) == (110, 80, 10, 0.75)
    assert total["cache_read_share"] == pytest.approx(80 / 200)


def test_stage_templates_put_the_shared_part_first(tmp_path):
    from simia.llm.generation import GenerationSettings, generation_prompt
    from simia.llm.judge import judge_prompt
    from simia.llm.prompts import CACHE_POINT, load_pair, load_template, strip_cache_points

    seed = {"system": "POLICY", "tools": "", "conversations": [
        {"from": "human", "value": "my data is slow"}, {"from": "gpt", "value": "ok"}]}
    gen = GenerationSettings(mode="strict")
    sys_a, user_a = generation_prompt(seed, gen, "item-a")
    sys_b, user_b = generation_prompt(seed, gen, "item-b")
    assert sys_a == sys_b and "<simulator_mode>strict</simulator_mode>" in sys_a
    assert "Tools the agent can call" in sys_a and "refuelling is limited" in sys_a
    shared, own = user_a.split(CACHE_POINT)
    assert shared == user_b.split(CACHE_POINT)[0] and "SYSTEM: POLICY" in shared
    assert "item-a" in own and "Write about 2 turns" in own and "item-a" not in sys_a

    rubric, where = load_template("judge_system.txt")
    row = {"system": "THE POLICY", "tools": "", "conversations": seed["conversations"],
           "source_index": 0}
    system, user = judge_prompt(row, rubric, where)
    assert system.startswith(rubric.split("{{")[0]) and '"SYSTEM_POLICY_TEXT":"THE POLICY"' \
        in system and '"TOOL_SCHEMAS":[' in system
    assert json.loads(user) == {"CONVERSATION": [
        {"turn_index": 0, "from": "human", "value": "my data is slow"},
        {"turn_index": 1, "from": "gpt", "value": "ok"}]}
    # a rubric without the field: the reference's layout, everything in the user message
    system, user = judge_prompt(row, "OLD RUBRIC", "old.txt")
    assert system == "OLD RUBRIC" and set(json.loads(user)) == {
        "SYSTEM_POLICY_TEXT", "TOOL_SCHEMAS", "CONVERSATION"}
    # a prompts folder with a one-message generate.txt of the old layout: sent alone
    (tmp_path / "generate.txt").write_text("ALL IN ONE {{seed_conversation}} {{tools}}")
    assert load_pair("generate", tmp_path)[0] is None
    assert generation_prompt(seed, GenerationSettings(prompts_dir=str(tmp_path)), "v")[0] is None
    (tmp_path / "generate_system.txt").write_text("SHARED {{tools}}")
    assert load_pair("generate", tmp_path)[0] == ("SHARED {{tools}}",
                                                  str(tmp_path / "generate_system.txt"))
    assert strip_cache_points(f"a{CACHE_POINT}b") == "ab"
    assert render("x{{cache_point}}y", "t") == f"x{CACHE_POINT}y"


# --------------------------------------------------------------------------- trust boundaries

def test_each_call_carries_its_own_usage_failed_attempts_included():
    """A completion's ``usage`` and a failed call's ``LLMCallError.usage`` count every
    attempt (failed ones by error class), so a record can keep what its item cost."""
    client, _, _ = _client([Boom("retry"), Reply("HUMAN: a\n", "max_tokens", 5, 5),
                            Reply("ASSISTANT: b", "end_turn", 7, 3)])
    done = client.complete("s", "id", "go", max_rounds=3)
    assert done.parts == ("HUMAN: a\n", "ASSISTANT: b")
    u = done.usage
    assert (u["calls"], u["failed_calls"], u["errors"]) == (3, 1, {"ThrottlingException": 1})
    assert (u["input_tokens"], u["output_tokens"]) == (12, 8) and u["cost_usd"] > 0
    client, _, _ = _client([Boom("retry")] * 3)
    with pytest.raises(LLMCallError) as exc:
        client.complete("s", "id", "go")
    assert exc.value.usage["calls"] == exc.value.usage["failed_calls"] == 3
    assert exc.value.usage["input_tokens"] == 0


def test_a_redone_item_keeps_the_usage_of_its_earlier_tries(tmp_path):
    """run_items' redo: the new record adds the old record's usage and counts its runs."""
    calls = {"n": 0}

    def work(item):
        calls["n"] += 1
        fail = calls["n"] == 1
        return {"id": item.id, "index": item.index, "status": "failed" if fail else "ok",
                "usage": {"judge": {"calls": 2 if fail else 1, "failed_calls": 2 if fail else 0,
                                    "input_tokens": 0 if fail else 10, "cost_usd": 0.0,
                                    "errors": {"X": 2} if fail else {}}}}

    for _ in range(2):
        with Checkpoint(tmp_path / "c.jsonl") as ckpt:
            run_items([WorkItem(0, "a")], work, ckpt, concurrency=1,
                      is_success=lambda r: r["status"] == "ok",
                      redo=lambda r: r["status"] != "ok")
    rec = Checkpoint(tmp_path / "c.jsonl").records["a"]
    assert rec["status"] == "ok" and rec["runs"] == 2
    assert rec["usage"]["judge"] == {"calls": 3, "failed_calls": 2, "input_tokens": 10,
                                     "cost_usd": 0.0, "errors": {"X": 2}}


def _recs(errors):
    return [{"id": f"id{i}", "index": i, **({"error": e, "detail": f"detail {i}"} if e else {})}
            for i, e in enumerate(errors)]


def test_a_stage_fails_when_every_item_or_too_many_failed():
    from simia.errors import SimiaError
    from simia.llm.failures import LLMStageFailed, check_failures

    failed = lambda r: "error" in r  # noqa: E731
    check_failures("judge shard 0", "/x/ckpt.jsonl", _recs([None, None, None, "E"]), failed,
                   0.25)  # 25 %: not more than the share
    check_failures("judge shard 0", "/x/ckpt.jsonl", [], failed, 0.25)
    with pytest.raises(LLMStageFailed) as exc:
        check_failures("judge shard 0", "/x/ckpt.jsonl",
                       _recs(["ServiceUnavailableException"] * 5), failed, 1.0)
    text = str(exc.value)
    assert isinstance(exc.value, SimiaError) and getattr(exc.value, "retryable", True)
    assert text.startswith("/x/ckpt.jsonl: judge shard 0: 5 of 5 items failed (100%, every "
                           "item failed)")
    assert "item 0 (id id0): ServiceUnavailableException: detail 0" in text
    assert "item 2 (id id2)" in text and "item 3" not in text  # the first three
    with pytest.raises(LLMStageFailed, match=r"2 of 5 items failed \(40%, more than "
                                             r"max_failed_share = 25%\)"):
        check_failures("seeds", "/x/s.jsonl", _recs(["A", None, "B", None, None]), failed,
                       0.25)


def test_call_failures_are_told_from_yields():
    from simia.llm.failures import is_call_failure

    assert is_call_failure({"error": "ServiceUnavailableException"})
    assert is_call_failure({"status": "judge_failed", "error": "ValidationException"})
    for error in ("unparseable", "truncated", "bad_continuation", "unparseable_reply"):
        assert not is_call_failure({"error": error})
    assert not is_call_failure({"status": "rejected"}) and not is_call_failure({})


def _done(*parts, stop="end_turn"):
    from simia.llm.client import Completion

    return Completion("".join(parts), stop, len(parts), len(parts), 1, 1, parts=parts)


def test_a_reply_that_stays_cut_or_continues_badly_is_no_conversation():
    from simia.llm.generation import completion_problem

    first = "HUMAN: My phone shows no signal since this morning.\nASSISTANT: Let me verific"
    assert completion_problem(_done(first, "ation of your line be done first.\n")) is None
    assert completion_problem(_done("HUMAN: hi\nASSISTANT: bye")) is None
    error, detail = completion_problem(_done(first, stop="max_tokens"))
    assert error == "truncated" and "after 1 round" in detail
    error, _ = completion_problem(_done(first, "ation.\nHUMAN: thanks", stop="max_tokens"))
    assert error == "truncated"
    # the reported case: a refusal, then the conversation again, glued to the cut word
    error, detail = completion_problem(_done(first, "I cannot comply with that format."
                                                    "HUMAN: Hi there"))
    assert error == "bad_continuation" and "round 2 refuses" in detail
    error, detail = completion_problem(_done(first, "HUMAN: Hi there\nASSISTANT: hello"))
    assert error == "bad_continuation" and "middle of a line" in detail
    error, detail = completion_problem(_done(
        first, "ation done.\nHUMAN: My phone shows no signal since this morning.\n"))
    assert error == "bad_continuation" and "restarts the conversation" in detail
    # a new turn at the start of a line is an ordinary continuation
    assert completion_problem(_done(first + "\n", "HUMAN: ok, thanks\n")) is None
