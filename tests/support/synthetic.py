"""Synthetic raw telecom conversations with the shape, size and quirks of real ones.

Used by tests, the end-to-end fixture and the benchmarks where the real generated
files are not at hand. Records look like the generator's output (about 19 KB each:
a ~6 KB system prompt, the 13 tool schemas as a JSON string, ~20 turns) and carry the
quirks the post-processing exists for: ``HUMAN:`` and ``FUNCTION_CALL:`` embedded in
gpt turns, think blocks, calls missing required arguments, unknown tools, digit-only
IDs, a message right before a tool call, same-role neighbours and trailing user
turns. In ``sycophantic`` mode invalid calls get success-like observations; in
``strict`` mode they get errors. Fully deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from typing import Any

from simia.domains.telecom import HERMES_INSTRUCTION, TELECOM_TOOLS

NOW = "2025-02-25 12:08:00 EST"
_POLICY_TOPICS = (
    "identity verification", "line suspension", "overdue bills", "data refueling",
    "international roaming", "plan changes", "technical support", "human transfer",
)


def synthetic_policy(seed: int = 0, size: int = 5600) -> str:
    """A policy-like text of about ``size`` characters (not tau2's text)."""
    rng = random.Random(seed)
    parts = ["# Telecom Agent Policy", "", f"The current time is {NOW}.", ""]
    while sum(len(p) + 1 for p in parts) < size:
        topic = rng.choice(_POLICY_TOPICS)
        parts.append(f"## {topic.title()}")
        for _ in range(rng.randint(2, 4)):
            parts.append(f"- When handling {topic}, the agent must check the customer's account "
                         f"state with the available tools before acting (rule {rng.randint(1, 99)})"
                         ", and must refuse requests the policy does not allow.")
        parts.append("")
    return "\n".join(parts)


def _system(seed: int) -> str:
    return (f"<instructions>\n{HERMES_INSTRUCTION}\n</instructions>\n<policy>\n"
            f"{synthetic_policy(seed)}\n</policy>")


_TOOLS_JSON = json.dumps(TELECOM_TOOLS)
_FIRST = ("Michael", "Sarah", "David", "Emma", "James", "Olivia", "Robert", "Sophia")
_LAST = ("Chen", "Johnson", "Garcia", "Smith", "Nguyen", "Brown", "Patel", "Miller")
_FILLER = (
    "I completely understand how frustrating this must be, and I'm here to help you get it "
    "sorted out as quickly as possible. ",
    "Just so you know, everything we do today will follow our account security procedures. ",
    "Please let me know if anything I say doesn't match what you're seeing on your device. ",
)


class _Conv:
    def __init__(self, rng: random.Random, mode: str) -> None:
        self.rng, self.mode, self.turns = rng, mode, []  # type: ignore[var-annotated]

    def add(self, role: str, value: str) -> None:
        self.turns.append({"from": role, "value": value})

    def text(self, core: str) -> str:
        return core + " " + "".join(self.rng.sample(_FILLER, self.rng.randint(1, 3)))

    def call(self, name: str, args: dict[str, Any], observation: str,
             error: str | None = None) -> None:
        body = json.dumps({"name": name, "arguments": args})
        if self.rng.random() < 0.5:
            body = (f"<think>\nThe customer needs help; I will call the function {name} "
                    f"to check the account.\n</think>\n{body}")
        if self.rng.random() < 0.04:  # the generator sometimes hides a call in gpt text
            self.add("gpt", "FUNCTION_CALL:\n" + body)
        else:
            self.add("function_call", body)
        if error and self.mode == "strict":
            observation = json.dumps({"error": error, "fix": "Provide a valid value."})
        self.add("observation", observation)


def _conversation(rng: random.Random, index: int, mode: str) -> list[dict[str, Any]]:
    c = _Conv(rng, mode)
    num = rng.randint(1000, 9999)
    cid, lid, bid = f"C{num}", f"L{num}", f"B{num + 2}"
    phone = f"555-{rng.randint(100, 999)}-{num}"
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    scenario = rng.choice(("roaming", "bill", "refuel", "suspend", "resume", "usage"))
    c.add("human", f"Hi, I need help with my {scenario} issue on my phone line. It started "
                   "yesterday and I've already restarted the phone twice.")
    ask = c.text("I'd be happy to help. To access your account I first need to verify your "
                 "identity. Could you give me the phone number on the account?")
    if rng.random() < 0.6:
        c.add("gpt", ask + f"HUMAN: Sure, it's {phone}.")
    else:
        c.add("gpt", ask)
        c.add("human", f"Sure, it's {phone}.")
    customer = {"customer_id": cid, "full_name": name, "date_of_birth": "1985-03-14",
                "email": f"{name.split()[0].lower()}@example.com", "phone_number": phone,
                "account_status": "Active", "line_ids": [lid], "bill_ids": [bid],
                "created_date": "2021-08-05",
                "payment_methods": [{"type": "Credit Card", "last4": str(num)}]}
    c.call("get_customer_by_phone", {"phone_number": phone}, json.dumps(customer))
    if rng.random() < 0.7:
        c.add("gpt", c.text(f"Thank you, {name.split()[0]}. I found your account. Let me look "
                            "at your line details now."))
    line_status = "Suspended" if scenario == "resume" else "Active"
    line = {"line_id": lid, "phone_number": phone, "status": line_status, "plan_id": "P1001",
            "roaming_enabled": False, "data_used_gb": 4.8, "contract_end_date": "2026-01-31"}
    c.call("get_details_by_id", {"id": lid}, json.dumps(line))
    c.add("gpt", c.text(f"Your line {lid} is currently {line_status}."))
    c.add("human", "OK, please go ahead and fix it for me.")

    invalid = rng.random() < 0.6
    unknown = rng.random() < 0.08
    args: dict[str, Any] = {"customer_id": cid, "line_id": lid}
    if scenario == "bill":
        tool, args = "send_payment_request", {"customer_id": cid, "bill_id": bid}
    elif scenario == "refuel":
        tool, args["gb_amount"] = "refuel_data", rng.choice([1, 2, 2.0, 3, 5])
    elif scenario == "suspend":
        tool, args["reason"] = "suspend_line", "travelling abroad"
    else:
        tool = {"roaming": "enable_roaming", "resume": "resume_line",
                "usage": "get_data_usage"}[scenario]
    if rng.random() < 0.1:
        args["customer_id"] = str(num)  # digit-only ID: fixable
    error = None
    if unknown:
        tool, error = "make_payment", "Unknown tool make_payment"
    elif invalid:
        args.pop("customer_id")
        error = "Missing required parameter customer_id"
    if rng.random() < 0.5:
        c.add("gpt", c.text("Let me take care of that for you right away."))
    success = {"success": True, "status": "success", "message": f"{tool} completed "
               "successfully", "line_id": lid}
    c.call(tool, args, json.dumps(success), error)
    c.add("gpt", c.text("All done: the change has been applied to your account."))
    if rng.random() < 0.3:
        c.add("gpt", "Is there anything else I can help you with today?")
    c.add("human", "No, that's everything. Thanks a lot for your help!")
    c.add("gpt", c.text(f"You're welcome, {name.split()[0]}! Have a great day."))
    if rng.random() < 0.06:
        c.add("human", "Bye!")
    return c.turns


def _check_mode(mode: str) -> None:
    if mode not in ("base", "strict", "sycophantic"):
        raise ValueError(f"mode must be base, strict or sycophantic, got {mode!r}")


def synthetic_turns(*, seed: int = 0, mode: str = "sycophantic") -> list[dict[str, Any]]:
    """The turns of ``generate_raw(1, seed=seed, mode=mode)[0]``, without building the
    record's ~5,600-character system prompt (most of that call's time): what a simulated
    generator reply needs."""
    _check_mode(mode)
    return _conversation(random.Random(f"{seed}:{mode}"), 0, mode)


def generate_raw(n: int, *, seed: int = 0, mode: str = "sycophantic") -> list[dict[str, Any]]:
    """``n`` raw conversations in the generator's record shape."""
    _check_mode(mode)
    rng = random.Random(f"{seed}:{mode}")
    system = _system(seed)
    out = []
    for i in range(n):
        turns = _conversation(rng, i, mode)
        out.append({
            "conversations": turns,
            "system": system,
            "tools": _TOOLS_JSON,
            "based_on_sample": f"seed_{rng.randint(0, 10**9)}",
            "sample_turns": rng.randint(8, 30),
            "generated_turns": len(turns),
            "domain": "general",
            "simulator_mode": mode,
            "sample_question": turns[0]["value"],
        })
    return out
