"""Errors that name exactly what is wrong: which file, which record, which field."""

from __future__ import annotations

from pathlib import Path


class SimiaError(Exception):
    """Base class for every error the pipeline raises on purpose."""


class InputError(SimiaError, ValueError):
    """Bad input: unreadable file, malformed JSON, missing field, wrong type, empty file.

    The message always starts with the file, then (when known) the record index and
    the field path, so a user reading a task log can go straight to the culprit.
    """

    def __init__(
        self,
        path: str | Path | None,
        message: str,
        *,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.record = record
        self.field = field
        self.detail = message
        where = []
        if self.path is not None:
            where.append(self.path)
        if record is not None:
            where.append(f"record {record}")
        if field:
            where.append(f"field '{field}'")
        prefix = ": ".join([", ".join(where)]) if where else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DesignError(SimiaError, ValueError):
    """The requested experiment design cannot be satisfied by the data (e.g. too few
    sycophantic conversations for the highest level)."""


class ConfigError(SimiaError, ValueError):
    """An invalid combination of settings, detected before any work starts."""
