"""Dataset builder: design checks, nested seeded selection, labels, metadata."""

from __future__ import annotations

import json

import pytest

from simia.data.datasets import DatasetDesign, Label, build_datasets, parse_score_records
from simia.errors import ConfigError, DesignError, InputError


def rows(n: int, native: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        r = {"conversations": [{"from": "human", "value": f"q{i}"},
                               {"from": "gpt", "value": f"a{i}"}],
             "system": "S", "source_index": i * 2}
        if native:
            r["tools"] = "[]"
        out.append(r)
    return out


def labels_for(rs, syc_every: int = 4) -> dict[int, Label]:
    return {r["source_index"]: Label(r["source_index"],
                                     80.0 if k % syc_every == 0 else 0.0, "rules")
            for k, r in enumerate(rs)}


def test_design_checks():
    with pytest.raises(ConfigError, match="within 0..100"):
        DatasetDesign(levels=(0, 120))
    with pytest.raises(ConfigError, match="duplicate"):
        DatasetDesign(levels=(5, 5))
    with pytest.raises(ConfigError, match="does not fit"):
        DatasetDesign(levels=(0, 50), size=100, shared_clean=60)
    with pytest.raises(ConfigError, match="at least 1"):
        DatasetDesign(size=0)
    assert DatasetDesign().n_sycophantic(5) == 25
    assert DatasetDesign(size=30, shared_clean=20).n_sycophantic(5) == 2  # 1.5 rounds up


def test_levels_are_nested_share_the_core_and_are_reproducible():
    rs = rows(200)
    design = DatasetDesign(levels=(0, 5, 10, 20), size=40, shared_clean=30, seed=1)
    built = build_datasets(rs, labels_for(rs), design)
    meta = built.metadata["datasets"]
    core = set(built.metadata["shared_clean_core"])
    assert len(core) == 30
    prev_syc: set[int] = set()
    for name, lv in [("telecom_syc_0pct", 0), ("telecom_syc_5pct", 5), ("telecom_syc_10pct", 10),
                     ("telecom_syc_20pct", 20)]:
        d = meta[name]
        assert d["total"] == 40 and d["sycophantic"] == design.n_sycophantic(lv)
        assert core <= set(d["indices"])
        assert prev_syc <= set(d["sycophantic_indices"])
        prev_syc = set(d["sycophantic_indices"])
        assert len(built.files[f"{name}.json"]) == 40
        assert set(d["content_sha256"]) == {str(i) for i in d["indices"]}
    again = build_datasets(rs, labels_for(rs), design)
    assert again.metadata == built.metadata
    other = build_datasets(rs, labels_for(rs), DatasetDesign(levels=(0, 5, 10, 20), size=40,
                                                             shared_clean=30, seed=2))
    assert other.metadata["shared_clean_core"] != built.metadata["shared_clean_core"]


def test_each_replicate_is_its_own_nested_draw(tmp_path):
    """Replicate k draws with seed + k - 1 (replicate 1 is the build without replicates);
    inside a replicate the levels stay nested around one shared core."""
    from simia.data.stages import build_datasets_stage

    rs = rows(200)
    design = DatasetDesign(levels=(0, 5, 10, 20), size=40, shared_clean=30, seed=1,
                           replicates=3)
    one = build_datasets(rs, labels_for(rs), design)
    assert one.metadata["datasets"]["telecom_syc_5pct"]["indices"] == build_datasets(
        rs, labels_for(rs), design.model_copy(update={"replicates": 1})
    ).metadata["datasets"]["telecom_syc_5pct"]["indices"]
    two = build_datasets(rs, labels_for(rs), design, replicate=2)
    assert two.metadata["design"]["seed"] == 2
    assert two.metadata["shared_clean_core"] != one.metadata["shared_clean_core"]
    meta = two.metadata["datasets"]
    assert set(meta) == {"telecom_syc_0pct_r2", "telecom_syc_5pct_r2", "telecom_syc_10pct_r2",
                         "telecom_syc_20pct_r2"}
    assert {d["replicate"] for d in meta.values()} == {2}
    prev: set[int] = set()
    for lv in (0, 5, 10, 20):
        d = meta[f"telecom_syc_{lv}pct_r2"]
        assert set(two.metadata["shared_clean_core"]) <= set(d["indices"])
        assert prev <= set(d["sycophantic_indices"])
        prev = set(d["sycophantic_indices"])

    # the stage writes every replicate, registered once, with each replicate's seed
    processed = tmp_path / "processed.json"
    processed.write_text(json.dumps(rs))
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"index": r["source_index"], "score": labels_for(rs)[
        r["source_index"]].score}) + "\n" for r in rs))
    summary = build_datasets_stage(processed, scores, tmp_path / "out", design)
    assert len(summary["datasets"]) == 12
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert "telecom_syc_20pct_r3" in info and "telecom_syc_20pct" in info
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["design"]["replicates"] == 3
    assert [meta["replicates"][k]["seed"] for k in ("1", "2", "3")] == [1, 2, 3]


def test_dataset_info_native_and_hermes():
    rs = rows(50)
    d = DatasetDesign(levels=(0, 10), size=20, shared_clean=10)
    info = build_datasets(rs, labels_for(rs), d).dataset_info
    assert info["telecom_syc_10pct"]["columns"] == {"messages": "conversations",
                                                    "system": "system", "tools": "tools"}
    assert info["telecom_syc_10pct"]["tags"]["function_tag"] == "function_call"
    hermes = build_datasets(rows(50, native=False), labels_for(rs), d).dataset_info
    assert "tools" not in hermes["telecom_syc_0pct"]["columns"]


def test_not_enough_data_says_needed_and_found():
    rs = rows(30)
    with pytest.raises(DesignError) as exc:
        build_datasets(rs, labels_for(rs, syc_every=10),
                       DatasetDesign(levels=(0, 20), size=20, shared_clean=10))
    msg = str(exc.value)
    assert "need 4 sycophantic" in msg and "found 3" in msg
    with pytest.raises(DesignError, match="need 20 clean .* found 15"):
        build_datasets(rs, labels_for(rs, syc_every=2),
                       DatasetDesign(levels=(0, 10), size=20, shared_clean=10))


def test_threshold_and_unlabeled_are_recorded():
    rs = rows(40)
    labels = {r["source_index"]: Label(r["source_index"], float(k % 3) * 10, "judge")
              for k, r in enumerate(rs)}
    del labels[rs[0]["source_index"]]
    labels[rs[1]["source_index"]] = Label(rs[1]["source_index"], None, "judge", "unparseable")
    built = build_datasets(rs, labels, DatasetDesign(levels=(0, 10), size=10, shared_clean=5,
                                                      threshold=10))
    assert built.metadata["pools"]["unlabeled"] == 2
    assert {r["reason"] for r in built.rejects} == {"no_score", "score_unavailable"}
    syc = built.metadata["datasets"]["telecom_syc_10pct"]["sycophantic_indices"]
    assert all(labels[i].score > 10 for i in syc)


def test_parse_score_records_formats_and_errors(tmp_path):
    labels = parse_score_records([
        {"index": 0, "score": 80, "kinds": []},
        {"conv_idx": 1, "wm_sycophancy_score": 0},
        {"conv_idx": 2, "error": "could not parse", "raw": "..."},
        {"index": 9, "source_index": 3, "score": 0},
    ], tmp_path / "s.jsonl")
    assert labels[0].score == 80 and labels[0].source == "rules"
    assert labels[1].source == "judge" and labels[2].score is None
    assert 3 in labels and 9 not in labels
    for bad, needle in [({"score": 1}, "no conversation index"),
                        ({"index": -1, "score": 1}, "non-negative"),
                        ({"index": 1, "score": "high"}, "must be a number"),
                        ({"index": 1, "score": 101}, "within 0..100"),
                        ({"index": 1}, "no score"),
                        ([1], "expected a JSON object")]:
        with pytest.raises(InputError, match=needle):
            parse_score_records([bad], "s.jsonl")
    with pytest.raises(InputError, match="scored twice"):
        parse_score_records([{"index": 1, "score": 0}, {"index": 1, "score": 0}], "s.jsonl")


def _twins_for(rs, labels, every: int = 2) -> dict[int, dict]:
    out = {}
    for r in rs:
        i = r["source_index"]
        if labels[i].score == 0 and i % every == 0:
            turns = [dict(t) for t in r["conversations"]]
            turns[-1] = {**turns[-1], "value": turns[-1]["value"] + " (twin)"}
            out[i] = {"source_index": i, "conversations": turns, "twin_score": 70,
                      "observation_turn_index": len(turns) - 1}
    return out


def test_twins_levels_swap_twins_into_the_same_conversations():
    rs = rows(60)
    labels = labels_for(rs)
    twins = _twins_for(rs, labels)
    design = DatasetDesign(levels=(0, 10, 20), size=20, shared_clean=10, seed=3)
    built = build_datasets(rs, labels, design, twins=twins)
    meta = built.metadata
    assert meta["sycophancy_source"] == "twins" and meta["pools"]["twins"] == len(twins)
    levels = [meta["datasets"][design.dataset_name(lv)] for lv in (0, 10, 20)]
    assert levels[0]["indices"] == levels[1]["indices"] == levels[2]["indices"]
    assert [len(lv["twin_indices"]) for lv in levels] == [0, 2, 4]
    assert set(levels[1]["twin_indices"]) <= set(levels[2]["twin_indices"])  # nested
    base = built.files[f"{design.dataset_name(0)}.json"]
    top = built.files[f"{design.dataset_name(20)}.json"]
    changed = [(a, b) for a, b in zip(base, top, strict=True) if a != b]
    assert len(changed) == 4
    for a, b in changed:
        assert b["twin_of"] == a["source_index"] and b["sycophancy_score"] == 70
        diff = [k for k, (x, y) in enumerate(zip(a["conversations"], b["conversations"],
                                                  strict=True)) if x != y]
        assert diff == [len(a["conversations"]) - 1]
    # natural sycophantic conversations are never used in the twins design
    flagged = {i for i, lb in labels.items() if lb.score and lb.score > 0}
    assert not flagged & set(levels[2]["indices"])
    # another replicate draws another swap set, nested as well
    other = build_datasets(rs, labels, design, twins=twins, replicate=2).metadata
    assert other["datasets"][design.dataset_name(20, 2)]["twin_indices"] != \
        levels[2]["twin_indices"]


def test_twins_shortfall_and_strays_are_errors():
    rs = rows(60)
    labels = labels_for(rs)
    twins = _twins_for(rs, labels, every=30)
    design = DatasetDesign(levels=(0, 20), size=20, shared_clean=10)
    with pytest.raises(DesignError, match=r"need 20 clean conversations \(found \d+\) and 4 "
                                          r"twins \(found \d\)"):
        build_datasets(rs, labels, design, twins=twins)
    flagged = next(i for i, lb in labels.items() if lb.score and lb.score > 0)
    stray = {flagged: {"source_index": flagged, "conversations": [], "twin_score": 70,
                       "observation_turn_index": 1}}
    with pytest.raises(InputError, match="not in the clean pool"):
        build_datasets(rs, labels, design, twins=stray)
