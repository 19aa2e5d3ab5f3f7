"""Atomic, fast file I/O shared by every stage.

Every output is written to a temporary file in the destination folder and renamed
into place, so a crash never leaves a half-written artifact under its final name.
JSON goes through orjson (several times faster than the standard library on the
50+ MB files of a real run).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from simia.errors import InputError

_DUMP_OPTS = orjson.OPT_NON_STR_KEYS


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """Serialise to UTF-8 JSON bytes (non-ASCII kept as is)."""
    return orjson.dumps(obj, option=_DUMP_OPTS | (orjson.OPT_INDENT_2 if indent else 0))


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


#: a string value (after the key's colon): optional whitespace, then the JSON string
_STRING_VALUE = re.compile(rb'([ \t\r\n]*)("(?:[^"\\]++|\\.)*+")')
#: shared values shorter than this are not worth factoring out
_MIN_SHARED = 512


def _factor_out(data: bytes, key: str, placeholder: bytes) -> tuple[bytes, str, int] | None:
    """Replace every ``"key": "V"`` whose encoded bytes equal the first one's by
    ``"key": "PLACEHOLDER"``; returns (new bytes, V decoded, replacements), or None when
    there is nothing worth doing.

    Each match is a whole JSON string value (a ``"`` not preceded by a backslash
    delimits a string, and the first value's bytes are complete escapes), so the new
    bytes parse to the same structure with those values swapped.
    """
    prefix = b'"' + key.encode() + b'":'
    start = data.find(prefix)
    if start < 0:
        return None
    m = _STRING_VALUE.match(data, start + len(prefix))
    if m is None or len(m.group(2)) < _MIN_SHARED:
        return None
    try:
        value = orjson.loads(m.group(2))
    except orjson.JSONDecodeError:
        return None
    token = data[start:m.end()]
    replacement = prefix + m.group(1) + b'"' + placeholder + b'"'
    # find a short head of the token, then compare the whole token in place
    head = token[:64]
    view = memoryview(data)
    parts: list[Any] = []
    done = 0
    at = start
    while at >= 0:
        if data.startswith(token, at):
            parts += (view[done:at], replacement)
            done = at + len(token)
            at = data.find(head, done)
        else:
            at = data.find(head, at + 1)
    if len(parts) < 4:  # a single occurrence: nothing shared
        return None
    parts.append(view[done:])
    return b"".join(parts), value, len(parts) // 2


def loads_records(data: bytes, shared_keys: tuple[str, ...] = ()) -> Any:
    """``orjson.loads(data)``, faster for a JSON list of records that all repeat the same
    long string under ``shared_keys`` (every conversation file repeats its system prompt
    and tool list: most of its bytes).

    Each such value is parsed once: its repeats are swapped for a placeholder before
    parsing and the one decoded string is put back afterwards, shared by every record
    (one copy in memory). The result equals ``orjson.loads(data)``; whenever that cannot
    be guaranteed (a repeat outside a top-level record's key, the bytes do not parse),
    the whole ``data`` is parsed as is, so errors are ``orjson.loads``' own.
    """
    factored = data
    shared: list[tuple[str, str, str, int]] = []
    for key in shared_keys:
        placeholder = f"\x00simia-shared:{key}:{os.urandom(8).hex()}\x00"
        found = _factor_out(factored, key, orjson.dumps(placeholder)[1:-1])
        if found is not None:
            factored, value, count = found
            shared.append((key, placeholder, value, count))
    if not shared:
        return orjson.loads(data)
    try:
        parsed = orjson.loads(factored)
    except orjson.JSONDecodeError:
        return orjson.loads(data)
    del factored
    if not isinstance(parsed, list):
        return orjson.loads(data)
    for key, placeholder, value, count in shared:
        restored = 0
        for record in parsed:
            if type(record) is dict and record.get(key) == placeholder:
                record[key] = value
                restored += 1
        if restored != count:
            return orjson.loads(data)
    return parsed


def dumps_records(rows: list[dict[str, Any]], shared_keys: tuple[str, ...] = (), *,
                  indent: bool = False) -> bytes:
    """``orjson.dumps(rows)`` (indented with ``indent``) for a list of records that repeat
    long strings under ``shared_keys``: each distinct such string is encoded once and
    its bytes spliced into every record that holds it (the same output, without
    re-encoding ~30 KB per record)."""
    encoded: dict[str, Any] = {}  # string -> orjson.Fragment of its JSON encoding
    out = []
    for row in rows:
        patch = None
        for key in shared_keys:
            value = row.get(key)
            if type(value) is not str or len(value) < _MIN_SHARED:
                continue
            fragment = encoded.get(value)
            if fragment is None:
                fragment = encoded[value] = orjson.Fragment(orjson.dumps(value))
            if patch is None:
                patch = dict(row)
            patch[key] = fragment
        out.append(row if patch is None else patch)
    return orjson.dumps(out, option=orjson.OPT_INDENT_2 if indent else 0)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def _sync_and_rename(fd: int, tmp: str, path: Path) -> None:
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class BackgroundFlush:
    """Write files atomically, as :func:`write_bytes` does (temporary file, fsync,
    rename), with each file's fsync and rename in a background thread so that the
    caller's next work (building the next file, hashing an input) overlaps the disk
    flush. Use as a context manager: leaving the block waits until every file is in
    place and raises the first error (a file whose write or fsync failed is not
    renamed); a file added before an exception in the block is still completed."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simia-fsync")
        self._pending: list[Future[None]] = []

    def write(self, path: str | Path, data: bytes) -> None:
        """Write ``data`` to a temporary file beside ``path`` now; flush and rename later."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        self._pending.append(self._pool.submit(_sync_and_rename, fd, tmp, path))

    def __enter__(self) -> BackgroundFlush:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        if exc[0] is None:
            for future in self._pending:
                future.result()


def write_files(items: Iterable[tuple[str | Path, bytes]]) -> None:
    """Write each ``(path, bytes)`` atomically (see :class:`BackgroundFlush`); ``items``
    is consumed lazily, so a generator builds the next file during the previous one's
    fsync, and only those two are in memory."""
    with BackgroundFlush() as flush:
        for path, data in items:
            flush.write(path, data)
            del data


def write_json(path: str | Path, obj: Any, *, indent: bool = False) -> None:
    write_bytes(path, dumps(obj, indent=indent) + b"\n")


def dumps_jsonl(rows: Iterable[Any]) -> bytes:
    """JSON-lines bytes: one JSON document per line (what :func:`write_jsonl` writes)."""
    return b"".join(orjson.dumps(row, option=_DUMP_OPTS | orjson.OPT_APPEND_NEWLINE)
                    for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON document per line; returns the number of lines."""
    n = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(orjson.dumps(row, option=_DUMP_OPTS | orjson.OPT_APPEND_NEWLINE))
            n += 1
    return n


def read_bytes(path: str | Path, *, what: str = "file") -> bytes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, f"{what} does not exist") from None
    except IsADirectoryError:
        raise InputError(path, f"{what} is a directory, expected a file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if not data.strip():
        raise InputError(path, f"{what} is empty")
    return data


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """Parse a whole JSON file, with errors that name the file and the position."""
    path = Path(path)
    data = read_bytes(path, what=what)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {exc}") from None


def read_jsonl(path: str | Path, *, what: str = "JSONL file",
               data: bytes | None = None) -> list[Any]:
    """Parse a JSON-lines file (or its ``data`` already read); blank lines are ignored,
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
            raise InputError(path, f"line {lineno}: malformed JSON: {exc}") from None
    return rows


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
