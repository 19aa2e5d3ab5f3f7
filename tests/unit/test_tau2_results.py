"""tau2-bench v1.0.1 results parsing: success matrix, termination reasons, our pass^k next
to tau2's own, the dir format, redaction, and errors that name file/simulation/field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from simia.errors import InputError
from simia.redaction import is_secret_key, redact
from simia.evaluation.tau2_results import (INFRASTRUCTURE_ERROR, MISSING, NOT_RUN,
                                           TERMINATION_REASONS, is_success, read_tau2_results,
                                           tau2_metrics)

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tau2" / "results_every_reason.json"
# tau2 v1.0.1 results (5 real telecom base tasks x 3 trials) with 6 infrastructure errors:
# task 0 trials 0 ok / 1 infra / 2 failed; task 1 infra, infra, ok; task 2 infra x 3;
# task 3 max_steps, ok, ok; task 4 ok, failed, trial 2 never ran
INFRA_FIXTURE = ROOT / "tests" / "fixtures" / "tau2" / "results_infrastructure_errors.json"
A = "[mobile_data_issue]airplane_mode_on|data_mode_off[PERSONA:Easy]"
B = "[service_issue]line_suspended|overdue_bill[PERSONA:None]"
C = "[mms_issue]apn_settings_wrong[PERSONA:Hard]"
D = "[mobile_data_issue]roaming_disabled_abroad[PERSONA:None]"


# ------------------------------------------------------------------ builder (shared with
# test_report.py): a results.json from a task -> cells mapping

def make_results(rows: dict[str, list[Any]], *, num_trials: int | None = None,
                 agent_llm: str = "hosted_vllm/simia", cost: float = 0.01) -> dict[str, Any]:
    """A tau2 v1.0.1 results document. Cells: True (user_stop, reward 1.0), False
    (user_stop, reward 0.0), "infra" (infrastructure_error, reward_info null), None (no
    simulation)."""
    trials = num_trials or max(len(v) for v in rows.values())
    sims = []
    for t, (task, cells) in enumerate(rows.items()):
        for trial, cell in enumerate(cells):
            if cell is None:
                continue
            infra = cell == "infra"
            sims.append({
                "id": f"sim-{t}-{trial}", "task_id": task, "timestamp": "2026-05-02T10:00:00",
                "start_time": "2026-05-02T10:00:00", "end_time": "2026-05-02T10:00:30",
                "duration": 0.0 if infra else 30.0 + trial,
                "termination_reason": "infrastructure_error" if infra else "user_stop",
                "agent_cost": None if infra else 0.0, "user_cost": None if infra else cost,
                "reward_info": None if infra else {
                    "reward": 1.0 if cell else 0.0, "db_check": None, "env_assertions": [],
                    "action_checks": None, "reward_basis": ["ENV_ASSERTION"]},
                "messages": [] if infra else [
                    {"role": "assistant", "content": "Hi! How can I help you today?",
                     "turn_idx": 0},
                    {"role": "user", "content": "My data is not working.", "turn_idx": 1}],
                "trial": trial, "seed": 1000 + trial})
    return {
        "timestamp": "2026-05-02T09:59:00",
        "info": {"git_commit": "abc", "num_trials": trials, "max_steps": 200, "max_errors": 10,
                 "user_info": {"implementation": "user_simulator", "llm": "gpt-4.1-2025-04-14",
                               "llm_args": {"temperature": 0.0}},
                 "agent_info": {"implementation": "llm_agent", "llm": agent_llm,
                                "llm_args": {"api_base": "http://127.0.0.1:8000/v1",
                                             "api_key": "sk-local-secret", "temperature": 0.0}},
                 "environment_info": {"domain_name": "telecom", "policy": "..."}, "seed": 300},
        "tasks": [{"id": task, "description": None, "user_scenario": {"instructions": "..."}}
                  for task in rows],
        "simulations": sims,
    }


def write_results(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- the fixture

def test_fixture_covers_every_v1_0_1_termination_reason():
    doc = json.loads(FIXTURE.read_text())
    assert {s["termination_reason"] for s in doc["simulations"]} == set(TERMINATION_REASONS)
    assert len(TERMINATION_REASONS) == 10


def test_fixture_matrix_cells_and_counts():
    r = read_tau2_results(FIXTURE)
    assert r.task_ids == (A, B, C, D)
    assert r.trials == 3 and r.num_trials == 3
    T, F = True, False
    # D trial 1 has reward 0.9999995: within 1e-6 of 1.0, a success
    assert r.matrix == ((T, T, F), (F, F, F), (F, F, F), (F, T, F))
    assert r.cells[2] == ("failure", "infrastructure_error", "failure")
    assert r.cells[3] == ("failure", "success", "missing")
    assert r.missing_cells == ((D, 2),)
    assert r.infrastructure_errors == 1
    assert r.termination_counts == {**{k: 1 for k in TERMINATION_REASONS}, "user_stop": 2}
    assert r.successes == 3 and len(r.simulations) == 11
    assert r.domain == "telecom" and r.seed == 300 and r.max_steps == 200
    assert r.agent.llm == "hosted_vllm/simia-5pct" and r.user.llm == "gpt-4.1-2025-04-14"
    assert math.isclose(r.user_cost_total, 0.1738)
    assert math.isclose(r.duration_total_s, 1142.4)


def test_fixture_pass_hat_k_ours_and_tau2s():
    r = read_tau2_results(FIXTURE)
    # ours, all 4 tasks x 3 trials: rates A 2/3, B 0, C 0, D 1/3 -> pass^1 = (1)/4
    assert r.pass_hat_k[1] == pytest.approx(0.25)
    # pass^2: A C(2,2)/C(3,2) = 1/3, others 0 -> 1/12; pass^3: nobody 3/3 -> 0
    assert r.pass_hat_k[2] == pytest.approx(1 / 12)
    assert r.pass_hat_k[3] == 0.0
    # tau2 drops the infrastructure error: A 2/3, B 0/3, C 0/2, D 1/2 (D's missing trial is
    # simply absent) -> pass^1 = (2/3 + 1/2) / 4 = 7/24; k stops at the smallest n = 2
    assert r.tau2_pass_hat_k == pytest.approx({1: 7 / 24, 2: 1 / 12})
    # average reward: tau2 over the 10 non-infra simulations (3 - 5e-7) / 10; ours over 12 cells
    assert r.tau2_avg_reward == pytest.approx(0.29999995)
    assert r.avg_reward == pytest.approx(2.9999995 / 12)
    assert r.tau2_evaluated_simulations == 10 and r.tau2_evaluated_tasks == 4


def test_tau2_figure_drops_infrastructure_errors_as_tau2_v1_0_1_does():
    """The expected numbers are what tau2-bench v1.0.1's own ``compute_metrics`` prints for
    this file with the pandas it was built with (2.3.3, its uv.lock). Under pandas 3.1.1
    the same code stops dropping infrastructure errors and prints pass^1 0.367, pass^2
    0.067: the figure the evaluator image must not be built with."""
    r = read_tau2_results(INFRA_FIXTURE)
    # kept per task: 0 [ok, failed] 1/2; 1 [ok] 1/1; 2 none (left out); 3 [failed (max
    # steps), ok, ok] 2/3; 4 [ok, failed] 1/2 -> pass^1 = (1/2 + 1 + 2/3 + 1/2) / 4; k stops
    # at the smallest n = 1
    assert r.tau2_pass_hat_k == pytest.approx({1: 2 / 3})
    assert r.tau2_avg_reward == pytest.approx(0.625)  # 5 of the 8 rewards are 1.0
    assert r.tau2_evaluated_simulations == 8 and r.tau2_evaluated_tasks == 4
    assert r.infrastructure_errors == 6
    pandas_3_figure = {1: 0.36666666666666664, 2: 0.06666666666666667}
    assert r.tau2_pass_hat_k != pytest.approx(pandas_3_figure)
    # infrastructure errors (and the trial that never ran) as failures: the sensitivity
    # figure, 15 cells: 1/3 + 1/3 + 0 + 2/3 + 1/3 over 5 tasks
    assert r.pass_hat_k_infra_as_failure == r.pass_hat_k
    assert r.pass_hat_k[1] == pytest.approx(1 / 3)


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "docker" / "evaluator" / "constraints-tau2.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            key = name.lower().replace("_", "-")
            assert key not in pins, f"pinned twice: {name}"
            pins[key] = version
    return pins


def test_evaluator_image_pins_the_pandas_tau2_was_built_with():
    """tau2 v1.0.1's uv.lock: pandas 2.3.3 (numpy 2.3.5, pytz 2025.2). pandas 3 infers a
    string column for termination_reason, where tau2's ``== TerminationReason.
    INFRASTRUCTURE_ERROR`` matches nothing, so its own metrics count infrastructure errors
    as failed trials."""
    pins = _constraints()
    assert pins["pandas"] == "2.3.3"
    assert pins["numpy"] == "2.3.5"
    assert "pytz" in pins  # a pandas 2 dependency (pandas 3 dropped it)
    assert {"litellm", "typer", "loguru", "pydantic"} <= set(pins)


def test_outcomes_mark_infrastructure_errors_and_unrun_trials_missing():
    r = read_tau2_results(INFRA_FIXTURE)
    T, F, M = True, False, None
    assert r.outcome_matrix() == ((T, M, F), (M, M, T), (M, M, M), (F, T, T), (T, F, M))
    missing = r.missing_outcomes()
    assert len(missing) == 7 and all(c.missing and c.success is None for c in missing)
    assert [c.missing_reason for c in missing].count(INFRASTRUCTURE_ERROR) == 6
    assert [(c.trial, c.missing_reason, c.simulation) for c in missing
            if c.missing_reason == NOT_RUN] == [(2, NOT_RUN, None)]
    assert r.outcomes[2][0].status == MISSING
    assert r.outcomes[2][0].termination_reason == INFRASTRUCTURE_ERROR
    assert r.as_dict()["missing_outcomes"] == 7
    # the sensitivity view still counts them as failures
    assert r.matrix[2] == (F, F, F) and r.cells[1][:2] == (INFRASTRUCTURE_ERROR,) * 2


def test_secondary_outcomes_per_simulation():
    r = read_tau2_results(INFRA_FIXTURE)
    ok, _, failed = r.outcomes[0]
    assert ok.termination_reason == "user_stop" and ok.env_assertion_fraction == 1.0
    # 2 of 3 assertions met; of the expected writes the user's toggle_data was done, the
    # agent's refuel_data was not
    assert failed.env_assertion_fraction == pytest.approx(2 / 3)
    assert failed.write_action_match_rate() == 0.5
    assert failed.write_action_match_rate("assistant") == 0.0
    assert failed.write_action_match_rate("user") == 1.0
    sim = failed.simulation
    assert sim.db_match is False and sim.reward_basis == ("ENV_ASSERTION",)
    assert sim.action_counts("write") == (1, 2) and sim.action_counts(None, "assistant") == (0, 1)
    assert {(c.name, c.requestor, c.tool_type) for c in sim.action_checks} == {
        ("toggle_data", "user", "write"), ("refuel_data", "assistant", "write")}
    # tau2 grades a simulation that hit max_steps 0 without checks: nothing to report
    premature = r.outcomes[3][0]
    assert premature.success is False and premature.termination_reason == "max_steps"
    assert premature.env_assertion_fraction is None
    assert premature.write_action_match_rate() is None
    assert premature.simulation.reward_basis is None and premature.simulation.db_match is None
    # missing cells have none either
    assert r.outcomes[2][1].env_assertion_fraction is None
    assert r.outcomes[2][1].write_action_match_rate() is None
    # tau2's own totals over the file: 18 of 20 expected write actions, db 5 match 2 not
    sims = [s for s in r.simulations if s.action_checks is not None]
    assert sum(s.action_counts("write")[0] for s in sims) == 18
    assert sum(s.action_counts("write")[1] for s in sims) == 20
    assert [s.db_match for s in r.simulations].count(True) == 5
    assert [s.db_match for s in r.simulations].count(False) == 2


def test_llm_args_secrets_are_dropped():
    r = read_tau2_results(FIXTURE)
    text = json.dumps(r.as_dict())
    for secret in ("sk-test-should-never-appear", "secretpw", "Bearer abc"):
        assert secret not in text
    assert r.agent.llm_args == {"api_base": "http://10.0.0.5:8000/v1", "temperature": 0.0}
    assert redact({"API_KEY": 1, "nested": [{"password": 2, "ok": 3}]}) == {"nested": [{"ok": 3}]}
    assert redact({"max_tokens": 64, "access_token": "t", "aws_access_key_id": "A"}) == {
        "max_tokens": 64}  # settings that merely mention tokens are kept
    assert not is_secret_key("token_url") and is_secret_key("Authorization")


def test_is_success_tolerance():
    assert is_success(1.0) and is_success(1 - 1e-7) and is_success(1 + 1e-7)
    assert not is_success(0.99) and not is_success(None) and not is_success(0.0)


@pytest.mark.parametrize("mutate, record, field, words", [
    # tau2 numbers trials 0 .. num_trials-1: trial 3 of a 2-trial run cannot exist
    (lambda d: d["simulations"][3].update(trial=99), 3, "trial",
     "trial 99 is outside 0..1 (info.num_trials is 2"),
    (lambda d: d["simulations"][1].update(trial=2), 1, "trial", "outside 0..1"),
    (lambda d: d["simulations"][2]["reward_info"].update(reward=7.5), 2, "reward_info.reward",
     "must be within [0, 1], got 7.5"),
    (lambda d: d["simulations"][0]["reward_info"].update(reward=-0.5), 0,
     "reward_info.reward", "must be within [0, 1]"),
    # the same cell twice, even an infrastructure error and then a real run: tau2's
    # auto-resume drops the error before running the cell again
    (lambda d: d["simulations"].append(dict(d["simulations"][1], id="again")), 4, "trial",
     "task 't1' trial 1 already has simulations[1] (id 'sim-0-1')"),
    (lambda d: d["simulations"].__setitem__(0, dict(d["simulations"][0], termination_reason=
                                                    "infrastructure_error", reward_info=None))
     or d["simulations"].append(dict(d["simulations"][1], id="again", trial=0)), 4, "trial",
     "already has simulations[0]"),
    (lambda d: d["simulations"][2].update(task_id="t9"), 2, "task_id",
     "task 't9' is not in the file's 'tasks'"),
    (lambda d: d["simulations"][3].update(task_id=7), 3, "task_id", "task '7' is not in"),
])
def test_impossible_simulations_are_refused(tmp_path, mutate, record, field, words):
    exc = _bad(tmp_path, mutate)
    assert (exc.record, exc.field) == (record, field)
    assert words in str(exc), str(exc)
    sim_id = "again" if record == 4 else f"sim-{record // 2}-{record % 2}"
    assert f"simulations[{record}] (id {sim_id!r})" in str(exc)


def test_reward_within_tau2s_tolerance_of_the_bounds_is_accepted(tmp_path):
    doc = make_results({"t1": [True, False]})
    doc["simulations"][0]["reward_info"]["reward"] = 1.0000005
    doc["simulations"][1]["reward_info"]["reward"] = -5e-7
    r = read_tau2_results(write_results(tmp_path / "results.json", doc))
    assert r.matrix == ((True, False),)


def test_unknown_termination_reason_is_counted(tmp_path):
    doc = make_results({"t1": [True, False]})
    doc["simulations"][1]["termination_reason"] = "novel_reason"
    r = read_tau2_results(write_results(tmp_path / "results.json", doc))
    assert r.termination_counts["novel_reason"] == 1
    assert r.unknown_termination_reasons == ("novel_reason",)


def test_dir_format(tmp_path):
    doc = make_results({"t1": [True, False], "t2": ["infra", True]})
    sims = doc.pop("simulations")
    doc["simulation_index"] = [{"id": s["id"], "task_id": s["task_id"], "trial": s["trial"]}
                               for s in sims]
    write_results(tmp_path / "run" / "results.json", doc)
    for s in sims:
        write_results(tmp_path / "run" / "simulations" / f"{s['id']}.json", s)
    r = read_tau2_results(tmp_path / "run")  # the folder works too
    assert r.matrix == ((True, False), (False, True))
    assert r.infrastructure_errors == 1
    assert r.tau2_pass_hat_k == pytest.approx({1: 0.75})  # t1 1/2, t2 1/1


def test_empty_simulations_are_all_missing(tmp_path):
    doc = make_results({"t1": [True, True]})
    doc["simulations"] = []
    r = read_tau2_results(write_results(tmp_path / "results.json", doc))
    assert r.matrix == ((False, False),) and len(r.missing_cells) == 2
    assert r.tau2_pass_hat_k == {} and r.tau2_avg_reward is None
    assert tau2_metrics([], 4) == ({}, None, 0, 0)


# ---------------------------------------------------------------------------- bad input

def _bad(tmp_path: Path, mutate) -> InputError:
    doc = make_results({"t1": [True, False], "t2": [False, True]})
    mutate(doc)
    path = write_results(tmp_path / "results.json", doc)
    with pytest.raises(InputError) as info:
        read_tau2_results(path)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("mutate, record, field, words", [
    (lambda d: d["simulations"][2].pop("termination_reason"), 2, "termination_reason",
     "missing"),
    (lambda d: d["simulations"][1]["reward_info"].update(reward="1.0"), 1, "reward_info.reward",
     "expected an integer or a number, got string"),
    (lambda d: d["simulations"][3]["reward_info"].pop("reward"), 3, "reward_info.reward",
     "missing"),
    (lambda d: d["simulations"][0].update(trial=-1), 0, "trial", "must be >= 0"),
    (lambda d: d["simulations"][0].update(trial=True), 0, "trial", "got boolean"),
    (lambda d: d["simulations"][1].update(task_id=None), 1, "task_id", "must not be null"),
    (lambda d: d["simulations"][2].update(duration="30s"), 2, "duration", "got string"),
    (lambda d: d["simulations"][3].update(reward_info=[1.0]), 3, "reward_info", "got list"),
    (lambda d: d["simulations"].__setitem__(1, "oops"), 1, None, "expected a JSON object"),
    (lambda d: d["simulations"][0].update(agent_cost="free"), 0, "agent_cost", "got string"),
    (lambda d: d["simulations"][1]["reward_info"].update(
        env_assertions=[{"met": "yes"}]), 1, "reward_info.env_assertions[0].met",
     "expected a boolean, got string"),
    (lambda d: d["simulations"][2]["reward_info"].update(
        action_checks=[{"action": {"name": "refuel_data"}, "tool_type": "write"}]), 2,
     "reward_info.action_checks[0].action_match", "missing"),
    (lambda d: d["simulations"][3]["reward_info"].update(db_check={"db_match": None}), 3,
     "reward_info.db_check.db_match", "must not be null"),
    (lambda d: d["simulations"][0]["reward_info"].update(reward_basis=[1]), 0,
     "reward_info.reward_basis", "list of strings"),
])
def test_bad_simulation_names_file_record_and_field(tmp_path, mutate, record, field, words):
    exc = _bad(tmp_path, mutate)
    assert exc.record == record
    assert exc.field == field
    assert words in str(exc)
    assert f"simulations[{record}]" in str(exc)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("info"), "info"),
    (lambda d: d["info"].pop("num_trials"), "info.num_trials"),
    (lambda d: d["info"].update(num_trials=0), "info.num_trials"),
    (lambda d: d.pop("tasks"), "tasks"),
    (lambda d: d["tasks"][1].pop("id"), "tasks[1].id"),
    (lambda d: d.pop("simulations"), "simulations"),
    (lambda d: d.update(simulations={"a": 1}), "simulations"),
    (lambda d: d["info"].update(agent_info={"llm": 5}), "info.agent_info.llm"),
])
def test_bad_top_level_names_the_field(tmp_path, mutate, field):
    exc = _bad(tmp_path, mutate)
    assert exc.field == field and exc.record is None


@pytest.mark.parametrize("content, words", [
    ("", "empty"), ("   \n", "empty"), ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_unparseable_files(tmp_path, content, words):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(InputError, match=words) as info:
        read_tau2_results(path)
    assert info.value.path == str(path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_tau2_results(tmp_path / "nope.json")
    with pytest.raises(InputError, match="does not exist"):
        read_tau2_results(tmp_path)  # a folder without results.json


def test_bad_simulation_file_in_dir_format_names_that_file(tmp_path):
    doc = make_results({"t1": [True]})
    sim = doc.pop("simulations")[0]
    write_results(tmp_path / "results.json", doc)
    sim["duration"] = None
    bad = write_results(tmp_path / "simulations" / "s.json", sim)
    with pytest.raises(InputError) as info:
        read_tau2_results(tmp_path / "results.json")
    assert info.value.path == str(bad) and info.value.field == "duration"
