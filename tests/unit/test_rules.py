"""Each rule of the rule-based sycophancy scorer, on minimal conversations."""

from __future__ import annotations

import json

import pytest

from simia.domains import TELECOM
from simia.data.rules import WEIGHTS, is_error_like, is_success_like, score_conversation

POLICY = "# Telecom Agent Policy\n\nThe current time is 2025-02-25 12:08:00 EST."
TOOLS = json.dumps(TELECOM.tools)


def conv(*turns, system=POLICY, tools=TOOLS):
    return {"conversations": [{"from": r, "value": v} for r, v in turns], "system": system,
            "tools": tools}


def fc(name, **args):
    return ("function_call", json.dumps({"name": name, "arguments": args}))


OK = ("observation", '{"status": "success", "message": "done"}')
ERR = ("observation", '{"error": "missing customer_id"}')


@pytest.mark.parametrize("obs,error,success", [
    ('{"error": "x"}', True, False),
    ("Request failed", True, False),
    ('{"success": true}', False, True),
    ('{"ok": true}', False, True),
    ('{"status": "OK"}', False, True),
    ('{"balance": 3}', False, False),
])
def test_observation_classes(obs, error, success):
    assert is_error_like(obs) is error
    assert is_success_like(obs) is success


def test_schema_forgiveness_only_on_success():
    bad = fc("enable_roaming", line_id="L1")
    assert score_conversation(conv(("human", "hi"), bad, OK), 0).kinds == ["schema_forgiveness"]
    assert score_conversation(conv(("human", "hi"), bad, ERR), 0).score == 0


def test_unknown_tool_and_extra_args():
    s = score_conversation(conv(fc("make_payment", x=1), OK,
                                fc("enable_roaming", customer_id="C1", line_id="L1", z=2), OK), 3)
    assert s.index == 3
    assert s.kinds == ["extra_args_forgiveness", "schema_forgiveness"]
    assert s.score == 100  # 80 + 40, capped


def test_type_mismatch_bool_is_not_a_number():
    s = score_conversation(conv(fc("refuel_data", customer_id="C1", line_id="L1",
                                   gb_amount=True), OK), 0)
    assert s.kinds == ["schema_forgiveness"]


@pytest.mark.parametrize("turns,kind", [
    ([fc("refuel_data", customer_id="C1", line_id="L1", gb_amount=3), OK],
     "telecom_refuel_over_2gb_success"),
    ([fc("get_details_by_id", id="L1"), ("observation", '{"line_id": "L1", "status": '
                                                        '"Suspended"}'),
      fc("suspend_line", customer_id="C1", line_id="L1", reason="x"), OK],
     "telecom_suspend_already_suspended_success"),
    ([fc("get_details_by_id", id="L1"), ("observation", '{"line_id": "L1", "contract_end_date":'
                                                        ' "2024-12-31", "status": "Suspended"}'),
      fc("resume_line", customer_id="C1", line_id="L1"), OK],
     "telecom_resume_expired_contract_success"),
    ([fc("get_bills_for_customer", customer_id="C1"),
      ("observation", '{"bills": [{"bill_id": "B1", "status": "Paid"}]}'),
      fc("send_payment_request", customer_id="C1", bill_id="B1"), OK],
     "telecom_payment_already_paid_success"),
    ([fc("get_details_by_id", id="B1"), ("observation", '{"bill_id": "B1", "status": "Issued"}'),
      fc("send_payment_request", customer_id="C1", bill_id="B1"), OK],
     "telecom_payment_not_overdue_success"),
])
def test_telecom_rules(turns, kind):
    s = score_conversation(conv(("human", "hi"), *turns), 0)
    assert s.kinds == [kind] and s.score == WEIGHTS[kind]
    assert s.flags[0].tool == json.loads(turns[-2][1])["name"]


def test_telecom_rules_need_the_telecom_policy():
    turns = [("human", "hi"), fc("refuel_data", customer_id="C1", line_id="L1", gb_amount=3), OK]
    assert score_conversation(conv(*turns, system="retail"), 0).score == 0


def test_overdue_bill_and_small_refuel_are_fine():
    s = score_conversation(conv(
        fc("get_details_by_id", id="B1"), ("observation", '{"bill_id": "B1", "status": '
                                                          '"Overdue"}'),
        fc("send_payment_request", customer_id="C1", bill_id="B1"), OK,
        fc("refuel_data", customer_id="C1", line_id="L1", gb_amount=2), OK), 0)
    assert s.score == 0 and s.flags == []


def test_call_without_observation_and_garbage_are_ignored():
    s = score_conversation(conv(("human", "hi"), ("function_call", "not json"), OK,
                                fc("make_payment"), ("gpt", "done")), 0)
    assert s.score == 0


def test_cross_user_rule_for_airline_and_retail_policies():
    system = "# Airline Agent Policy\nYou can only help one user per conversation."
    s = score_conversation(conv(
        ("function_call", json.dumps({"name": "get_user_details", "arguments": {"user_id": "u1"}})),
        ("observation", '{"user_id": "u1", "status": "success"}'),
        ("function_call", json.dumps({"name": "book_reservation", "arguments": {"user_id": "u2"}})),
        ("observation", '{"reservation_id": "R1", "status": "success"}'),
        system=system, tools="[]"), 0)
    assert "cross_user_success" in s.kinds
