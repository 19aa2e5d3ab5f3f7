"""Property-based tests (hypothesis) of the data half's trust boundary: real records
(the reference run's sycophantic conversations and their LLM judge scores), mutated
(fields dropped or retyped, turns shuffled, files cut at any byte), fed to ``simia
process``, ``simia score-rules`` and ``simia build-datasets``. Each run either succeeds
with complete outputs or exits 2 with a one-line error; never a traceback, never a
half-written output, never a temporary file left behind.

Without hypothesis or the real data these tests skip with the reason, except when
``$CI`` is set: then they fail.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is pinned in requirements-dev.txt
    if os.environ.get("CI"):
        raise ImportError("CI is set, so hypothesis is required (requirements-dev.txt, "
                          "pinned in constraints.txt): make venv") from None
    pytest.skip("hypothesis is not installed: make venv (requirements-dev.txt)",
                allow_module_level=True)

from simia.cli import main  # noqa: E402


def _shared_data() -> Path:
    """``$SIMIA_REFERENCE_DATA``, else ../shared/data beside the project (as the Makefile)."""
    return Path(os.environ.get("SIMIA_REFERENCE_DATA") or ROOT.parent / "shared" / "data")


RAW = "simia-wm-exp/tau2_telecom_sycophantic_200.json"
JUDGE = "simia-wm-exp/sycophancy_llm_scores_v2_sycophantic_telecom_200.jsonl"
POLICY = "tau2-telecom"
#: a design the unmutated data fill (the judge flags conversation 182, which processing keeps)
DESIGN = ["--levels", "0,10", "--size", "10", "--shared-clean", "8", "--replicates", "1"]
#: values a field is retyped to
ODD_VALUES = [None, 0, -1, 2.5, True, "", "text", [], [1, "a"], {}, {"a": None}]
PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


@pytest.fixture(scope="module")
def real() -> RealData:
    """The real raw records (a sample), the whole file processed, the judge lines."""
    base = _shared_data()
    missing = [p for p in (RAW, JUDGE, f"{POLICY}/main_policy.md") if not (base / p).is_file()]
    if missing:
        reason = (f"real reference data not available ({', '.join(missing)} under {base}): "
                  "set SIMIA_REFERENCE_DATA to the shared data folder")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the real data are required: {reason}")
        pytest.skip(reason)
    raw = json.loads((base / RAW).read_text())
    work = Path(tempfile.mkdtemp(prefix="simia-properties-"))
    try:
        assert main(["process", str(base / RAW), "-o", str(work / "p"), "--tau2-data-dir",
                     str(base / POLICY)]) == 0
        processed = json.loads((work / "p" / "processed.json").read_text())
    finally:
        shutil.rmtree(work)
    return RealData(raw[:30], processed, base / POLICY,
                    [json.loads(x) for x in (base / JUDGE).read_text().splitlines() if x])


class RealData:
    """The real inputs (a short repr: hypothesis prints its arguments on a failure)."""

    def __init__(self, raw: list[Any], processed: list[Any], policy: Path,
                 judge: list[Any]) -> None:
        self.raw, self.processed, self.policy, self.judge = raw, processed, policy, judge

    def __repr__(self) -> str:
        return (f"RealData({len(self.raw)} raw, {len(self.processed)} processed, "
                f"{len(self.judge)} judge lines)")


# --------------------------------------------------------------------------- mutations

def _mutate_object(draw: st.DrawFn, obj: dict[str, Any]) -> None:
    """Drop one key of ``obj`` or give it an odd value."""
    if not obj:
        return
    key = draw(st.sampled_from(sorted(obj)))
    if draw(st.booleans()):
        del obj[key]
    else:
        obj[key] = draw(st.sampled_from(ODD_VALUES))


@st.composite
def mutated_records(draw: st.DrawFn, records: list[dict[str, Any]]) -> bytes:
    """``records`` (conversations: raw or processed) after 1-3 mutations, serialised as a
    two-space-indented JSON list and maybe cut at any byte."""
    recs = copy.deepcopy(records)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(recs) - 1))
        rec = recs[i]
        kind = draw(st.sampled_from(["record", "turn", "shuffle", "replace", "remove_turn"]))
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if kind == "record" and isinstance(rec, dict):
            _mutate_object(draw, rec)
        elif kind == "replace":
            recs[i] = draw(st.sampled_from(ODD_VALUES))
        elif isinstance(turns, list) and turns:
            j = draw(st.integers(0, len(turns) - 1))
            if kind == "turn" and isinstance(turns[j], dict):
                _mutate_object(draw, turns[j])
            elif kind == "shuffle":
                rec["conversations"] = draw(st.permutations(turns))
            elif kind == "remove_turn":
                del turns[j]
    data = json.dumps(recs, indent=2, ensure_ascii=False).encode()
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data) - 1))]
    return data


@st.composite
def mutated_lines(draw: st.DrawFn, lines: list[dict[str, Any]]) -> bytes:
    """JSON lines after 0-2 mutations (a field dropped or retyped, a line repeated, the
    order shuffled), maybe cut at any byte."""
    rows = copy.deepcopy(lines)
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(rows) - 1))
        kind = draw(st.sampled_from(["field", "repeat", "shuffle"]))
        if kind == "field":
            _mutate_object(draw, rows[i])
        elif kind == "repeat":
            rows.insert(i, copy.deepcopy(rows[i]))
        else:
            rows = draw(st.permutations(rows))
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    if draw(st.integers(0, 4)) == 0:
        data = data[:draw(st.integers(0, len(data) - 1))]
    return data


# --------------------------------------------------------------------------- the property

def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """main(argv) in process: (exit status, stderr). An exception escaping main is the
    traceback the property forbids: it fails the test."""
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _assert_clean_outcome(command: str, rc: int, err: str, work: Path,
                          outputs: list[Path]) -> None:
    """Exit 0, or exit 2 with one line and none of the outputs; no temporary file."""
    assert rc in (0, 2), (command, rc, err)
    leftovers = [p for p in work.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    if rc == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith(f"simia {command}: error: "), err
        assert len(lines) == 1 and "Traceback" not in err, err
        written = [p for p in outputs if p.exists()]
        assert written == [], (err, written)


@PROPERTY_SETTINGS
@given(data=st.data(), skip_invalid=st.booleans())
def test_process_and_score_rules_take_mutated_raw_records(real, data, skip_invalid, capsys):
    raw = data.draw(mutated_records(real.raw), label="raw file")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "raw.json").write_bytes(raw)
        out = work / "processed"
        rc, err = _run(["process", str(work / "raw.json"), "-o", str(out), "--tau2-data-dir",
                        str(real.policy)] + (["--skip-invalid-records"] if skip_invalid
                                                else []), capsys)
        _assert_clean_outcome("process", rc, err, work, [out / "processed.json",
                                                         out / "rejects.jsonl",
                                                         out / "summary.json"])
        if rc == 0:
            summary = json.loads((out / "summary.json").read_text())
            kept = json.loads((out / "processed.json").read_text())
            rejects = (out / "rejects.jsonl").read_text().splitlines()
            assert summary["kept"] == len(kept) and summary["rejected"] == len(rejects)

        scores = work / "scores.jsonl"
        rc, err = _run(["score-rules", str(work / "raw.json"), "-o", str(scores)], capsys)
        _assert_clean_outcome("score-rules", rc, err, work, [scores])
        if rc == 0:
            rows = [json.loads(x) for x in scores.read_text().splitlines()]
            assert all("index" in r for r in rows)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_build_datasets_takes_mutated_conversations_and_scores(real, data, capsys):
    which = data.draw(st.sampled_from(["conversations", "scores", "both"]), label="mutate")
    conversations = (data.draw(mutated_records(real.processed), label="conversations")
                     if which != "scores" else
                     json.dumps(real.processed, indent=2, ensure_ascii=False).encode())
    scores = (data.draw(mutated_lines(real.judge), label="scores")
              if which != "conversations" else
              b"".join(json.dumps(r).encode() + b"\n" for r in real.judge))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "processed.json").write_bytes(conversations)
        (work / "judge_scores.jsonl").write_bytes(scores)
        out = work / "datasets"
        rc, err = _run(["build-datasets", "--conversations", str(work / "processed.json"),
                        "--scores", str(work / "judge_scores.jsonl"), "-o", str(out), *DESIGN],
                       capsys)
        _assert_clean_outcome("build-datasets", rc, err, work,
                              [out / name for name in ("dataset_info.json", "metadata.json",
                                                       "summary.json", "rejects.jsonl")]
                              + (list(out.glob("*.json")) if rc == 2 else []))
        if rc == 0:
            info = json.loads((out / "dataset_info.json").read_text())
            for entry in info.values():
                assert len(json.loads((out / entry["file_name"]).read_text())) == 10


def test_the_unmutated_real_data_build(real, capsys):
    """The property's baseline: the real inputs themselves succeed (so a mutation's exit 2
    is the mutation's doing)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "processed.json").write_text(json.dumps(real.processed, indent=2))
        (work / "judge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real.judge))
        rc, err = _run(["build-datasets", "--conversations", str(work / "processed.json"),
                        "--scores", str(work / "judge.jsonl"), "-o", str(work / "d"), *DESIGN],
                       capsys)
        assert rc == 0, err
