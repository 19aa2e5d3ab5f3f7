"""Loading bad input: every error names the file, the record and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simia.errors import InputError
from simia.io import atomic_writer, read_jsonl, write_json
from simia.records import load_processed, load_raw

GOOD = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
        "system": "s", "tools": "[]", "extra_meta": 1}


def _write(tmp_path: Path, content: str | bytes, name: str = "raw.json") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_good_file_keeps_extra_keys(tmp_path):
    records, invalid = load_raw(_write(tmp_path, json.dumps([GOOD])))
    assert invalid == [] and records[0]["extra_meta"] == 1


@pytest.mark.parametrize("content,needle", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ("[", "malformed JSON"),
    ('{"conversations": []}', "expected a JSON list"),
    ("[]", "is empty"),
])
def test_file_level_errors(tmp_path, content, needle):
    path = _write(tmp_path, content)
    with pytest.raises(InputError) as exc:
        load_raw(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


@pytest.mark.parametrize("record,field", [
    ({"system": "s"}, "conversations"),
    ({"conversations": "hi"}, "conversations"),
    ({"conversations": [{"from": "human"}]}, "conversations[0].value"),
    ({"conversations": [{"from": "human", "value": 3}]}, "conversations[0].value"),
    ({"conversations": [{"value": "x"}]}, "conversations[0].from"),
    ({"conversations": [], "system": 5}, "system"),
    ({"conversations": [], "tools": [1]}, "tools.str"),  # union: both forms listed
    ({"conversations": [], "simulator_mode": None}, "simulator_mode"),
    ({"conversations": [[]]}, "conversations[0]"),
    ("not an object", "(record)"),
])
def test_record_level_errors_name_record_and_field(tmp_path, record, field):
    path = _write(tmp_path, json.dumps([GOOD, record]))
    with pytest.raises(InputError) as exc:
        load_raw(path)
    err = exc.value
    assert err.record == 1 and err.field == field
    assert f"record 1, field '{field}'" in str(err) and str(path) in str(err)


def test_skip_invalid_keeps_positions(tmp_path):
    path = _write(tmp_path, json.dumps([GOOD, {"system": "s"}, GOOD]))
    records, invalid = load_raw(path, skip_invalid=True)
    assert records[1] is None and records[0] and records[2]
    assert [(i.index, i.field) for i in invalid] == [(1, "conversations")]


def test_unreadable_paths(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_raw(tmp_path / "missing.json")
    with pytest.raises(InputError, match="is a directory"):
        load_raw(tmp_path)
    not_a_folder = _write(tmp_path, json.dumps([GOOD]), "file.json") / "raw.json"
    with pytest.raises(InputError, match="cannot read"):
        load_raw(not_a_folder)


def test_processed_requires_source_index(tmp_path):
    path = _write(tmp_path, json.dumps([{**GOOD}]))
    with pytest.raises(InputError) as exc:
        load_processed(path)
    assert exc.value.field == "source_index"


@pytest.mark.parametrize("index", ["0", True, 1.0])
def test_processed_source_index_must_be_an_integer(tmp_path, index):
    path = _write(tmp_path, json.dumps([{**GOOD, "source_index": 0},
                                        {**GOOD, "source_index": index}]))
    with pytest.raises(InputError) as exc:
        load_processed(path)
    assert (exc.value.record, exc.value.field) == (1, "source_index")


def test_shape_check_accepts_what_pydantic_accepts(tmp_path):
    """The fast shape check and the pydantic models agree on valid records of every
    optional form (tools as a string or a list, metadata present or absent)."""
    from simia.records import _RAW_LIST
    records = [GOOD, {"conversations": []},
               {"conversations": [{"from": "gpt", "value": "", "x": 1}],
                "tools": [{"name": "t"}], "based_on_sample": "a", "simulator_mode": "base",
                "domain": "telecom", "system": ""}]
    data = json.dumps(records).encode()
    loaded, invalid = load_raw(_write(tmp_path, data))
    assert invalid == [] and loaded == _RAW_LIST.validate_json(data) == records


def test_jsonl_error_names_line(tmp_path):
    path = _write(tmp_path, '{"a": 1}\n\n{"a": \n', "s.jsonl")
    with pytest.raises(InputError, match="line 3: malformed JSON"):
        read_jsonl(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b'{"half": ')
            assert len(list(tmp_path.iterdir())) == 2  # the temp file exists meanwhile
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
