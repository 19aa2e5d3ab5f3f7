"""Checking where a command will write before it does any work.

A stage that finds out at its end that its output path is an existing file, lies under
one, or sits in a folder it may not write to has spent its work (LLM calls, hours of
generation) for nothing and shows a traceback. :func:`check_output_dir` and
:func:`check_output_file` find each of these first and raise a
:class:`~simia.errors.ConfigError` naming the option and the path. They create nothing:
the write probe is a temporary file, removed at once, in the nearest folder that
exists.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from simia.errors import ConfigError

__all__ = ["check_output_dir", "check_output_file"]


def _fail(option: str, path: Path, problem: str) -> None:
    raise ConfigError(f"{option} {path}: {problem}")


def _existing_folder(option: str, path: Path, start: Path) -> Path:
    """The nearest of ``start`` and its parents that exists; it must be a folder."""
    for folder in (start, *start.parents):
        if folder.exists():
            if not folder.is_dir():
                _fail(option, path, f"{folder} is a file, not a folder")
            return folder
        if folder.is_symlink():  # a dangling link: makedirs would fail on it
            _fail(option, path, f"{folder} is a broken symbolic link")
    raise AssertionError("the file system root always exists")  # pragma: no cover


def _writable(option: str, path: Path, folder: Path) -> None:
    """Create and remove a temporary file in ``folder`` (permission bits alone do not
    tell: root ignores them, a read-only mount does not show in them)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".simia-write-check-", dir=folder)
    except OSError as exc:
        _fail(option, path, f"cannot write in {folder} ({exc.strerror or exc})")
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | Path, option: str) -> None:
    """Raise :class:`ConfigError` unless the folder ``path`` (given as ``option``) exists
    as a folder or can be made, and files can be written in it."""
    path = Path(path)
    absolute = path.absolute()
    if absolute.exists() and not absolute.is_dir():
        _fail(option, path, "is an existing file, expected a folder")
    _writable(option, path, _existing_folder(option, path, absolute))


def check_output_file(path: str | Path, option: str) -> None:
    """Raise :class:`ConfigError` unless the file ``path`` (given as ``option``) can be
    written: not an existing folder, its folder a folder (or makeable) and writable."""
    path = Path(path)
    absolute = path.absolute()
    if absolute.is_dir():
        _fail(option, path, "is an existing folder, expected a file")
    _writable(option, path, _existing_folder(option, path, absolute.parent))
