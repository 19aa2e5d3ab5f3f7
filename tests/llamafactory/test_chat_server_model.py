"""The CPU chat server on a real (tiny) model: it accepts tau2's conversation shape
(the agent's greeting first, several tool results in a row) that ``llamafactory-cli
api`` rejects, and renders exactly the model's chat template, as vLLM does."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from lf_support import lf_env

TAU2_SHAPE = [
    {"role": "system", "content": "<instructions>\nbe helpful\n</instructions>"},
    {"role": "assistant", "content": "Hi! How can I help you today?"},
    {"role": "user", "content": "My number is 555-0100."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {
            "name": "get_customer_by_phone", "arguments": '{"phone_number": "555-0100"}'}},
        {"id": "b", "type": "function", "function": {
            "name": "get_customer_by_id", "arguments": '{"customer_id": "C1"}'}}]},
    {"role": "tool", "tool_call_id": "a", "content": '{"customer_id": "C1"}'},
    {"role": "tool", "tool_call_id": "b", "content": '{"full_name": "D"}'},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lf_python, tiny_tokenizer_dir):
    port = _free_port()
    proc = subprocess.Popen(
        [str(lf_python), "-m", "simia.containers.chat_server", "--model", str(tiny_tokenizer_dir),
         "--served-model-name", "simia-0pct", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "4096"], env=lf_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chat server did not start:\n{proc.stdout.read()}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_tau2_shaped_request_is_served(server, lf_python, tiny_tokenizer_dir):
    from simia.domains.telecom import TELECOM

    body = {"model": "simia-0pct", "messages": TAU2_SHAPE, "temperature": 0.0,
            "max_tokens": 8, "tool_choice": "auto",
            "tools": [{"type": "function", "function": t} for t in TELECOM.tools]}
    req = urllib.request.Request(f"{server}/v1/chat/completions", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    usage = reply["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    # the prompt is the chat template's rendering, token for token
    check = subprocess.run(
        [str(lf_python), "-c",
         "import json, sys\nfrom transformers import AutoTokenizer\n"
         "from simia.containers.chat_server import prepare_messages\n"
         "body = json.load(sys.stdin)\n"
         "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
         "text = tok.apply_chat_template(prepare_messages(body['messages']), "
         "tools=body['tools'], add_generation_prompt=True, tokenize=False)\n"
         "print(len(tok(text, add_special_tokens=False)['input_ids']))",
         str(tiny_tokenizer_dir)], input=json.dumps(body), env=lf_env(),
        capture_output=True, text=True, timeout=120, check=True)
    assert usage["prompt_tokens"] == int(check.stdout.strip())
