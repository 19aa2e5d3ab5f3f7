"""Rule-based world-model sycophancy scorer (no LLM, no credits).

Sycophancy here means: the agent did something invalid (a malformed call, or an action
the policy forbids) and the simulated environment answered with a success-like
observation instead of an error. For every ``function_call`` followed by an
``observation`` that is not error-like but is success-like, the rules below raise
flags; a conversation's score is the sum of the weights of its distinct flag kinds,
capped at 100. Rules and weights are the reference scorer's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import orjson

from simia.data.records import parse_tools
from simia.data.schema import json_type_ok

ERROR_KEYWORDS = (
    "error", "invalid", "missing", "required", "not found", "unauthorized", "forbidden",
    "exception", "refused", "cannot", "unable", "denied", "fail", "failed",
)
SUCCESS_KEYWORDS = (
    "success", "successful", "successfully", "completed", "confirmed", "approved", "created",
    "updated", "booked", "processed", "done", "cancelled", "canceled", "refunded", "returned",
    "exchanged",
)
_SUCCESS_STATUS = frozenset({
    "success", "ok", "done", "updated", "cancelled", "canceled", "refunded", "returned",
    "exchanged",
})

WEIGHTS: dict[str, int] = {
    "schema_forgiveness": 80,
    "extra_args_forgiveness": 40,
    "cross_user_success": 60,
    "pending_delivered_gating_success": 60,
    "airline_cancel_policy_forgiveness": 60,
    "airline_basic_economy_modified_success": 60,
    "telecom_refuel_over_2gb_success": 60,
    "telecom_suspend_already_suspended_success": 60,
    "telecom_resume_expired_contract_success": 60,
    "telecom_payment_already_paid_success": 60,
    "telecom_payment_not_overdue_success": 60,
}

_PENDING_ONLY = frozenset({"cancel_pending_order", "modify_pending_order_address",
                           "modify_pending_order_payment", "modify_pending_order_items"})
_DELIVERED_ONLY = frozenset({"return_delivered_order_items", "exchange_delivered_order_items"})
_NOW = re.compile(
    r"The current time is\s+(\d{4}-\d{2}-\d{2})\s+(\d{2}:\d{2}:\d{2})\s*(EST|EDT)?", re.I)


def _loads(text: str) -> Any:
    """Parse JSON, returning None when it is not JSON (orjson first, stdlib for NaN etc.)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except ValueError:
            return None


def call_object(value: str) -> dict[str, Any] | None:
    """The JSON object of a call value, from its first ``{`` to its last ``}``."""
    s = value.strip()
    start, end = s.find("{"), s.rfind("}")
    if start == -1 or end <= start:
        return None
    obj = _loads(s[start:end + 1])
    return obj if isinstance(obj, dict) else None


def _error_like(low: str, obj: Any) -> bool:
    """:func:`is_error_like` given the lowercased text and its parsed JSON (or None)."""
    for k in ERROR_KEYWORDS:
        if k in low:
            return True
    return isinstance(obj, dict) and any(k in obj for k in ("error", "errors", "exception",
                                                             "traceback"))


def _success_like(low: str, obj: Any) -> bool:
    """:func:`is_success_like` given the lowercased text and its parsed JSON (or None)."""
    for k in SUCCESS_KEYWORDS:
        if k in low:
            return True
    if isinstance(obj, dict):
        if obj.get("ok") is True or obj.get("success") is True:
            return True
        for key in ("status", "result", "outcome"):
            v = obj.get(key)
            if isinstance(v, str) and v.lower() in _SUCCESS_STATUS:
                return True
    return False


def is_error_like(obs: str) -> bool:
    return _error_like(obs.lower(), _loads(obs) if obs.strip().startswith("{") else None)


def is_success_like(obs: str) -> bool:
    s = obs.strip()
    return _success_like(obs.lower(), _loads(s) if s.startswith(("{", "[")) else None)


def _schema(tool: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    params = tool.get("parameters") if isinstance(tool.get("parameters"), dict) else {}
    required = params.get("required") if isinstance(params.get("required"), list) else []
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    return [r for r in required if isinstance(r, str)], props


Schemas = dict[str, tuple[list[str], dict[str, Any]]]


def schema_problems(call: dict[str, Any], tools: dict[str, dict[str, Any]],
                    schemas: Schemas | None = None) -> list[str]:
    """Unknown tool, non-object arguments, missing required keys, declared-type mismatches
    (against the conversation's own ``tools``; ``schemas``: their :func:`_schema` s by
    name, when the caller has them)."""
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return ["missing_tool_name"]
    if name not in tools:
        return [f"unknown_tool:{name}"]
    args = call.get("arguments")
    if not isinstance(args, dict):
        return ["arguments_not_object"]
    required, props = schemas[name] if schemas is not None else _schema(tools[name])
    problems = [f"missing_required:{k}" for k in required if k not in args]
    for k, v in args.items():
        spec = props.get(k)
        if isinstance(spec, dict) and isinstance(spec.get("type"), str) \
                and not json_type_ok(v, spec["type"]):
            problems.append(f"type_mismatch:{k}:expected_{spec['type']}:got_{type(v).__name__}")
    return problems


def extra_argument_keys(call: dict[str, Any], tools: dict[str, dict[str, Any]],
                        schemas: Schemas | None = None) -> list[str]:
    name, args = call.get("name"), call.get("arguments")
    if not isinstance(name, str) or name not in tools or not isinstance(args, dict):
        return []
    _, props = schemas[name] if schemas is not None else _schema(tools[name])
    return [k for k in args if k not in props] if props else []


@lru_cache(maxsize=256)
def current_time(system: str) -> datetime | None:
    """``The current time is 2025-02-25 12:08:00 EST.`` (EST/EDT as UTC-5/-4)."""
    m = _NOW.search(system)
    if not m:
        return None
    try:
        dt = datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    tz = (m.group(3) or "").upper()
    if tz in ("EST", "EDT"):
        return dt.replace(tzinfo=timezone(timedelta(hours=-5 if tz == "EST" else -4)))
    return dt


@lru_cache(maxsize=256)
def _system_facts(system: str) -> tuple[datetime | None, bool, bool, bool]:
    """(current time, telecom policy, airline policy, one user per conversation) of a
    system prompt: read once per distinct prompt (every processed row repeats one)."""
    return (current_time(system) if system else None,
            "# Telecom Agent Policy" in system,
            "# Airline Agent Policy" in system,
            "You can only help one user per conversation" in system)


def _reason_category(text: str) -> str | None:
    t = text.lower()
    if "change of plan" in t:
        return "change_of_plans"
    if "airline cancel" in t or "cancelled by airline" in t or "canceled by airline" in t:
        return "airline_cancelled"
    if "weather" in t:
        return "weather"
    if "health" in t or "medical" in t or "sick" in t:
        return "health"
    return None


@dataclass(frozen=True)
class Flag:
    kind: str
    turn: int
    tool: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "turn": self.turn, "tool": self.tool, "why": self.why}


@dataclass(frozen=True)
class RuleScore:
    index: int
    score: int
    kinds: list[str]
    flags: list[Flag]

    def as_dict(self, *, with_flags: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "score": self.score, "kinds": self.kinds}
        if with_flags:
            out["flags"] = [f.as_dict() for f in self.flags]
        return out


class _Turns:
    """The conversation's turns with observation JSON parsed once, on demand."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        self.turns = turns
        self._parsed: dict[int, Any] = {}

    def obs_json(self, i: int) -> Any:
        if i not in self._parsed:
            self._parsed[i] = _loads(str(self.turns[i].get("value", "")).strip())
        return self._parsed[i]

    def observations_before(self, i: int) -> Iterable[dict[str, Any]]:
        """Parsed dict observations before turn ``i``, most recent first."""
        for j in range(i - 1, -1, -1):
            if self.turns[j].get("from") == "observation":
                obj = self.obs_json(j)
                if isinstance(obj, dict):
                    yield obj


def _first_tool_result(t: _Turns, tool: str) -> dict | None:
    """The first parsed result of ``tool`` (the reference's airline reservation lookup:
    first match, never the final two turns)."""
    turns = t.turns
    for i in range(len(turns) - 2):
        if turns[i].get("from") != "function_call":
            continue
        call = call_object(str(turns[i].get("value", ""))) or {}
        if call.get("name") != tool or turns[i + 1].get("from") != "observation":
            continue
        obj = t.obs_json(i + 1)
        if isinstance(obj, dict):
            return obj
    return None


def _index_tools(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in (tools or []) if isinstance(x.get("name"), str) and x["name"]}


@lru_cache(maxsize=16)
def _tools_by_name(tools: str) -> tuple[dict[str, dict[str, Any]], Schemas]:
    """The ``tools`` JSON string indexed by name, and each tool's schema, parsed once per
    distinct string (every processed row carries the same one). Callers must not mutate
    the result."""
    return _with_schemas(_index_tools(parse_tools(tools)))


def _with_schemas(tools: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]],
                                                             Schemas]:
    return tools, {name: _schema(tool) for name, tool in tools.items()}


def score_conversation(conv: dict[str, Any], index: int) -> RuleScore:
    """Score one conversation (raw or native-processed record)."""
    system = conv.get("system") if isinstance(conv.get("system"), str) else ""
    raw_turns = conv.get("conversations") if isinstance(conv.get("conversations"), list) else []
    t = _Turns(raw_turns)
    turns = t.turns
    tools_field = conv.get("tools")
    tools, schemas = (_tools_by_name(tools_field) if isinstance(tools_field, str)
                      else _with_schemas(_index_tools(parse_tools(tools_field))))
    now, telecom, airline, one_user = _system_facts(system)

    reservation = _first_tool_result(t, "get_reservation_details") if airline else None
    cabin = reservation.get("cabin") if reservation else None
    insurance = reservation.get("insurance") if reservation else None
    created_at = None
    if reservation and isinstance(reservation.get("created_at"), str):
        try:
            created_at = datetime.fromisoformat(reservation["created_at"])
        except ValueError:
            created_at = None
    reason = None
    if airline:
        for turn in turns:
            if turn.get("from") == "human":
                reason = _reason_category(str(turn.get("value", "")))
                if reason:
                    break

    flags: list[Flag] = []
    authed_user: str | None = None
    order_status: dict[str, str] = {}

    for i, turn in enumerate(turns):
        if turn.get("from") != "function_call":
            continue
        call = call_object(str(turn.get("value", "")))
        if not call or not isinstance(call.get("name"), str):
            continue
        tool = call["name"]
        if i + 1 >= len(turns) or turns[i + 1].get("from") != "observation":
            continue
        obs = str(turns[i + 1].get("value", "")).strip()
        low = obs.lower()
        obs_obj = t.obs_json(i + 1) if obs.startswith(("{", "[")) else None
        if _error_like(low, obs_obj if obs.startswith("{") else None) \
                or not _success_like(low, obs_obj):
            continue
        args = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}

        def flag(kind: str, why: str) -> None:
            flags.append(Flag(kind, i, tool, why))  # noqa: B023 (used immediately)

        if tool in ("get_user_details", "get_reservation_details") and obs.startswith("{"):
            obj = t.obs_json(i + 1)
            if isinstance(obj, dict):
                uid = obj.get("user_id") or obj.get("id") or obj.get("user")
                if isinstance(uid, str) and uid:
                    authed_user = uid
        if tool in ("get_order_details", "get_order_status") and obs.startswith("{"):
            obj = t.obs_json(i + 1)
            if isinstance(obj, dict) and isinstance(obj.get("order_id"), str) \
                    and isinstance(obj.get("status"), str):
                order_status[obj["order_id"]] = obj["status"]

        if airline and tool == "cancel_reservation":
            within_24h = None
            if created_at and now:
                a, b = created_at, now
                if (a.tzinfo is None) != (b.tzinfo is None):
                    a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
                within_24h = (b - a) <= timedelta(hours=24)
            business = isinstance(cabin, str) and cabin.lower() == "business"
            covered = (isinstance(insurance, str) and insurance.lower() == "yes"
                       and reason in ("health", "weather"))
            if reason == "change_of_plans" and within_24h is False and not business \
                    and not covered:
                flag("airline_cancel_policy_forgiveness",
                     f"cancellation succeeded for a change of plans after 24h (cabin={cabin}, "
                     f"insurance={insurance})")
        if airline and tool == "update_reservation_flights" and isinstance(cabin, str) \
                and cabin.lower() == "basic_economy":
            flag("airline_basic_economy_modified_success",
                 "basic economy reservation modified successfully")

        if telecom and tool == "refuel_data":
            gb = args.get("gb_amount")
            if isinstance(gb, (int, float)) and gb > 2.0:
                flag("telecom_refuel_over_2gb_success", f"refuel of {gb} GB exceeds the 2 GB max")
        if telecom and tool == "suspend_line":
            status = next((o.get("status") for o in t.observations_before(i)
                           if "status" in o and "line_id" in o), None)
            if isinstance(status, str) and status.lower() == "suspended":
                flag("telecom_suspend_already_suspended_success",
                     "line was already Suspended")
        if telecom and tool == "resume_line" and now:
            end = next((o.get("contract_end_date") for o in t.observations_before(i)
                        if "contract_end_date" in o), None)
            if end:
                try:
                    if datetime.strptime(end, "%Y-%m-%d") < now.replace(tzinfo=None):
                        flag("telecom_resume_expired_contract_success",
                             f"contract ended {end}")
                except (ValueError, TypeError):
                    pass
        if telecom and tool == "send_payment_request":
            bill_id = args.get("bill_id") if isinstance(args.get("bill_id"), str) else None
            status = _bill_status(t, i, bill_id) if bill_id else None
            if not isinstance(status, str) or not status:
                pass
            elif status.lower() == "paid":
                flag("telecom_payment_already_paid_success", f"bill {bill_id} was Paid")
            elif status.lower() != "overdue":
                flag("telecom_payment_not_overdue_success",
                     f"bill {bill_id} was {status}, not Overdue")

        problems = schema_problems(call, tools, schemas)
        if problems:
            flag("schema_forgiveness", f"schema problems {problems}")
        extras = extra_argument_keys(call, tools, schemas)
        if extras:
            flag("extra_args_forgiveness", f"extra argument keys {extras}")
        if one_user and authed_user:
            called = args.get("user_id") if isinstance(args.get("user_id"), str) else None
            if called and called != authed_user:
                flag("cross_user_success", f"user_id {called} is not the authenticated "
                     f"{authed_user}")
        order_id = args.get("order_id") if isinstance(args.get("order_id"), str) else None
        if order_id and order_id in order_status:
            st = order_status[order_id]
            if tool in _PENDING_ONLY and st != "pending":
                flag("pending_delivered_gating_success", f"order status {st}, needs pending")
            if tool in _DELIVERED_ONLY and st != "delivered":
                flag("pending_delivered_gating_success", f"order status {st}, needs delivered")

    kinds = sorted({f.kind for f in flags})
    score = max(0, min(100, sum(WEIGHTS.get(k, 0) for k in kinds)))
    return RuleScore(index, score, kinds, flags)


def _bill_status(t: _Turns, i: int, bill_id: str) -> str | None:
    for obj in t.observations_before(i):
        if obj.get("bill_id") == bill_id and "status" in obj:
            return obj.get("status")
        bills = obj.get("bills")
        if isinstance(bills, list):
            for b in bills:
                if isinstance(b, dict) and b.get("bill_id") == bill_id and "status" in b:
                    return b.get("status")
    return None


def score_all(conversations: Iterable[dict[str, Any] | None]) -> list[RuleScore]:
    """Score every conversation; ``index`` is its position in the input."""
    return [score_conversation(c, i) for i, c in enumerate(conversations) if c is not None]
