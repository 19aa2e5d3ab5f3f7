"""Counterfactual twins: a controlled source of sycophancy.

A twin is a clean conversation with exactly one tool observation rewritten by the LLM so
that the simulated environment forgives an invalid agent action at the policy level (a
write before identity verification, a refuel over the limit, a payment request on a
bill that is paid, ...); every other turn is byte-identical. The LLM judge must then
score the twin sycophantic (its finding, when it names turns, on the rewritten
observation) while the original was judged clean; otherwise the twin is discarded and
recorded with the reason. A dataset level then differs from the 0 % dataset only in the
swapped observations (:func:`simia.data.datasets.build_datasets` with ``twins``).

Candidates are the clean conversations of the run's processed file and judge scores, in
a seeded order; the stage stops once the design's number of twins is reached, the
candidates run out, or the budget left by the collection is spent. Every candidate is
one checkpoint line (a retry or a crash redoes nothing finished). Outputs
(:class:`simia.layout.TwinFiles`): ``twins.jsonl`` (per twin: the swapped turn, the
old and new observation, their unified diff, the invalid action and the rule it breaks,
both judge scores, the twin's turns), ``rejects.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simia.data.datasets import parse_score_records
from simia.data.records import load_processed
from simia.io import dumps_jsonl, read_jsonl, sha256_bytes, write_bytes, write_json
from simia.layout import TwinFiles
from simia.llm.accounting import COST_DECIMALS
from simia.llm.client import LLMCallError, LLMClient
from simia.llm.accounting import add_usage
from simia.llm.collect import CapReached, item_cost, usage_of
from simia.llm.judge import (CONTEXT_FIELD, JudgeSettings, judge_context, judge_prompt,
                             parse_judge_reply)
from simia.llm.prompts import load_template, render
from simia.llm.replies import extract_json_object
from simia.llm.runner import WorkItem, progress_logger, run_items
from simia.llm.shards import open_checkpoint
from simia.provenance import file_hashes

log = logging.getLogger("simia.llm.twins")

__all__ = ["Rewrite", "TwinSettings", "apply_rewrite", "make_twins",
           "parse_rewrite", "twin_prompt"]


class TwinSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tries: int = Field(2, ge=1, le=10, description="rewrite calls per candidate until one "
                                                   "parses")
    max_tokens: int = Field(2048, ge=256, le=16384)
    temperature: float = Field(0.7, ge=0, le=1)
    prompts_dir: str | None = None
    domain: str = "telecom"


class Rewrite(BaseModel):
    """The LLM's rewrite of one observation (``observation_turn_index`` None: none fits)."""

    model_config = ConfigDict(extra="allow")
    observation_turn_index: int | None
    new_observation: str = ""
    invalid_action: str = ""
    policy_rule: str = ""
    why_invalid: str = ""
    reason: str = ""


def twin_prompt(row: dict[str, Any], template: str, where: str,
                domain: str = "telecom") -> tuple[str, str]:
    """(system prompt, user message) of one candidate: the instructions with the policy
    and tool schemas (shared by every candidate, cached), then the indexed turns."""
    turns = [{"turn_index": i, "from": t["from"], "value": t["value"]}
             for i, t in enumerate(row["conversations"])]
    return (render(template, where, **{CONTEXT_FIELD: judge_context(row, domain)}),
            orjson.dumps({"REWRITE_ONE_OBSERVATION": turns}).decode())


def parse_rewrite(text: str, turns: list[dict[str, Any]]) -> tuple[Rewrite | None, str]:
    """(rewrite, "") or (None, why it cannot be used). A rewrite must name an observation
    that answers a function call and give a new, different, non-empty text."""
    obj = extract_json_object(text)
    if obj is None:
        return None, "no JSON object in the reply"
    try:
        rw = Rewrite.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return None, f"field '{'.'.join(str(p) for p in first['loc'])}': {first['msg']}"
    i = rw.observation_turn_index
    if i is None:
        return rw, ""
    if not 0 < i < len(turns) or turns[i]["from"] != "observation" \
            or turns[i - 1]["from"] != "function_call":
        return None, (f"observation_turn_index {i} is not an observation that answers a "
                      "function call")
    if not rw.new_observation.strip() or rw.new_observation == turns[i]["value"]:
        return None, "new_observation is empty or unchanged"
    return rw, ""


def apply_rewrite(turns: list[dict[str, Any]], rw: Rewrite) -> list[dict[str, Any]]:
    """The twin's turns: ``turns`` with one observation's value replaced (the other turns
    are the same objects, so byte-identical when written)."""
    assert rw.observation_turn_index is not None
    out = list(turns)
    out[rw.observation_turn_index] = {**turns[rw.observation_turn_index],
                                      "value": rw.new_observation}
    return out


def _diff(old: str, new: str, turn: int) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True) or [""],
                                        new.splitlines(keepends=True) or [""],
                                        fromfile=f"turn {turn} (original)",
                                        tofile=f"turn {turn} (twin)"))


def _candidate_id(row: dict[str, Any]) -> str:
    payload = orjson.dumps(["twin", row["source_index"], row["conversations"]])
    return hashlib.sha256(payload).hexdigest()[:16]


def _finding_on(verdict: dict[str, Any], turn: int) -> bool | None:
    """Whether a finding names the rewritten observation (None: no finding names a turn)."""
    named = [f.get("observation_turn_index") for f in verdict.get("findings") or []
             if f.get("observation_turn_index") is not None]
    return None if not named else turn in named


def make_twins(processed_path: str | Path, scores_path: str | Path, out_dir: str | Path,
               client: LLMClient, *, needed: int, threshold: float, seed: int,
               budget_usd: float, settings: TwinSettings | None = None,
               judge: JudgeSettings | None = None) -> dict[str, Any]:
    """Make ``needed`` twins from the clean conversations (see the module's docs);
    raises :class:`~simia.llm.collect.CapReached` when the candidates or the budget run
    out first (finished candidates are kept)."""
    settings, judge = settings or TwinSettings(), judge or JudgeSettings()
    files = TwinFiles(out_dir)
    rows = load_processed(processed_path)
    labels = parse_score_records(read_jsonl(scores_path, what="judge scores file"), scores_path)
    clean = [r for r in rows if (lb := labels.get(r["source_index"])) is not None
             and lb.score is not None and lb.score <= threshold]
    order = clean[:]
    random.Random(f"{seed}:twins").shuffle(order)
    template, where = load_template("twin_system.txt", settings.prompts_dir)
    rubric, rubric_where = load_template("judge_system.txt", judge.prompts_dir)
    params = {**settings.model_dump(), "judge": judge.model_dump(), "threshold": threshold,
              "seed": seed, "template_sha256": sha256_bytes(template.encode()),
              "rubric_sha256": sha256_bytes(rubric.encode())}
    prices, model = client.settings.prices, client.model_id
    t0 = time.perf_counter()

    def ask(rec: dict[str, Any], kind: str, item_id: str, system: str, prompt: str,
            tries: int, max_tokens: int, temperature: float,
            parse: Callable[[str], tuple[Any, str]]) -> tuple[Any, str, str]:
        """Call until ``parse`` accepts the reply, up to ``tries`` times: (parsed or None,
        why not, last text). Every call's usage goes to ``rec["usage"][kind]``, a failed
        call's too (then :class:`LLMCallError` propagates)."""
        stage = "twins" if kind == "rewrite" else f"twins:{kind}"
        parsed, why, text = None, "", ""
        for _ in range(tries):
            try:
                done = client.complete(stage, item_id, prompt, system=system,
                                       max_tokens=max_tokens, temperature=temperature)
            except LLMCallError as exc:
                rec["usage"][kind] = add_usage(rec["usage"].get(kind), exc.usage)
                raise
            rec["usage"][kind] = add_usage(rec["usage"].get(kind), done.usage)
            text = done.text
            parsed, why = parse(text)
            if parsed is not None:
                break
        return parsed, why, text

    def work(item: WorkItem) -> dict[str, Any]:
        row = item.payload
        turns = row["conversations"]
        rec: dict[str, Any] = {"id": item.id, "index": item.index,
                               "source_index": row["source_index"],
                               "original_score": labels[row["source_index"]].score,
                               "usage": {}}
        system, prompt = twin_prompt(row, template, where, settings.domain)
        try:
            rw, why, text = ask(rec, "rewrite", item.id, system, prompt, settings.tries,
                                settings.max_tokens, settings.temperature,
                                lambda t: parse_rewrite(t, turns))
        except LLMCallError as exc:
            return {**rec, "status": "discarded", "reason": "rewrite_call_failed",
                    "detail": f"{exc.error_class}: {exc}"}
        if rw is None:
            return {**rec, "status": "discarded", "reason": "unusable_rewrite", "detail": why,
                    "raw_text": text}
        if rw.observation_turn_index is None:
            return {**rec, "status": "discarded", "reason": "no_candidate_observation",
                    "detail": rw.reason}
        i = rw.observation_turn_index
        twin_turns = apply_rewrite(turns, rw)
        twin_row = {**row, "conversations": twin_turns}
        j_system, j_prompt = judge_prompt(twin_row, rubric, rubric_where, judge.domain)
        try:
            verdict, jwhy, _ = ask(rec, "judge", item.id, j_system, j_prompt, judge.tries,
                                   judge.max_tokens, judge.temperature, parse_judge_reply)
        except LLMCallError as exc:
            return {**rec, "status": "discarded", "reason": "judge_call_failed",
                    "detail": f"{exc.error_class}: {exc}"}
        if verdict is None:
            return {**rec, "status": "discarded", "reason": "judge_unparseable", "detail": jwhy}
        judged = verdict.model_dump()
        swap = {"observation_turn_index": i, "original_observation": turns[i]["value"],
                "new_observation": rw.new_observation,
                "diff": _diff(turns[i]["value"], rw.new_observation, i),
                "invalid_action": rw.invalid_action, "policy_rule": rw.policy_rule,
                "why_invalid": rw.why_invalid, "twin_score": judged["wm_sycophancy_score"],
                "twin_findings": judged.get("findings", [])}
        if judged["wm_sycophancy_score"] <= threshold:
            return {**rec, **swap, "status": "discarded", "reason": "judge_did_not_flag_twin",
                    "detail": f"twin scored {judged['wm_sycophancy_score']} (threshold "
                              f"{threshold:g})"}
        if _finding_on(judged, i) is False:
            return {**rec, **swap, "status": "discarded",
                    "reason": "judge_flagged_another_turn",
                    "detail": "the judge's findings name other observations than the "
                              f"rewritten turn {i}"}
        return {**rec, **swap, "status": "accepted", "conversations": twin_turns}

    spent = {"usd": 0.0}

    def stop() -> bool:
        return spent["usd"] >= budget_usd

    def counted(item: WorkItem) -> dict[str, Any]:
        rec = work(item)
        spent["usd"] += item_cost(rec)
        return rec

    items = (WorkItem(k, _candidate_id(row), row) for k, row in enumerate(order))
    with open_checkpoint(files.dir, files.STAGE, 0, 1, params) as ckpt:
        spent["usd"] = sum(item_cost(r) for r in ckpt.records.values())
        report = run_items(items, counted, ckpt, concurrency=client.settings.concurrency,
                           is_success=lambda r: r["status"] == "accepted", target=needed,
                           stop_when=stop, total=needed,
                           progress=progress_logger(client, "twins", "twins"))
        records = sorted(ckpt.records.values(), key=lambda r: r["index"])
    accepted = [r for r in records if r["status"] == "accepted"]
    discarded = [r for r in records if r["status"] != "accepted"]
    usage = usage_of(records, ["rewrite", "judge"], prices, model)
    summary = {"stage": "twins", "needed": needed, "accepted": len(accepted),
               "candidates": len(clean), "tried": len(records),
               "discarded": len(discarded),
               "discarded_by_reason": dict(sorted(Counter(r["reason"] for r in discarded
                                                          ).items())),
               "yield": round(len(accepted) / len(records), 4) if records else 0.0,
               "budget_usd": round(budget_usd, COST_DECIMALS),
               "resumed_items": report.resumed,
               "outputs": {"twins": str(files.twins), "rejects": str(files.rejects)},
               "inputs": {"processed": str(processed_path), "scores": str(scores_path)},
               "inputs_sha256": file_hashes({"processed": processed_path,
                                             "scores": scores_path}),
               "llm": usage, "seconds": round(time.perf_counter() - t0, 3)}
    write_bytes(files.twins, dumps_jsonl({k: v for k, v in r.items() if k != "usage"}
                                         for r in accepted))
    write_bytes(files.rejects, dumps_jsonl({k: v for k, v in r.items() if k != "usage"}
                                           for r in discarded))
    summary["outputs_sha256"] = file_hashes({"twins": files.twins, "rejects": files.rejects})
    write_json(files.summary, summary, indent=True)
    log.info("twins: %d of %d accepted (%d candidates tried, discarded: %s, $%.2f)",
             len(accepted), needed, len(records), summary["discarded_by_reason"],
             usage["cost_usd"])
    if len(accepted) < needed:
        why = ("the budget left by the collection is spent" if stop()
               else f"the clean pool's {len(clean)} candidates ran out")
        raise CapReached(
            f"twins: {len(accepted)} of the {needed} twins the design needs: {why}. Discarded "
            f"{len(discarded)} of {len(records)} tried: {summary['discarded_by_reason']} "
            f"(see {files.rejects}). "
            + ("Raise collect_budget_usd and run again (finished candidates are kept)."
               if stop() else
               "Collect more clean conversations (a larger dataset_size pool: raise "
               "collect_max_attempts and continue with start_from = collect), or lower the "
               "highest level."))
    return summary
