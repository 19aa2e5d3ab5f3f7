"""Atomic file I/O shared by every stage: orjson, and writes that never leave half a file.

Every output is written to a temporary file beside its target, fsynced and renamed onto
the target, so a crash never leaves a half-written artifact under its final name; every
output gets the same mode (:data:`OUTPUT_MODE`). JSON goes through orjson (a large list
file one element at a time, :func:`loads_list`). Reading turns
every way a file can be missing, empty or malformed into an :class:`InputError` that
names the file (and the line of a JSON-lines file, the position of a JSON error).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from simia.errors import InputError

#: the mode of every file this module writes (rw-r--r--, whatever the umask)
OUTPUT_MODE = 0o644

_DUMP_OPTS = orjson.OPT_NON_STR_KEYS


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """Serialise to UTF-8 JSON bytes (non-ASCII kept as is; two-space indent with
    ``indent``)."""
    return orjson.dumps(obj, option=_DUMP_OPTS | (orjson.OPT_INDENT_2 if indent else 0))


def dumps_jsonl(rows: Iterable[Any]) -> bytes:
    """JSON-lines bytes: one JSON document per line (what :func:`write_jsonl` writes)."""
    return b"".join(orjson.dumps(row, option=_DUMP_OPTS | orjson.OPT_APPEND_NEWLINE)
                    for row in rows)


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for writing; on success it is fsynced and
    renamed onto ``path`` (mode :data:`OUTPUT_MODE`), on any error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), OUTPUT_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as fh:
        fh.write(data)


def write_json(path: str | Path, obj: Any, *, indent: bool = False) -> None:
    """Write ``obj`` as one JSON document (and a final newline) atomically."""
    write_bytes(path, dumps(obj, indent=indent) + b"\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON document per line atomically; returns the number of lines."""
    n = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(orjson.dumps(row, option=_DUMP_OPTS | orjson.OPT_APPEND_NEWLINE))
            n += 1
    return n


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the ways opening a file fails into an :class:`InputError` naming it."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(path, f"{what} does not exist") from None
    except IsADirectoryError:
        raise InputError(path, f"{what} is a directory, expected a file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what}: {exc.strerror or exc}") from None


def read_bytes(path: str | Path, *, what: str = "file") -> bytes:
    """The bytes of ``path``; an :class:`InputError` naming it (as ``what``) when it is
    missing, a directory, unreadable or blank."""
    path = Path(path)
    with _reading(path, what):
        data = path.read_bytes()
    if not data.strip():
        raise InputError(path, f"{what} is empty")
    return data


def json_error(exc: orjson.JSONDecodeError, data: bytes | memoryview) -> str:
    """What is wrong with ``data`` that orjson refused, and where: orjson's own message,
    except for a byte that is not UTF-8, which orjson places at "char 0" whatever its
    position: that one is named by its value, line, column and byte offset."""
    text = str(exc)
    if "UTF-8" not in text:
        return text
    data = bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        at = bad.start
        line, line_start = data.count(b"\n", 0, at) + 1, data.rfind(b"\n", 0, at) + 1
        return (f"not valid UTF-8: byte 0x{data[at]:02x} at line {line} column "
                f"{at - line_start + 1} (byte offset {at})")
    return text


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Parse a whole JSON file, with errors that name the file and the position."""
    path = Path(path)
    data = read_bytes(path, what=what)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {json_error(exc, data)}") from None


#: where a top-level element ends in the two-space-indented layout that every list file of
#: a run has (orjson's OPT_INDENT_2, also the reference's json.dump(indent=2)): a line
#: "  }" then the comma; a raw newline is never inside a JSON string, so it is structural
_ELEMENT_END = b"\n  },"
_LIST_START = re.compile(rb"[ \t\r\n]*\[")
_LIST_END = re.compile(rb"\][ \t\r\n]*\Z")


def loads_list(data: bytes) -> Any:
    """``orjson.loads(data)`` for a file holding a JSON list of objects, parsed one
    element at a time when it has the two-space-indented layout; anything else, or any
    element that does not parse on its own, is parsed whole (so the result and the
    errors are ``orjson.loads``' own)."""
    # kept for the memory floor (< 3x the input): a whole-file parse holds a buffer as
    # large as the input beside the input and the result (3.3x on the benchmark)
    start, end = _LIST_START.match(data), _LIST_END.search(data, max(0, len(data) - 4096))
    if start is None or end is None:
        return orjson.loads(data)
    view = memoryview(data)
    items = []
    at = start.end()
    try:
        while (cut := data.find(_ELEMENT_END, at, end.start())) >= 0:
            # each piece is a complete value, so the comma after it is the list's own
            items.append(orjson.loads(view[at:cut + 4]))
            at = cut + 5
        if not items:
            return orjson.loads(data)
        items.append(orjson.loads(view[at:end.start()]))
    except orjson.JSONDecodeError:
        return orjson.loads(data)
    return items


def read_jsonl(path: str | Path, *, what: str = "JSONL file",
               data: bytes | None = None) -> list[Any]:
    """Parse a JSON-lines file (or its ``data``, already read); blank lines are ignored,
    a bad line names its number."""
    path = Path(path)
    if data is None:
        data = read_bytes(path, what=what)
    rows = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            # the lines before parsed, so a bad byte of the whole file is on this line
            raise InputError(path, f"line {lineno}: malformed JSON: "
                             f"{json_error(exc, data)}") from None
    return rows


def sha256_bytes(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of the file at ``path`` (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(paths: dict[str, str | Path]) -> dict[str, str]:
    """``{role: sha256}`` of the files that exist among ``paths`` (``{role: path}``):
    what a summary records of its stage's inputs and outputs."""
    return {role: sha256_file(path) for role, path in paths.items() if Path(path).is_file()}
