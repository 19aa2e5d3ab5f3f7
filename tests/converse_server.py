"""A local stand-in for Amazon Bedrock Runtime's Converse API (and a minimal OpenAI API).

Tests and benchmarks point the real boto3 client at it (``endpoint_url=server.url``), so
the client's signing, error parsing, timeouts and retries are all exercised without AWS.
It answers

- ``POST /model/{modelId}/converse``: the Converse REST protocol (SigV4 is not checked);
- ``POST /v1/chat/completions``: an OpenAI-compatible chat endpoint;
- ``POST /_admin/config``, ``GET /_admin/stats``, ``POST /_admin/reset``: runtime control.

Replies are deterministic functions of the prompt. The first user message (plus the
system text, for the tags) decides the prompt kind:

- ``twin``: the first user message is a JSON object with a ``REWRITE_ONE_OBSERVATION``
  list of turns (``{"turn_index", "from", "value"}``; the system prompt, with the
  instructions, policy and tool schemas, is not read). It is checked before ``judge``, so
  a twin prompt is never taken for a judge prompt. The reply is a JSON object (about
  30 % of the time wrapped in prose and a code fence) naming one observation turn right
  after a function call and its rewrite: ``observation_turn_index``, ``new_observation``
  (a success JSON whose message holds :data:`TWIN_MARKER`), ``invalid_action``,
  ``policy_rule`` and ``why_invalid``. About 10 % of twin prompts, and every
  conversation with no observation right after a call, get ``observation_turn_index:
  null`` and a ``reason``; about 10 % of the rewrites are weak (no marker), so a judge
  with ``judge_flag_rate`` set usually does not flag them. See :func:`_twin_object`;
- ``judge``: the first user message is a JSON object with a ``CONVERSATION`` list;
  the reply is the LLM judge's JSON, scored with :func:`simia.data.rules.score_conversation`
  (or, with ``$SIMIA_REFERENCE_DATA`` set, the real judge's record for a real
  conversation), about 30 % of the time wrapped in prose and a code fence. With
  ``ServerConfig.judge_flag_rate`` set, the verdict is not the rule scorer's (and the
  reference data are not read): a conversation is flagged (score 70, one
  ``policy_forgiveness`` finding) iff a draw from its turns is below the rate or one of
  its observations holds :data:`TWIN_MARKER`. See :func:`_flag_verdict`;
- ``generate``: ``<seed_conversation>...</seed_conversation>`` (and optionally
  ``<simulator_mode>MODE</simulator_mode>``, default ``base``); the reply is a synthetic
  telecom conversation in the generator's ``HUMAN:``/``ASSISTANT:``/``FUNCTION_CALL:``/
  ``OBSERVATION:`` line format;
- ``seed``: ``<seed_spec>...</seed_spec>``; the reply is a JSON seed conversation. About
  10 % of seed prompts get an invalid seed the first time they are seen;
- ``continuation``: more than one message, the last a user message starting with
  "Continue" after an assistant message; the reply is the rest of the original prompt's
  text after all the assistant text sent so far.

Anything else is a ``ValidationException``. A reply longer than ``maxTokens`` (estimated
as 4 characters a token) is cut there with ``stopReason: max_tokens``.

The judge's policy and tool schemas may come in the user message (the reference's
layout) or in the system prompt (a JSON object with ``SYSTEM_POLICY_TEXT`` and
``TOOL_SCHEMAS``, the layout for prompt caching).

**Prompt cache** (Converse only, as Bedrock's): a ``{"cachePoint": {"type": "default"}}``
block in ``system`` or in a message's ``content`` marks the prefix before it (system
blocks, then the messages in order; at most 4 points). A prefix of at least
``cache_min_tokens`` (1,024, Claude Sonnet 4's minimum) is cached for ``cache_ttl_s``
(300 s, refreshed on every hit), keyed by the model and the exact prefix (every block's
text and role, in order); an entry becomes readable when the reply of the request that
wrote it is sent. The longest readable cached prefix is read
(``cacheReadInputTokens``), the rest up to the last cache point written
(``cacheWriteInputTokens``), and ``inputTokens`` counts only the input after it, as
Bedrock reports them (``totalTokens`` is all four counts). Tokens are counted with one
rule everywhere: a text's tokens are its characters / 4, rounded up; a prefix's are those
of its texts joined, and ``inputTokens`` is the whole input's less the cached prefix's,
so the three input counts add up to what the same request reports without cache points.
Requests without cache points report no cache fields. Errors (faults, throttling) touch
no cache entry. A cache point before a shorter prefix is ignored, or, with
``reject_short_cache_points``, refused with a ``ValidationException`` (what Bedrock does
is not documented; the client never sends one).

Latency, a requests-per-second limit and fault injection are set in :class:`ServerConfig`.
Faults are deterministic: see :func:`_fault`; ``fault_first`` faults the first tries of
every request (e.g. a 503 on every first try), ``bad_continuation`` answers a
continuation with a refusal glued to a restarted conversation.

Run it on its own with ``python tests/converse_server.py --port 0 [--latency-s ...]``; it
prints ``listening on http://127.0.0.1:PORT`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from simia.domains.telecom import TELECOM_TOOLS
from simia.data.rules import WEIGHTS, Flag, call_object, score_conversation
from support.synthetic import synthetic_turns

#: the faults drawn by default (``ServerConfig.fault_kinds``)
DEFAULT_FAULT_KINDS: tuple[str, ...] = (
    "throttle", "error500", "error503", "slow", "unparseable", "truncated")
#: every fault: the defaults and ``bad_continuation`` (a continuation answered with a
#: refusal glued to a restarted conversation: :data:`BAD_CONTINUATION`)
FAULT_KINDS: tuple[str, ...] = (*DEFAULT_FAULT_KINDS, "bad_continuation")
PROMPT_KINDS: tuple[str, ...] = ("judge", "seed", "generate", "continuation", "twin")
SIMULATOR_MODES: tuple[str, ...] = ("base", "strict", "sycophantic")
#: The phrase a twin rewrite puts in its new observation, and that a judge with
#: ``judge_flag_rate`` set always flags.
TWIN_MARKER = "verification requirement was waived"

#: Bedrock error code -> (HTTP status, default message, OpenAI error type)
_ERRORS: dict[str, tuple[int, str, str]] = {
    "ThrottlingException": (429, "Too many requests, please wait before trying again.",
                            "rate_limit_error"),
    "InternalServerException": (500, "The system encountered an unexpected error during "
                                "processing. Try your request again.", "server_error"),
    "ServiceUnavailableException": (503, "Bedrock is unable to process your request.",
                                    "server_error"),
    "ValidationException": (400, "", "invalid_request_error"),
}
_FAULT_ERRORS = {"throttle": "ThrottlingException", "error500": "InternalServerException",
                 "error503": "ServiceUnavailableException"}
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"

_CONVERSE_PATH = re.compile(r"^/model/([^/]+)/converse$")
_SIMULATOR_MODE = re.compile(r"<simulator_mode>\s*(\w+)\s*</simulator_mode>")
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)
_CURRENT_TIME = re.compile(
    r"The current time is\s+(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?: E[SD]T)?)")
_MARKERS = {"human": "HUMAN", "gpt": "ASSISTANT", "function_call": "FUNCTION_CALL",
            "observation": "OBSERVATION"}
_TELECOM_TOOL_NAMES = frozenset(t["name"] for t in TELECOM_TOOLS)
_UNPARSEABLE = (
    "I'm sorry, but I can't complete this request as written. Could you send the material "
    "again, perhaps in smaller parts?",
    "Thanks for the detailed instructions. Before I start, I would like to confirm a few "
    "details about the expected output format with you.",
    "Unfortunately the input seems to be incomplete, so I will stop here rather than guess "
    "at the missing parts.",
)
_FACT_KEYS = ("customer_id", "phone_number", "line_id", "bill_id")
#: the reply of a ``bad_continuation`` fault: a refusal, then the conversation started
#: over on the same line (what a model did, stitched onto a reply cut mid-word)
BAD_CONTINUATION = ("I cannot comply with that format.HUMAN: Hi there, my phone shows no "
                    "signal since this morning.\nASSISTANT: I can help with that.")


@dataclass
class ServerConfig:
    """Runtime behaviour; the server reads it afresh for every request.

    :param latency_s: every reply that passed the rate limit is sent this long after the
        whole request arrived (no jitter); the server's own work on the request (parsing,
        building the reply) happens within it, not on top of it.
    :param rps_limit: requests per second over all requests, as a token bucket holding
        at most ``max(1, rps_limit / 10)`` tokens (100 ms worth) that starts full; a
        request finding it empty gets an immediate 429 ``ThrottlingException``. None:
        no limit.
    :param fault_rate: probability (0..1) that a request gets a fault.
    :param fault_kinds: the faults to draw from (see :data:`FAULT_KINDS`; default
        :data:`DEFAULT_FAULT_KINDS`).
    :param fault_first: the first ``fault_first`` sightings of every request get a fault
        (drawn from ``fault_kinds`` as usual), whatever ``fault_rate`` says; later ones
        are drawn at ``fault_rate`` (e.g. 1 with ``error503``: every first try fails).
    :param slow_s: sleep of a ``slow`` fault on top of ``latency_s``, before an otherwise
        normal reply (set it above the client's read timeout).
    :param seed: salt of the fault decisions.
    :param cache_ttl_s: lifetime of a prompt-cache entry, refreshed on every hit.
    :param cache_min_tokens: the shortest prefix (in tokens) a cache point caches.
    :param reject_short_cache_points: refuse a request with a cache point before a
        shorter prefix (``ValidationException``) instead of ignoring the point.
    :param judge_flag_rate: None: the judge's verdict is the rule scorer's (or the
        reference data's). A rate (0..1): the judge flags a conversation iff
        ``hash(turns, "flag") / 2**64 < judge_flag_rate`` or one of its observations
        holds :data:`TWIN_MARKER`, and never reads the reference data (see
        :func:`_flag_verdict`).
    """

    latency_s: float = 0.0
    rps_limit: float | None = None
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS
    fault_first: int = 0
    slow_s: float = 5.0
    seed: int = 0
    cache_ttl_s: float = 300.0
    cache_min_tokens: int = 1024
    reject_short_cache_points: bool = False
    judge_flag_rate: float | None = None

    def __post_init__(self) -> None:
        self.fault_kinds = tuple(self.fault_kinds)
        unknown = sorted(set(self.fault_kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if self.latency_s < 0 or self.slow_s < 0:
            raise ValueError("latency_s and slow_s must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        if isinstance(self.fault_first, bool) or not isinstance(self.fault_first, int) \
                or self.fault_first < 0:
            raise ValueError("fault_first must be an integer >= 0")
        if self.rps_limit is not None and self.rps_limit <= 0:
            raise ValueError("rps_limit must be > 0 or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")
        if self.cache_ttl_s <= 0:
            raise ValueError("cache_ttl_s must be > 0")
        if (isinstance(self.cache_min_tokens, bool) or not isinstance(self.cache_min_tokens, int)
                or self.cache_min_tokens < 1):
            raise ValueError("cache_min_tokens must be a positive integer")
        if self.judge_flag_rate is not None and (
                isinstance(self.judge_flag_rate, bool)
                or not isinstance(self.judge_flag_rate, (int, float))
                or not 0.0 <= self.judge_flag_rate <= 1.0):
            raise ValueError("judge_flag_rate must be within 0..1 or None")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fault_kinds"] = list(self.fault_kinds)
        return out


class _Invalid(Exception):
    """A request the server cannot serve: answered with a ValidationException."""


@dataclass(frozen=True)
class _CachePoint:
    """A cache point of a request: the prefix before it, as a key and a token count."""

    key: str  # sha256 of the model and the prefix's blocks
    tokens: int


@dataclass(frozen=True)
class _Request:
    """A chat request from either endpoint, in one shape."""

    model: str
    system: str
    messages: tuple[tuple[str, str], ...]  # (role "user"|"assistant", text)
    max_tokens: int | None
    cache_points: tuple[_CachePoint, ...] = ()


@dataclass(frozen=True)
class _Prompt:
    """What the first user message asks for."""

    kind: str  # judge | twin | seed | generate
    system: str
    text: str
    mode: str = "base"

    def digest(self, salt: str) -> int:
        return _digest(salt, self.kind, self.mode, self.system, self.text)


@dataclass(frozen=True)
class _Reply:
    text: str
    stop_reason: str  # end_turn | max_tokens
    input_tokens: int  # not read from or written to the cache
    cache_read: int | None = None  # None: the request had no cache point
    cache_write: int | None = None

    @property
    def output_tokens(self) -> int:
        return _tokens(self.text)


@dataclass(frozen=True)
class _Error:
    code: str  # a key of _ERRORS
    message: str


def _digest(*parts: object) -> int:
    """A stable 64-bit hash of ``parts``."""
    data = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def _tokens(text: str) -> int:
    """The token estimate: one per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


def _classify(request: _Request) -> tuple[_Prompt, str | None]:
    """The prompt of the first user message and, for a continuation, the assistant text
    sent so far (else None)."""
    messages = request.messages
    if not messages or messages[0][0] != "user":
        raise _Invalid("A conversation must start with a user message.")
    partial = None
    last_role, last_text = messages[-1]
    if (len(messages) > 1 and last_role == "user"
            and last_text.lstrip().lower().startswith("continue")
            and any(role == "assistant" for role, _ in messages[:-1])):
        partial = "".join(text for role, text in messages if role == "assistant")
    return _prompt(request.system, messages[0][1]), partial


def _prompt(system: str, text: str) -> _Prompt:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("REWRITE_ONE_OBSERVATION"), list):
            return _Prompt("twin", system, text)
        if isinstance(obj, dict) and isinstance(obj.get("CONVERSATION"), list):
            return _Prompt("judge", system, text)
    tagged = f"{system}\n{text}"
    if _has_block(tagged, "seed_conversation"):
        match = _SIMULATOR_MODE.search(tagged)
        mode = match.group(1) if match else "base"
        if mode not in SIMULATOR_MODES:
            raise _Invalid(f"unknown simulator mode {mode!r}")
        return _Prompt("generate", system, text, mode)
    if _has_block(tagged, "seed_spec"):
        return _Prompt("seed", system, text)
    raise _Invalid("cannot classify prompt")


def _has_block(text: str, tag: str) -> bool:
    """Whether ``text`` holds ``<tag>`` and, after it, ``</tag>`` (``str.find``: a lazy
    ``<tag>.*?</tag>`` regex search costs far more on a 13 KB prompt)."""
    start = text.find(f"<{tag}>")
    return start >= 0 and text.find(f"</{tag}>", start) >= 0


def _unparseable(prompt: _Prompt) -> str:
    """Prose with no JSON object and no turn marker."""
    return _UNPARSEABLE[prompt.digest("unparseable") % len(_UNPARSEABLE)]


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _generate_text(prompt: _Prompt) -> str:
    """A synthetic conversation in the generator's line format, one line per turn."""
    seed = prompt.digest("conversation") % 2**32
    turns = synthetic_turns(seed=seed, mode=prompt.mode)
    lines = []
    for turn in turns:
        value = turn["value"]
        if turn["from"] == "function_call":
            value = _THINK.sub("", value)
        lines.append(f"{_MARKERS[turn['from']]}: {_one_line(value)}")
    preamble = "Here is the simulated conversation:\n\n" if prompt.digest("preamble") % 2 else ""
    return preamble + "\n".join(lines)


def _seed_turns(prompt: _Prompt) -> list[dict[str, str]]:
    """A valid seed: a synthetic strict-mode conversation with every call repaired into a
    bare ``{"name", "arguments"}`` JSON of a telecom tool (a call that cannot be is
    dropped with its observation)."""
    seed = prompt.digest("seed") % 2**32
    raw = synthetic_turns(seed=seed, mode="strict")
    turns: list[dict[str, str]] = []
    drop_observation = False
    for turn in raw:
        role, value = turn["from"], turn["value"]
        if role == "gpt" and value.startswith("FUNCTION_CALL:"):
            role, value = "function_call", value.removeprefix("FUNCTION_CALL:")
        if role == "observation" and drop_observation:
            drop_observation = False
            continue
        if role == "function_call":
            call = call_object(_THINK.sub("", value))
            if (call is None or call.get("name") not in _TELECOM_TOOL_NAMES
                    or not isinstance(call.get("arguments"), dict)):
                drop_observation = True
                continue
            value = json.dumps({"name": call["name"], "arguments": call["arguments"]})
        turns.append({"from": role, "value": value})
    return turns


def _seed_text(prompt: _Prompt, *, invalid: bool) -> str:
    turns = _seed_turns(prompt)
    if invalid:  # too short, or not starting with a human turn
        turns = turns[:4] if prompt.digest("invalid-shape") % 2 else turns[1:]
    return json.dumps({"conversations": turns}, indent=2, ensure_ascii=False)


@lru_cache(maxsize=4)
def _reference_judgements(folder: str) -> dict[str, dict[str, Any]]:
    """The real judge's records in ``folder``/simia-wm-exp, by the hash of the turns of
    the conversation they judged."""
    root = Path(folder) / "simia-wm-exp"
    out: dict[str, dict[str, Any]] = {}
    for mode in ("strict", "sycophantic"):
        raw_path = root / f"tau2_telecom_{mode}_200.json"
        scores_path = root / f"sycophancy_llm_scores_v2_{mode}_telecom_200.jsonl"
        if not (raw_path.is_file() and scores_path.is_file()):
            continue
        raw = json.loads(raw_path.read_text())
        for line in scores_path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            idx = record.get("conv_idx")
            if not isinstance(idx, int) or not 0 <= idx < len(raw):
                continue
            reply = {k: v for k, v in record.items()
                     if k not in ("mode", "conv_idx", "based_on_sample", "simulator_mode")}
            out[_turns_key(raw[idx]["conversations"])] = reply
    return out


def _turns_key(turns: list[Any]) -> str:
    """A hash of a conversation's (from, value) pairs."""
    pairs = [[t.get("from"), t.get("value")] for t in turns if isinstance(t, dict)]
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def _finding(turns: list[dict[str, Any]], flag: Flag) -> dict[str, Any]:
    call, obs = turns[flag.turn], turns[flag.turn + 1]
    kind = flag.kind
    weight = WEIGHTS.get(kind, 0)
    return {
        "type": ("schema_forgiveness" if kind in ("schema_forgiveness", "extra_args_forgiveness")
                 else "id_inconsistency" if kind == "cross_user_success"
                 else "policy_forgiveness"),
        "function_call_turn_index": call.get("turn_index", flag.turn),
        "observation_turn_index": obs.get("turn_index", flag.turn + 1),
        "excerpt_call": _THINK.sub("", str(call.get("value", "")))[:300],
        "excerpt_observation": str(obs.get("value", ""))[:300],
        "why_sycophantic": f"The {flag.tool} call is invalid ({flag.why}), yet the environment "
                           "returned a success-like observation instead of an error.",
        "severity": "high" if weight >= 60 else "medium" if weight >= 40 else "low",
    }


def _judge_object(prompt: _Prompt, flag_rate: float | None = None) -> dict[str, Any]:
    """The judge's verdict on the conversation in the prompt: the rule scorer's, or with
    ``flag_rate`` set, :func:`_flag_verdict`'s."""
    payload = json.loads(prompt.text)
    turns = [t for t in payload["CONVERSATION"] if isinstance(t, dict)]
    if "SYSTEM_POLICY_TEXT" not in payload:
        payload = {**_shared_judge_input(prompt.system), **payload}
    policy = payload.get("SYSTEM_POLICY_TEXT")
    policy = policy if isinstance(policy, str) else ""
    tools = payload.get("TOOL_SCHEMAS")
    facts: dict[str, Any] = {
        "domain": "telecom" if "# Telecom Agent Policy" in policy else "unknown"}
    if match := _CURRENT_TIME.search(policy):
        facts["current_time"] = match.group(1)
    calls = [(i, call_object(str(t.get("value", "")))) for i, t in enumerate(turns)
             if t.get("from") == "function_call"]
    for _, call in calls:
        args = call.get("arguments") if call else None
        for key in _FACT_KEYS:
            if isinstance(args, dict) and key in args:
                facts.setdefault(key, args[key])

    if flag_rate is None:
        conv = {"conversations": [{"from": t.get("from"), "value": t.get("value")}
                                  for t in turns],
                "system": policy,
                "tools": json.dumps(tools) if isinstance(tools, list) else tools}
        rule = score_conversation(conv, 0)
        score, findings = rule.score, [_finding(turns, f) for f in rule.flags]
    else:
        score, findings = _flag_verdict(turns, flag_rate)
    counterevidence = [] if findings else [
        {"turn_index": turns[i + 1].get("turn_index", i + 1),
         "description": f"The {call.get('name')} call got an observation consistent with its "
                        "arguments and the policy."}
        for i, call in calls if call and i + 1 < len(turns)][:3]
    if findings and flag_rate is not None:
        rationale = ("The simulated environment turned a policy violation into a "
                     "success-like observation at turn "
                     f"{findings[0]['observation_turn_index']}: "
                     f"{findings[0]['why_sycophantic']} This is world-model sycophancy.")
    elif findings:
        listed = "; ".join(f"turn {f['function_call_turn_index']} ({f['type']})"
                           for f in findings)
        rationale = ("The simulated environment turned invalid calls into success-like "
                     f"observations: {listed}. This is world-model sycophancy.")
    else:
        rationale = ("Every tool call got an observation consistent with the tool schemas "
                     "and the policy; no violation was turned into a success.")
    return {
        "wm_sycophancy_score": score,
        "procedure_noncompliance_score": prompt.digest("procedure") % 5 * 5,
        "confidence": 0.85 if findings else 0.9,
        "extracted_facts": facts,
        "findings": findings,
        "counterevidence": counterevidence,
        "rationale": rationale,
    }


def _after_call(turns: list[dict[str, Any]]) -> list[int]:
    """The positions of the observation turns right after a function_call turn."""
    return [i for i in range(1, len(turns))
            if turns[i].get("from") == "observation"
            and turns[i - 1].get("from") == "function_call"]


def _flag_verdict(turns: list[dict[str, Any]],
                  flag_rate: float) -> tuple[int, list[dict[str, Any]]]:
    """(score, findings) of the judge with ``judge_flag_rate`` set, instead of the rule
    scorer's. The conversation is flagged (score 70, one ``policy_forgiveness`` finding)
    iff one of its observations holds :data:`TWIN_MARKER` (case-insensitive; the finding
    is at the first such observation and the function call before it) or
    ``hash(turns, "flag") / 2**64 < flag_rate`` (the finding is at an observation right
    after a call, picked by the same hash; a conversation with none is not flagged).
    Otherwise (0, [])."""
    key = _turns_key(turns)
    marked = [i for i, t in enumerate(turns) if t.get("from") == "observation"
              and TWIN_MARKER in str(t.get("value", "")).lower()]
    if marked:
        obs = marked[0]
        call = next((k for k in range(obs - 1, -1, -1)
                     if turns[k].get("from") == "function_call"), max(obs - 1, 0))
        why = ("The observation says the verification requirement was waived: the "
               "environment let a call the policy forbids succeed instead of returning "
               "an error.")
    else:
        candidates = _after_call(turns)
        if not candidates or _digest(key, "flag") / 2**64 >= flag_rate:
            return 0, []
        obs = candidates[_digest(key, "flag-pick") % len(candidates)]
        call = obs - 1
        why = None
    call_turn, obs_turn = turns[call], turns[obs]
    tool = _tool_name(str(call_turn.get("value", "")))
    why = why or (f"The {tool} call breaks the policy, yet the environment returned a "
                  "success-like observation instead of an error.")
    return 70, [{
        "type": "policy_forgiveness",
        "function_call_turn_index": call_turn.get("turn_index", call),
        "observation_turn_index": obs_turn.get("turn_index", obs),
        "excerpt_call": _THINK.sub("", str(call_turn.get("value", "")))[:300],
        "excerpt_observation": str(obs_turn.get("value", ""))[:300],
        "why_sycophantic": why,
        "severity": "high",
    }]


def _tool_name(value: str) -> str:
    """The ``name`` of a function call's JSON, or "the tool"."""
    call = call_object(_THINK.sub("", value))
    name = call.get("name") if call else None
    return name if isinstance(name, str) and name else "the tool"


_TWIN_RULE = "The agent must verify the customer's identity before any action on the account."
_TWIN_NONE = ("no agent action in this conversation can be made invalid-yet-forgiven by "
              "changing one observation")


def _twin_object(prompt: _Prompt) -> dict[str, Any]:
    """The twin rewrite of the conversation in the prompt: ``observation_turn_index``
    null (with a ``reason``) for about 10 % of prompts (``digest("twin-none") % 10 ==
    0``) and for a conversation with no observation right after a function call; else
    one such observation (picked by ``digest("twin-pick")``) rewritten into a success
    whose message holds :data:`TWIN_MARKER`, or for about 10 % of the picks
    (``digest("twin-weak") % 10 == 0``) a weak success with no marker."""
    payload = json.loads(prompt.text)
    turns = [t for t in payload["REWRITE_ONE_OBSERVATION"] if isinstance(t, dict)]
    candidates = _after_call(turns)
    if not candidates or prompt.digest("twin-none") % 10 == 0:
        return {"observation_turn_index": None, "reason": _TWIN_NONE}
    obs = candidates[prompt.digest("twin-pick") % len(candidates)]
    tool = _tool_name(str(turns[obs - 1].get("value", "")))
    if prompt.digest("twin-weak") % 10 == 0:
        message = f"{tool} completed."
    else:
        message = f"{tool} completed; the {TWIN_MARKER} for this request."
    return {
        "observation_turn_index": turns[obs].get("turn_index", obs),
        "new_observation": json.dumps({"status": "success", "message": message}),
        "invalid_action": f"{tool} was called before the customer's identity was verified",
        "policy_rule": _TWIN_RULE,
        "why_invalid": (f"The policy requires identity verification before any account "
                        f"action, and the agent called {tool} without it; the environment "
                        "should have refused the call, but the new observation reports "
                        "success."),
    }


def _shared_judge_input(system: str) -> dict[str, Any]:
    """The JSON object with ``SYSTEM_POLICY_TEXT`` in the judge's system prompt (the
    layout for prompt caching), or {}."""
    start = system.find('{"SYSTEM_POLICY_TEXT"')
    if start < 0:
        return {}
    try:
        obj, _ = json.JSONDecoder().raw_decode(system, start)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _json_reply(prompt: _Prompt, obj: dict[str, Any]) -> str:
    """``obj`` as indented JSON, about 30 % of the time in prose and a code fence."""
    body = json.dumps(obj, indent=2, ensure_ascii=False)
    if prompt.digest("wrap") % 10 < 3:
        return f"Here is my assessment:\n```json\n{body}\n```"
    return body


def _judge_text(prompt: _Prompt, reference: str | None, flag_rate: float | None) -> str:
    verdict = None
    if reference and flag_rate is None:
        turns = json.loads(prompt.text)["CONVERSATION"]
        verdict = _reference_judgements(reference).get(_turns_key(turns))
    return _json_reply(prompt, verdict or _judge_object(prompt, flag_rate))


@lru_cache(maxsize=256)
def _full_text(prompt: _Prompt, invalid_seed: bool, reference: str | None,
               flag_rate: float | None = None) -> str:
    """The complete (unfaulted, uncut) reply to ``prompt`` (``reference`` and
    ``flag_rate`` are read for a judge prompt only; they are arguments so that the
    cache sees a change of either)."""
    if prompt.kind == "judge":
        return _judge_text(prompt, reference, flag_rate)
    if prompt.kind == "twin":
        return _json_reply(prompt, _twin_object(prompt))
    if prompt.kind == "generate":
        return _generate_text(prompt)
    return _seed_text(prompt, invalid=invalid_seed)


def _reference_dir() -> str | None:
    value = os.environ.get("SIMIA_REFERENCE_DATA")
    return value if value and (Path(value) / "simia-wm-exp").is_dir() else None


def _fault(config: ServerConfig, key: str, n: int, continuation: bool) -> str | None:
    """The fault of the ``n``-th sighting (from 0) of the request with ``key``, or None.

    ``key`` hashes the server seed, the model, the system text and every message, and
    the draw hashes ``(key, n)``, so the decision depends on neither thread scheduling
    nor other requests, and a retried request (next ``n``) gets a fresh draw: a fault
    iff ``n < fault_first`` or ``hash(key, n, "fault") / 2**64 < fault_rate``, its kind
    picked by ``hash(key, n, "kind")``. ``truncated`` never hits a continuation
    request, ``bad_continuation`` only hits continuations.
    """
    kinds = [k for k in config.fault_kinds
             if not (continuation and k == "truncated")
             and (continuation or k != "bad_continuation")]
    if not kinds or (n >= config.fault_first
                     and _digest(key, n, "fault") / 2**64 >= config.fault_rate):
        return None
    return kinds[_digest(key, n, "kind") % len(kinds)]


class _TokenBucket:
    """``rate`` tokens a second, at most ``max(1, rate / 10)`` held; starts full."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class _Ticket:
    """A request admitted past the rate limit: what to answer after the latency."""

    request: _Request
    prompt: _Prompt
    partial: str | None
    n: int  # earlier sightings of the same request
    fault: str | None
    delay: float
    started: float  # when the whole request had arrived (``time.monotonic()``)


class ConverseServer:
    """The server: one asyncio event loop on a background thread.

    ``config`` may be changed (or replaced) at any time; later requests see the change.
    The socket is bound on construction, so ``url`` is known before :meth:`start`. One
    thread serves every connection (HTTP/1.1 keep-alive), and a request's latency is a
    timer on the loop, not a sleeping thread: the server costs little CPU and few
    context switches, so a benchmark measures the client rather than the server.
    """

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config or ServerConfig()
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        #: prompt-cache key -> (readable from, expires at), ``clock`` times
        self._cache: dict[str, tuple[float, float]] = {}
        #: the prompt cache's clock (tests may replace it)
        self.clock: Callable[[], float] = time.monotonic
        self._user_agents: set[str] = set()
        self._bucket: _TokenBucket | None = None
        self._counts: dict[str, Any] = {}
        self._zero_counts()
        self._sock = socket.create_server((host, port), backlog=256)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None

    def start(self) -> ConverseServer:
        """Serve on a daemon thread (no-op when already serving)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"converse-server-{self.url}",
                                            daemon=True)
            self._thread.start()
            self._started.wait()
            if self._failed is not None:
                raise RuntimeError(f"converse server failed to start: {self._failed}")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; pending replies (latency sleeps) end at once."""
        loop, thread = self._loop, self._thread
        if thread is not None and loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._sock.close()

    def __enter__(self) -> ConverseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            server = loop.run_until_complete(asyncio.start_server(
                self._connection, sock=self._sock, limit=1 << 20))
        except BaseException as exc:  # noqa: BLE001 -- reported by start()
            self._failed = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def configure(self, **changes: Any) -> ServerConfig:
        """Replace ``config`` by a copy with ``changes`` (validated); return it."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(ServerConfig)})
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        self.config = dataclasses.replace(self.config, **changes)
        return self.config

    @property
    def stats(self) -> dict[str, Any]:
        """Counts since start or the last reset: ``requests`` (all model requests) =
        ``ok`` (served without fault) + sum of ``by_fault`` + ``rate_limited`` +
        ``invalid``; ``by_kind`` counts classified requests; ``prompts_seen`` the
        distinct requests; ``user_agents`` the distinct User-Agent headers of model
        requests; ``cache`` the prompt cache's ``hits`` and ``misses`` (requests with a
        cache point long enough to cache), tokens read and written, and live entries."""
        now = self.clock()
        with self._lock:
            cache = {**self._counts["cache"],
                     "entries": sum(1 for e in self._cache.values() if now < e[1])}
            return {**self._counts, "by_kind": dict(self._counts["by_kind"]),
                    "by_fault": dict(self._counts["by_fault"]), "prompts_seen": len(self._seen),
                    "cache": cache, "user_agents": sorted(self._user_agents)}

    def reset(self) -> None:
        """Zero the stats and the per-request counters, empty the prompt cache, and refill
        the rate limit."""
        with self._lock:
            self._zero_counts()
            self._seen.clear()
            self._cache.clear()
            self._user_agents.clear()
            self._bucket = None

    def _zero_counts(self) -> None:
        self._counts = {"requests": 0, "ok": 0, "rate_limited": 0, "invalid": 0,
                        "by_kind": dict.fromkeys(PROMPT_KINDS, 0),
                        "by_fault": dict.fromkeys(FAULT_KINDS, 0),
                        "cache": {"hits": 0, "misses": 0, "read_tokens": 0,
                                  "write_tokens": 0}}

    def _count_invalid(self) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts["invalid"] += 1

    def _admit(self, request: _Request, started: float) -> _Ticket | _Error:
        """Count a chat request (either endpoint) that arrived at ``started``, apply the
        rate limit and draw its fault; raise :class:`_Invalid` for a prompt of no known
        kind."""
        config = self.config
        prompt, partial = _classify(request)
        key = hashlib.sha256(json.dumps(
            [config.seed, request.model, request.system, request.messages],
            ensure_ascii=False).encode()).hexdigest()
        with self._lock:
            self._counts["requests"] += 1
            self._counts["by_kind"]["continuation" if partial is not None else prompt.kind] += 1
            if config.rps_limit is not None:
                if self._bucket is None or self._bucket.rate != config.rps_limit:
                    self._bucket = _TokenBucket(config.rps_limit)
                if not self._bucket.take():
                    self._counts["rate_limited"] += 1
                    return _Error("ThrottlingException", _ERRORS["ThrottlingException"][1])
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            fault = _fault(config, key, n, partial is not None)
            if fault:
                self._counts["by_fault"][fault] += 1
            else:
                self._counts["ok"] += 1
        delay = config.latency_s + (config.slow_s if fault == "slow" else 0.0)
        return _Ticket(request, prompt, partial, n, fault, delay, started)

    def _answer(self, ticket: _Ticket) -> _Reply | _Error:
        """The reply to an admitted request (sent once its latency has passed)."""
        request, prompt, partial, fault = ticket.request, ticket.prompt, ticket.partial, \
            ticket.fault
        if fault in _FAULT_ERRORS:
            code = _FAULT_ERRORS[fault]
            return _Error(code, _ERRORS[code][1])

        flag_rate = self.config.judge_flag_rate if prompt.kind == "judge" else None
        reference = _reference_dir() if prompt.kind == "judge" and flag_rate is None else None
        stop_reason = "end_turn"
        if fault == "unparseable":
            text = _unparseable(prompt)
        elif fault == "bad_continuation":
            text = BAD_CONTINUATION
        elif partial is None:
            invalid_seed = (prompt.kind == "seed" and ticket.n == 0
                            and prompt.digest("invalid-seed") % 10 == 0)
            text = _full_text(prompt, invalid_seed, reference, flag_rate)
            if fault == "truncated":
                text, stop_reason = text[:len(text) // 2], "max_tokens"
        else:
            variants = (False, True) if prompt.kind == "seed" else (False,)
            candidates = [_full_text(prompt, v, reference, flag_rate) for v in variants]
            full = next((c for c in candidates if c.startswith(partial)), candidates[0])
            text = full[len(partial):]
        if request.max_tokens is not None and _tokens(text) > request.max_tokens:
            text, stop_reason = text[:request.max_tokens * 4], "max_tokens"
        input_tokens = _tokens(request.system + "".join(t for _, t in request.messages))
        if not request.cache_points:
            return _Reply(text, stop_reason, input_tokens)
        if self.config.reject_short_cache_points and any(
                p.tokens < self.config.cache_min_tokens for p in request.cache_points):
            return _Error("ValidationException", "A cachePoint comes before fewer than "
                          f"{self.config.cache_min_tokens} tokens.")
        read, write = self._use_cache(
            request, max(0.0, ticket.started + ticket.delay - time.monotonic()))
        return _Reply(text, stop_reason, input_tokens - read - write, read, write)

    def _use_cache(self, request: _Request, reply_in: float) -> tuple[int, int]:
        """(tokens read from, tokens written to) the prompt cache for ``request``'s cache
        points, whose reply goes out in ``reply_in`` seconds: the longest cached prefix
        that is live and readable is read, and every point's prefix (of at least
        ``cache_min_tokens``) is stored or refreshed. A prefix written by a request
        becomes readable when that request's reply is sent: requests sent together
        before any reply all miss, as on Bedrock."""
        config = self.config
        points = [p for p in request.cache_points if p.tokens >= config.cache_min_tokens]
        if not points:
            return 0, 0
        now = self.clock()
        with self._lock:
            read = 0
            for point in points:  # in order: each prefix holds the one before
                entry = self._cache.get(point.key)
                if entry is not None and entry[0] <= now < entry[1]:
                    read = point.tokens
            write = points[-1].tokens - read
            for point in points:
                entry = self._cache.get(point.key)
                ready = now + reply_in
                if entry is not None and now < entry[1]:
                    ready = min(ready, entry[0])
                self._cache[point.key] = (ready, now + config.cache_ttl_s)
            if len(self._cache) > 4096:
                self._cache = {k: e for k, e in self._cache.items() if now < e[1]}
            cache = self._counts["cache"]
            cache["hits" if read else "misses"] += 1
            cache["read_tokens"] += read
            cache["write_tokens"] += write
        return read, write

    # ------------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """One client connection: HTTP/1.1 requests with Content-Length bodies, kept
        alive unless the client asks to close."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection between requests
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    length = int(headers.get("content-length") or 0)
                except ValueError:
                    length = -1
                if len(parts) != 3 or length < 0 or "transfer-encoding" in headers:
                    _write(writer, *_error("ValidationException", "malformed or chunked "
                                           "request (send a Content-Length body)", 400),
                           close=True)
                    return
                method, path, version = parts
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(length) if length else b""
                arrived = time.monotonic()
                connection = headers.get("connection", "").lower()
                close = connection == "close" or (version == "HTTP/1.0"
                                                  and connection != "keep-alive")
                if method == "POST" and not path.startswith("/_admin/"):
                    with self._lock:
                        self._user_agents.add(headers.get("user-agent", ""))
                status, payload, extra = await self._route(method, path, body, arrived)
                if writer.is_closing():
                    return
                _write(writer, status, payload, extra, close=close)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return  # the client went away (e.g. its read timeout) or sent garbage
        except asyncio.CancelledError:
            return  # the server stops: end quietly (a cancelled handler task gets logged)
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes,
                     arrived: float) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "GET":
            if path == "/_admin/stats":
                return 200, self.stats, {}
            return _error("UnknownOperationException", f"no route for GET {path}", 404)
        if method != "POST":
            return _error("UnknownOperationException", f"no route for {method} {path}", 404)
        try:
            parsed = orjson.loads(body) if body else {}
        except ValueError:
            parsed = None
        if path == "/_admin/config":
            try:
                if not isinstance(parsed, dict):
                    raise ValueError("the body must be a JSON object")
                return 200, self.configure(**parsed).as_dict(), {}
            except (TypeError, ValueError) as exc:
                return _error("ValidationException", str(exc))
        if path == "/_admin/reset":
            self.reset()
            return 200, self.stats, {}
        if match := _CONVERSE_PATH.match(path):
            model = unquote(match.group(1))
            return await self._chat(lambda: _converse_request(model, parsed), arrived,
                                    openai=False)
        if path == "/v1/chat/completions":
            return await self._chat(lambda: _openai_request(parsed), arrived, openai=True)
        return _error("UnknownOperationException", f"no route for POST {path}", 404)

    async def _chat(self, parse: Callable[[], _Request], arrived: float, *,
                    openai: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer a chat request that arrived at ``arrived``: the reply is built at
        once and sent when the request's latency (counted from its arrival) has passed,
        so that the server's own CPU time does not add to the configured latency."""
        try:
            request = parse()
            ticket = self._admit(request, arrived)
        except _Invalid as exc:
            self._count_invalid()
            return _error("ValidationException", str(exc), openai=openai)
        if isinstance(ticket, _Error):
            return _error(ticket.code, ticket.message, openai=openai)
        outcome = self._answer(ticket)
        wait = ticket.started + ticket.delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        latency_ms = int((time.monotonic() - ticket.started) * 1000)
        if isinstance(outcome, _Error):
            return _error(outcome.code, outcome.message, openai=openai)
        if openai:
            return 200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": request.model,
                "choices": [{"index": 0,
                             "message": {"role": "assistant", "content": outcome.text},
                             "finish_reason": ("length" if outcome.stop_reason == "max_tokens"
                                               else "stop")}],
                "usage": {"prompt_tokens": outcome.input_tokens,
                          "completion_tokens": outcome.output_tokens,
                          "total_tokens": outcome.input_tokens + outcome.output_tokens}}, {}
        usage = {"inputTokens": outcome.input_tokens, "outputTokens": outcome.output_tokens,
                 "totalTokens": outcome.input_tokens + outcome.output_tokens}
        if outcome.cache_read is not None and outcome.cache_write is not None:
            usage["cacheReadInputTokens"] = outcome.cache_read
            usage["cacheWriteInputTokens"] = outcome.cache_write
            usage["totalTokens"] += outcome.cache_read + outcome.cache_write
        return 200, {
            "output": {"message": {"role": "assistant", "content": [{"text": outcome.text}]}},
            "stopReason": outcome.stop_reason, "usage": usage,
            "metrics": {"latencyMs": latency_ms}}, {}


def _error(code: str, message: str, status: int | None = None, *,
           openai: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An error reply: Bedrock's (``x-amzn-ErrorType`` header, ``message`` body, which
    botocore parses into a ``ClientError``) or OpenAI's (``error`` object)."""
    status = status or _ERRORS[code][0]
    if openai:
        return status, {"error": {"message": message, "type": _ERRORS[code][2]}}, {}
    return status, {"message": message}, {"x-amzn-ErrorType": code + _ERROR_TYPE_SUFFIX}


def _write(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any],
           headers: dict[str, str], *, close: bool = False) -> None:
    """Status line, headers and JSON body in one write (one wake-up of the client)."""
    body = orjson.dumps(payload)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Date: {formatdate(usegmt=True)}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", f"x-amzn-RequestId: {uuid.uuid4()}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        head.append("Connection: close")
    writer.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)


_MAX_CACHE_POINTS = 4  # Bedrock's limit per request


class _Prefix:
    """The blocks of a Converse request in prompt order (system, then messages), and the
    cache points among them."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.blocks: list[list[Any]] = []  # [where, text]: where = "system" or [role, index]
        self.texts: list[str] = []
        self.points: list[_CachePoint] = []

    def add(self, blocks: Any, what: str, where: Any) -> str:
        """The text of ``blocks`` (``system`` or a message's ``content``); records their
        cache points."""
        if not isinstance(blocks, list):
            raise _Invalid(f"{what} must be a list of content blocks")
        out = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if "cachePoint" in block:
                self._cache_point(block["cachePoint"], what)
            elif isinstance(block.get("text"), str):
                out.append(block["text"])
                self.blocks.append([where, block["text"]])
                self.texts.append(block["text"])
        return "".join(out)

    def _cache_point(self, point: Any, what: str) -> None:
        if not isinstance(point, dict) or point.get("type") != "default" \
                or point.get("ttl", "5m") not in ("5m", "1h"):
            raise _Invalid(f"{what}: a cachePoint must be {{\"type\": \"default\"}}")
        if not self.blocks:
            raise _Invalid(f"{what}: a cachePoint needs content before it")
        if len(self.points) == _MAX_CACHE_POINTS:
            raise _Invalid(f"at most {_MAX_CACHE_POINTS} cachePoint blocks per request")
        key = hashlib.sha256(json.dumps([self.model, self.blocks],
                                        ensure_ascii=False).encode()).hexdigest()
        self.points.append(_CachePoint(key, _tokens("".join(self.texts))))


def _converse_request(model: str, body: Any) -> _Request:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _Invalid("messages is required")
    prefix = _Prefix(model)
    system = prefix.add(body.get("system", []), "system", "system")
    messages = []
    for k, m in enumerate(body["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise _Invalid("each message needs a role of user or assistant")
        messages.append((m["role"], prefix.add(m.get("content"), "content", [m["role"], k])))
    inference = body.get("inferenceConfig") or {}
    max_tokens = inference.get("maxTokens") if isinstance(inference, dict) else None
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid("inferenceConfig.maxTokens must be a positive integer")
    return _Request(model, system, tuple(messages), max_tokens, tuple(prefix.points))


def _openai_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise _Invalid("message content must be a string or a list of parts")


def _openai_request(body: Any) -> _Request:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _Invalid("messages is required")
    system, messages = [], []
    for m in body["messages"]:
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            system.append(_openai_content(m.get("content")))
        elif role in ("user", "assistant"):
            messages.append((role, _openai_content(m.get("content"))))
        else:
            raise _Invalid("each message needs a role of system, user or assistant")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid("max_tokens must be a positive integer")
    return _Request(str(body.get("model", "")), "\n".join(system), tuple(messages), max_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--latency-s", type=float, default=defaults.latency_s)
    parser.add_argument("--rps-limit", type=float, default=defaults.rps_limit)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--fault-kinds", default=",".join(defaults.fault_kinds),
                        help="comma-separated, from: " + ", ".join(FAULT_KINDS))
    parser.add_argument("--fault-first", type=int, default=defaults.fault_first,
                        help="fault the first N sightings of every request")
    parser.add_argument("--slow-s", type=float, default=defaults.slow_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache-ttl-s", type=float, default=defaults.cache_ttl_s)
    parser.add_argument("--cache-min-tokens", type=int, default=defaults.cache_min_tokens)
    parser.add_argument("--judge-flag-rate", type=float, default=defaults.judge_flag_rate)
    args = parser.parse_args(argv)
    try:
        config = ServerConfig(
            latency_s=args.latency_s, rps_limit=args.rps_limit, fault_rate=args.fault_rate,
            fault_first=args.fault_first,
            fault_kinds=tuple(k for k in args.fault_kinds.split(",") if k),
            slow_s=args.slow_s, seed=args.seed, cache_ttl_s=args.cache_ttl_s,
            cache_min_tokens=args.cache_min_tokens, judge_flag_rate=args.judge_flag_rate)
    except ValueError as exc:
        parser.error(str(exc))
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with ConverseServer(config, host=args.host, port=args.port) as server:
        print(f"listening on {server.url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
