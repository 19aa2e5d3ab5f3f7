"""LLM stages in front of the data half: telecom seed generation and conversation generation.

Seeds: one LLM call per cell of a scenario x persona x outcome x complexity taxonomy,
with the tau2 telecom policy, workflow and DB examples in the prompt; a reply that is not
a usable seed (fewer than 6 turns, not starting with ``human``, unknown role or tool,
non-object arguments, an observation not right after a call) is asked again, up to
``tries`` times, then recorded as a failure.

Prompts are two templates per stage (:func:`simia.llm.prompts.load_pair`): the system
prompt holds what every item of a run shares and is cached (seeds: instructions, policy,
workflow, DB examples, tool schemas, reply format; conversations: instructions, simulator
mode, tool list, format and domain rules), the user message the item's own part (seeds:
the taxonomy cell; conversations: the seed conversation, a cache point, then the
variation key and the number of turns; the seed conversation is cached too, for the
items that draw the same seed).

Conversations: item ``i`` picks seed ``Random(f"{seed}:{i}")`` from the seed file (with
replacement, the same pick on every run and machine), sends the prompt for the chosen
simulator mode, and parses the reply's ``HUMAN:``/``ASSISTANT:``/``FUNCTION_CALL:``/
``OBSERVATION:`` lines. Items run until ``target`` conversations parse, bounded by
``max_attempts``; every failure is kept with its reason and the raw text. A reply that
still stops at ``max_tokens`` after its last round, or whose continuation restarts the
conversation or refuses, is a failure too (:func:`completion_problem`), never a valid
conversation.

Every record keeps what its item cost (``usage``: its HTTP requests, failed ones
included, tokens and cost, summed over re-runs of the item), and summaries sum the
records: a resumed or retried stage reports every call it made. A stage with too many
failed items fails, and a re-run retries recorded failures (:mod:`simia.llm.failures`).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from simia.settings.llm import GenerationSettings, SeedSettings
from simia.domains import DOMAINS
from simia.domains.telecom import AGENT_INSTRUCTION
from simia.errors import InputError
from simia.io import sha256_bytes, read_bytes, write_bytes, write_json, write_jsonl
from simia.layout import GenerateFiles, SeedFiles
from simia.llm.accounting import add_item_usage, usage_of
from simia.llm.client import Completion, LLMCallError, LLMClient
from simia.llm.failures import check_failures, is_call_failure
from simia.llm.prompts import load_pair, load_template, render
from simia.llm.replies import extract_json_object
from simia.llm.runner import WorkItem, item_id, progress_logger, run_items
from simia.llm.shards import (merged_usage, open_checkpoint, read_shards, shard_target,
                               write_shard_summary)
from simia.data.records import ROLES, load_raw, parse_tools
from simia.provenance import checkpoint_hashes, file_hashes, shard_checkpoints, shard_param

log = logging.getLogger("simia.llm.generation")


# --------------------------------------------------------------------------- parsing

_MARKERS = (("HUMAN:", "human"), ("H:", "human"), ("ASSISTANT:", "gpt"), ("A:", "gpt"),
            ("FUNCTION_CALL:", "function_call"), ("OBSERVATION:", "observation"))
_CLOSING = re.compile(r"is there anything else|goodbye|have a (?:great|good|nice) day|"
                      r"thank you for contacting", re.IGNORECASE)


def _marker(line: str) -> tuple[str, str] | None:
    stripped = line.lstrip()
    for marker, role in _MARKERS:
        if stripped.startswith(marker):
            return role, stripped[len(marker):].strip()
    return None


def parse_lines(text: str) -> list[dict[str, str]] | None:
    """The reference's line parser: a marker starts a turn, other lines continue it, text
    before the first marker is dropped. None unless there is at least one turn and every
    turn has a non-empty value."""
    turns: list[dict[str, str]] = []
    for line in text.splitlines():
        found = _marker(line)
        if found:
            turns.append({"from": found[0], "value": found[1]})
        elif turns:
            turns[-1]["value"] = (turns[-1]["value"] + "\n" + line).strip()
    if not turns or any(not t["value"] for t in turns):
        return None
    return turns


_REFUSAL = re.compile(r"(?:I\s+(?:cannot|can't|can\s+not|won't|will\s+not|am\s+unable|"
                      r"am\s+not\s+able|apologi[sz]e)|I'm\s+(?:sorry|unable|not\s+able)|"
                      r"I\s+am\s+sorry|Sorry|As\s+an\s+AI)\b", re.IGNORECASE)
#: a turn marker with other text before it on its line
_INLINE_MARKER = re.compile(r"[^\s][ \t]*(?:HUMAN|ASSISTANT|FUNCTION_CALL|OBSERVATION):")
#: the shortest first turn whose repetition in a continuation counts as a restart
_RESTART_MIN_CHARS = 20


def completion_problem(done: Completion) -> tuple[str, str] | None:
    """Why a generated reply cannot be a whole conversation, as (error, detail), or None.

    - ``truncated``: the last round still stopped at ``max_tokens`` (the conversation
      ends mid-turn, often mid-word);
    - ``bad_continuation``: a continuation round refuses (starts with "I cannot...",
      "I'm sorry..."), starts a turn in the middle of a line (text stitched onto the cut:
      ``...verificHUMAN: Hi there``), or restarts the conversation (repeats its first
      turn's line).

    Generation and the collection both call it on every completion before parsing.
    """
    parts = done.parts or (done.text,)
    first = next((line.strip() for line in parts[0].splitlines() if _marker(line)), "")
    text = parts[0]
    for n, part in enumerate(parts[1:], start=2):
        head = " ".join(part.split())[:120]
        if _REFUSAL.match(part.lstrip()):
            return "bad_continuation", f"continuation round {n} refuses: {head!r}"
        tail = text[text.rfind("\n") + 1:]
        joined = tail + part
        if any(m.end() > len(tail) for m in _INLINE_MARKER.finditer(joined)):
            return "bad_continuation", (f"continuation round {n} starts a turn in the middle "
                                        f"of a line: {head!r}")
        if len(first) >= _RESTART_MIN_CHARS and any(line.strip() == first
                                                     for line in part.splitlines()):
            return "bad_continuation", (f"continuation round {n} restarts the conversation "
                                        f"(repeats its first turn): {head!r}")
        text += part
    if done.stop_reason == "max_tokens":
        return "truncated", (f"the reply still stopped at max_tokens after {done.rounds} "
                             "round(s)")
    return None


def enough_text(text: str) -> bool:
    """Whether a truncated reply is worth continuing (the reference stopped at a closing
    phrase or at 10 marker lines)."""
    if _CLOSING.search(text):
        return False
    return sum(1 for line in text.splitlines() if _marker(line)) < 10


# --------------------------------------------------------------------------- prompts

_RENDER_ROLE = {"human": "HUMAN", "gpt": "ASSISTANT", "function_call": "FUNCTION_CALL",
                "observation": "OBSERVATION"}


def render_seed(seed: dict[str, Any]) -> str:
    """A seed conversation as prompt lines (``SYSTEM:`` first, as the reference did)."""
    lines = [f"SYSTEM: {seed['system']}"] if seed.get("system") else []
    lines += [f"{_RENDER_ROLE.get(t['from'], t['from'].upper())}: {t['value']}"
              for t in seed["conversations"]]
    return "\n".join(lines)


def tools_block(tools: list[dict[str, Any]], *, schemas: bool) -> str:
    """``- name: description`` per tool; with ``schemas`` also its JSON parameters."""
    out = []
    for t in tools:
        line = f"- {t.get('name')}: {t.get('description', '')}"
        if schemas:
            line += "\n  parameters: " + orjson.dumps(t.get("parameters", {})).decode()
        out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- settings


# --------------------------------------------------------------------------- seeds

TAXONOMY: dict[str, tuple[str, ...]] = {
    "scenario": (
        "mobile data does not work", "no service or no signal", "cannot send picture "
        "messages (MMS)", "mobile data is very slow", "data allowance used up, asks for a "
        "refuel", "wants roaming enabled before travelling abroad", "pays an overdue bill",
        "suspends a line while abroad", "resumes a suspended line", "asks about or changes "
        "the plan", "questions a charge on the bill", "asks for something the policy forbids "
        "(e.g. a 5 GB refuel)"),
    "persona": (
        "calm and cooperative", "impatient and terse", "elderly and not tech-savvy",
        "frustrated repeat caller", "precise, detail-oriented professional",
        "gives wrong details at first and corrects them later"),
    "outcome": (
        "resolved with the tools", "refused because the policy does not allow it",
        "transferred to a human agent as the policy requires",
        "resolved after the agent corrects an invalid request"),
    "complexity": (
        "simple: one or two tool calls", "moderate: three to five tool calls",
        "complex: six or more tool calls, one of which fails"),
}


def taxonomy_cell(run_seed: int, index: int) -> dict[str, str]:
    """Cell ``index`` of a seeded shuffle of the whole taxonomy (even coverage)."""
    cells = list(itertools.product(*TAXONOMY.values()))
    random.Random(f"{run_seed}:taxonomy").shuffle(cells)
    return dict(zip(TAXONOMY, cells[index % len(cells)], strict=True))


def seed_problems(turns: Any, tool_names: set[str]) -> list[str]:
    """Why ``turns`` is not a usable seed (empty list: it is)."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return ["conversations is not a list of turns"]
    problems = []
    if len(turns) < 6:
        problems.append(f"only {len(turns)} turns (need 6)")
    if turns and turns[0].get("from") != "human":
        problems.append(f"starts with {turns[0].get('from')!r}, not 'human'")
    for i, t in enumerate(turns):
        role, value = t.get("from"), t.get("value")
        if role not in ROLES:
            problems.append(f"turn {i}: unknown role {role!r}")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"turn {i}: empty or non-text value")
            continue
        if role == "function_call":
            call = extract_json_object(value)
            if call is None:
                problems.append(f"turn {i}: call is not a JSON object")
            elif call.get("name") not in tool_names:
                problems.append(f"turn {i}: unknown tool {call.get('name')!r}")
            elif not isinstance(call.get("arguments"), dict):
                problems.append(f"turn {i}: arguments are not an object")
        if role == "observation" and (i == 0 or turns[i - 1].get("from") != "function_call"):
            problems.append(f"turn {i}: observation not right after a function_call")
    return problems


def _normalise_seed_turns(turns: Any) -> Any:
    """Function-call values given as objects become JSON strings (the record shape)."""
    if not isinstance(turns, list):
        return turns
    out = []
    for t in turns:
        if isinstance(t, dict) and not isinstance(t.get("value"), str) \
                and t.get("value") is not None:
            t = {**t, "value": orjson.dumps(t["value"]).decode()}
        out.append(t)
    return out


def _tau2_text(folder: Path, name: str) -> str:
    path = folder / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read tau2 file: {exc}") from None


def generate_seeds_stage(out_dir: str | Path, settings: SeedSettings, client: LLMClient, *,
                         tau2_data_dir: str | Path | None = None, force: bool = False,
                         domain: str = "telecom",
                         keep_failures: bool = False) -> dict[str, Any]:
    """``settings.n_seeds`` seeds -> ``seeds.json`` (+ ``seed_failures.jsonl``, summary):
    the files of :class:`simia.layout.SeedFiles` in ``out_dir``. Recorded failures are
    tried again unless ``keep_failures``; raises :class:`~simia.llm.failures.
    LLMStageFailed` (after writing the failures and the summary, before ``seeds.json``)
    when too many seeds failed (see :mod:`simia.llm.failures`)."""
    out_dir = Path(out_dir)
    files = SeedFiles(out_dir)
    dom = DOMAINS[domain]
    folder = dom.find_policy_dir(tau2_data_dir)
    policy = dom.load_policy(tau2_data_dir)
    system_t, (template, where) = load_pair("seed", settings.prompts_dir)
    fields = {"policy": policy, "workflow": _tau2_text(folder, "tech_support_workflow.md"),
              "db_examples": _tau2_text(folder, "db.toml"),
              "tools": orjson.dumps(dom.tools, option=orjson.OPT_INDENT_2).decode()}
    seed_system = (f"<instructions>\n{AGENT_INSTRUCTION}\n</instructions>\n<policy>\n{policy}"
                   "\n</policy>")
    tools_json = orjson.dumps(dom.tools).decode()
    tool_names = set(dom.tools_by_name)
    templates = (system_t[0] if system_t else "") + template
    params = {**settings.model_dump(), "template_sha256": sha256_bytes(templates.encode()),
              "inputs_sha256": sha256_bytes(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))}
    t0 = time.perf_counter()

    def work(item: WorkItem) -> dict[str, Any]:
        cell = taxonomy_cell(settings.seed, item.index)
        spec = orjson.dumps(cell).decode()
        system = render(*system_t, spec=spec, **fields) if system_t else None
        prompt = render(template, where, spec=spec, **fields)
        rec: dict[str, Any] = {"id": item.id, "index": item.index, "taxonomy": cell,
                               "usage": {}}
        text, why = "", ""
        for attempt in range(1, settings.tries + 1):
            try:
                done = client.complete("seeds", item.id, prompt, system=system,
                                       max_tokens=settings.max_tokens,
                                       temperature=settings.temperature)
            except LLMCallError as exc:
                rec["usage"] = add_item_usage(rec["usage"], {"seeds": exc.usage})
                return {**rec, "status": "failed", "error": exc.error_class,
                        "detail": str(exc), "tries": attempt}
            rec["usage"] = add_item_usage(rec["usage"], {"seeds": done.usage})
            text = done.text
            obj = extract_json_object(text)
            turns = _normalise_seed_turns(obj.get("conversations")) if obj else None
            problems = (["reply holds no JSON object"] if obj is None
                        else seed_problems(turns, tool_names))
            if not problems:
                seed = {"conversations": [{"from": t["from"], "value": t["value"]}
                                          for t in turns],
                        "system": seed_system, "tools": tools_json, "seed_id": item.id,
                        "taxonomy": cell, "domain": domain}
                return {**rec, "status": "ok", "tries": attempt, "seed": seed}
            why = "; ".join(problems[:5])
        return {**rec, "status": "failed", "error": "invalid_seed", "detail": why,
                "tries": settings.tries, "raw_text": text}

    with open_checkpoint(out_dir, files.STAGE, 0, 1, params, force=force) as ckpt:
        items = (WorkItem(i, item_id(settings.seed, "seeds", i))
                 for i in range(settings.n_seeds))
        report = run_items(items, work, ckpt, concurrency=client.settings.concurrency,
                           is_success=lambda r: r["status"] == "ok",
                           redo=(lambda r: False) if keep_failures
                           else (lambda r: r["status"] != "ok"),
                           progress=progress_logger(client, "seeds", "seeds"),
                           total=settings.n_seeds)
        records = sorted(ckpt.records.values(), key=lambda r: r["index"])
        checkpoint = ckpt.path
    seeds = [r["seed"] for r in records if r["status"] == "ok"]
    failures = [r for r in records if r["status"] != "ok"]
    write_jsonl(files.failures, failures)  # before failing: the error points to it
    summary = {"stage": "seeds", "requested": settings.n_seeds, "seeds": len(seeds),
               "failed": len(failures),
               "failed_by_error": dict(Counter(r["error"] for r in failures)),
               "submitted_now": report.submitted, "resumed_items": report.resumed,
               "prompt_template": where,
               "outputs": {"seeds": str(files.seeds), "failures": str(files.failures)},
               "inputs_sha256": {"tau2_files": params["inputs_sha256"],
                                 "templates": params["template_sha256"]},
               "outputs_sha256": file_hashes({"failures": files.failures}),
               "llm": usage_of(records, ["seeds"], client.settings.prices, client.model_id),
               "seconds": round(time.perf_counter() - t0, 3)}
    write_json(files.summary, summary, indent=True)
    check_failures("seeds", checkpoint, records, lambda r: r["status"] != "ok",
                   client.settings.max_failed_share)
    if not seeds:
        raise InputError(out_dir, f"seeds: none of {settings.n_seeds} seeds could be "
                         f"generated; see {files.failures}")
    write_bytes(files.seeds, orjson.dumps(seeds, option=orjson.OPT_INDENT_2))
    summary["outputs_sha256"] = file_hashes({"seeds": files.seeds, "failures": files.failures})
    write_json(files.summary, summary, indent=True)
    return summary


# --------------------------------------------------------------------------- conversations

def load_seeds(path: str | Path) -> list[dict[str, Any]]:
    """A seed file in the raw-conversation record shape (every record must be valid and
    have turns)."""
    seeds, _ = load_raw(path)
    for i, s in enumerate(seeds):
        if s is not None and not s["conversations"]:
            raise InputError(path, "seed has no turns", record=i, field="conversations")
    return [s for s in seeds if s is not None]


def pick_seed(run_seed: int, index: int, n_seeds: int) -> int:
    """The seed item ``index`` uses: uniform, with replacement, order-independent."""
    return random.Random(f"{run_seed}:{index}").randrange(n_seeds)


PromptParts = tuple[tuple[str, str] | None, tuple[str, str], str]
"""(system template and where, or None; user template and where; simulator-mode block)"""


def _prompt_parts(settings: GenerationSettings) -> PromptParts:
    system, user = load_pair("generate", settings.prompts_dir)
    mode_block, _ = load_template(f"mode_{settings.mode}.txt", settings.prompts_dir)
    return system, user, mode_block


def _parts_sha256(parts: PromptParts) -> str:
    system, user, mode_block = parts
    return sha256_bytes(((system[0] if system else "") + user[0] + mode_block).encode())


def generation_prompt(seed: dict[str, Any], settings: GenerationSettings, variation: str,
                      parts: PromptParts | None = None) -> tuple[str | None, str]:
    """(system prompt or None, user message) of one item; ``variation`` (the item id)
    keeps items that share a seed from getting the same prompt."""
    system, (template, where), mode_block = parts or _prompt_parts(settings)
    tools = parse_tools(seed.get("tools")) or DOMAINS[settings.domain].tools
    fields = {"mode_block": mode_block.rstrip("\n"), "mode": settings.mode,
              "seed_conversation": render_seed(seed),
              "tools": tools_block(tools, schemas=settings.show_tool_schemas),
              "turns": str(len(seed["conversations"])), "variation": variation}
    return (render(*system, **fields) if system else None), render(template, where, **fields)


def generate_shard(seeds_path: str | Path, out_dir: str | Path, settings: GenerationSettings,
                   client: LLMClient, *, shard: int = 0, shards: int = 1,
                   force: bool = False, keep_failures: bool = False) -> dict[str, Any]:
    """Generate this shard's share of ``settings.target`` valid conversations.

    Items whose call failed (:func:`~simia.llm.failures.is_call_failure`) are tried again
    unless ``keep_failures`` (an unusable reply is a yield: it stays). Short of the
    target, raises :class:`~simia.llm.failures.LLMStageFailed` when every item or more
    than ``max_failed_share`` of them failed calls, else :class:`InputError` (the attempt
    bound was reached: the checkpoint keeps everything done so far; a re-run with a
    higher bound continues from it).
    """
    out_dir = Path(out_dir)
    seed_bytes = read_bytes(seeds_path, what="seed file")
    seeds = load_seeds(seeds_path)
    parts = _prompt_parts(settings)
    target = shard_target(settings.target, shard, shards)
    bound = shard_target(settings.attempts_bound, shard, shards)
    params = {**settings.model_dump(exclude={"target", "max_attempts"}),
              "seeds_sha256": sha256_bytes(seed_bytes),
              "template_sha256": _parts_sha256(parts)}
    stage = GenerateFiles.STAGE
    key = f"{stage}:{shard}"  # accounting per shard (shards may share one client)
    t0 = time.perf_counter()

    def work(item: WorkItem) -> dict[str, Any]:
        seed = seeds[item.payload]
        rec: dict[str, Any] = {"id": item.id, "index": item.index, "seed_index": item.payload}
        system, prompt = generation_prompt(seed, settings, item.id, parts)
        try:
            done = client.complete(key, item.id, prompt, system=system,
                                   max_tokens=settings.max_tokens,
                                   temperature=settings.temperature,
                                   max_rounds=settings.max_rounds, keep_going=enough_text)
        except LLMCallError as exc:
            return {**rec, "status": "failed", "error": exc.error_class, "detail": str(exc),
                    "usage": {"generate": exc.usage}}
        rec["usage"] = {"generate": done.usage}
        problem = completion_problem(done)
        if problem is not None:
            return {**rec, "status": "failed", "error": problem[0], "detail": problem[1],
                    "raw_text": done.text, "rounds": done.rounds}
        turns = parse_lines(done.text)
        if turns is None:
            return {**rec, "status": "failed", "error": "unparseable",
                    "detail": "no HUMAN:/ASSISTANT:/FUNCTION_CALL:/OBSERVATION: turns, or an "
                              "empty turn", "raw_text": done.text, "rounds": done.rounds}
        first_q = next((t["value"] for t in seed["conversations"] if t["from"] == "human"), "")
        conv = {"conversations": turns, "system": seed.get("system", ""),
                "tools": seed.get("tools") or orjson.dumps(DOMAINS[settings.domain].tools
                                                           ).decode(),
                "based_on_sample": str(seed.get("seed_id") or seed.get("based_on_sample")
                                       or f"seed_{item.payload}"),
                "sample_turns": len(seed["conversations"]), "generated_turns": len(turns),
                "domain": settings.domain, "simulator_mode": settings.mode,
                "sample_question": first_q, "item_id": item.id, "generation_index": item.index,
                "truncated": done.truncated}
        return {**rec, "status": "ok", "rounds": done.rounds, "conversation": conv}

    def items():
        for index in itertools.count(shard, shards):
            yield WorkItem(index, item_id(settings.seed, stage, index),
                           pick_seed(settings.seed, index, len(seeds)))

    with open_checkpoint(out_dir, stage, shard, shards, params, force=force) as ckpt:
        report = run_items(items(), work, ckpt, concurrency=client.settings.concurrency,
                           is_success=lambda r: r["status"] == "ok", target=target,
                           max_attempts=bound,
                           redo=(lambda r: False) if keep_failures else is_call_failure,
                           progress=progress_logger(client, stage,
                                                     f"generation shard {shard + 1}/{shards}"))
        records = list(ckpt.records.values())
        checkpoint = ckpt.path
    ok = sum(1 for r in records if r["status"] == "ok")
    summary = {"stage": stage, "shard": shard, "shards": shards, "target": target,
               "valid": ok, "failed": len(records) - ok, "attempts_bound": bound,
               "submitted_now": report.submitted, "resumed_items": report.resumed,
               "failed_by_error": dict(Counter(r["error"] for r in records
                                               if r["status"] != "ok")),
               "call_failures": sum(1 for r in records if is_call_failure(r)),
               "llm": usage_of(records, ["generate"], client.settings.prices,
                               client.model_id),
               "seconds": round(time.perf_counter() - t0, 3)}
    summary = write_shard_summary(out_dir, stage, shard, shards, summary)
    if ok < target:
        check_failures(f"generate shard {shard}", checkpoint, records, is_call_failure,
                       client.settings.max_failed_share)
        raise InputError(out_dir, f"generate shard {shard}: reached the attempt bound "
                         f"({bound} tries) with {ok} of {target} valid conversations; "
                         f"failures by error: {summary['failed_by_error']}. Raise "
                         "max_attempts and re-run: finished items are kept")
    return summary


def merge_generation(out_dir: str | Path, settings: GenerationSettings, *,
                     shards: int = 1) -> dict[str, Any]:
    """All shards -> ``raw_conversations.json`` (exactly ``target``, in item order),
    ``generation_failures.jsonl`` and ``summary.json`` (:class:`simia.layout.GenerateFiles`)."""
    out_dir = Path(out_dir)
    files = GenerateFiles(out_dir)
    records = read_shards(out_dir, files.STAGE, shards)
    ok = [r for r in records if r["status"] == "ok"]
    failures = [r for r in records if r["status"] != "ok"]
    if len(ok) < settings.target:
        raise InputError(out_dir, f"generate: only {len(ok)} of {settings.target} valid "
                         "conversations across the shards; re-run the short shards")
    kept = ok[: settings.target]
    write_bytes(files.raw, orjson.dumps([r["conversation"] for r in kept],
                                        option=orjson.OPT_INDENT_2))
    write_jsonl(files.failures, failures)
    summary = {"stage": "generate", "target": settings.target, "valid": len(kept),
               "extra_valid_dropped": len(ok) - len(kept), "failed": len(failures),
               "failed_by_error": dict(Counter(r["error"] for r in failures)),
               "attempted": len(records), "mode": settings.mode,
               "outputs": {"raw_conversations": str(files.raw),
                           "failures": str(files.failures)},
               "seeds_sha256": shard_param(out_dir, files.STAGE, shards, "seeds_sha256"),
               "inputs_sha256": checkpoint_hashes(shard_checkpoints(out_dir, files.STAGE,
                                                                    shards)),
               "outputs_sha256": file_hashes({"raw_conversations": files.raw,
                                              "failures": files.failures}),
               "llm": merged_usage(out_dir, files.STAGE, shards)}
    write_json(files.summary, summary, indent=True)
    return summary
