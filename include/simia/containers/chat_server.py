"""A small OpenAI-compatible chat server on the CPU that handles requests as vLLM does.

The production server is vLLM: it renders the OpenAI request (``messages`` and
``tools``) with the model's own chat template and, with ``--tool-call-parser hermes``,
turns ``<tool_call>{...}</tool_call>`` blocks of the reply into ``tool_calls``. vLLM
needs a GPU. ``llamafactory-cli api`` runs on the CPU but only accepts strictly
alternating user/assistant turns that start with the user: tau2's conversations start
with the agent's greeting and may answer several tool calls in a row, so it rejects
them with ``400 Only supports u/a/u/a/u...`` and tau2 records every simulation as an
infrastructure error. This server is the CPU stand-in with vLLM's semantics:

- ``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` (not streamed);
- the prompt is ``tokenizer.apply_chat_template(messages, tools=..., add_generation_
  prompt=True)``, with tool-call arguments parsed from JSON first (as vLLM does);
- greedy decoding at temperature 0, seeded sampling otherwise; ``max_tokens`` bounded by
  ``--max-model-len``; a prompt longer than that is a 400 (as vLLM);
- hermes tool-call parsing: every well-formed ``<tool_call>`` block becomes a
  ``tool_calls`` entry (``finish_reason: tool_calls``), the text before it the content.

Runs in the trainer/evaluator image (torch, transformers, peft)::

    python3 -m simia.containers.chat_server --model DIR --served-model-name NAME --port 8000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ChatModel", "parse_hermes", "main", "prepare_messages"]

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class RequestError(ValueError):
    """A request the server answers with 400 (message shown to the client)."""


def prepare_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template wants them (tool-call arguments as dicts)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant",
                                                             "tool"):
            raise RequestError(f"messages[{i}]: role must be system, user, assistant or tool")
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            m["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is None:
            m["content"] = ""
        calls = []
        for call in m.get("tool_calls") or []:
            fn = dict(call.get("function") or {})
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    fn["arguments"] = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError as exc:
                    raise RequestError(f"messages[{i}].tool_calls: arguments are not JSON: "
                                       f"{exc}") from None
            calls.append({**call, "function": fn})
        if calls:
            m["tool_calls"] = calls
        out.append(m)
    return out


def parse_hermes(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """vLLM's hermes parser: (content before the first call, tool calls).

    A block whose JSON does not parse, or has no ``name``, leaves the whole reply as
    plain content (vLLM then reports no tool call either).
    """
    blocks = _TOOL_CALL.findall(text)
    if "<tool_call>" not in text or not blocks:
        return text, []
    calls = []
    for block in blocks:
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return text, []
        calls.append({"id": f"chatcmpl-tool-{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": json.dumps(obj.get("arguments", {}),
                                                           ensure_ascii=False)}})
    content = text[:text.index("<tool_call>")].strip()
    return content or None, calls


class ChatModel:
    """A causal LM and its tokenizer (optionally a LoRA adapter), one request at a time."""

    def __init__(self, model: str, *, adapter: str | None = None, max_model_len: int = 32768,
                 dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter)
        self.model.eval()
        self.max_model_len = max_model_len
        self.lock = threading.Lock()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = prepare_messages(body.get("messages"))
        tools = body.get("tools") or None
        if body.get("tool_choice") == "none":
            tools = None
        prompt = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n_prompt = int(ids.shape[1])
        room = self.max_model_len - n_prompt
        if room <= 0:
            raise RequestError(f"the prompt has {n_prompt} tokens; this server's maximum "
                               f"context length is {self.max_model_len}")
        max_new = min(int(body.get("max_tokens") or body.get("max_completion_tokens")
                          or room), room)
        temperature = float(body.get("temperature") or 0.0)
        gen: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": temperature > 0,
                               "pad_token_id": self.tokenizer.pad_token_id
                               or self.tokenizer.eos_token_id}
        if temperature > 0:
            gen.update(temperature=temperature, top_p=float(body.get("top_p") or 1.0))
        with self.lock, self.torch.no_grad():
            if body.get("seed") is not None:
                self.torch.manual_seed(int(body["seed"]))
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), **gen)
        new = out[0, n_prompt:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        stopped = bool(len(new)) and int(new[-1]) in self._stop_ids()
        content, calls = parse_hermes(text) if tools else (text, [])
        finish = "tool_calls" if calls else ("stop" if stopped or len(new) < max_new
                                             else "length")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": int(len(new)),
                          "total_tokens": n_prompt + int(len(new))}}

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


def make_handler(chat: ChatModel | None, served_name: str, log: Any = print):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": served_name, "object": "model", "owned_by": "simia"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not isinstance(body, dict):
                    raise RequestError("the body must be a JSON object")
                if body.get("model") != served_name:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} "
                                               f"does not exist; this server serves "
                                               f"{served_name!r}", "code": 404}})
                    return
                if body.get("stream"):
                    raise RequestError("streaming is not supported by this server")
                start = time.monotonic()
                reply = chat.complete(body)  # type: ignore[union-attr]
            except (RequestError, json.JSONDecodeError) as exc:
                self._send(400, {"error": {"message": str(exc), "code": 400}})
                return
            except Exception as exc:  # keep serving; the client sees a 500
                log(f"error: {type(exc).__name__}: {exc}")
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                return
            usage = reply["usage"]
            log(f"completion: {usage['prompt_tokens']} prompt + "
                f"{usage['completion_tokens']} generated tokens, "
                f"{reply['choices'][0]['finish_reason']}, {time.monotonic() - start:.2f} s")
            self._send(200, reply)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simia.containers.chat_server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--adapter", help="LoRA adapter folder (on top of --model)")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    print(f"loading {args.model}" + (f" + adapter {args.adapter}" if args.adapter else ""),
          flush=True)
    chat = ChatModel(args.model, adapter=args.adapter, max_model_len=args.max_model_len,
                     dtype=args.dtype)
    server = ThreadingHTTPServer((args.host, args.port),
                                 make_handler(chat, args.served_model_name,
                                              lambda m: print(m, flush=True)))
    print(f"serving {args.served_model_name} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
