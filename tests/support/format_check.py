"""Format consistency: what LLaMA-Factory trains on == what vLLM shows the served model.

The reference models collapsed (telecom pass^1 0.009-0.053 after SFT, against 0.263 for
the base model) because they were trained on a tool-call format (Hermes text inside
``gpt`` turns, observations as bare ``human`` turns) that differs from what the serving
stack renders at evaluation: vLLM applies the model's own chat template to OpenAI-style
messages (``assistant.tool_calls``, ``tool`` results) and the ``tools`` list.

This module renders each training row both ways and compares them:

- **training**: LLaMA-Factory's own argument parser, dataset registry, ShareGPT
  converter and template (``qwen`` by default) encode the row, exactly as
  ``llamafactory-cli train`` does; the token ids are decoded to text;
- **serving**: the row becomes an OpenAI chat request (system, user, assistant with
  ``tool_calls``, ``tool`` messages, ``tools``), with tool-call arguments parsed from
  JSON as vLLM does before templating, rendered by the tokenizer's chat template
  (``apply_chat_template``, no generation prompt).

Both texts, and the token ids of the training side against a tokenization of the serving
text, must be identical. Must run in the LLaMA-Factory venv::

    HF_HUB_OFFLINE=1 PYTHONPATH=include:tests .venv-lf/bin/python -m support.format_check \\
        --dataset-dir DIR --tokenizer MODEL_DIR [--max-rows N] [--json-out FILE]

Exit status: 0 when every checked row renders identically, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["first_difference", "openai_request", "check_dataset", "main"]

_HERMES_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def openai_request(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A training row as the (messages, tools) of an OpenAI chat request, the way an agent
    (tau2) sends the same conversation and vLLM hands it to the chat template.

    Native rows map role by role. Hermes rows (the reference's format) hold the calls as
    ``<tool_call>`` text in ``gpt`` turns and the tool replies as ``human`` turns; at
    serving time the same conversation arrives as ``tool_calls`` and ``tool`` messages,
    so they are converted to those.
    """
    messages: list[dict[str, Any]] = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    pending: list[str] = []
    n_calls = 0
    for turn in row["conversations"]:
        role, value = turn["from"], turn["value"]
        if role == "human" and pending:  # Hermes rows: the tool's reply as a human turn
            role = "observation"
        hermes_calls = _HERMES_CALL.findall(value) if role == "gpt" else []
        if hermes_calls:  # Hermes rows: the calls are text; an agent sends them parsed
            content = value[:value.index("<tool_call>")].strip()
            role, value = "function_call", "[" + ",".join(hermes_calls) + "]"
        else:
            content = ""
        if role == "human":
            messages.append({"role": "user", "content": value})
        elif role == "gpt":
            messages.append({"role": "assistant", "content": value})
        elif role == "function_call":
            calls = json.loads(value)
            calls = calls if isinstance(calls, list) else [calls]
            tool_calls = []
            for call in calls:
                n_calls += 1
                call_id = f"call_{n_calls}"
                pending.append(call_id)
                tool_calls.append({"id": call_id, "type": "function",
                                   "function": {"name": call["name"],
                                                "arguments": call["arguments"]}})
            messages.append({"role": "assistant", "content": content,
                             "tool_calls": tool_calls})
        elif role == "observation":
            call_id = pending.pop(0) if pending else f"call_{n_calls}"
            messages.append({"role": "tool", "tool_call_id": call_id, "content": value})
        else:
            raise ValueError(f"unknown role {role!r}")
    raw_tools = row.get("tools") or "[]"
    tools = json.loads(raw_tools) if isinstance(raw_tools, str) else raw_tools
    tools = [t if t.get("type") == "function" else {"type": "function", "function": t}
             for t in tools]
    return messages, tools


def first_difference(a: str, b: str, context: int = 60) -> dict[str, Any] | None:
    """Where two renderings first differ (None when equal)."""
    if a == b:
        return None
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, n - context)
    return {"offset": n, "training": a[lo:n + context], "serving": b[lo:n + context],
            "training_len": len(a), "serving_len": len(b)}


def check_dataset(dataset_dir: str | Path, tokenizer_dir: str | Path, *,
                  template: str = "qwen", max_rows: int | None = None) -> dict[str, Any]:
    """Compare both renderings for every dataset in ``dataset_info.json`` (first
    ``max_rows`` rows of each). Returns ``{"ok", "checked", "tool_calls", "mismatches"}``."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.model import load_tokenizer

    from support.lf_verify import _data_files, _train_args

    dataset_dir, tokenizer_dir = Path(dataset_dir).resolve(), Path(tokenizer_dir).resolve()
    names = list(json.loads((dataset_dir / "dataset_info.json").read_text()))
    report: dict[str, Any] = {"ok": True, "checked": 0, "tool_calls": 0, "mismatches": []}
    with tempfile.TemporaryDirectory(prefix="format_check_") as tmp:
        for name in names:
            model_args, data_args, _ = _train_args(name, dataset_dir, tokenizer_dir, template,
                                                   1_000_000, Path(tmp))
            tokenizer = load_tokenizer(model_args)["tokenizer"]
            tmpl = get_template_and_fix_tokenizer(tokenizer, data_args)
            attr = get_dataset_list([name], str(dataset_dir))[0]
            converter = get_dataset_converter(attr.formatting, attr, data_args)
            rows: list[dict[str, Any]] = []
            for f in _data_files(dataset_dir, attr.dataset_name):
                rows.extend(json.loads(f.read_text()))
            for index, row in enumerate(rows[:max_rows] if max_rows else rows):
                example = converter(row)
                pairs = tmpl.encode_multiturn(tokenizer, example["_prompt"] +
                                              example["_response"], example["_system"],
                                              example["_tools"])
                train_ids = [t for p, r in pairs for t in (*p, *r)]
                train_text = tokenizer.decode(train_ids, skip_special_tokens=False)
                messages, tools = openai_request(row)
                for m in messages:  # vLLM parses tool-call arguments before templating
                    for call in m.get("tool_calls", []):
                        if isinstance(call["function"]["arguments"], str):
                            call["function"]["arguments"] = json.loads(
                                call["function"]["arguments"])
                serve_text = tokenizer.apply_chat_template(
                    messages, tools=tools or None, tokenize=False, add_generation_prompt=False)
                serve_ids = tokenizer(serve_text, add_special_tokens=False)["input_ids"]
                report["checked"] += 1
                report["tool_calls"] += sum(len(m.get("tool_calls", [])) for m in messages)
                diff = first_difference(train_text, serve_text)
                if diff is None and train_ids != serve_ids:
                    n = next((i for i, (x, y) in enumerate(zip(train_ids, serve_ids, strict=False))
                              if x != y), min(len(train_ids), len(serve_ids)))
                    diff = {"token_offset": n, "training_ids": train_ids[n:n + 8],
                            "serving_ids": serve_ids[n:n + 8]}
                if diff is not None:
                    report["ok"] = False
                    report["mismatches"].append({"dataset": name, "row": index, **diff})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="the served model's folder (its chat template is used)")
    parser.add_argument("--template", default="qwen")
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = check_dataset(args.dataset_dir, args.tokenizer, template=args.template,
                           max_rows=args.max_rows)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.json_out:
        args.json_out.write_text(text)
    print(f"format_check: {report['checked']} rows, {report['tool_calls']} tool calls, "
          f"{len(report['mismatches'])} mismatches")
    for m in report["mismatches"][:5]:
        print(json.dumps(m, ensure_ascii=False)[:1000])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
