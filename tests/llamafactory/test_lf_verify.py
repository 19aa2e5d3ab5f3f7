"""SFT datasets go through LLaMA-Factory's own pipeline without losing a row.

Runs ``support.tiny_model`` and ``support.lf_verify`` in the LLaMA-Factory venv.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simia.data.datasets import SHAREGPT_TAGS
from conftest import lf_env, run_lf_verify  # tests/llamafactory/conftest.py

pytestmark = pytest.mark.llamafactory

TAGS = SHAREGPT_TAGS
TOOLS = json.dumps(
    [
        {
            "name": "get_customer_by_id",
            "description": "Look up a customer by id.",
            "parameters": {
                "type": "object",
                "properties": {"customer_id": {"type": "string", "description": "e.g. C1001"}},
                "required": ["customer_id"],
            },
        },
        {
            "name": "enable_roaming",
            "description": "Enable roaming on a line.",
            "parameters": {
                "type": "object",
                "properties": {"line_id": {"type": "string"}},
                "required": ["line_id"],
            },
        },
    ]
)
SYSTEM = "You are a telecom customer-support agent. Use the tools when needed."


def _turn(role: str, value: str | dict[str, Any]) -> dict[str, str]:
    return {"from": role, "value": value if isinstance(value, str) else json.dumps(value)}


def _call(name: str, **arguments: str) -> dict[str, str]:
    return _turn("function_call", {"name": name, "arguments": arguments})


def _row(conversations: list[dict[str, str]], row_id: int) -> dict[str, Any]:
    return {
        "conversations": conversations,
        "system": SYSTEM,
        "tools": TOOLS,
        "meta": {"id": f"row-{row_id}", "source": "hand-written"},  # extra keys are allowed
        "sycophancy_score": 0.0,
    }


GOOD_ROWS = [
    _row(
        [
            _turn("human", "Hi, my customer id is C1001. Roaming doesn't work in Spain."),
            _call("get_customer_by_id", customer_id="C1001"),
            _turn("observation", {"customer_id": "C1001", "lines": ["L1"], "status": "Active"}),
            _call("enable_roaming", line_id="L1"),
            _turn("observation", {"line_id": "L1", "roaming": True}),
            _turn("gpt", "Roaming is now enabled on line L1. Please restart your phone."),
            _turn("human", "It works now, thanks!"),
            _turn("gpt", "Glad to help. Anything else?"),
        ],
        0,
    ),
    _row(
        [
            _turn("human", "What is the status of customer C2002?"),
            _call("get_customer_by_id", customer_id="C2002"),
            _turn("observation", {"customer_id": "C2002", "status": "Suspended"}),
            _turn("gpt", "The account C2002 is suspended."),
        ],
        1,
    ),
    _row([_turn("human", "Hello"), _turn("gpt", "Hello! How can I help you today?")], 2),
]

# Row 1 has two consecutive user turns: LLaMA-Factory empties it and drops it silently.
CONSECUTIVE_SAME_ROLE = [
    GOOD_ROWS[0],
    _row(
        [
            _turn("human", "My phone has no signal."),
            _turn("human", "Are you there?"),
            _turn("gpt", "Yes, let me check."),
        ],
        1,
    ),
    GOOD_ROWS[1],
]


def write_sharegpt(dataset_dir: Path, datasets: dict[str, list[dict[str, Any]]]) -> Path:
    """Write each dataset as ``NAME.json`` and register them in ``dataset_info.json``."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, rows in datasets.items():
        (dataset_dir / f"{name}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        info[name] = {
            "file_name": f"{name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
            "tags": TAGS,
        }
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return dataset_dir


def test_tiny_model_dir_and_chat_template(lf_python: Path, tiny_tokenizer_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        assert (tiny_tokenizer_dir / name).is_file(), name
    config = json.loads((tiny_tokenizer_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (
        2,
        64,
        128,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is True

    script = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
tools = [{"type": "function", "function": json.loads(sys.argv[2])[0]}]
messages = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Hi, I am C1001"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function":
        {"name": "get_customer_by_id", "arguments": {"customer_id": "C1001"}}}]},
    {"role": "tool", "content": '{"status": "Active"}'},
    {"role": "assistant", "content": "Your line is active."},
]
text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
print(json.dumps({"text": text, "eos": tok.eos_token, "pad": tok.pad_token,
                  "len": len(tok), "ids": tok.encode("<tool_call><|im_end|>")}))
"""
    proc = subprocess.run(
        [str(lf_python), "-c", script, str(tiny_tokenizer_dir), TOOLS],
        env=lf_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    text = out["text"]
    assert text.startswith("<|im_start|>system\nSYS\n\n# Tools\n")
    assert '"name": "get_customer_by_id"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_customer_by_id", '
        '"arguments": {"customer_id": "C1001"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"status": "Active"}\n</tool_response><|im_end|>'
        in text
    )
    assert text.endswith("<|im_start|>assistant\nYour line is active.<|im_end|>\n")
    assert (out["eos"], out["pad"]) == ("<|im_end|>", "<|endoftext|>")
    assert out["len"] <= config["vocab_size"]
    assert len(out["ids"]) == 2  # both are single added tokens


def test_good_dataset_keeps_every_row(
    lf_python: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    dataset_dir = write_sharegpt(tmp_path / "data", {"good_sft": GOOD_ROWS})
    report = run_lf_verify(lf_python, dataset_dir, tiny_tokenizer_dir)
    assert report["exit_code"] == 0, report["output"]
    assert report["ok"] is True and report["problems"] == []
    good = report["datasets"]["good_sft"]
    assert good["ok"] is True
    n = len(GOOD_ROWS)
    assert (good["rows_in_file"], good["rows_after_conversion"], good["rows_after_pipeline"]) == (
        n,
        n,
        n,
    )
    assert good["broken_rows"] == [] and good["all_labels_ignored_rows"] == []
    assert good["pipeline_error"] is None
    assert not any("Invalid role tag" in w for w in good["warnings"])


def test_consecutive_same_role_is_reported_with_row_index(
    lf_python: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    all_broken = [CONSECUTIVE_SAME_ROLE[1]] * 2
    dataset_dir = write_sharegpt(
        tmp_path / "data",
        {"good_sft": GOOD_ROWS, "bad_sft": CONSECUTIVE_SAME_ROLE, "all_broken": all_broken},
    )
    report = run_lf_verify(lf_python, dataset_dir, tiny_tokenizer_dir)
    assert report["exit_code"] == 1, report["output"]
    assert report["ok"] is False
    assert report["datasets"]["good_sft"]["ok"] is True

    bad = report["datasets"]["bad_sft"]
    assert bad["ok"] is False
    assert bad["rows_in_file"] == 3
    assert bad["rows_after_pipeline"] == 2  # LLaMA-Factory drops it silently
    assert [row["index"] for row in bad["broken_rows"]] == [1]
    assert any("Invalid role tag" in w for w in bad["broken_rows"][0]["warnings"])
    assert any("Skipping this abnormal example." in w for w in bad["warnings"])
    assert any("'bad_sft': row 1 broken" in line for line in report["problems"])

    broken = report["datasets"]["all_broken"]
    assert broken["ok"] is False
    assert [row["index"] for row in broken["broken_rows"]] == [0, 1]
    assert "Cannot find valid samples" in (broken["pipeline_error"] or "")
