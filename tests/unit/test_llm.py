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
