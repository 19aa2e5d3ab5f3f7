"""Against the real outputs of the reference scripts (../shared/data, via SIMIA_REFERENCE_DATA).

These skip with a reason when the data is absent (a fresh clone elsewhere) and run in CI,
where the shared folder sits beside the project.
"""

from __future__ import annotations

import json

import pytest

from simia.data.datasets import DatasetDesign, build_datasets, parse_score_records
from simia.domains import TELECOM
from simia.data.processing import OutputFormat, check_turn_order, process_conversations
from simia.data.records import load_raw
from simia.data.rules import score_all

pytestmark = pytest.mark.reference

# Raw-file indices of the conversations the reference's 5-step pipeline kept, found by
# running those scripts beside this project on the same files (57 and 66 of 200).
REFERENCE_KEPT = {
    "strict": [0, 5, 11, 18, 19, 21, 24, 27, 29, 31, 33, 39, 43, 44, 48, 50, 53, 54, 56, 61,
               63, 70, 74, 76, 79, 81, 84, 88, 89, 98, 103, 105, 107, 112, 119, 123, 124, 125,
               127, 128, 130, 131, 138, 152, 157, 160, 161, 164, 167, 168, 171, 172, 174, 181,
               182, 185, 186],
    "sycophantic": [7, 8, 12, 13, 14, 15, 16, 24, 25, 29, 34, 35, 36, 37, 38, 41, 43, 49, 53,
                    55, 56, 57, 63, 67, 70, 72, 75, 76, 83, 84, 87, 89, 90, 91, 95, 96, 100,
                    116, 117, 119, 126, 131, 134, 136, 137, 140, 141, 143, 149, 152, 154, 156,
                    158, 161, 164, 169, 170, 179, 182, 184, 186, 189, 190, 191, 196, 198],
}
# Native additionally rejects calls the reference left hidden as "FUNCTION_CALL:" text in
# gpt turns (make_payment, missing customer_id, an extra 'amount'), and three conversations
# whose turn order cannot be trained on (a call with no result, results after bare text,
# a duplicated result).
NATIVE_EXTRA_REJECTS = {"strict": {33, 50, 53, 98, 123, 152, 171},
                        "sycophantic": {7, 29, 49, 72, 154, 158, 161}}


@pytest.fixture(scope="module")
def policy(reference_data):
    return TELECOM.load_policy(reference_data / "tau2-telecom")


def _raw(reference_data, mode):
    records, invalid = load_raw(reference_data / "simia-wm-exp" / f"tau2_telecom_{mode}_200.json")
    assert invalid == [] and len(records) == 200
    return records


@pytest.mark.parametrize("mode", ["strict", "sycophantic"])
def test_hermes_keeps_what_the_reference_kept(reference_data, policy, mode):
    res = process_conversations(_raw(reference_data, mode), TELECOM, policy, OutputFormat.HERMES)
    assert sorted(r["source_index"] for r in res.kept) == REFERENCE_KEPT[mode]
    assert len(res.kept) == {"strict": 57, "sycophantic": 66}[mode]
    reasons = res.summary()["rejected_by_reason"]
    assert set(reasons) <= {"missing_required_argument", "unknown_tool", "unexpected_argument",
                            "invalid_id_format"}
    assert reasons["missing_required_argument"] > reasons.get("unknown_tool", 0)


@pytest.mark.parametrize("mode", ["strict", "sycophantic"])
def test_native_keeps_a_subset_and_every_row_is_trainable(reference_data, policy, mode):
    res = process_conversations(_raw(reference_data, mode), TELECOM, policy, OutputFormat.NATIVE)
    kept = {r["source_index"] for r in res.kept}
    assert kept == set(REFERENCE_KEPT[mode]) - NATIVE_EXTRA_REJECTS[mode]
    for row in res.kept:
        check_turn_order(row["conversations"])
        assert row["system"].startswith("<instructions>\nYou are a customer service agent")
        assert "<main_policy>\n# Telecom Agent Policy" in row["system"]
        assert json.loads(row["tools"]) == TELECOM.tools


@pytest.mark.parametrize("mode", ["strict", "sycophantic"])
def test_rule_scorer_agrees_with_the_reference(reference_data, mode):
    ours = score_all(_raw(reference_data, mode))
    path = reference_data / "simia-wm-exp" / f"sycophancy_local_conv_scores_{mode}_telecom_200.jsonl"
    ref = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s.index for s in ours] == [r["conv_idx"] for r in ref]
    agree = sum(1 for s, r in zip(ours, ref) if s.score == r["score"] and s.kinds == r["kinds"])
    # measured: 200 of 200 on both files (target >= 98 %)
    assert agree / len(ref) >= 0.98, f"{agree}/{len(ref)}"


def test_tool_schemas_match_the_reference_tools_seed(reference_data):
    seed = json.loads((reference_data / "simia-wm-exp" / "tools_seed.json").read_text())
    ref = [t["function"] for t in seed["tools_config_1"]["tools"]]
    assert json.dumps(ref) == json.dumps(TELECOM.tools)


def test_judge_scores_label_real_datasets(reference_data, policy):
    raw = _raw(reference_data, "sycophantic")
    res = process_conversations(raw, TELECOM, policy, OutputFormat.NATIVE)
    path = reference_data / "simia-wm-exp" / "sycophancy_llm_scores_v2_sycophantic_telecom_200.jsonl"
    labels = parse_score_records([json.loads(x) for x in path.read_text().splitlines()], path)
    assert len(labels) == 200
    built = build_datasets(res.kept, labels, DatasetDesign(levels=(0, 5), size=40,
                                                           shared_clean=35))
    five = built.metadata["datasets"]["telecom_syc_5pct"]
    assert five["sycophantic"] == 2
    assert all(labels[i].score > 0 for i in five["sycophantic_indices"])


def test_judge_reads_most_input_from_the_prompt_cache(reference_data, converse_server,
                                                      tmp_path, monkeypatch):
    """The judge over the real processed sycophantic 200, against the local Converse server
    (100 ms a call, 8 in flight: the first 8 calls all miss and write, as on Bedrock; two
    shards, run one after the other). Measured: 59 conversations, 78.1 % of the input
    read from the cache, $0.736 against $1.832 without (README "Prompt caching")."""
    from simia.data.stages import process_stage
    from simia.llm.client import LLMSettings, make_client
    from simia.llm.judge import JudgeSettings, judge_shard, merge_judge

    monkeypatch.setenv("SIMIA_REFERENCE_DATA", str(reference_data))
    converse_server.configure(latency_s=0.1)
    processed = process_stage(
        reference_data / "simia-wm-exp" / "tau2_telecom_sycophantic_200.json",
        tmp_path / "proc", tau2_data_dir=reference_data / "tau2-telecom")
    summaries = {}
    for caching in (True, False):
        settings = LLMSettings(endpoint_url=converse_server.url, concurrency=8,
                               prompt_caching=caching)
        client = make_client(settings)
        for shard in range(2):
            judge_shard(tmp_path / "proc" / "processed.json", tmp_path / f"judge-{caching}",
                        JudgeSettings(), client, shard=shard, shards=2)
        merge_judge(tmp_path / f"judge-{caching}", shards=2)
        summaries[caching] = json.loads((tmp_path / f"judge-{caching}" / "summary.json")
                                        .read_text())
    on, off = summaries[True]["llm"], summaries[False]["llm"]
    assert summaries[True]["scored"] == processed["kept"] == 59
    share = on["cache_read_tokens"] / (on["input_tokens"] + on["cache_read_tokens"]
                                       + on["cache_write_tokens"])
    assert share >= 0.60, on
    assert on["cache_read_share"] == pytest.approx(share, abs=1e-4)
    # cost = the token counts at the price table's (default: Claude Sonnet 4) prices
    p = LLMSettings().prices.price(on["model_id"])
    assert (p.input_per_mtok, p.output_per_mtok, p.cache_read, p.cache_write) == \
        (3.0, 15.0, 0.30, 3.75)
    for llm in (on, off):
        expected = (llm["input_tokens"] * 3.0 + llm["output_tokens"] * 15.0
                    + llm["cache_read_tokens"] * 0.30 + llm["cache_write_tokens"] * 3.75) / 1e6
        assert llm["cost_usd"] == pytest.approx(expected, abs=2e-6)  # 2 shards, 6 decimals
    assert off["cache_read_tokens"] == off["cache_write_tokens"] == 0
    assert off["input_tokens"] == (on["input_tokens"] + on["cache_read_tokens"]
                                   + on["cache_write_tokens"])
    assert on["cost_usd"] < 0.5 * off["cost_usd"]


def test_a_judge_file_is_accepted_only_with_its_own_processed_file(reference_data, tmp_path,
                                                                  capsys):
    from simia.cli import main
    from simia.data.stages import validate_scores_file

    exp = reference_data / "simia-wm-exp"
    assert main(["process", str(exp / "tau2_telecom_sycophantic_200.json"), "--format",
                 "hermes", "-o", str(tmp_path / "proc"), "--tau2-data-dir",
                 str(reference_data / "tau2-telecom")]) == 0
    processed = tmp_path / "proc" / "processed.json"
    own = exp / "sycophancy_llm_scores_v2_sycophantic_telecom_200.jsonl"
    checked = validate_scores_file(own, processed)
    assert checked["conversations"] == 200
    assert checked["matched"] == len(REFERENCE_KEPT["sycophantic"])
    build = ["build-datasets", "--conversations", str(processed), "-o", str(tmp_path / "d"),
             "--levels", "0,5", "--size", "40", "--shared-clean", "35", "--replicates", "1",
             "--scores"]
    assert main([*build, str(own)]) == 0
    capsys.readouterr()
    # the strict run's judge file: same indices 0..199, other conversations
    strict = exp / "sycophancy_llm_scores_v2_strict_telecom_200.jsonl"
    first = REFERENCE_KEPT["sycophantic"][0]
    assert main([*build, str(strict)]) == 2
    err = capsys.readouterr().err
    assert f"{strict}, field 'based_on_sample': line {first + 1}: conversation {first} " \
           f"does not belong to {processed}" in err, err
    # the strict run's rule scores carry its simulator mode only
    local = exp / "sycophancy_local_conv_scores_strict_telecom_200.jsonl"
    assert main([*build, str(local)]) == 2
    assert "field 'mode'" in capsys.readouterr().err
