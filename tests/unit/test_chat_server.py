"""The CPU chat server's request handling (vLLM's semantics), without a model."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from simia.containers.chat_server import RequestError, make_handler, parse_hermes, prepare_messages


def test_hermes_blocks_become_tool_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_customer_by_id", "arguments": '
            '{"customer_id": "C1"}}\n</tool_call>\n<tool_call>\n{"name": "get_data_usage", '
            '"arguments": {"customer_id": "C1", "line_id": "L1"}}\n</tool_call>')
    content, calls = parse_hermes(text)
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_customer_by_id", "get_data_usage"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"customer_id": "C1",
                                                             "line_id": "L1"}
    assert parse_hermes("plain answer") == ("plain answer", [])
    broken = '<tool_call>{"name": "x", "arguments": {</tool_call>'
    assert parse_hermes(broken) == (broken, [])  # unparseable: text, as vLLM
    assert parse_hermes('<tool_call>{"arguments": {}}</tool_call>')[1] == []


def test_messages_are_prepared_for_the_chat_template():
    msgs = prepare_messages([
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "Hi! How can I help you today?"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                     "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f",
                                                         "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": "{}"},
    ])
    assert msgs[2]["content"] == "ab" and msgs[3]["content"] == ""
    assert msgs[3]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    for bad in ([], [{"role": "robot", "content": "x"}],
                [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{"}}]}]):
        with pytest.raises(RequestError):
            prepare_messages(bad)


class FakeChat:
    def complete(self, body):
        prepare_messages(body["messages"])
        return {"choices": [{"message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_routes_and_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(FakeChat(), "simia-0pct",
                                                                lambda m: None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"

    def post(body):
        req = urllib.request.Request(f"{url}/v1/chat/completions", method="POST",
                                     data=json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        with urllib.request.urlopen(f"{url}/v1/models") as r:
            assert json.loads(r.read())["data"][0]["id"] == "simia-0pct"
        ok = {"model": "simia-0pct", "messages": [{"role": "user", "content": "x"}]}
        assert post(ok)[0] == 200
        assert post({**ok, "model": "other"})[0] == 404
        assert post({**ok, "messages": []})[0] == 400
        assert post({**ok, "stream": True})[0] == 400
    finally:
        server.shutdown()
