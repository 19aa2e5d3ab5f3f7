"""Atomic, fast file I/O shared by every stage.

Every output is written to a temporary file in the destination folder and renamed
into place, so a crash never leaves a half-written artifact under its final name.
JSON goes through orjson (several times faster than the standard library on the
50+ MB files of a real run).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
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


#: what separates two members of an object
_MEMBER_SEP = re.compile(rb"[ \t\r\n]*,[ \t\r\n]*")


@dataclass(frozen=True)
class _Repeat:
    """The first ``"key": "V"`` of a file (V long), to be swapped for a placeholder
    wherever the same bytes repeat."""

    key: str
    at: int  # where the first one starts
    token: bytes  # its bytes, from the key's opening quote to the value's closing one
    replacement: bytes  # the same member with the placeholder as its value
    placeholder: str
    value: str  # V, decoded


_PLACEHOLDER_HEAD = b'"\\u0000simia-shared:'


def _first_repeat(data: Data, key: str) -> _Repeat | None:
    """The first ``"key": "V"`` in ``data`` whose V is a long string (None when the first
    one's is not), past those already swapped for a placeholder."""
    prefix = b'"' + key.encode() + b'":'
    start = data.find(prefix)
    while True:
        if start < 0:
            return None
        m = _STRING_VALUE.match(data, start + len(prefix))
        if m is None or not m.group(2).startswith(_PLACEHOLDER_HEAD):
            break
        start = data.find(prefix, m.end())
    if m is None or len(m.group(2)) < _MIN_SHARED:
        return None
    try:
        value = orjson.loads(m.group(2))
    except orjson.JSONDecodeError:
        return None
    placeholder = f"\x00simia-shared:{key}:{os.urandom(8).hex()}\x00"
    replacement = prefix + m.group(1) + orjson.dumps(placeholder)
    return _Repeat(key, start, data[start:m.end()], replacement, placeholder, value)


def _factor_out(data: Data, repeats: list[_Repeat]) -> tuple[bytes, list[int]]:
    """Replace every occurrence of ``repeats[0].token`` by its replacement, and each
    other repeat's token where it follows one of those as the next member (the records'
    usual layout: ``"system": ..., "tools": ...``), in one pass; returns (new bytes,
    replacements per repeat).

    Each match is a whole JSON string value (a ``"`` not preceded by a backslash
    delimits a string, and the first value's bytes are complete escapes), so the new
    bytes parse to the same structure with those values swapped.
    """
    first, others = repeats[0], repeats[1:]
    if type(data) is bytes:
        starts = data.startswith
    else:  # a map has no startswith; a find confined to the token's length is as fast
        def starts(token: bytes, at: int) -> bool:
            return data.find(token, at, at + len(token)) == at
    token = first.token
    head = token[:64]  # find a short head of the token, then compare the whole token
    view = memoryview(data)
    parts: list[Any] = []
    counts = [0] * len(repeats)
    done = 0
    at = first.at
    while at >= 0:
        if starts(token, at):
            parts += (view[done:at], first.replacement)
            counts[0] += 1
            done = at + len(token)
            for i, other in enumerate(others, start=1):
                m = _MEMBER_SEP.match(data, done)
                if m is not None and starts(other.token, m.end()):
                    parts += (view[done:m.end()], other.replacement)
                    counts[i] += 1
                    done = m.end() + len(other.token)
            at = data.find(head, done)
        else:
            at = data.find(head, at + 1)
    parts.append(view[done:])
    return b"".join(parts), counts


def loads_records(data: Data, shared_keys: tuple[str, ...] = ()) -> Any:
    """``orjson.loads(data)``, faster for a JSON list of records that all repeat the same
    long string under ``shared_keys`` (every conversation file repeats its system prompt
    and tool list: most of its bytes).

    Each such value is parsed once: its repeats are swapped for a placeholder before
    parsing and the one decoded string is put back afterwards, shared by every record
    (one copy in memory). The result equals ``orjson.loads(data)``; whenever that cannot
    be guaranteed (a repeat outside a top-level record's key, the bytes do not parse),
    the whole ``data`` is parsed as is, so errors are ``orjson.loads``' own. ``data``
    may be a map (:func:`read_input`).
    """
    whole = data if type(data) is bytes else memoryview(data)  # what orjson takes
    repeats = sorted((r for key in shared_keys if (r := _first_repeat(data, key))),
                     key=lambda r: r.at)
    if not repeats:
        return orjson.loads(whole)
    # one pass for all of them when they follow each other in every record
    factored, counts = _factor_out(data, repeats)
    shared = [(r, n) for r, n in zip(repeats, counts, strict=True) if n]
    for r, n in zip(repeats[1:], counts[1:], strict=True):
        if n < counts[0]:  # not always right after the first one: a pass of its own
            again = _first_repeat(factored, r.key)
            if again is not None:
                factored, (n,) = _factor_out(factored, [again])
                shared.append((again, n))
    if sum(n for _, n in shared) < 2:  # nothing repeats
        return orjson.loads(whole)
    try:
        parsed = orjson.loads(factored)
    except orjson.JSONDecodeError:
        return orjson.loads(whole)
    del factored
    if not isinstance(parsed, list):
        return orjson.loads(whole)
    values: dict[str, str] = {}  # one object per distinct value
    for r, count in shared:
        key, placeholder = r.key, r.placeholder
        value = values.setdefault(r.value, r.value)
        restored = 0
        for record in parsed:
            if type(record) is dict and record.get(key) == placeholder:
                record[key] = value
                restored += 1
        if restored != count:
            return orjson.loads(whole)
    return parsed


def _shared_fragments(rows: list[dict[str, Any]], shared_keys: tuple[str, ...],
                      encoded: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with each long string under ``shared_keys`` swapped for the
    ``orjson.Fragment`` of its encoding (made once per distinct string, kept in
    ``encoded``); rows without one are the rows themselves."""
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
    return out


def dumps_records(rows: list[dict[str, Any]], shared_keys: tuple[str, ...] = (), *,
                  indent: bool = False) -> bytes:
    """``orjson.dumps(rows)`` (indented with ``indent``) for a list of records that repeat
    long strings under ``shared_keys``: each distinct such string is encoded once and
    its bytes spliced into every record that holds it (the same output, without
    re-encoding ~30 KB per record)."""
    return orjson.dumps(_shared_fragments(rows, shared_keys, {}),
                        option=orjson.OPT_INDENT_2 if indent else 0)


#: records serialised per part by :func:`iter_dumps_records` (~2 MB of processed rows)
PART_ROWS = 64

#: what a writer writes in one go: bytes, or a list of buffers written back to back
Part = bytes | memoryview | list[bytes | memoryview]

#: stands for a shared string in a part's encoding: orjson writes a Fragment's bytes as
#: they are, and a NUL byte appears nowhere else in orjson's output (it escapes control
#: characters in strings)
_MARK = b"\x00"
_MARK_FRAGMENT = orjson.Fragment(_MARK)


def iter_dumps_records(rows: Iterable[dict[str, Any]], shared_keys: tuple[str, ...] = (), *,
                       indent: bool = False, part_rows: int = PART_ROWS) -> Iterator[Part]:
    """:func:`dumps_records` in parts whose concatenation is the same bytes, made
    ``part_rows`` records at a time, so a writer can write each part while the next is
    serialised; the long shared strings are never copied into the output at all.
    ``rows`` is consumed ``part_rows`` at a time (it may be a generator that makes
    them).

    Each part is a list of buffers: orjson's encoding of a slice of ``rows`` (the list's
    brackets cut off, the separator orjson puts between two elements in front) with
    every long string under ``shared_keys`` left out, and, where each one goes, the
    same bytes object holding that string's encoding (encoded once per distinct string).
    """
    option = orjson.OPT_INDENT_2 if indent else 0
    it = iter(rows)
    batch = list(islice(it, part_rows))
    if not batch:
        yield orjson.dumps([], option=option)
        return
    # orjson writes a non-empty list as OPEN, the elements joined by SEP, CLOSE
    open_, sep, close = (b"[\n", b",\n", b"\n]") if indent else (b"[", b",", b"]")
    encoded: dict[str, bytes] = {}
    first = True
    while batch:
        chunk = []
        shared: list[bytes] = []  # the encoded strings, in the order they are written
        for row in batch:
            patch = None
            for key in shared_keys:
                value = row.get(key)
                if type(value) is str and len(value) >= _MIN_SHARED:
                    if patch is None:
                        patch = dict(row)
                    patch[key] = _MARK_FRAGMENT
            if patch is None:
                chunk.append(row)
                continue
            chunk.append(patch)
            for key, value in patch.items():  # the order orjson writes them in
                if value is _MARK_FRAGMENT:
                    text = row[key]
                    enc = encoded.get(text)
                    if enc is None:
                        enc = encoded[text] = orjson.dumps(text)
                    shared.append(enc)
        body = orjson.dumps(chunk, option=option)
        pieces = body[len(open_):-len(close)].split(_MARK)
        if len(pieces) != len(shared) + 1:  # cannot happen (see _MARK); never write garbage
            raise RuntimeError("iter_dumps_records: shared-string marks out of step")
        part: list[bytes | memoryview] = [open_ if first else sep]
        for piece, enc in zip(pieces, shared, strict=False):
            part += (piece, enc)
        part.append(pieces[-1])
        del chunk, batch, body
        yield part
        first = False
        batch = list(islice(it, part_rows))
    yield close


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


_IOV_MAX = 1024  # buffers per os.writev call (POSIX guarantees at least 16; Linux 1024)
try:
    _IOV_MAX = max(16, min(_IOV_MAX, os.sysconf("SC_IOV_MAX")))
except (AttributeError, ValueError, OSError):
    pass


def _writev_all(fd: int, buffers: list[bytes | memoryview]) -> int:
    """Write ``buffers`` back to back (``os.writev``: the kernel copies each buffer
    straight into the file, no joined copy is made), resuming after partial writes;
    returns the number of bytes written."""
    views = [memoryview(b) for b in buffers if len(b)]
    total = sum(v.nbytes for v in views)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n:
            size = views[i].nbytes
            if n < size:
                views[i] = views[i][n:]
                break
            n -= size
            i += 1
    return total


def _sync_file_range() -> Any:
    """Linux's ``sync_file_range`` (through libc), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing back the range's dirty pages; do not wait


class _TempFile:
    """The temporary file beside ``path`` that becomes ``path`` once complete: written
    part by part (by :class:`BackgroundFlush`'s writer thread), then fsynced and renamed
    (by its flusher thread), or removed. A failed write is kept in ``error`` and fails
    the file at the end."""

    __slots__ = ("path", "fd", "tmp", "error", "size")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
        self.error: BaseException | None = None
        self.size = 0

    def write(self, data: Part) -> None:
        """Append ``data``, then (on Linux) start writing it back to disk at once, so
        that the final fsync finds most of the file already written."""
        if self.error is not None:
            return
        try:
            if type(data) is list:
                n = _writev_all(self.fd, data)
            else:
                view = memoryview(data)
                n = view.nbytes
                while view:
                    view = view[os.write(self.fd, view):]
        except BaseException as exc:  # noqa: B036 (re-raised by finish)
            self.error = exc
            return
        if _SYNC_FILE_RANGE is not None and n:
            # only a hint (errors are ignored): the fsync in finish() is what counts
            _SYNC_FILE_RANGE(self.fd, self.size, n, _SYNC_FILE_RANGE_WRITE)
        self.size += n

    def discard(self) -> None:
        try:
            os.close(self.fd)
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def finish(self) -> None:
        """fsync and rename into place (or remove it and raise the write's error)."""
        if self.error is not None:
            self.discard()
            raise self.error
        try:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
            os.replace(self.tmp, self.path)
        except BaseException:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            raise


class BackgroundFlush:
    """Write files atomically, as :func:`write_bytes` does (temporary file, fsync,
    rename), with the writing in one background thread and each file's fsync and
    rename in two others, so that the caller's next work (serialising the next part or
    file) overlaps the disk I/O (``os.write`` and ``os.fsync`` release the GIL).

    The caller hands over at most one part ahead: handing a part waits until the
    previous one is written, so at most two parts (or files) are in memory. Use as a
    context manager: leaving the block waits until every file is in place and raises
    the first error (a file whose write or fsync failed is not renamed, its temporary
    file is removed); a file added before an exception in the block is still
    completed, a file whose parts raised is removed."""

    def __init__(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simia-write")
        # two, so that a small file's fsync need not wait behind a large one's
        self._flusher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="simia-fsync")
        self._last: Future[None] | None = None  # the last part handed to the writer
        self._pending: list[Future[Future[None]]] = []  # per file: its fsync + rename

    def write(self, path: str | Path, data: bytes) -> None:
        """Write ``data`` to a temporary file beside ``path``; flush and rename later."""
        self.write_parts(path, (data,))

    def write_parts(self, path: str | Path, parts: Iterable[Part]) -> None:
        """Write the concatenation of ``parts`` (consumed lazily: each part is written
        while the next is made) to a temporary file beside ``path``; flush and rename
        later. If ``parts`` raises, the file is dropped and the error propagates."""
        file = _TempFile(Path(path))
        try:
            for part in parts:
                self._hand(file.write, part)
                del part
        except BaseException:
            self._writer.submit(file.discard)  # after its parts already handed over
            raise
        self._pending.append(self._writer.submit(self._flusher.submit, file.finish))

    def _hand(self, write: Any, part: Part) -> None:
        if self._last is not None:
            self._last.result()  # never raises: a failed write is kept in its file
        self._last = self._writer.submit(write, part)

    def __enter__(self) -> BackgroundFlush:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.shutdown(wait=True)
        self._last = None
        errors: list[BaseException] = []
        flushes = []
        for future in self._pending:
            try:
                flushes.append(future.result())
            except BaseException as err:  # noqa: B036
                errors.append(err)
        self._flusher.shutdown(wait=True)
        for future in flushes:
            try:
                future.result()
            except BaseException as err:  # noqa: B036
                errors.append(err)
        if errors and exc[0] is None:
            raise errors[0]


def write_files(items: Iterable[tuple[str | Path, bytes]]) -> None:
    """Write each ``(path, bytes)`` atomically (see :class:`BackgroundFlush`); ``items``
    is consumed lazily, so a generator builds the next file while the previous one is
    written and flushed, and only those two are in memory."""
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
    path = Path(path)
    with _reading(path, what):
        data = path.read_bytes()
    if not data.strip():
        raise InputError(path, f"{what} is empty")
    return data


#: what :func:`read_input` gives: the file's bytes, or a read-only map of them
Data = bytes | mmap.mmap
#: files at least this large are mapped by :func:`read_input` rather than copied
MAP_MIN_BYTES = 1 << 22
_BLANK = re.compile(rb"\s*\Z")


def read_input(path: str | Path, *, what: str = "file") -> Data:
    """:func:`read_bytes` for a stage's large input: a file of :data:`MAP_MIN_BYTES` or
    more is mapped read-only into memory instead of copied (no copy, no fresh memory
    to fault in: ~30 ms less for a 50 MB file). Hashing, :func:`loads_records` and
    :func:`read_jsonl` take either kind.

    The map reads the file as it is on disk, so the file must not be truncated in
    place while it is in use; every writer of this package replaces a file by rename
    (a new file), which leaves a mapped old one intact.
    """
    path = Path(path)
    with _reading(path, what), open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < MAP_MIN_BYTES or not size:
            data: Data = fh.read()
        elif os.name == "posix":
            data = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ,
                             flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        else:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if _BLANK.match(data):
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
               data: Data | None = None) -> list[Any]:
    """Parse a JSON-lines file (or its ``data`` already read); blank lines are ignored,
    a bad line names its number."""
    path = Path(path)
    if data is None:
        data = read_bytes(path, what=what)
    elif type(data) is not bytes:
        data = bytes(data)
    rows = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise InputError(path, f"line {lineno}: malformed JSON: {exc}") from None
    return rows


def sha256_bytes(data: Data) -> str:
    return hashlib.sha256(data).hexdigest()
