"""Post-processing of raw generated conversations into LLaMA-Factory-ready SFT rows.

Each step is a small pure function ``turns -> turns`` that either returns the
(possibly modified) turns or raises :class:`Drop` saying why the whole conversation
must go. :func:`process_conversations` chains them, records every drop with its step
and reason, and counts every repair, so nothing disappears silently.

Steps, in order (the reference scripts' five steps plus the fork's additions):

0. ``split_embedded_turns``: a ``gpt`` value holding ``HUMAN:`` is split into gpt + human;
   a ``FUNCTION_CALL: {...}`` inside a gpt value becomes a ``function_call`` turn.
1. ``fix_arguments``: drop on ``<tool_`` / ``\\n[{``; repair string/quoted/missing arguments.
2. ``to_hermes`` (hermes format only): tool calls into gpt text, observations into human turns.
3. ``validate_tool_calls``: every call must match the domain's schemas (with ID fixing).
4. ``remove_think``: think blocks out, as the reference did.
5. ``replace_system_prompt``: instructions + the tau2 policy (+ tool preamble in hermes).
6. ``fix_turn_order``: merge same-role neighbours and trim to an order LLaMA-Factory accepts.

Two output formats:

* ``native`` (default): ``function_call``/``observation`` roles and a ``tools`` column, so
  LLaMA-Factory's ``qwen`` template renders exactly what vLLM renders at evaluation.
* ``hermes``: the reference's format (tool calls inside gpt text), for comparison.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from simia.domains.telecom import AGENT_INSTRUCTION, HERMES_INSTRUCTION, Domain
from simia.data.records import ROLES
from simia.data.schema import json_type_ok

TurnList = list[dict[str, Any]]


class OutputFormat(str, Enum):
    NATIVE = "native"
    HERMES = "hermes"


class Drop(Exception):
    """Raised by a step: the conversation is rejected for ``reason`` (detail says where)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Stats:
    """Repairs made while processing (conversation-level drops are recorded separately)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] += n


_ROLE_SET = frozenset(ROLES)


def _turn(role: str, value: str) -> dict[str, Any]:
    return {"from": role, "value": value}


# --------------------------------------------------------------------------- step 0

def split_embedded_turns(turns: TurnList, stats: Stats | None = None, *,
                         extract_calls: bool = True) -> TurnList:
    """Split ``gpt`` values that smuggle in a user turn or a tool call.

    ``"...?HUMAN: Sure, 555-1234"`` -> gpt ``"...?"`` + human ``"Sure, 555-1234"``;
    with ``extract_calls``, ``"FUNCTION_CALL:\\n{...}"`` -> a ``function_call`` turn (text
    before it stays gpt), which the validation step then checks like any other call.
    Turns with an unknown role are rejected here.
    """
    # the common case, checked in a few C-level passes: every role known and no gpt
    # value holds a marker (then every turn stays as it is)
    try:
        if _ROLE_SET.issuperset([t.get("from") for t in turns]):
            gpt = "\0".join([t.get("value") for t in turns if t.get("from") == "gpt"])
            if "HUMAN:" not in gpt and (not extract_calls or "FUNCTION_CALL:" not in gpt):
                return list(turns)
    except TypeError:  # an unhashable role or a value that is not text: see below
        pass
    out: TurnList = []
    for i, t in enumerate(turns):
        role = t.get("from")
        if role != "gpt":
            if role not in ROLES:
                raise Drop("unknown_role", f"turn {i} has role {role!r}")
            out.append(t)
            continue
        value = t.get("value")
        if "HUMAN:" not in value and (not extract_calls or "FUNCTION_CALL:" not in value):
            out.append(t)
            continue
        gpt_part, human_part = value, None
        if "HUMAN:" in value:
            gpt_part, human_part = value.split("HUMAN:", 1)
            if stats:
                stats.add("split_embedded_human")
        if extract_calls and "FUNCTION_CALL:" in gpt_part:
            text, call = gpt_part.split("FUNCTION_CALL:", 1)
            if text.strip():
                out.append(_turn("gpt", text.strip()))
            out.append(_turn("function_call", call.strip()))
            if stats:
                stats.add("split_embedded_function_call")
        elif gpt_part.strip():
            out.append(_turn("gpt", gpt_part.strip()))
        if human_part is not None and human_part.strip():
            out.append(_turn("human", human_part.strip()))
    return out


# --------------------------------------------------------------------------- step 1

def split_think(value: str) -> tuple[str, str]:
    """``"<think>T</think>\\n{json}"`` -> (``"<think>T</think>\\n"``, ``"{json}"``).

    The first ``<think>`` with a ``</think>`` after it; no such pair: (``""``, the value
    stripped)."""
    start = value.find("<think>")
    if start >= 0:
        end = value.find("</think>", start + 7)
        if end >= 0:
            return f"<think>{value[start + 7:end]}</think>\n", value[end + 8:].strip()
    return "", value.strip()


class _NotJSON:
    """A call body that does not parse (the parser's message, for the Drop detail)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


#: function_call value -> (think block, body, parsed body or _NotJSON); every step that
#: looks at a call reads the same value, so it is split and parsed once
_CALLS: dict[str, tuple[str, str, Any]] = {}
_CALLS_LIMIT = 1 << 16


def _call_parts(value: str) -> tuple[str, str, Any]:
    """(think block, body, parsed body) of a call value, cached. The body is parsed
    with orjson, with the standard library for what orjson refuses (e.g. NaN); a body
    that is not JSON gives a :class:`_NotJSON`. Callers must not mutate the result."""
    parts = _CALLS.get(value)
    if parts is None:
        think, body = split_think(value)
        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                parsed = _NotJSON(str(exc))
        if len(_CALLS) >= _CALLS_LIMIT:
            _CALLS.clear()
        parts = _CALLS[value] = (think, body, parsed)
    return parts


def fix_call_arguments(value: str) -> tuple[str, str | None]:
    """Repair one function_call value; returns (value, what was repaired or None).

    ``arguments`` given as a JSON string becomes a dict; a ``{...}`` string with single
    quotes is retried with double quotes; anything else (empty, not a dict, missing)
    becomes ``{}``. A value whose JSON does not parse is returned unchanged: a later
    step rejects it.
    """
    think, _, parsed = _CALLS.get(value) or _call_parts(value)
    if type(parsed) is not dict or type(parsed.get("arguments")) is dict:
        # not JSON, not an object (later steps reject it), or nothing to repair (later
        # steps re-serialise every call)
        return value, None
    call = dict(parsed)
    if "arguments" not in call:
        call["arguments"] = {}
        fix = "arguments_added"
    else:
        args = call["arguments"]
        fix = "arguments_replaced_by_empty"
        if isinstance(args, str):
            try:
                call["arguments"] = json.loads(args)
                fix = "arguments_string_parsed"
            except ValueError:
                stripped = args.strip()
                call["arguments"] = {}
                if stripped.startswith("{") and stripped.endswith("}"):
                    try:
                        call["arguments"] = json.loads(stripped.replace("'", '"'))
                        fix = "arguments_quotes_fixed"
                    except ValueError:
                        pass
        else:
            call["arguments"] = {}
    return think + json.dumps(call, ensure_ascii=False), fix


def fix_arguments(turns: TurnList, stats: Stats | None = None) -> TurnList:
    """Reference step 1: reject on ``<tool_``/``\\n[{``, then repair call arguments."""
    values = [t["value"] for t in turns]
    text = "\0".join(values)  # one search for the whole conversation (no marker holds \0)
    if "<tool_" in text or "\n[{" in text:
        for i, v in enumerate(values):
            if "<tool_" in v or "\n[{" in v:
                marker = "<tool_" if "<tool_" in v else "\\n[{"
                raise Drop("forbidden_marker", f"turn {i} contains {marker!r}")
    out = list(turns)
    for i, t in enumerate(turns):
        if t["from"] == "function_call":
            value, fix = fix_call_arguments(values[i])
            if fix and stats:
                stats.add(fix)
            if value is not values[i]:
                out[i] = {**t, "value": value}
    return out


# --------------------------------------------------------------------------- step 2

def parse_call(value: str, turn_index: int) -> tuple[str, dict[str, Any]]:
    """(think block, call object) of a function_call value, or Drop if it is not JSON.
    The call object is shared: do not mutate it."""
    think, _, call = _CALLS.get(value) or _call_parts(value)
    if type(call) is _NotJSON:
        raise Drop("invalid_function_call_json", f"turn {turn_index}: {call.message}")
    if not isinstance(call, dict):
        raise Drop("invalid_function_call_json",
                   f"turn {turn_index}: expected an object, got {type(call).__name__}")
    return think, call


def to_hermes(turns: TurnList, stats: Stats | None = None) -> TurnList:
    """Reference step 2: ``function_call`` -> gpt ``<tool_call>`` text, ``observation`` -> human."""
    out = []
    for i, t in enumerate(turns):
        if t["from"] == "function_call":
            think, call = parse_call(t["value"], i)
            payload = json.dumps({"name": call.get("name", ""),
                                  "arguments": call.get("arguments", {})})
            out.append(_turn("gpt", f"{think}<tool_call>\n{payload}\n</tool_call>\n"))
        elif t["from"] == "observation":
            out.append(_turn("human", t["value"]))
        else:
            out.append(t)
    return out


# --------------------------------------------------------------------------- step 3

_HERMES_CALL = re.compile(r"<tool_call>\s*({.*?})\s*</tool_call>", re.DOTALL)


#: id(domain) -> (domain, {tool name: (required, properties, {argument: (expected type,
#: array item type, id format or None)})}): each tool's schema read once
_SCHEMAS: dict[int, tuple[Domain, dict[str, Any]]] = {}


def _schemas(domain: Domain) -> dict[str, Any]:
    entry = _SCHEMAS.get(id(domain))
    if entry is None or entry[0] is not domain:
        compiled = {}
        for name, tool in domain.tools_by_name.items():
            params = tool.get("parameters", {})
            props = params.get("properties", {})
            compiled[name] = (params.get("required", []), props,
                              {key: (spec.get("type"), (spec.get("items") or {}).get("type"),
                                     domain.id_formats.get(key))
                               for key, spec in props.items()})
        entry = _SCHEMAS[id(domain)] = (domain, compiled)
    return entry[1]


def check_call(name: Any, arguments: Any, domain: Domain, where: str | int,
               stats: Stats | None = None) -> dict[str, Any]:
    """Validate one call against the domain's schemas; returns the (ID-fixed) arguments.
    ``where`` names the call in a Drop's detail (an int ``i`` reads ``turn i``)."""
    schemas = _schemas(domain)
    if not name or name not in schemas:
        raise Drop("unknown_tool", f"{_where(where)}: {name!r} is not a {domain.name} tool")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise Drop("arguments_not_object",
                       f"{_where(where)}: {name} arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise Drop("arguments_not_object", f"{_where(where)}: {name} arguments are a "
                   f"{type(arguments).__name__}")
    required, props, checks = schemas[name]
    for req in required:
        if req not in arguments:
            raise Drop("missing_required_argument", f"{_where(where)}: {name} lacks {req!r}")
    for key in arguments:
        if key not in props:
            raise Drop("unexpected_argument",
                       f"{_where(where)}: {name} has no parameter {key!r}")
    fixed: dict[str, Any] = {}
    for key, value in arguments.items():
        expected, items, id_format = checks[key]
        # the reference's check: a bool passes as an integer or number here
        if not json_type_ok(value, expected, items, bool_is_number=True):
            raise Drop("argument_type_mismatch", f"{_where(where)}: {name}.{key} should be "
                       f"{expected}, got {type(value).__name__}")
        if id_format and isinstance(value, str):
            prefix, pattern = id_format
            if value.isdigit() and value.isascii():
                value = prefix + value
                if stats:
                    stats.add("id_prefix_added")
            if not pattern.match(value):
                raise Drop("invalid_id_format", f"{_where(where)}: {name}.{key}={value!r} "
                           f"does not match {pattern.pattern}")
        fixed[key] = value
    return fixed


def _where(where: str | int) -> str:
    return f"turn {where}" if isinstance(where, int) else where


def _is_think_tool(turns: TurnList) -> bool:
    for t in turns:
        v = t["value"]
        if t["from"] == "function_call":
            _, body, data = _CALLS.get(v) or _call_parts(v)
            if type(data) is _NotJSON:
                if '"name": "think"' in body or '"name":"think"' in body:
                    return True
            elif isinstance(data, dict) and data.get("name") == "think":
                return True
        if "<tool_call>" in v:
            for m in _HERMES_CALL.finditer(v):
                try:
                    data = json.loads(m.group(1))
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("name") == "think":
                    return True
                if data is None and ('"name": "think"' in m.group(1)
                                     or '"name":"think"' in m.group(1)):
                    return True
    return False


def validate_tool_calls(turns: TurnList, domain: Domain, fmt: OutputFormat,
                        stats: Stats | None = None) -> TurnList:
    """Reference step 3: every tool call must be a valid call of a domain tool.

    Rejects calls of a ``think`` tool, unknown tools, non-object arguments, missing
    required or unexpected arguments and type mismatches; digit-only telecom IDs get
    their ``C``/``L``/``B`` prefix first and must then match ``^C\\d+$`` etc.
    """
    if _is_think_tool(turns):
        raise Drop("think_tool_call", "a call to a tool named 'think'")
    out = []
    hermes = fmt is OutputFormat.HERMES
    for i, t in enumerate(turns):
        role, value = t["from"], t["value"]
        if role == "function_call":
            think, call = parse_call(value, i)
            args = check_call(call.get("name"), call.get("arguments", {}), domain, i, stats)
            if hermes:  # the reference's exact text (it is trained on)
                payload = json.dumps({"name": call["name"], "arguments": args})
            else:  # re-parsed and re-rendered by the chat template: any valid JSON will do
                payload = orjson.dumps({"name": call["name"], "arguments": args}).decode()
            t = {"from": "function_call", "value": think + payload}
        elif role == "gpt" and "<tool_call>" in value:
            matches = list(_HERMES_CALL.finditer(value))
            for m in reversed(matches):
                try:
                    data = json.loads(m.group(1))
                    name, raw_args = data["name"], data["arguments"]
                except (ValueError, KeyError, TypeError):
                    raise Drop("invalid_function_call_json",
                               f"turn {i}: unparseable <tool_call> block") from None
                args = check_call(name, raw_args, domain, i, stats)
                block = "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + \
                    "\n</tool_call>"
                value = value[: m.start()] + block + value[m.end():]
            t = _turn("gpt", value)
        out.append(t)
    return out


# --------------------------------------------------------------------------- step 4

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_ANY_TOOL_CALL = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)
_NAME_FIELD = re.compile(r'"name"\s*:\s*"[^"]+?"')
_ARGS_FIELD = re.compile(r'"arguments"\s*:\s*')
_CALLED_NAME = re.compile(r'<tool_call>.*?"name"\s*:\s*"([^"]+)".*?</tool_call>', re.DOTALL)
_PLAIN_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')


def _has_tool_use(content: str) -> bool:
    if "<tool_call>" in content and _ANY_TOOL_CALL.search(content):
        return True
    return bool(_NAME_FIELD.search(content) and _ARGS_FIELD.search(content))


def _strip_think_tags(content: str) -> str:
    return content.replace("<think>\n", "").replace("</think>", "")


def remove_think(turns: TurnList, fmt: OutputFormat, stats: Stats | None = None) -> TurnList:
    """Reference step 4: a gpt turn that only thinks is deleted; think spans go.

    Hermes (as the reference): a tool-call turn keeps its thought as plain text, and
    one without a thought gets ``I will call the function NAME.`` before the call.
    Native: a function_call value becomes the bare call JSON (tau2's agent sends
    either a message or a tool call, never thoughts with it).
    """
    out = []
    native = fmt is OutputFormat.NATIVE
    for t in turns:
        role, content = t["from"], t["value"]
        if native:
            if role == "function_call":
                _, body = split_think(content)
                if body != content:
                    t = _turn(role, body)
                out.append(t)
                continue
            if "think>" not in content:  # nothing below applies (native, no think tag)
                out.append(t)
                continue
        has_think = "<think>" in content and _THINK_BLOCK.search(content) is not None
        if has_think:
            tool_use = _has_tool_use(content)
            if role == "gpt" and not tool_use:
                if stats:
                    stats.add("thinking_only_turn_removed")
                continue
            if not tool_use:
                content = _THINK_BLOCK.sub("", content)
        elif fmt is OutputFormat.HERMES and _has_tool_use(content):
            m = _CALLED_NAME.search(content) or _PLAIN_NAME.search(content)
            if m and "<tool_call>" in content:
                content = content.replace(
                    "<tool_call>", f"I will call the function {m.group(1)}.\n\n<tool_call>", 1)
        content = _strip_think_tags(content)
        out.append(t if content == t["value"] else _turn(role, content))
    if not out:
        raise Drop("empty_after_think_removal", "no turn left")
    return out


# --------------------------------------------------------------------------- step 5

HERMES_TOOL_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def system_prompt(domain: Domain, policy: str, fmt: OutputFormat) -> str:
    """The system prompt every processed conversation gets.

    Native: exactly tau2's agent system prompt (instructions + policy); the tools travel
    in the ``tools`` column and the chat template renders them. Hermes: the reference's
    telecom instructions + policy + the Qwen tool preamble with one tool per line.
    """
    if fmt is OutputFormat.NATIVE:
        return (f"<instructions>\n{AGENT_INSTRUCTION}\n</instructions>\n"
                f"<policy>\n{policy}\n</policy>")
    tools = "\n".join(json.dumps({"type": "function", "function": t}) for t in domain.tools)
    return (f"<instructions>\n{HERMES_INSTRUCTION}\n</instructions>\n<policy>\n{policy}\n"
            "</policy>" + HERMES_TOOL_PREAMBLE.format(tools=tools))


# --------------------------------------------------------------------------- step 6

_USER_SIDE = ("human", "observation")
_ASSISTANT_SIDE = ("gpt", "function_call")


def _merge_same_role(turns: TurnList, roles: Sequence[str], stats: Stats | None) -> TurnList:
    out: TurnList = []
    previous = None
    merged = 0
    for t in turns:
        role = t["from"]
        if role == previous and role in roles:
            out[-1] = {"from": role, "value": out[-1]["value"] + "\n" + t["value"]}
            merged += 1
        else:
            out.append(t)
            previous = role
    if merged and stats:
        stats.add("same_role_turns_merged", merged)
    return out


def check_turn_order(turns: TurnList) -> None:
    """LLaMA-Factory's ShareGPT rule: user side (human/observation) at even positions,
    assistant side (gpt/function_call) at odd ones, ending on the assistant side; an
    observation answers the call right before it; no empty turn."""
    if not turns:
        raise Drop("bad_turn_order", "no turns")
    for i, t in enumerate(turns):
        side = _USER_SIDE if i % 2 == 0 else _ASSISTANT_SIDE
        if t["from"] not in side:
            raise Drop("bad_turn_order", f"turn {i} is {t['from']!r}, expected one of {side}")
        if not t["value"].strip():
            raise Drop("empty_turn", f"turn {i} ({t['from']}) is empty")
        if t["from"] == "observation" and (i == 0 or turns[i - 1]["from"] != "function_call"):
            raise Drop("observation_without_tool_call", f"turn {i}")
    if len(turns) % 2:
        raise Drop("bad_turn_order", "ends on the user side")


def fix_turn_order(turns: TurnList, fmt: OutputFormat, stats: Stats | None = None) -> TurnList:
    """Bring the turns into an order LLaMA-Factory accepts, or reject the conversation.

    Both formats: consecutive same-role turns are joined with a newline and a trailing
    user turn is dropped (the fork's ``merge_consecutive_turns``). Native also drops
    a gpt message right before a tool call (tau2's agent never sends both; the chat
    template cannot express it), trims to end on an assistant turn, and rejects a
    tool call with no result, a result with no call, or a user turn right after a
    result (no assistant reply in between).
    """
    if not turns or turns[0]["from"] != "human":
        raise Drop("first_turn_not_human",
                   f"first turn is {turns[0]['from']!r}" if turns else "no turns")
    if fmt is OutputFormat.HERMES:
        out = _merge_same_role(turns, ("human", "gpt"), stats)
        if len(out) % 2 and out[-1]["from"] == "human":
            out = out[:-1]
            if stats:
                stats.add("trailing_user_turn_removed")
        check_turn_order(out)
        return out
    out = _merge_same_role(turns, ("human", "gpt"), stats)
    kept: TurnList = []
    removed = 0
    for t, after in zip(out, out[1:] + [None], strict=True):
        if after is not None and t["from"] == "gpt" and after["from"] == "function_call":
            removed += 1
        else:
            kept.append(t)
    if removed and stats:
        stats.add("text_before_tool_call_removed", removed)
    # only a removal can make same-role neighbours
    out = _merge_same_role(kept, ("human", "gpt"), stats) if removed else kept
    while out and out[-1]["from"] != "gpt":
        out.pop()
        if stats:
            stats.add("trailing_turn_removed")
    for i, t in enumerate(out):
        if t["from"] == "function_call" and (i + 1 == len(out)
                                             or out[i + 1]["from"] != "observation"):
            raise Drop("tool_call_without_result", f"turn {i}")
        if t["from"] == "human" and i and out[i - 1]["from"] == "observation":
            raise Drop("missing_reply_after_tool_result", f"turn {i}")
    check_turn_order(out)
    return out


# --------------------------------------------------------------------------- pipeline

@dataclass(frozen=True)
class Reject:
    """One dropped conversation: where it was in the input, which step, why."""

    index: int
    step: str
    reason: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "step": self.step, "reason": self.reason,
                "detail": self.detail}


@dataclass
class ProcessResult:
    kept: list[dict[str, Any]]
    rejects: list[Reject]
    stats: Stats
    total: int
    fmt: OutputFormat
    extract_embedded_calls: bool

    def summary(self) -> dict[str, Any]:
        by_step: dict[str, Counter[str]] = {}
        for r in self.rejects:
            by_step.setdefault(r.step, Counter())[r.reason] += 1
        return {
            "format": self.fmt.value,
            "extract_embedded_calls": self.extract_embedded_calls,
            "input": self.total,
            "kept": len(self.kept),
            "rejected": len(self.rejects),
            "kept_fraction": round(len(self.kept) / self.total, 4) if self.total else 0.0,
            "rejected_by_reason": dict(sorted(Counter(r.reason for r in self.rejects).items())),
            "rejected_by_step": {s: dict(sorted(c.items())) for s, c in by_step.items()},
            "repairs": dict(sorted(self.stats.counts.items())),
        }


_META_SKIP = frozenset({"conversations", "system", "tools"})


def process_conversation(conv: dict[str, Any], domain: Domain, fmt: OutputFormat,
                         stats: Stats, extract_calls: bool) -> TurnList:
    """Run the steps on one conversation's turns; a Drop carries the step's name in
    ``drop.step``."""
    step = "split_embedded_turns"
    try:
        turns = split_embedded_turns(conv["conversations"], stats, extract_calls=extract_calls)
        step = "fix_arguments"
        turns = fix_arguments(turns, stats)
        if fmt is OutputFormat.HERMES:
            step = "to_hermes"
            turns = to_hermes(turns, stats)
        step = "validate_tool_calls"
        turns = validate_tool_calls(turns, domain, fmt, stats)
        step = "remove_think"
        turns = remove_think(turns, fmt, stats)
        step = "fix_turn_order"
        return fix_turn_order(turns, fmt, stats)
    except Drop as drop:
        drop.step = step  # type: ignore[attr-defined]
        raise


def process_conversations(
    raw: Sequence[dict[str, Any] | None],
    domain: Domain,
    policy: str,
    fmt: OutputFormat = OutputFormat.NATIVE,
    invalid: Sequence[Any] = (),
    extract_embedded_calls: bool | None = None,
) -> ProcessResult:
    """Process every raw conversation.

    ``None`` entries are records that failed loading (listed in ``invalid``); they
    become rejects of step ``load``. ``extract_embedded_calls`` (default: on for
    native, off for hermes) turns ``FUNCTION_CALL:`` text inside gpt turns into real,
    validated tool calls; the reference scripts did not, so hermes keeps their
    behaviour (and their kept set) unless asked otherwise.
    """
    fmt = OutputFormat(fmt)
    if extract_embedded_calls is None:
        extract_embedded_calls = fmt is OutputFormat.NATIVE
    stats = Stats()
    system = system_prompt(domain, policy, fmt)
    tools_column = json.dumps(domain.tools, ensure_ascii=False)
    kept: list[dict[str, Any]] = []
    rejects = [Reject(r.index, "load", "invalid_record", f"field '{r.field}': {r.message}")
               for r in invalid]
    for index, conv in enumerate(raw):
        if conv is None:
            continue
        try:
            turns = process_conversation(conv, domain, fmt, stats, extract_embedded_calls)
        except Drop as drop:
            rejects.append(Reject(index, getattr(drop, "step", "?"), drop.reason, drop.detail))
            continue
        row: dict[str, Any] = {"conversations": turns, "system": system}
        if fmt is OutputFormat.NATIVE:
            row["tools"] = tools_column
        row["source_index"] = index
        for key, value in conv.items():
            if key not in _META_SKIP and key not in row:
                row[key] = value
        kept.append(row)
    rejects.sort(key=lambda r: r.index)
    # the cache holds the input's call strings: let them go with the input
    _CALLS.clear()
    return ProcessResult(kept, rejects, stats, len(raw), fmt, extract_embedded_calls)

