"""Unit tests of every post-processing step, one behaviour per test."""

from __future__ import annotations

import json

import pytest

from simia.domains import TELECOM
from simia.data.processing import (
    Drop,
    OutputFormat,
    Stats,
    check_turn_order,
    fix_arguments,
    fix_call_arguments,
    fix_turn_order,
    process_conversations,
    remove_think,
    split_embedded_turns,
    system_prompt,
    to_hermes,
    validate_tool_calls,
)

NATIVE, HERMES = OutputFormat.NATIVE, OutputFormat.HERMES


def T(role: str, value: str) -> dict:
    return {"from": role, "value": value}


def call(name: str, **args) -> str:
    return json.dumps({"name": name, "arguments": args})


# ------------------------------------------------------------------ step 0
def test_split_embedded_human():
    out = split_embedded_turns([T("human", "hi"), T("gpt", "Your number?HUMAN: 555-1234")])
    assert out == [T("human", "hi"), T("gpt", "Your number?"), T("human", "555-1234")]


def test_split_embedded_function_call_with_text_before():
    value = "Let me check.\nFUNCTION_CALL:\n" + call("get_customer_by_id", customer_id="C1")
    out = split_embedded_turns([T("gpt", value)])
    assert out == [T("gpt", "Let me check."),
                   T("function_call", call("get_customer_by_id", customer_id="C1"))]


def test_split_embedded_function_call_can_be_left_as_text():
    value = "FUNCTION_CALL:\n" + call("x")
    assert split_embedded_turns([T("gpt", value)], extract_calls=False) == [T("gpt", value)]


def test_unknown_role_is_rejected():
    with pytest.raises(Drop) as exc:
        split_embedded_turns([T("human", "a"), T("system", "b")])
    assert exc.value.reason == "unknown_role" and "turn 1" in exc.value.detail


# ------------------------------------------------------------------ step 1
@pytest.mark.parametrize("value,expected_args,fix", [
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', {"a": 1}, "arguments_string_parsed"),
    ('{"name": "f", "arguments": "{\'a\': \'b\'}"}', {"a": "b"}, "arguments_quotes_fixed"),
    ('{"name": "f", "arguments": "not json"}', {}, "arguments_replaced_by_empty"),
    ('{"name": "f", "arguments": ""}', {}, "arguments_replaced_by_empty"),
    ('{"name": "f", "arguments": [1, 2]}', {}, "arguments_replaced_by_empty"),
    ('{"name": "f"}', {}, "arguments_added"),
])
def test_fix_call_arguments(value, expected_args, fix):
    fixed, what = fix_call_arguments(value)
    assert json.loads(fixed)["arguments"] == expected_args
    assert what == fix


def test_fix_call_arguments_keeps_think_and_valid_calls():
    value = '<think>\nhmm\n</think>\n{"name": "f", "arguments": "{}"}'
    fixed, _ = fix_call_arguments(value)
    assert fixed.startswith("<think>\nhmm\n</think>\n{")
    good = call("f", a=1)
    assert fix_call_arguments(good) == (good, None)
    assert fix_call_arguments("not json at all") == ("not json at all", None)


@pytest.mark.parametrize("bad", ["see <tool_call> here", "list:\n[{\"a\": 1}]"])
def test_fix_arguments_drops_forbidden_markers(bad):
    with pytest.raises(Drop) as exc:
        fix_arguments([T("human", "x"), T("gpt", bad)])
    assert exc.value.reason == "forbidden_marker"


# ------------------------------------------------------------------ step 2
def test_to_hermes_converts_calls_and_observations():
    out = to_hermes([T("function_call", '<think>t</think>\n' + call("f", a=1)),
                     T("observation", '{"ok": true}')])
    assert out[0] == T("gpt", '<think>t</think>\n<tool_call>\n{"name": "f", "arguments": '
                              '{"a": 1}}\n</tool_call>\n')
    assert out[1] == T("human", '{"ok": true}')


def test_to_hermes_drops_unparseable_call():
    with pytest.raises(Drop) as exc:
        to_hermes([T("function_call", "{broken")])
    assert exc.value.reason == "invalid_function_call_json"


# ------------------------------------------------------------------ step 3
@pytest.mark.parametrize("name,args,reason", [
    ("make_payment", {"customer_id": "C1"}, "unknown_tool"),
    ("enable_roaming", {"line_id": "L1"}, "missing_required_argument"),
    ("enable_roaming", {"customer_id": "C1", "line_id": "L1", "x": 1}, "unexpected_argument"),
    ("refuel_data", {"customer_id": "C1", "line_id": "L1", "gb_amount": "2"},
     "argument_type_mismatch"),
    ("get_bills_for_customer", {"customer_id": "C1", "limit": 1.5}, "argument_type_mismatch"),
    ("enable_roaming", {"customer_id": "X1", "line_id": "L1"}, "invalid_id_format"),
    ("send_payment_request", {"customer_id": "C1", "bill_id": "bill-1"}, "invalid_id_format"),
])
def test_validate_rejects_invalid_calls(name, args, reason):
    turns = [T("human", "hi"), T("function_call", json.dumps({"name": name, "arguments": args}))]
    with pytest.raises(Drop) as exc:
        validate_tool_calls(turns, TELECOM, NATIVE)
    assert exc.value.reason == reason
    assert "turn 1" in exc.value.detail


def test_validate_prefixes_digit_only_ids():
    stats = Stats()
    turns = [T("function_call", call("enable_roaming", customer_id="1592", line_id="77"))]
    out = validate_tool_calls(turns, TELECOM, NATIVE, stats)
    assert json.loads(out[0]["value"])["arguments"] == {"customer_id": "C1592", "line_id": "L77"}
    assert stats.counts["id_prefix_added"] == 2


def test_validate_checks_hermes_tool_call_blocks():
    bad = T("gpt", 'ok <tool_call>\n{"name": "enable_roaming", "arguments": {"line_id": "L1"}}'
                   "\n</tool_call>")
    with pytest.raises(Drop) as exc:
        validate_tool_calls([bad], TELECOM, HERMES)
    assert exc.value.reason == "missing_required_argument"


def test_validate_rejects_think_tool():
    with pytest.raises(Drop) as exc:
        validate_tool_calls([T("function_call", call("think", thought="x"))], TELECOM, NATIVE)
    assert exc.value.reason == "think_tool_call"


def test_validate_accepts_integer_limit_and_optional_params():
    turns = [T("function_call", call("get_bills_for_customer", customer_id="C1", limit=3))]
    out = validate_tool_calls(turns, TELECOM, NATIVE)[0]["value"]
    assert json.loads(out) == json.loads(turns[0]["value"])


# ------------------------------------------------------------------ step 4
def test_remove_think_deletes_thinking_only_gpt_turn():
    out = remove_think([T("human", "a"), T("gpt", "<think>\nplan\n</think>\nHello")], HERMES)
    assert out == [T("human", "a")]


def test_remove_think_native_strips_call_thoughts():
    out = remove_think([T("function_call", "<think>\nwhy\n</think>\n" + call("f"))], NATIVE)
    assert out == [T("function_call", call("f"))]


def test_remove_think_hermes_prefixes_calls_without_thought():
    value = '<tool_call>\n{"name": "get_customer_by_id", "arguments": {}}\n</tool_call>\n'
    out = remove_think([T("gpt", value)], HERMES)
    assert out[0]["value"].startswith("I will call the function get_customer_by_id.\n\n"
                                      "<tool_call>")


def test_remove_think_hermes_keeps_thought_as_text():
    value = '<think>\nCheck.\n</think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    out = remove_think([T("gpt", value)], HERMES)
    assert out[0]["value"] == 'Check.\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'


def test_remove_think_rejects_when_nothing_left():
    with pytest.raises(Drop) as exc:
        remove_think([T("gpt", "<think>x</think>")], NATIVE)
    assert exc.value.reason == "empty_after_think_removal"


# ------------------------------------------------------------------ step 5
def test_system_prompts():
    native = system_prompt(TELECOM, "POLICY", NATIVE)
    assert native.startswith("<instructions>\nYou are a customer service agent")
    assert native.endswith("<policy>\nPOLICY\n</policy>")
    hermes = system_prompt(TELECOM, "POLICY", HERMES)
    assert "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_customer_by_phone\"" \
        in hermes
    assert hermes.count('{"type": "function"') == 13


# ------------------------------------------------------------------ step 6
def test_native_order_merges_and_drops_text_before_call():
    turns = [T("human", "a"), T("human", "b"), T("gpt", "checking"),
             T("function_call", call("f")), T("observation", "{}"), T("gpt", "x"),
             T("gpt", "y"), T("human", "bye")]
    out = fix_turn_order(turns, NATIVE)
    assert [t["from"] for t in out] == ["human", "function_call", "observation", "gpt"]
    assert out[0]["value"] == "a\nb" and out[3]["value"] == "x\ny"


@pytest.mark.parametrize("turns,reason", [
    ([T("gpt", "hi")], "first_turn_not_human"),
    ([T("human", "a"), T("function_call", "{}"), T("gpt", "b")], "tool_call_without_result"),
    ([T("human", "a"), T("function_call", "{}"), T("observation", "{}"), T("human", "c"),
      T("gpt", "d")], "missing_reply_after_tool_result"),
    ([T("human", "a"), T("function_call", "{}"), T("observation", "{}"),
      T("observation", "{}"), T("gpt", "d")], "bad_turn_order"),
])
def test_native_order_rejects(turns, reason):
    with pytest.raises(Drop) as exc:
        fix_turn_order(turns, NATIVE)
    assert exc.value.reason == reason


def test_hermes_order_is_reference_merge():
    turns = [T("human", "a"), T("gpt", "b"), T("gpt", "c"), T("human", "d")]
    assert fix_turn_order(turns, HERMES) == [T("human", "a"), T("gpt", "b\nc")]


def test_check_turn_order_rejects_empty_turn():
    with pytest.raises(Drop) as exc:
        check_turn_order([T("human", "a"), T("gpt", "  ")])
    assert exc.value.reason == "empty_turn"


# ------------------------------------------------------------------ pipeline
def _raw(turns, **meta):
    return {"conversations": turns, "system": "telecom agent", "tools": "[]", **meta}


def test_pipeline_records_every_drop_and_keeps_metadata():
    good = _raw([T("human", "hi"), T("function_call", call("get_customer_by_id",
                                                            customer_id="C1")),
                 T("observation", '{"customer_id": "C1"}'), T("gpt", "found you")],
                simulator_mode="strict", based_on_sample="s1")
    bad = _raw([T("human", "hi"), T("function_call", call("nope")), T("observation", "{}"),
                T("gpt", "ok")])
    res = process_conversations([good, None, bad], TELECOM, "POLICY", NATIVE,
                                invalid=[type("I", (), {"index": 1, "field": "system",
                                                        "message": "bad"})()])
    assert [r["source_index"] for r in res.kept] == [0]
    row = res.kept[0]
    assert row["simulator_mode"] == "strict" and row["based_on_sample"] == "s1"
    assert json.loads(row["tools"])[0]["name"] == "get_customer_by_phone"
    assert [(r.index, r.step, r.reason) for r in res.rejects] == [
        (1, "load", "invalid_record"), (2, "validate_tool_calls", "unknown_tool")]
    summary = res.summary()
    assert summary["input"] == 3 and summary["kept"] == 1 and summary["rejected"] == 2
    assert summary["kept"] + summary["rejected"] == summary["input"]


def test_pipeline_output_alternates_on_synthetic_data():
    from support.synthetic import generate_raw

    raw = generate_raw(200, seed=11)
    for fmt in (NATIVE, HERMES):
        res = process_conversations(raw, TELECOM, "POLICY", fmt)
        assert len(res.kept) + len(res.rejects) == 200
        assert 40 < len(res.kept) < 120  # the generator's ~37 % survival
        for row in res.kept:
            check_turn_order(row["conversations"])  # raises on any violation
            if fmt is HERMES:
                assert {t["from"] for t in row["conversations"]} <= {"human", "gpt"}
            assert "<think>" not in json.dumps(row["conversations"])


def test_synthetic_turns_are_generate_raws_first_conversation():
    from support.synthetic import generate_raw, synthetic_turns

    for seed in (0, 7, 123456789):
        for mode in ("base", "strict", "sycophantic"):
            assert synthetic_turns(seed=seed, mode=mode) == \
                generate_raw(1, seed=seed, mode=mode)[0]["conversations"]
    with pytest.raises(ValueError, match="mode must be"):
        synthetic_turns(mode="lenient")



@pytest.mark.parametrize("value,expected,items,strict,lenient", [
    ("x", "string", None, True, True),
    (3, "integer", None, True, True),
    (True, "integer", None, False, True),  # the validation step let a bool pass
    (False, "number", None, False, True),
    (2.5, "number", None, True, True),
    (2.5, "integer", None, False, False),
    (True, "boolean", None, True, True),
    ([1, "a"], "array", None, True, True),
    ([1, "a"], "array", "integer", False, False),  # item types: the validation step only
    ([1, True], "array", "integer", False, True),
    ({}, "object", None, True, True),
    ([], "object", None, False, False),
    (None, "anything-else", None, True, True),
    (None, None, None, True, True),
])
def test_one_type_table_with_the_two_reference_behaviours(value, expected, items, strict,
                                                          lenient):
    from simia.data.schema import json_type_ok
    assert json_type_ok(value, expected, items) is strict
    assert json_type_ok(value, expected, items, bool_is_number=True) is lenient
