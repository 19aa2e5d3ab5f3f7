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


def test_write_files_writes_each_file_and_leaves_nothing_on_failure(tmp_path):
    from simia.io import write_files
    write_json(tmp_path / "a.json", {"old": 1})
    write_files((tmp_path / name, name.encode() * 1000) for name in ("a.json", "b.json"))
    assert (tmp_path / "a.json").read_bytes() == b"a.json" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]

    def items():
        yield tmp_path / "c.json", b"c"
        raise RuntimeError("crash while building the next file")

    with pytest.raises(RuntimeError):
        write_files(items())
    # the file finished before the crash is complete and in place; no temp file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]
    assert (tmp_path / "c.json").read_bytes() == b"c"


# --------------------------------------------------------------------------- shared strings

LONG = "policy line with \"quotes\", \\backslashes\\ and\nnewlines é \u2028 " * 40
TOOLS = json.dumps([{"name": "t", "parameters": {"type": "object"}}] * 30)


def _rows(n: int, **extra: object) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": f"hi {i}"}], "system": LONG,
             "tools": TOOLS, "source_index": i, **extra} for i in range(n)]


@pytest.mark.parametrize("indent", [None, 2])
def test_loads_records_equals_a_plain_parse_and_shares_the_repeats(indent):
    from simia.io import loads_records
    rows = _rows(5)
    rows[3]["system"] = LONG + "x"  # a different value stays itself
    data = json.dumps(rows, indent=indent, ensure_ascii=False).encode()
    parsed = loads_records(data, ("system", "tools"))
    assert parsed == rows
    assert parsed[0]["system"] is parsed[4]["system"] and parsed[0]["tools"] is parsed[4]["tools"]


@pytest.mark.parametrize("layout", ["adjacent", "apart", "reversed", "mixed"])
def test_loads_records_shares_the_repeats_whatever_the_key_order(layout):
    from simia.io import loads_records
    rows = []
    for i in range(6):
        row = {"conversations": [{"from": "human", "value": f"hi {i}"}]}
        if layout == "adjacent" or (layout == "mixed" and i % 2):
            row.update(system=LONG, tools=TOOLS)
        elif layout == "apart":
            row.update(system=LONG, source_index=i, tools=TOOLS)
        else:
            row.update(tools=TOOLS, system=LONG)
        rows.append(row)
    for indent in (None, 2):
        data = json.dumps(rows, indent=indent, ensure_ascii=False).encode()
        parsed = loads_records(data, ("system", "tools"))
        assert parsed == rows
        assert len({id(r["system"]) for r in parsed}) == 1
        assert len({id(r["tools"]) for r in parsed}) <= (2 if layout == "mixed" else 1)


@pytest.mark.parametrize("records", [
    # the same value under the same key, nested: not a top-level record's field
    _rows(3, meta={"system": LONG}),
    # the value's text inside another string
    _rows(3, note=f'"system": {json.dumps(LONG)}'),
    # a key ending in "system"
    [{'x"system': LONG}, {"system": LONG}, {"system": LONG}],
    # not a list
    {"a": {"system": LONG}, "b": {"system": LONG}},
    # the value once only, short values, non-string values
    _rows(1), [{"system": "s", "tools": "[]"}] * 3, [{"system": [LONG]}] * 3,
])
def test_loads_records_falls_back_to_a_plain_parse(records):
    from simia.io import loads_records
    data = json.dumps(records).encode()
    assert loads_records(data, ("system", "tools")) == json.loads(data)


def test_loads_records_bad_json_raises_orjsons_error():
    import orjson
    from simia.io import loads_records
    data = json.dumps(_rows(3)).encode()[:-5]
    with pytest.raises(orjson.JSONDecodeError) as exc:
        loads_records(data, ("system", "tools"))
    with pytest.raises(orjson.JSONDecodeError) as plain:
        orjson.loads(data)
    assert str(exc.value) == str(plain.value)


@pytest.mark.parametrize("indent", [False, True])
def test_dumps_records_same_bytes_as_orjson(indent):
    import orjson
    from simia.io import dumps_records
    rows = _rows(4)
    rows[1]["system"] = "short"
    rows[2]["tools"] = [{"name": "t"}]
    option = orjson.OPT_INDENT_2 if indent else 0
    assert dumps_records(rows, ("system", "tools"), indent=indent) == \
        orjson.dumps(rows, option=option)
    assert dumps_records([], ("system",), indent=indent) == orjson.dumps([], option=option)


def _joined(parts) -> bytes:
    return b"".join(b"".join(bytes(x) for x in p) if isinstance(p, list) else bytes(p)
                    for p in parts)


@pytest.mark.parametrize("indent", [False, True])
@pytest.mark.parametrize("n,part_rows", [(0, 2), (1, 1), (5, 1), (5, 2), (7, 64)])
def test_iter_dumps_records_parts_join_to_orjsons_bytes(indent, n, part_rows):
    import orjson
    from simia.io import iter_dumps_records
    rows = _rows(n, note="a NUL \x00 in a value")
    if n > 3:
        rows[1]["system"] = "short"
        rows[2] = {"tools": TOOLS + " ", "system": LONG + "\x00", "x": None}  # other order
        rows[3]["tools"] = [{"name": "t"}]
    option = orjson.OPT_INDENT_2 if indent else 0
    parts = list(iter_dumps_records(rows, ("system", "tools"), indent=indent,
                                    part_rows=part_rows))
    assert _joined(parts) == orjson.dumps(rows, option=option)
    # the long shared strings are not copied: every part refers to one encoding of each
    shared = {id(x) for p in parts if isinstance(p, list) for x in p if len(x) > 1000}
    assert len(shared) <= (4 if n > 3 else 2)


def test_write_parts_writes_them_in_order_and_drops_a_file_whose_parts_fail(tmp_path):
    from simia.io import BackgroundFlush
    with BackgroundFlush() as flush:
        flush.write_parts(tmp_path / "a.json", [b"[", [b"1", memoryview(b",2")], b"]"])
        flush.write(tmp_path / "b.json", b"b")

    def parts():
        yield b"half"
        raise RuntimeError("crash while serialising")

    with pytest.raises(RuntimeError):
        with BackgroundFlush() as flush:
            flush.write(tmp_path / "c.json", b"c")
            flush.write_parts(tmp_path / "d.json", parts())
    assert (tmp_path / "a.json").read_bytes() == b"[1,2]"
    # the file finished before the crash is in place; the half-written one is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


def test_background_flush_raises_a_write_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import os

    from simia import io as sio
    real_write = os.write

    def failing_write(fd, data):
        if bytes(data[:4]) == b"boom":
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(sio.os, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        with sio.BackgroundFlush() as flush:
            flush.write(tmp_path / "ok.json", b"fine")
            flush.write(tmp_path / "bad.json", b"boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json"]


def test_read_input_maps_a_large_file_and_loads_it_like_its_bytes(tmp_path, monkeypatch):
    import mmap

    import orjson

    from simia import io as sio
    rows = _rows(5)
    path = _write(tmp_path, json.dumps(rows, indent=2, ensure_ascii=False))
    small = sio.read_input(path)
    assert type(small) is bytes  # below MAP_MIN_BYTES: read as usual
    monkeypatch.setattr(sio, "MAP_MIN_BYTES", 1)
    mapped = sio.read_input(path)
    assert isinstance(mapped, mmap.mmap)
    assert sio.sha256_bytes(mapped) == sio.sha256_bytes(small)
    assert sio.loads_records(mapped, ("system", "tools")) == rows
    assert load_raw(path, data=mapped)[0] == rows
    lines = _write(tmp_path, b"".join(orjson.dumps(r) + b"\n" for r in rows), "s.jsonl")
    assert read_jsonl(lines, data=sio.read_input(lines)) == rows
    # the same errors as read_bytes
    with pytest.raises(InputError, match="is empty"):
        sio.read_input(_write(tmp_path, b" \n\t  \n", "blank.json"))
    with pytest.raises(InputError, match="does not exist"):
        sio.read_input(tmp_path / "missing.json")
    with pytest.raises(InputError, match="malformed JSON"):
        load_raw(path, data=sio.read_input(_write(tmp_path, b'[{"a": ', "bad.json")))
