"""The CI evaluator against a scripted OpenAI-compatible server: tau2's request shape,
its results format (reward_info's checks), every termination path, rewards,
infrastructure errors (retries, empty replies) and auto-resume (which re-runs them)."""

from __future__ import annotations

import json
import threading
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from simia.evaluation.ci_evaluator import CI_TASKS, GREETING, grade, run_evaluation
from simia.evaluation.evaluator import finished_results
from simia.evaluation.tau2_results import read_tau2_results


class Agent:
    """Replies by policy(request) -> message dict, or an HTTP status code."""

    def __init__(self, policy):
        self.policy = policy
        self.requests: list[dict] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                agent.requests.append(body)
                reply = agent.policy(body)
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": reply}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()


def _args(tmp_path, url, **kw) -> Namespace:
    base = dict(domain="telecom", agent_llm="openai/simia-0pct",
                agent_llm_args=json.dumps({"api_base": url, "temperature": 0.0,
                                           "api_key": "EMPTY"}),
                user_llm="scripted", user_llm_args="{}", num_trials=2, num_tasks=0,
                task_split_name="base", max_steps=20, max_errors=3, max_concurrency=2,
                seed=300, save_to=str(tmp_path / "eval"), auto_resume=True, log_level="INFO",
                max_retries=1, retry_delay=0.0)
    base.update(kw)
    return Namespace(**base)


def _call(name, **arguments):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def _solver(body):
    """Does the expected action once, then answers in text."""
    msgs = body["messages"]
    if msgs[-1]["role"] == "tool":
        return {"role": "assistant", "content": "Done."}
    first_user = next(m["content"] for m in msgs if m["role"] == "user")
    task = next(t for t in CI_TASKS if t["simia_ci"]["user_turns"][0] == first_user)
    action = task["evaluation_criteria"]["actions"][0]
    if any(m.get("tool_calls") for m in msgs):
        return {"role": "assistant", "content": "Anything else?"}
    return _call(action["name"], **action["arguments"])


def test_a_perfect_agent_scores_one_everywhere_in_tau2s_format(tmp_path):
    agent = Agent(_solver)
    try:
        results = run_evaluation(_args(tmp_path, agent.url))
    finally:
        agent.close()
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk["simulations"] and set(on_disk) == {"timestamp", "info", "tasks",
                                                       "simulations"}
    sims = results["simulations"]
    assert len(sims) == len(CI_TASKS) * 2
    assert {(s["task_id"], s["trial"]) for s in sims} == {
        (t["id"], k) for t in CI_TASKS for k in range(2)}
    assert all(s["reward_info"]["reward"] == 1.0 for s in sims)
    assert {s["termination_reason"] for s in sims} == {"user_stop"}
    # reward_info in tau2's shapes: telecom's basis, env assertions, action checks, db check
    info = next(s for s in sims if s["task_id"] == "ci_refuel")["reward_info"]
    assert info["reward_basis"] == ["ENV_ASSERTION"]
    assert info["reward_breakdown"] == {"ENV_ASSERTION": 1.0}
    assert [a["met"] for a in info["env_assertions"]] == [True]
    assert info["env_assertions"][0]["env_assertion"]["env_type"] == "assistant"
    assert [(c["action"]["name"], c["action"]["requestor"], c["tool_type"], c["action_match"])
            for c in info["action_checks"]] == [("refuel_data", "assistant", "write", True)]
    assert info["db_check"] == {"db_match": True, "db_reward": 1.0}
    parsed = read_tau2_results(tmp_path / "eval")
    assert all(c.env_assertion_fraction == 1.0 for row in parsed.outcomes for c in row)
    rates = {c.task_id: c.write_action_match_rate("assistant")
             for row in parsed.outcomes for c in row}
    assert rates["ci_refuel"] == 1.0 and rates["ci_lookup_phone"] is None  # no write expected
    # tau2's request shape: system, the agent's greeting, then the user; tools; auto
    req = agent.requests[0]
    assert [m["role"] for m in req["messages"][:3]] == ["system", "assistant", "user"]
    assert req["messages"][1]["content"] == GREETING
    assert len(req["tools"]) == 13 and req["tool_choice"] == "auto"
    assert req["temperature"] == 0.0 and "api_key" not in req and "api_base" not in req
    assert "api_key" not in json.dumps(on_disk["info"])  # no key in the results


def test_max_tokens_is_sent_and_recorded_as_tau2_does(tmp_path):
    agent = Agent(_solver)
    try:
        run_evaluation(_args(
            tmp_path, agent.url, num_trials=1, num_tasks=1,
            agent_llm_args=json.dumps({"api_base": agent.url, "temperature": 0.0,
                                       "max_tokens": 64}),
            user_llm_args=json.dumps({"temperature": 0.0, "max_tokens": 256})))
    finally:
        agent.close()
    assert {r["max_tokens"] for r in agent.requests} == {64}
    info = json.loads((tmp_path / "eval" / "results.json").read_text())["info"]
    assert info["agent_info"]["llm_args"]["max_tokens"] == 64
    assert info["user_info"]["llm_args"] == {"temperature": 0.0, "max_tokens": 256}


def test_termination_paths(tmp_path, monkeypatch):
    def policy(body):
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if "roaming" in user:
            return 500  # the server fails: infrastructure error after retries
        if "data have I used" in user:
            return _call("no_such_tool")  # errors until too_many_errors
        if "add 2 GB" in user:
            return _call("transfer_to_human_agents", summary="x")  # agent stops
        if "lost my phone" in user:
            return _call("get_customer_by_id", customer_id="C1001")  # loops: max_steps
        return {"role": "assistant", "content": "###STOP###"}

    _no_client_retries(monkeypatch)
    agent = Agent(policy)
    try:
        results = run_evaluation(_args(tmp_path, agent.url, num_trials=1, max_steps=10))
    finally:
        agent.close()
    by_task = {s["task_id"]: s for s in results["simulations"]}
    infra = by_task["ci_enable_roaming"]
    assert infra["termination_reason"] == "infrastructure_error"
    # tau2's placeholder after its retries: no messages, no reward, the error in info
    assert infra["reward_info"] is None and infra["messages"] == []
    assert infra["info"]["failed_after_attempts"] == 2 and "500" in infra["info"]["error"]
    assert by_task["ci_data_usage"]["termination_reason"] == "too_many_errors"
    assert by_task["ci_refuel"]["termination_reason"] == "agent_stop"
    assert by_task["ci_suspend"]["termination_reason"] == "max_steps"
    assert by_task["ci_lookup_phone"]["termination_reason"] == "agent_stop"
    assert all(s["reward_info"]["reward"] == 0.0 for s in results["simulations"]
               if s["reward_info"])
    # tau2 grades only agent_stop / user_stop; the rest get 0 without checks
    for task in ("ci_data_usage", "ci_suspend"):
        info = by_task[task]["reward_info"]
        assert info["reward_basis"] is None and info["env_assertions"] is None
        assert info["action_checks"] is None and "prematurely" in info["info"]["note"]
    refuel = by_task["ci_refuel"]["reward_info"]  # transferred instead of refuelling
    assert [a["met"] for a in refuel["env_assertions"]] == [False]
    assert refuel["action_checks"][0]["action_match"] is False


def _no_client_retries(monkeypatch):
    import simia.evaluation.ci_evaluator as ce

    init = ce.ChatClient.__init__
    monkeypatch.setattr(ce.ChatClient, "__init__",
                        lambda self, *a, **kw: init(self, *a, **{**kw, "retries": 0}))


@pytest.mark.parametrize("reply", [
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": "  \n "},
    {"role": "assistant", "content": None, "tool_calls": []},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function",
         "function": {"name": "get_customer_by_id", "arguments": '{"customer_id": "C10'}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function",
         "function": {"name": "get_customer_by_id", "arguments": '["C1001"]'}}]},
])
def test_empty_replies_and_malformed_tool_calls_are_infrastructure_errors(tmp_path, reply):
    """tau2 rejects a message without text or tool calls (Message.validate) and tool-call
    arguments that are not a JSON object; the exception re-runs the simulation up to
    --max-retries times, then stores an infrastructure error (not a user_stop)."""
    agent = Agent(lambda body: reply)
    try:
        results = run_evaluation(_args(tmp_path, agent.url, num_trials=1, num_tasks=1,
                                       max_retries=2))
    finally:
        agent.close()
    (sim,) = results["simulations"]
    assert sim["termination_reason"] == "infrastructure_error"
    assert sim["reward_info"] is None and sim["info"]["failed_after_attempts"] == 3
    assert len(agent.requests) == 3  # one request per attempt: the first reply fails it


def test_a_retry_that_succeeds_is_a_normal_simulation(tmp_path):
    replies = iter([{"role": "assistant", "content": ""}])

    def flaky(body):
        return next(replies, None) or _solver(body)

    agent = Agent(flaky)
    try:
        results = run_evaluation(_args(tmp_path, agent.url, num_trials=1, num_tasks=1))
    finally:
        agent.close()
    (sim,) = results["simulations"]
    assert sim["termination_reason"] == "user_stop" and sim["reward_info"]["reward"] == 1.0


def test_resume_drops_infrastructure_errors_and_runs_them_again(tmp_path, monkeypatch):
    _no_client_retries(monkeypatch)
    down = Agent(lambda body: 503)
    try:
        first = run_evaluation(_args(tmp_path, down.url, num_trials=2, num_tasks=2))
    finally:
        down.close()
    assert {s["termination_reason"] for s in first["simulations"]} == {"infrastructure_error"}
    results_path = tmp_path / "eval" / "results.json"
    assert finished_results(results_path, 2) is None  # not done: a retry must re-run them
    assert finished_results(results_path, 2, accept_infrastructure_errors=True) == {
        "tasks": 2, "simulations": 4, "infrastructure_errors": 4}
    up = Agent(_solver)
    try:
        second = run_evaluation(_args(tmp_path, up.url, num_trials=2, num_tasks=2))
    finally:
        up.close()
    sims = json.loads(results_path.read_text())["simulations"]
    assert len(sims) == len(second["simulations"]) == 4  # replaced, not appended
    assert {s["termination_reason"] for s in sims} == {"user_stop"}
    assert finished_results(results_path, 2) == {"tasks": 2, "simulations": 4,
                                                 "infrastructure_errors": 0}


def test_auto_resume_runs_only_what_is_missing(tmp_path):
    agent = Agent(_solver)
    try:
        run_evaluation(_args(tmp_path, agent.url, num_trials=1, num_tasks=2))
        before = len(agent.requests)
        results = run_evaluation(_args(tmp_path, agent.url, num_trials=2, num_tasks=2))
        assert len(results["simulations"]) == 4
        # two new simulations, each three requests (call, text, text)
        assert len(agent.requests) - before == 2 * 3
        with pytest.raises(SystemExit, match="auto-resume"):
            run_evaluation(_args(tmp_path, agent.url, auto_resume=False))
        (tmp_path / "eval" / "results.json").write_text('{"simulations": 3}')
        with pytest.raises(SystemExit, match="results.json: cannot resume"):
            run_evaluation(_args(tmp_path, agent.url))
    finally:
        agent.close()


def test_grading_matches_names_and_arguments():
    task = CI_TASKS[3]  # refuel 2 GB
    good = {"name": "refuel_data", "arguments": {"customer_id": "C1001", "line_id": "L1001",
                                                 "gb_amount": 2.0}}
    assert grade(task, [good])["reward"] == 1.0
    assert grade(task, [{**good, "arguments": {**good["arguments"], "gb_amount": 3}}]
                 )["reward"] == 0.0
    empty = grade(task, [])
    assert empty["action_checks"][0]["action_match"] is False
    assert empty["env_assertions"][0]["met"] is False and empty["reward"] == 0.0
    assert empty["db_check"]["db_match"] is False  # the expected write is missing


def test_grading_follows_tau2_beside_the_reward():
    refuel = CI_TASKS[3]
    args = {"customer_id": "C1001", "line_id": "L1001", "gb_amount": 2}
    # an extra write: the assertions hold (reward 1), the database differs from the gold one
    extra = grade(refuel, [{"name": "refuel_data", "arguments": args},
                           {"name": "suspend_line", "arguments": {"customer_id": "C1001",
                                                                  "line_id": "L1002"}}])
    assert extra["reward"] == 1.0 and extra["db_check"]["db_match"] is False
    # a write the tool refused changes nothing
    refused = grade(refuel, [{"name": "refuel_data", "arguments": args},
                             {"name": "suspend_line", "arguments": {}, "error": True}])
    assert refused["db_check"]["db_match"] is True
    # tau2's action matching compares the call's arguments exactly ("2" is not 2); the
    # assertion on the state takes the amount as a number
    text = grade(refuel, [{"name": "refuel_data", "arguments": {**args, "gb_amount": "2"}}])
    assert text["action_checks"][0]["action_match"] is False and text["reward"] == 1.0
    # compare_args: the reason for suspending a line is free text
    suspend = CI_TASKS[4]
    call = {"name": "suspend_line", "arguments": {"customer_id": "C1001", "line_id": "L1002",
                                                  "reason": "lost device"}}
    checked = grade(suspend, [call])
    assert checked["action_checks"][0]["action_match"] is True and checked["reward"] == 1.0
    # read-only task: no write expected, none made
    lookup = grade(CI_TASKS[0], [{"name": "get_customer_by_phone",
                                  "arguments": {"phone_number": "555-0100"}}])
    assert lookup["db_check"]["db_match"] is True
    assert lookup["action_checks"][0]["tool_type"] == "read"
    # a simulation that did not end by agent_stop or user_stop: tau2's 0 without checks
    late = grade(refuel, [{"name": "refuel_data", "arguments": args}],
                 termination_reason="max_steps")
    assert late["reward"] == 0.0 and late["env_assertions"] is None
    assert late["reward_basis"] is None
