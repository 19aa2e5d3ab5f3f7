"""Loading bad input: every error names the file, the record and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simia.errors import InputError
from simia.io import atomic_writer, read_jsonl, write_json
from simia.data.records import load_processed, load_raw

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
    from simia.data.records import _RAW_LIST
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


def test_outputs_have_one_mode_and_replace_the_old_file(tmp_path):
    from simia.io import OUTPUT_MODE, write_bytes, write_jsonl
    target = tmp_path / "deep" / "out.json"
    write_bytes(target, b"old")
    write_json(target, {"new": True}, indent=True)
    assert target.read_bytes() == b'{\n  "new": true\n}\n'
    assert write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": "\u00e9"}]) == 2
    assert read_jsonl(tmp_path / "rows.jsonl") == [{"a": 1}, {"b": "\u00e9"}]
    for path in (target, tmp_path / "rows.jsonl"):
        assert path.stat().st_mode & 0o777 == OUTPUT_MODE
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "out.json", "rows.jsonl"]


def test_read_errors_name_the_file(tmp_path):
    from simia.io import read_bytes, read_json
    with pytest.raises(InputError, match="is empty"):
        read_bytes(_write(tmp_path, b" \n\t  \n", "blank.json"))
    with pytest.raises(InputError, match="scores file does not exist"):
        read_jsonl(tmp_path / "missing.jsonl", what="scores file")
    bad = _write(tmp_path, b'{"a": [1, 2}', "bad.json")
    with pytest.raises(InputError) as exc:
        read_json(bad)
    # the file and the position of the error
    assert str(bad) in str(exc.value) and "malformed JSON" in str(exc.value)
    assert "char 11" in str(exc.value)


def test_malformed_raw_file_names_the_position(tmp_path):
    path = _write(tmp_path, b'[{"conversations": [}]', "bad.json")
    with pytest.raises(InputError) as exc:
        load_raw(path)
    assert str(path) in str(exc.value) and "malformed JSON" in str(exc.value)
    assert "line 1 column 21 (char 20)" in str(exc.value)


ROWS = [{"conversations": [{"from": "human", "value": "hi\n  },\n  {"}], "system": "s é"},
        {"nested": {"a": [{"b": 1}, {"c": None}]}, "x": "  }"}, {}]


@pytest.mark.parametrize("data", [
    json.dumps(ROWS, indent=2, ensure_ascii=False).encode(),  # the reference's layout
    json.dumps(ROWS, indent=2).encode() + b"\n\n",
    b"\r\n " + json.dumps(ROWS, indent=2).encode(),
    json.dumps(ROWS).encode(),  # compact: parsed whole
    json.dumps(ROWS, indent=4).encode(),
    json.dumps(ROWS[:1], indent=2).encode(),  # one element
    b"[]", b"[\n  1,\n  2\n]", b'{"a": 1}', b"3",
    # a nested object at the top level's indentation: not an element end
    b'[\n  {"a": {\n  },\n  "b": 2}\n]',
    b'[\n  {"a": [\n  {"b": 1\n  },\n  {"c": 2}\n]}\n]',
])
def test_loads_list_equals_a_plain_parse(data):
    import orjson

    from simia.io import loads_list
    assert loads_list(data) == orjson.loads(data)


@pytest.mark.parametrize("data", [
    json.dumps(ROWS, indent=2).encode()[:-3],  # truncated
    json.dumps(ROWS, indent=2).encode().replace(b'"x": "  }"', b'"x": }'),
    json.dumps(ROWS, indent=2).encode().replace(b"\n  },\n  {}", b"\n  },\n  {},"),
    json.dumps(ROWS, indent=2).encode() + b" x",
    b"\x0c" + json.dumps(ROWS, indent=2).encode(),  # not JSON whitespace
])
def test_loads_list_errors_are_orjsons_own(data):
    import orjson

    from simia.io import loads_list
    with pytest.raises(orjson.JSONDecodeError) as plain:
        orjson.loads(data)
    with pytest.raises(orjson.JSONDecodeError) as exc:
        loads_list(data)
    assert str(exc.value) == str(plain.value)


@pytest.mark.parametrize("name,data,where", [
    ("whole.json", b'{"a": 1,\n "b": "caf\xe9"}', "line 2 column 11 (byte offset 19)"),
    ("rows.jsonl", b'{"a": 1}\n{"b": "x"}\n{"c": "\xff"}\n', "line 3 column 8 (byte offset 27)"),
])
def test_a_byte_that_is_not_utf8_is_named_by_its_offset(tmp_path, name, data, where):
    from simia.io import read_json
    path = _write(tmp_path, data, name)
    with pytest.raises(InputError) as exc:
        read_jsonl(path) if name.endswith(".jsonl") else read_json(path)
    assert "not valid UTF-8" in str(exc.value) and where in str(exc.value)
    assert "char 0" not in str(exc.value)


def test_a_raw_file_with_a_byte_that_is_not_utf8_names_it(tmp_path):
    path = _write(tmp_path, b'[{"conversations": [{"from": "human", "value": "\x80"}]}]',
                  "raw.json")
    with pytest.raises(InputError) as exc:
        load_raw(path)
    assert "byte 0x80 at line 1 column 49 (byte offset 48)" in str(exc.value)


def test_many_invalid_fields_are_listed_on_one_line(tmp_path):
    """The command line prints one line per error: the listing is joined with "; "."""
    path = _write(tmp_path, json.dumps([{**GOOD, "system": 1}, {**GOOD, "domain": []}]))
    with pytest.raises(InputError) as exc:
        load_raw(path)
    assert "\n" not in str(exc.value)
    assert ("2 invalid field(s): record 0, field 'system': Input should be a valid string; "
            "record 1, field 'domain'") in str(exc.value)


def test_processed_rows_of_a_native_file_all_need_tools(tmp_path):
    """A native file whose row 1 lost its tools failed later with KeyError: 'tools'."""
    rows = [{**GOOD, "source_index": i, "tools": "[]"} for i in range(3)]
    del rows[1]["tools"]
    with pytest.raises(InputError, match="record 0 has tools") as exc:
        load_processed(_write(tmp_path, json.dumps(rows)))
    assert (exc.value.record, exc.value.field) == (1, "tools")
    hermes = [{**GOOD, "source_index": i} for i in range(2)]  # no row has tools: fine
    assert len(load_processed(_write(tmp_path, json.dumps(hermes)))) == 2
