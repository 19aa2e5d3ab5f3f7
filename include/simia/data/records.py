"""Typed records for conversations and turns, and loaders that say exactly what is wrong.

Records are ``TypedDict`` s. Loading parses with orjson and checks the record shapes in
one plain loop (the common case: a valid file costs little more than parsing it); only
when that check finds a problem does pydantic validate the file, to word each error
with its record index and field. Unknown keys are kept: generation metadata travels
with a conversation to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from typing_extensions import NotRequired, TypedDict

import orjson
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from simia.errors import InputError
from simia.io import json_error, loads_list, read_bytes

Role = Literal["human", "gpt", "function_call", "observation"]
ROLES: tuple[str, ...] = ("human", "gpt", "function_call", "observation")

#: one turn: ``{"from": ROLE, "value": TEXT}`` (``from`` is a Python keyword, hence this form)
Turn = with_config(ConfigDict(extra="allow", strict=True))(
    TypedDict("Turn", {"from": str, "value": str})
)


@with_config(ConfigDict(extra="allow", strict=True))
class RawConversation(TypedDict):
    """A conversation as the generator writes it (one element of the raw JSON list)."""

    conversations: list[Turn]  # type: ignore[valid-type]
    system: NotRequired[str]
    #: tool schemas, a JSON string holding a list (reference format) or the list itself
    tools: NotRequired[str | list[dict[str, Any]]]
    based_on_sample: NotRequired[str]
    simulator_mode: NotRequired[str]
    domain: NotRequired[str]


@with_config(ConfigDict(extra="allow", strict=True))
class ProcessedConversation(TypedDict):
    """A conversation after processing, ready for LLaMA-Factory."""

    conversations: list[Turn]  # type: ignore[valid-type]
    system: str
    #: position of this conversation in the raw input file
    source_index: int
    tools: NotRequired[str]


_RAW_LIST = TypeAdapter(list[RawConversation])
_RAW_ONE = TypeAdapter(RawConversation)
_PROCESSED_LIST = TypeAdapter(list[ProcessedConversation])
_PROCESSED_ONE = TypeAdapter(ProcessedConversation)

_MAX_LISTED = 10

_OPTIONAL_STR = ("system", "based_on_sample", "simulator_mode", "domain")


def _turns_ok(turns: Any) -> bool:
    if type(turns) is not list:
        return False
    for t in turns:
        if type(t) is not dict or type(t.get("from")) is not str \
                or type(t.get("value")) is not str:
            return False
    return True


def _raw_ok(records: list[Any]) -> bool:
    """True when every record has the shape of :class:`RawConversation` (strict types)."""
    for r in records:
        if type(r) is not dict or not _turns_ok(r.get("conversations")):
            return False
        for key in _OPTIONAL_STR:
            if key in r and type(r[key]) is not str:
                return False
        if "tools" in r:
            tools = r["tools"]
            if type(tools) is not str and not (
                    type(tools) is list and all(type(x) is dict for x in tools)):
                return False
    return True


def _processed_ok(records: list[Any]) -> bool:
    """True when every record has the shape of :class:`ProcessedConversation`."""
    for r in records:
        if type(r) is not dict or not _turns_ok(r.get("conversations")) \
                or type(r.get("system")) is not str or type(r.get("source_index")) is not int \
                or ("tools" in r and type(r["tools"]) is not str):
            return False
    return True


@dataclass(frozen=True)
class InvalidRecord:
    """A record that failed validation (kept so that nothing disappears silently)."""

    index: int
    field: str
    message: str


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(errors: list[dict[str, Any]], *, indexed: bool) -> list[InvalidRecord]:
    found = []
    for err in errors:
        loc = tuple(err["loc"])
        if indexed and loc and isinstance(loc[0], int):
            index, rest = loc[0], loc[1:]
        else:
            index, rest = -1, loc
        found.append(InvalidRecord(index, _field_path(rest) or "(record)", err["msg"]))
    return found


def _raise_invalid(path: Path, invalid: list[InvalidRecord], total_errors: int) -> None:
    first = invalid[0]
    lines = [f"record {e.index}, field '{e.field}': {e.message}" for e in invalid[:_MAX_LISTED]]
    more = f" (and {total_errors - _MAX_LISTED} more)" if total_errors > _MAX_LISTED else ""
    raise InputError(
        path,
        f"{total_errors} invalid field(s){more}: " + "; ".join(lines),
        record=first.index,
        field=first.field,
    )


def _load(
    path: str | Path,
    list_adapter: TypeAdapter[Any],
    one_adapter: TypeAdapter[Any],
    shape_ok: Callable[[list[Any]], bool],
    what: str,
    skip_invalid: bool,
    data: bytes | None = None,
) -> tuple[list[dict[str, Any]], list[InvalidRecord]]:
    path = Path(path)
    if data is None:
        data = read_bytes(path, what=what)
    try:
        parsed = loads_list(data)
    except orjson.JSONDecodeError as jexc:
        raise InputError(path, f"malformed JSON: {json_error(jexc, data)}") from None
    del data  # the parsed records are all that is needed from here on
    if not isinstance(parsed, list):
        raise InputError(path, "expected a JSON list of conversations, got "
                         f"{type(parsed).__name__}")
    if not parsed:
        raise InputError(path, "the list of conversations is empty")
    if shape_ok(parsed):
        return parsed, []
    # some records are bad: pydantic words every problem with its record and field
    try:
        return list_adapter.validate_python(parsed), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    invalid = _describe(errors, indexed=True)
    if not skip_invalid:
        _raise_invalid(path, invalid, len(errors))
    good: list[dict[str, Any]] = []
    bad: list[InvalidRecord] = []
    for i, item in enumerate(parsed):
        try:
            good.append(one_adapter.validate_python(item))
        except ValidationError as exc:
            first = _describe(exc.errors(include_url=False), indexed=False)[0]
            bad.append(InvalidRecord(i, first.field, first.message))
            good.append(None)  # type: ignore[arg-type]  # keeps positions; filtered by caller
    return good, bad


def load_raw(
    path: str | Path, *, skip_invalid: bool = False, data: bytes | None = None
) -> tuple[list[dict[str, Any] | None], list[InvalidRecord]]:
    """Load raw generated conversations.

    Returns the records in file order and the invalid ones. With ``skip_invalid``
    an invalid record is returned as ``None`` at its position (so indices keep their
    meaning) and listed in the second value; otherwise the first problems raise
    :class:`InputError` naming file, record and field. ``data``: the file's bytes when
    the caller has already read them.
    """
    records, invalid = _load(path, _RAW_LIST, _RAW_ONE, _raw_ok, "raw conversations file",
                             skip_invalid, data)
    if not records:
        raise InputError(path, "the list of conversations is empty")
    return records, invalid


def load_processed(path: str | Path, *, data: bytes | None = None) -> list[dict[str, Any]]:
    """Load a processed conversations file (always strict: it is our own output);
    ``data``: its bytes when the caller has already read them."""
    records, _ = _load(path, _PROCESSED_LIST, _PROCESSED_ONE, _processed_ok,
                       "processed conversations file", False, data)
    if not records:
        raise InputError(path, "the list of processed conversations is empty")
    # one format per file: native rows all carry their tools, hermes rows none
    with_tools = [i for i, row in enumerate(records) if "tools" in row]
    if with_tools and len(with_tools) < len(records):
        first = next(i for i, row in enumerate(records) if "tools" not in row)
        raise InputError(path, f"missing, but record {with_tools[0]} has tools (the native "
                               "format): every row of a native file needs them",
                         record=first, field="tools")
    # every row repeats the same system prompt and tool list (~30 KB with tau2's policy):
    # keep one copy of each instead of one per row
    shared: dict[str, str] = {}
    for row in records:
        row["system"] = shared.setdefault(row["system"], row["system"])
        if "tools" in row:
            row["tools"] = shared.setdefault(row["tools"], row["tools"])
    return records


def parse_tools(tools: Any) -> list[dict[str, Any]] | None:
    """The ``tools`` field as a list of tool dicts, or None when absent/unparseable."""
    if isinstance(tools, str):
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            return None
    if isinstance(tools, list):
        return [t for t in tools if isinstance(t, dict)]
    return None
