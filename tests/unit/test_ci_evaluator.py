"""The CI evaluator against a scripted OpenAI-compatible server: tau2's request shape,
its results format, every termination path, rewards, and auto-resume."""

from __future__ import annotations

import json
import threading
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from simia.evaluation.ci_evaluator import CI_TASKS, GREETING, grade, run_evaluation


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
                seed=300, save_to=str(tmp_path / "eval"), auto_resume=True, log_level="INFO")
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
    # tau2's request shape: system, the agent's greeting, then the user; tools; auto
    req = agent.requests[0]
    assert [m["role"] for m in req["messages"][:3]] == ["system", "assistant", "user"]
    assert req["messages"][1]["content"] == GREETING
    assert len(req["tools"]) == 13 and req["tool_choice"] == "auto"
    assert req["temperature"] == 0.0 and "api_key" not in req and "api_base" not in req
    assert "api_key" not in json.dumps(on_disk["info"])  # no key in the results


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

    import simia.evaluation.ci_evaluator as ce

    retry_once = ce.ChatClient.__init__
    monkeypatch.setattr(ce.ChatClient, "__init__",
                        lambda self, *a, **kw: retry_once(self, *a, **{**kw, "retries": 1}))
    agent = Agent(policy)
    try:
        results = run_evaluation(_args(tmp_path, agent.url, num_trials=1, max_steps=10))
    finally:
        agent.close()
    by_task = {s["task_id"]: s for s in results["simulations"]}
    assert by_task["ci_enable_roaming"]["termination_reason"] == "infrastructure_error"
    assert by_task["ci_enable_roaming"]["reward_info"] is None
    assert by_task["ci_data_usage"]["termination_reason"] == "too_many_errors"
    assert by_task["ci_refuel"]["termination_reason"] == "agent_stop"
    assert by_task["ci_suspend"]["termination_reason"] == "max_steps"
    assert by_task["ci_lookup_phone"]["termination_reason"] == "agent_stop"
    assert all(s["reward_info"]["reward"] == 0.0 for s in results["simulations"]
               if s["reward_info"])


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
    assert grade(task, [{**good, "arguments": "not json"}])["reward"] == 0.0
    assert grade(task, [])["action_checks"][0]["action_match"] is False
