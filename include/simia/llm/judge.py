"""The LLM sycophancy judge.

Each processed conversation goes to the model with the reference judge's input: the
rubric (``judge_system.txt``) and a JSON object with the policy the agent saw, the tool
schemas and the turns with their indices. For prompt caching the input is split where
it stops being shared: the system prompt is the rubric followed by the policy and tool
schemas (``{"SYSTEM_POLICY_TEXT", "TOOL_SCHEMAS"}``, filling the rubric's
``{{policy_and_schemas}}``; identical for every conversation of a processed file, whose
rows share one system prompt and tool list), then the cache point; the user message is
``{"CONVERSATION": [...]}``. A rubric without that field (a custom one written before)
gets the reference's layout: the rubric alone as system prompt, all three keys in the
user message. The reply is parsed tolerantly (the whole text, else first ``{`` to last ``}``) and
validated into :class:`JudgeResult`; a reply that still does not parse after ``tries``
calls is recorded as a failure with its raw text, so it labels nothing instead of
silently counting as clean. Every record keeps what its conversation cost (``usage``,
summed over re-runs); a shard with too many failures fails, and a re-run judges recorded
failures again (:mod:`simia.llm.failures`). Results are keyed by ``conv_idx`` = the conversation's
index in the raw file, in the format the dataset builder reads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simia.domains import DOMAINS
from simia.io import read_bytes, sha256_bytes, write_json, write_jsonl
from simia.layout import JudgeFiles
from simia.llm.accounting import add_item_usage, usage_of
from simia.llm.client import LLMCallError, LLMClient
from simia.llm.failures import check_failures
from simia.llm.prompts import load_template, render
from simia.llm.replies import extract_json_object
from simia.llm.runner import WorkItem, progress_logger, run_items
from simia.llm.shards import (merged_usage, open_checkpoint, read_shards, shard_of,
                               write_shard_summary)
from simia.data.datasets import content_hash
from simia.data.records import load_processed, parse_tools
from simia.provenance import checkpoint_hashes, file_hashes, shard_checkpoints, shard_param

log = logging.getLogger("simia.llm.judge")


class Finding(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "other"
    function_call_turn_index: int | None = None
    observation_turn_index: int | None = None
    excerpt_call: str = ""
    excerpt_observation: str = ""
    why_sycophantic: str = ""
    severity: str = ""


class JudgeResult(BaseModel):
    """The judge's verdict on one conversation (unknown extra keys are kept)."""

    model_config = ConfigDict(extra="allow")
    wm_sycophancy_score: int = Field(ge=0, le=100)
    procedure_noncompliance_score: int | None = Field(None, ge=0, le=100)
    confidence: float | None = Field(None, ge=0, le=1)
    extracted_facts: dict[str, Any] = {}
    findings: list[Finding] = []
    counterevidence: list[Any] = []
    rationale: str = ""


def parse_judge_reply(text: str) -> tuple[JudgeResult | None, str]:
    """(result, "") or (None, why it could not be used)."""
    obj = extract_json_object(text)
    if obj is None:
        return None, "no JSON object in the reply"
    try:
        return JudgeResult.model_validate(obj), ""
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(reply)"
        return None, f"field '{where}': {first['msg']}"


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tries: int = Field(3, ge=1, le=10, description="calls per conversation until it parses")
    max_tokens: int = Field(8192, ge=256, le=16384)
    temperature: float = Field(0.0, ge=0, le=1)
    prompts_dir: str | None = None
    domain: str = "telecom"


#: the rubric's field for the shared part of the input (policy and tool schemas)
CONTEXT_FIELD = "policy_and_schemas"


def judge_context(row: dict[str, Any], domain: str = "telecom") -> str:
    """The part of a conversation's input that a processed file's rows share: a JSON
    object with the policy the agent saw and the tool schemas."""
    tools = parse_tools(row.get("tools")) or DOMAINS[domain].tools
    return orjson.dumps({"SYSTEM_POLICY_TEXT": row.get("system", ""),
                         "TOOL_SCHEMAS": tools}).decode()


def judge_input(row: dict[str, Any], domain: str = "telecom", *,
                with_context: bool = True) -> str:
    """The user message for one processed conversation: its indexed turns, and (unless
    the rubric carries them) the policy and tool schemas too."""
    turns = [{"turn_index": i, "from": t["from"], "value": t["value"]}
             for i, t in enumerate(row["conversations"])]
    if not with_context:
        return orjson.dumps({"CONVERSATION": turns}).decode()
    tools = parse_tools(row.get("tools")) or DOMAINS[domain].tools
    return orjson.dumps({"SYSTEM_POLICY_TEXT": row.get("system", ""), "TOOL_SCHEMAS": tools,
                         "CONVERSATION": turns}).decode()


def judge_prompt(row: dict[str, Any], rubric: str, where: str,
                 domain: str = "telecom") -> tuple[str, str]:
    """(system prompt, user message) of one conversation (see the module's docs)."""
    if "{{" + CONTEXT_FIELD + "}}" in rubric:
        return (render(rubric, where, **{CONTEXT_FIELD: judge_context(row, domain)}),
                judge_input(row, domain, with_context=False))
    return rubric, judge_input(row, domain)


def judge_item_id(row: dict[str, Any]) -> str:
    """Stable per conversation: its raw index and the turns judged."""
    payload = orjson.dumps([row["source_index"], row["conversations"]])
    return hashlib.sha256(payload).hexdigest()[:16]


def judge_shard(processed_path: str | Path, out_dir: str | Path, settings: JudgeSettings,
                client: LLMClient, *, shard: int = 0, shards: int = 1, force: bool = False,
                keep_failures: bool = False) -> dict[str, Any]:
    """Judge this shard's conversations of ``processed.json`` (those whose position
    ``i`` has ``i % shards == shard``); recorded failures are judged again unless
    ``keep_failures``. Raises :class:`~simia.llm.failures.LLMStageFailed` (after writing
    the shard's summary) when every conversation or more than ``max_failed_share`` of
    them failed."""
    out_dir = Path(out_dir)
    data = read_bytes(processed_path, what="processed conversations file")
    rows = load_processed(processed_path, data=data)
    rubric, where = load_template("judge_system.txt", settings.prompts_dir)
    params = {**settings.model_dump(), "processed_sha256": sha256_bytes(data),
              "template_sha256": sha256_bytes(rubric.encode())}
    stage = JudgeFiles.STAGE
    key = f"{stage}:{shard}"  # accounting per shard (shards may share one client)
    t0 = time.perf_counter()

    def work(item: WorkItem) -> dict[str, Any]:
        row = rows[item.payload]
        rec: dict[str, Any] = {"id": item.id, "index": item.payload,
                               "conv_idx": row["source_index"],
                               "content_sha256": content_hash(row), "usage": {}}
        system, prompt = judge_prompt(row, rubric, where, settings.domain)
        text, why = "", ""
        for attempt in range(1, settings.tries + 1):
            try:
                done = client.complete(key, item.id, prompt, system=system,
                                       max_tokens=settings.max_tokens,
                                       temperature=settings.temperature)
            except LLMCallError as exc:
                rec["usage"] = add_item_usage(rec["usage"], {"judge": exc.usage})
                return {**rec, "error": exc.error_class, "detail": str(exc), "tries": attempt}
            rec["usage"] = add_item_usage(rec["usage"], {"judge": done.usage})
            text = done.text
            result, why = parse_judge_reply(text)
            if result is not None:
                return {**rec, **result.model_dump(), "tries": attempt}
        return {**rec, "error": "unparseable_reply", "detail": why, "tries": settings.tries,
                "raw_text": text}

    items = (WorkItem(i, judge_item_id(row), i) for i, row in enumerate(rows)
             if shard_of(i, shards) == shard)
    with open_checkpoint(out_dir, stage, shard, shards, params, force=force) as ckpt:
        report = run_items(items, work, ckpt, concurrency=client.settings.concurrency,
                           is_success=lambda r: "error" not in r,
                           redo=(lambda r: False) if keep_failures else (lambda r: "error" in r),
                           progress=progress_logger(client, stage,
                                                    f"judge shard {shard + 1}/{shards}"),
                           total=sum(1 for i in range(len(rows))
                                     if shard_of(i, shards) == shard))
        records = list(ckpt.records.values())
        checkpoint = ckpt.path
    failed = [r for r in records if "error" in r]
    summary = {"stage": stage, "shard": shard, "shards": shards, "judged": len(records),
               "scored": len(records) - len(failed), "failed": len(failed),
               "failed_by_error": dict(Counter(r["error"] for r in failed)),
               "submitted_now": report.submitted, "resumed_items": report.resumed,
               "prompt_template": where,
               "llm": usage_of(records, ["judge"], client.settings.prices, client.model_id),
               "seconds": round(time.perf_counter() - t0, 3)}
    summary = write_shard_summary(out_dir, stage, shard, shards, summary)
    check_failures(f"judge shard {shard}", checkpoint, records, lambda r: "error" in r,
                   client.settings.max_failed_share)
    return summary


def merge_judge(out_dir: str | Path, *, shards: int = 1,
                threshold: float = 0.0) -> dict[str, Any]:
    """All shards -> ``judge_scores.jsonl`` (one line per conversation, by ``conv_idx``;
    failures keep ``error`` and ``raw_text``) and ``summary.json``
    (:class:`simia.layout.JudgeFiles`)."""
    out_dir = Path(out_dir)
    files = JudgeFiles(out_dir)
    processed_sha256 = shard_param(out_dir, files.STAGE, shards, "processed_sha256")
    records = sorted(read_shards(out_dir, files.STAGE, shards), key=lambda r: r["conv_idx"])
    path = files.scores
    write_jsonl(path, ({k: v for k, v in r.items() if k not in ("usage", "runs")}
                       for r in records))
    scored = [r for r in records if "error" not in r]
    summary = {"stage": "judge", "conversations": len(records), "scored": len(scored),
               "failed": len(records) - len(scored),
               "sycophantic": sum(1 for r in scored if r["wm_sycophancy_score"] > threshold),
               "clean": sum(1 for r in scored if r["wm_sycophancy_score"] <= threshold),
               "threshold": threshold,
               "findings_by_level": findings_by_level(
                   r for r in scored if r["wm_sycophancy_score"] > threshold),
               "score_histogram": dict(sorted(Counter(
                   _band(r["wm_sycophancy_score"]) for r in scored).items())),
               "outputs": {"scores": str(path)}, "processed_sha256": processed_sha256,
               "inputs_sha256": checkpoint_hashes(shard_checkpoints(out_dir, files.STAGE,
                                                                    shards)),
               "outputs_sha256": file_hashes({"scores": path}),
               "llm": merged_usage(out_dir, files.STAGE, shards)}
    write_json(files.summary, summary, indent=True)
    return summary


#: finding types about the call's form (the tool schema), not the policy
SCHEMA_LEVEL = frozenset({"schema_forgiveness", "hidden_repair"})


def finding_level(kind: str) -> str:
    """``schema`` for findings about the call's form, ``policy`` for the rest."""
    return "schema" if kind in SCHEMA_LEVEL else "policy"


def findings_by_level(verdicts: Any) -> dict[str, int]:
    """Of the sycophantic ``verdicts``: how many have a policy-level finding, and how many
    only schema-level ones (the kind validation is meant to remove)."""
    out = {"policy": 0, "schema_only": 0}
    for v in verdicts:
        levels = {finding_level(str(f.get("type") or "other")) for f in v.get("findings") or []}
        if "policy" in levels:
            out["policy"] += 1
        elif levels:
            out["schema_only"] += 1
    return out


def _band(score: int) -> str:
    """The rubric's bands: 0, 1-20, 21-50, 51-80, 81-100."""
    for hi, name in ((0, "0"), (20, "1-20"), (50, "21-50"), (80, "51-80")):
        if score <= hi:
            return name
    return "81-100"
