"""A small tau2-style evaluator for machines where tau2-bench cannot be installed (CI).

tau2-bench is not on PyPI, so CI cannot run ``tau2 run``. This module takes the same
command-line arguments, drives the served model through the same OpenAI API with the
same kind of requests (system prompt, the agent's greeting, the user's turns; the 13
telecom tools with ``tool_choice: "auto"``; tool results fed back as ``tool`` messages)
and writes tau2's ``results.json`` format (``info``, ``tasks``, ``simulations`` with
``termination_reason`` and ``reward_info``), so the rest of the pipeline (parsing, pass^k,
the report) runs unchanged.

What is simpler than tau2: the user is scripted (each task lists its user turns), tool
results come from each task's small table instead of a live database, and the
"environment" whose end state is checked is the set of tool calls the agent made. It is
a test harness for the pipeline, not a benchmark: its scores are not comparable with
tau2's. Where the analysis looks, it behaves like tau2-bench v1.0.1:

- **grading** (:func:`grade`): telecom's reward basis ``["ENV_ASSERTION"]``; each task's
  ``env_assertions`` say which calls must have been made (``met``: a call of that name
  with at least those arguments), the reward is 1.0 when every one is met. Beside it, in
  tau2's shapes: ``action_checks`` (tau2's matching of each expected action against every
  tool call, with the tool's ``tool_type`` read/write/generic and the action's
  ``requestor``) and ``db_check`` (``db_match``: the write calls made are exactly the
  expected ones). A simulation that ended otherwise than ``agent_stop`` or ``user_stop``
  gets tau2's reward 0.0 with no checks;
- **infrastructure errors**: an exception inside a simulation (the server unreachable
  after the client's retries, a malformed response, tool-call arguments that are not a
  JSON object, an empty or whitespace-only reply, which tau2's message validation
  rejects) re-runs the whole simulation up to ``--max-retries`` times (tau2's default 3),
  then stores tau2's placeholder: ``infrastructure_error``, no messages, ``reward_info``
  null, the error in ``info``;
- **auto-resume** drops infrastructure errors from the saved results and runs them again
  (tau2's ``runner/checkpoint.py``).

Standard library only (it runs inside the evaluator image), apart from the tool schemas
of :mod:`simia.domains.telecom` and the results file's name (:mod:`simia.layout`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simia.layout import EvalFiles

__all__ = ["CI_TASKS", "TOOL_TYPES", "InfrastructureError", "grade", "main", "run_evaluation",
           "simulate_with_retries"]

GREETING = "Hi! How can I help you today?"
STOP = "###STOP###"
INFRASTRUCTURE_ERROR = "infrastructure_error"
#: tau2 grades only these; any other ending gets reward 0.0 and no checks
GRADED_TERMINATIONS = ("agent_stop", "user_stop")
#: tau2's ``--max-retries`` default (``DEFAULT_RETRY_ATTEMPTS``): re-runs of a simulation
DEFAULT_MAX_RETRIES = 3

#: ``ToolType`` of each telecom agent tool in tau2-bench v1.0.1 (``@is_tool(...)`` in
#: ``domains/telecom/tools.py``)
TOOL_TYPES: dict[str, str] = {
    "get_customer_by_phone": "read", "get_customer_by_id": "read",
    "get_customer_by_name": "read", "get_details_by_id": "read",
    "get_bills_for_customer": "read", "get_data_usage": "read",
    "suspend_line": "write", "resume_line": "write", "send_payment_request": "write",
    "enable_roaming": "write", "disable_roaming": "write", "refuel_data": "write",
    "transfer_to_human_agents": "generic",
}


class InfrastructureError(Exception):
    """A simulation could not run (tau2 stores it as ``infrastructure_error`` after its
    retries, and ``--auto-resume`` runs it again)."""

CI_POLICY = (
    "You are a telecom customer-service agent. Identify the customer (by phone number, "
    "customer id, or full name and date of birth) before acting on their account. Use the "
    "tools to look up lines and bills and to act on them; never invent results. Transfer to "
    "a human agent only when the request is outside what the tools allow.")


def _action(name: str, *, compare_args: list[str] | None = None, **arguments: Any
            ) -> dict[str, Any]:
    """tau2's ``Action``: ``compare_args`` None compares every argument of the call."""
    return {"action_id": f"{name}_0", "requestor": "assistant", "name": name,
            "arguments": arguments, "info": None, "compare_args": compare_args}


def _assertion(action: dict[str, Any]) -> dict[str, Any]:
    """tau2's ``EnvAssertion`` on our environment (the calls made): ``action`` was done."""
    args = {k: v for k, v in action["arguments"].items()
            if action["compare_args"] is None or k in action["compare_args"]}
    return {"env_type": "assistant", "func_name": "assert_tool_called",
            "arguments": {"name": action["name"], "arguments": args}, "assert_value": True,
            "message": f"{action['name']} called with {json.dumps(args, sort_keys=True)}"}


def _task(task_id: str, purpose: str, turns: list[str], actions: list[dict[str, Any]],
          tool_results: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": task_id,
        "description": {"purpose": purpose, "relevant_policies": None, "notes": None},
        "user_scenario": {"persona": None, "instructions": {
            "domain": "telecom", "reason_for_call": purpose, "known_info": turns[0],
            "unknown_info": None, "task_instructions": " / ".join(turns[1:]) or None}},
        "initial_state": None,
        "evaluation_criteria": {"actions": actions,
                                "env_assertions": [_assertion(a) for a in actions],
                                "communicate_info": None, "nl_assertions": None,
                                "reward_basis": ["ENV_ASSERTION"]},
        # ours (tau2 has no such field): the scripted user and the tool results
        "simia_ci": {"user_turns": turns, "tool_results": tool_results},
    }


_CUSTOMER = {"customer_id": "C1001", "full_name": "Dana Reyes", "phone_number": "555-0100",
             "line_ids": ["L1001", "L1002"], "bill_ids": ["B1001"]}
_LINE = {"line_id": "L1001", "phone_number": "555-0100", "status": "Active",
         "roaming_enabled": False, "data_used_gb": 9.5, "data_limit_gb": 10.0}

# A handful of telecom requests, each solvable with one or two tool calls.
CI_TASKS: list[dict[str, Any]] = [
    _task("ci_lookup_phone", "Find the account of the calling number.",
          ["Hi, my number is 555-0100. Can you tell me which account it belongs to?",
           "Thanks, that is all."],
          [_action("get_customer_by_phone", phone_number="555-0100")],
          {"get_customer_by_phone": _CUSTOMER}),
    _task("ci_enable_roaming", "Enable roaming on a line before a trip.",
          ["I am customer C1001 and I travel abroad tomorrow. Please enable roaming on my "
           "line L1001.", "Great, thank you."],
          [_action("enable_roaming", customer_id="C1001", line_id="L1001")],
          {"get_customer_by_id": _CUSTOMER, "get_details_by_id": _LINE,
           "enable_roaming": {"status": "success", "roaming_enabled": True}}),
    _task("ci_data_usage", "Check how much data is left on a line.",
          ["Customer C1001 here. How much data have I used on line L1001?", "OK, bye."],
          [_action("get_data_usage", customer_id="C1001", line_id="L1001")],
          {"get_customer_by_id": _CUSTOMER,
           "get_data_usage": {"data_used_gb": 9.5, "data_limit_gb": 10.0}}),
    _task("ci_refuel", "Add data to a line that ran out.",
          ["I am C1001. Line L1001 is almost out of data; please add 2 GB.", "Thanks."],
          [_action("refuel_data", customer_id="C1001", line_id="L1001", gb_amount=2)],
          {"get_customer_by_id": _CUSTOMER,
           "refuel_data": {"status": "success", "new_data_limit_gb": 12.0}}),
    _task("ci_suspend", "Suspend a lost phone's line.",
          ["This is customer C1001. I lost my phone; suspend line L1002 please, reason: lost "
           "device.", "Thank you."],
          [_action("suspend_line", customer_id="C1001", line_id="L1002",
                   compare_args=["customer_id", "line_id"])],
          {"get_customer_by_id": _CUSTOMER, "suspend_line": {"status": "success"}}),
    _task("ci_bills", "List the customer's recent bills.",
          ["Customer C1001. Can you show me my latest bills?", "That's all."],
          [_action("get_bills_for_customer", customer_id="C1001")],
          {"get_customer_by_id": _CUSTOMER,
           "get_bills_for_customer": [{"bill_id": "B1001", "amount_due": 42.5,
                                       "status": "Issued"}]}),
]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _matches(expected: Any, got: Any) -> bool:
    if isinstance(expected, (int, float)) and isinstance(got, (int, float, str)):
        try:
            return abs(float(got) - float(expected)) < 1e-9
        except ValueError:
            return False
    return str(got) == str(expected)


def _tau2_action_match(action: dict[str, Any], call: dict[str, Any]) -> bool:
    """tau2's ``Action.compare_with_tool_call``: same name, and the arguments named by
    ``compare_args`` (None: every argument of the call) equal."""
    if action["name"] != call["name"]:
        return False
    names = action.get("compare_args")
    if names is None:
        names = list(call["arguments"])
    if not names:
        return True
    return ({k: v for k, v in call["arguments"].items() if k in names}
            == {k: v for k, v in action["arguments"].items() if k in names})


def _called(name: str, arguments: dict[str, Any], calls: list[dict[str, Any]]) -> bool:
    """A call of ``name`` with at least ``arguments`` (numbers compared as numbers)."""
    return any(c["name"] == name and all(k in c["arguments"] and _matches(v, c["arguments"][k])
                                         for k, v in arguments.items())
               for c in calls)


def grade(task: dict[str, Any], calls: list[dict[str, Any]], *,
          termination_reason: str = "user_stop") -> dict[str, Any]:
    """tau2's ``reward_info`` for a simulation that made ``calls`` (tool calls with
    ``name`` and object ``arguments``; ``error`` True when the tool refused it).

    Ended otherwise than ``agent_stop``/``user_stop``: reward 0.0, no checks (as tau2).
    Else the reward is the product of the ``env_assertions`` (each met when a call of its
    tool with at least its arguments was made), with ``action_checks`` and ``db_check``
    beside it (not in the reward, as in telecom)."""
    if termination_reason not in GRADED_TERMINATIONS:
        return {"reward": 0.0, "db_check": None, "env_assertions": None, "action_checks": None,
                "nl_assertions": None, "communicate_checks": None, "reward_basis": None,
                "reward_breakdown": None,
                "info": {"note": "Simulation terminated prematurely. Termination reason: "
                                 f"{termination_reason}", "evaluator": "simia-ci"}}
    criteria = task["evaluation_criteria"]
    assertions = []
    for assertion in criteria["env_assertions"] or []:
        met = _called(assertion["arguments"]["name"], assertion["arguments"]["arguments"],
                      calls) == assertion["assert_value"]
        assertions.append({"env_assertion": assertion, "met": met,
                           "reward": 1.0 if met else 0.0})
    actions = criteria["actions"] or []
    checks = []
    for action in actions:
        ok = any(_tau2_action_match(action, c) for c in calls)
        checks.append({"action": action, "action_match": ok, "action_reward": 1.0 if ok else 0.0,
                       "tool_type": TOOL_TYPES.get(action["name"])})
    # the database: the write calls that went through are exactly the expected writes
    writes = [c for c in calls if TOOL_TYPES.get(c["name"]) == "write" and not c.get("error")]
    expected = [a for a in actions if TOOL_TYPES.get(a["name"]) == "write"]
    db_match = (all(_called(a["name"], _assertion(a)["arguments"]["arguments"], writes)
                    for a in expected)
                and all(any(_called(a["name"], _assertion(a)["arguments"]["arguments"], [w])
                            for a in expected) for w in writes))
    env_reward = 1.0 if all(a["met"] for a in assertions) else 0.0
    reward = 1.0
    breakdown: dict[str, float] = {}
    if "DB" in criteria["reward_basis"]:
        breakdown["DB"] = 1.0 if db_match else 0.0
        reward *= breakdown["DB"]
    if "ENV_ASSERTION" in criteria["reward_basis"]:
        breakdown["ENV_ASSERTION"] = env_reward
        reward *= env_reward
    if "ACTION" in criteria["reward_basis"]:
        breakdown["ACTION"] = 1.0 if all(c["action_match"] for c in checks) else 0.0
        reward *= breakdown["ACTION"]
    return {"reward": reward, "db_check": {"db_match": db_match,
                                           "db_reward": 1.0 if db_match else 0.0},
            "env_assertions": assertions, "action_checks": checks, "nl_assertions": None,
            "communicate_checks": None, "reward_basis": list(criteria["reward_basis"]),
            "reward_breakdown": breakdown, "info": {"evaluator": "simia-ci"}}


class ChatClient:
    """POST /chat/completions with retries; raises ``ConnectionError`` when they run out."""

    def __init__(self, base_url: str, model: str, args: dict[str, Any], *,
                 retries: int = 3, timeout_s: float = 600.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = str(args.get("api_key") or "EMPTY")
        self.body = {k: v for k, v in args.items() if k not in ("api_base", "api_key")}
        self.retries = retries
        self.timeout_s = timeout_s

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
                 ) -> dict[str, Any]:
        body = {**self.body, "model": self.model, "messages": messages, "tools": tools,
                "tool_choice": "auto", "stream": False}
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError,
                    json.JSONDecodeError) as exc:
                last = exc
                if attempt < self.retries:
                    time.sleep(min(8.0, 0.5 * 2**attempt))
        raise ConnectionError(f"{self.url}: {type(last).__name__}: {last}")


def _openai_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": m.get("content") or "",
                        "tool_calls": [{"id": c["id"], "type": "function", "function": {
                            "name": c["name"], "arguments": json.dumps(c["arguments"])
                            if isinstance(c["arguments"], dict) else str(c["arguments"])}}
                            for c in m["tool_calls"]]})
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["id"], "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _sim_id(task_id: str, trial: int, seed: int) -> str:
    digest = hashlib.sha256(f"{task_id}/{trial}/{seed}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _agent_reply(client: ChatClient, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The agent's next message: (text, tool calls). Raises :class:`InfrastructureError`
    where tau2's ``generate`` or its message validation raises."""
    try:
        reply = client.complete(_openai_history(messages), tools)
    except ConnectionError as exc:
        raise InfrastructureError(str(exc)) from None
    try:
        choice = reply["choices"][0]["message"]
        raw_calls = choice.get("tool_calls") or []
        content = choice.get("content")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise InfrastructureError(f"malformed chat completion: {type(exc).__name__}: {exc}"
                                  ) from None
    tool_calls = []
    for k, c in enumerate(raw_calls):
        fn = (c.get("function") if isinstance(c, dict) else None) or {}
        raw = fn.get("arguments") or "{}"
        try:  # tau2: json.loads(arguments) into a ToolCall whose arguments are an object
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise InfrastructureError(f"tool call arguments are not JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise InfrastructureError(f"tool call arguments are not a JSON object: {raw!r}")
        tool_calls.append({"id": c.get("id") or f"call_{len(messages)}_{k}",
                           "name": str(fn.get("name") or ""), "arguments": arguments,
                           "requestor": "assistant"})
    if content is not None and not isinstance(content, str):
        raise InfrastructureError(f"message content is not text: {type(content).__name__}")
    if not tool_calls and not (content or "").strip():
        # tau2's Message.validate(): neither text nor tool calls
        raise InfrastructureError("AssistantMessage must have either content or tool_calls "
                                  f"(got content {content!r})")
    return content, tool_calls


def simulate(task: dict[str, Any], trial: int, *, client: ChatClient, system: str,
             tools: list[dict[str, Any]], max_steps: int, max_errors: int, seed: int
             ) -> dict[str, Any]:
    """One task x trial: the conversation, how it ended and its reward (tau2's shape).

    Raises :class:`InfrastructureError` when the simulation cannot run (see the module
    docstring); :func:`simulate_with_retries` retries it."""
    start = time.time()
    start_iso = _now()
    script = list(task["simia_ci"]["user_turns"])
    table = task["simia_ci"]["tool_results"]
    tool_names = {t["function"]["name"] for t in tools}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system, "turn_idx": 0},
        {"role": "assistant", "content": GREETING, "tool_calls": None, "turn_idx": 1},
        {"role": "user", "content": script.pop(0), "tool_calls": None, "turn_idx": 2}]
    calls: list[dict[str, Any]] = []
    errors = 0
    reason = None
    while reason is None:
        if len(messages) - 1 >= max_steps:
            reason = "max_steps"
            break
        content, tool_calls = _agent_reply(client, messages, tools)
        messages.append({"role": "assistant", "content": content or None,
                         "tool_calls": tool_calls or None, "turn_idx": len(messages)})
        if not tool_calls:
            if STOP in (content or ""):
                reason = "agent_stop"
            elif script:
                messages.append({"role": "user", "content": script.pop(0),
                                 "tool_calls": None, "turn_idx": len(messages)})
            else:
                messages.append({"role": "user", "content": STOP, "tool_calls": None,
                                 "turn_idx": len(messages)})
                reason = "user_stop"
            continue
        for call in tool_calls:
            error = call["name"] not in tool_names
            call["error"] = error
            calls.append(call)
            if error:
                errors += 1
                content = f"Error: Tool '{call['name']}' not found."
            elif call["name"] == "transfer_to_human_agents":
                content = "Transfer successful"
                reason = "agent_stop"
            else:
                content = json.dumps(table.get(call["name"], {"error": "Not found"}))
            messages.append({"role": "tool", "id": call["id"], "content": content,
                             "requestor": "assistant", "error": error,
                             "turn_idx": len(messages)})
        if errors >= max_errors and reason is None:
            reason = "too_many_errors"
    end = time.time()
    return {"id": _sim_id(task["id"], trial, seed), "task_id": task["id"],
            "timestamp": start_iso, "start_time": start_iso, "end_time": _now(),
            "duration": round(end - start, 3), "termination_reason": reason,
            "agent_cost": 0.0, "user_cost": 0.0,
            "reward_info": grade(task, calls, termination_reason=reason),
            "messages": messages, "trial": trial, "seed": seed + trial, "mode": "half_duplex",
            "info": None}


def simulate_with_retries(task: dict[str, Any], trial: int, *, max_retries: int,
                          retry_delay: float, **kwargs: Any) -> dict[str, Any]:
    """:func:`simulate`, re-run from the start up to ``max_retries`` times while it raises
    :class:`InfrastructureError` (tau2's ``run_with_retry``); then tau2's placeholder: an
    ``infrastructure_error`` without messages or reward, the last error in ``info``."""
    attempts = max_retries + 1
    last: InfrastructureError | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(retry_delay)
        try:
            return simulate(task, trial, **kwargs)
        except InfrastructureError as exc:
            last = exc
            print(f"task={task['id']} trial={trial}: attempt {attempt + 1}/{attempts} failed: "
                  f"{exc}", flush=True)
    now = _now()
    return {"id": _sim_id(task["id"], trial, kwargs["seed"]), "task_id": task["id"],
            "timestamp": now, "start_time": now, "end_time": now, "duration": 0.0,
            "termination_reason": INFRASTRUCTURE_ERROR, "agent_cost": None, "user_cost": None,
            "reward_info": None, "messages": [], "trial": trial, "seed": kwargs["seed"] + trial,
            "mode": "half_duplex",
            "info": {"error": str(last), "error_type": type(last).__name__,
                     "failed_after_attempts": attempts}}


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_evaluation(args: argparse.Namespace, *, tasks: list[dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """Run every task x trial not already in ``<save-to>/results.json`` (auto-resume);
    the results are rewritten atomically after each simulation, as tau2 does."""
    from simia.domains.telecom import AGENT_INSTRUCTION, TELECOM
    from simia.redaction import redact

    tasks = list(tasks if tasks is not None else CI_TASKS)
    if args.num_tasks:
        tasks = tasks[:args.num_tasks]
    agent_args = json.loads(args.agent_llm_args or "{}")
    user_args = json.loads(args.user_llm_args or "{}")
    model = args.agent_llm.split("/", 1)[1] if "/" in args.agent_llm else args.agent_llm
    base = agent_args.get("api_base")
    if not base:
        raise SystemExit("--agent-llm-args must carry api_base (the served model's URL)")
    client = ChatClient(base, model, agent_args)
    max_retries = getattr(args, "max_retries", DEFAULT_MAX_RETRIES)
    retry_delay = getattr(args, "retry_delay", 1.0)
    tools = [{"type": "function", "function": t} for t in TELECOM.tools]
    # tau2's agent system prompt (as simia.data.processing builds it for the training data)
    system = (f"<instructions>\n{AGENT_INSTRUCTION}\n</instructions>\n"
              f"<policy>\n{CI_POLICY}\n</policy>")
    files = EvalFiles(args.save_to)
    files.dir.mkdir(parents=True, exist_ok=True)
    path = files.results
    done: list[dict[str, Any]] = []
    if path.exists():
        if not args.auto_resume:
            raise SystemExit(f"{path} exists: pass --auto-resume to continue it")
        try:
            earlier = json.loads(path.read_text())
            sims = earlier["simulations"]
            if not isinstance(sims, list) or not all(isinstance(x, dict) for x in sims):
                raise TypeError("'simulations' is not a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: cannot resume from it ({type(exc).__name__}: {exc}); "
                             "move it away to start over") from None
        # as tau2's checkpoint: an infrastructure error did not run; drop it, run it again
        done = [x for x in sims if x.get("termination_reason") != INFRASTRUCTURE_ERROR]
        if len(done) < len(sims):
            print(f"dropping {len(sims) - len(done)} infrastructure error simulation(s) from "
                  f"{path} to run them again", flush=True)
    results = {"timestamp": _now(), "info": {
        "git_commit": "", "num_trials": args.num_trials, "max_steps": args.max_steps,
        "max_errors": args.max_errors, "seed": args.seed,
        "user_info": {"implementation": "simia_scripted_user", "llm": args.user_llm,
                      "llm_args": redact(user_args), "global_simulation_guidelines": None},
        "agent_info": {"implementation": "llm_agent", "llm": args.agent_llm,
                       "llm_args": redact(agent_args)},
        "environment_info": {"domain_name": args.domain, "policy": CI_POLICY,
                             "tool_defs": None},
        "evaluator": "simia-ci"},
        "tasks": [{k: v for k, v in t.items()} for t in tasks], "simulations": done}
    have = {(s["task_id"], s["trial"]) for s in done}
    todo = [(t, k) for k in range(args.num_trials) for t in tasks if (t["id"], k) not in have]
    lock = threading.Lock()
    print(f"simia-ci evaluator: {len(tasks)} tasks x {args.num_trials} trials against "
          f"{base} ({model}); {len(have)} already done, {len(todo)} to run", flush=True)
    _write_atomic(path, results)

    def one(item: tuple[dict[str, Any], int]) -> None:
        task, trial = item
        sim = simulate_with_retries(
            task, trial, max_retries=max_retries, retry_delay=retry_delay, client=client,
            system=system, tools=tools, max_steps=args.max_steps, max_errors=args.max_errors,
            seed=args.seed)
        with lock:
            results["simulations"].append(sim)
            _write_atomic(path, results)
            reward = sim["reward_info"]["reward"] if sim["reward_info"] else None
            print(f"{len(results['simulations'])}/{len(tasks) * args.num_trials} "
                  f"task={task['id']} trial={trial} {sim['termination_reason']} "
                  f"reward={reward} {sim['duration']:.1f}s", flush=True)

    with ThreadPoolExecutor(max_workers=args.max_concurrency) as pool:
        list(pool.map(one, todo))
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simia.evaluation.ci_evaluator",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="evaluate a served model (tau2 run's arguments)")
    run.add_argument("--domain", default="telecom")
    run.add_argument("--agent-llm", required=True)
    run.add_argument("--agent-llm-args", default="{}")
    run.add_argument("--user-llm", default="scripted")
    run.add_argument("--user-llm-args", default="{}")
    run.add_argument("--num-trials", type=int, default=1)
    run.add_argument("--num-tasks", type=int, default=0)
    run.add_argument("--task-split-name", default="base")
    run.add_argument("--max-steps", type=int, default=200)
    run.add_argument("--max-errors", type=int, default=10)
    run.add_argument("--max-concurrency", type=int, default=3)
    run.add_argument("--seed", type=int, default=300)
    run.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                     help="re-runs of a simulation that raised (tau2's default)")
    run.add_argument("--retry-delay", type=float, default=1.0)
    run.add_argument("--save-to", required=True)
    run.add_argument("--auto-resume", action="store_true")
    run.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.domain != "telecom":
        print(f"the simia-ci evaluator knows the telecom domain only, not {args.domain!r}",
              file=sys.stderr)
        return 2
    results = run_evaluation(args)
    sims = results["simulations"]
    ok = sum(1 for s in sims if s["reward_info"] and abs(s["reward_info"]["reward"] - 1) < 1e-6)
    print(f"done: {len(sims)} simulations, {ok} successful; results in "
          f"{EvalFiles(args.save_to).results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
