"""Prompt templates: text files with ``{{name}}`` fields.

The defaults ship in ``simia/prompts/``. A user who wants to change a prompt copies that
folder, edits it and passes it as ``prompts_dir``; a file missing there falls back to
the default. Rendering is strict: a field the template names but the caller does not
give is an error (a typo would otherwise silently send a broken prompt); a template may
leave out fields it does not want.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from simia.errors import ConfigError, InputError

_FIELD = re.compile(r"\{\{(\w+)\}\}")


def load_template(name: str, prompts_dir: str | Path | None = None) -> tuple[str, str]:
    """(text, where it came from) of template ``name`` (e.g. ``"generate.txt"``)."""
    if prompts_dir:
        path = Path(prompts_dir) / name
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8"), str(path)
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(path, f"cannot read prompt template: {exc}") from None
        if not Path(prompts_dir).is_dir():
            raise InputError(prompts_dir, "prompts folder does not exist")
    res = resources.files("simia") / "prompts" / name
    if not res.is_file():
        raise ConfigError(f"prompt template {name!r} does not exist")
    return res.read_text(encoding="utf-8"), f"simia/prompts/{name}"


def render(template: str, where: str, **fields: str) -> str:
    """Fill ``{{name}}`` fields; every field the template names must be given."""
    missing = set(_FIELD.findall(template)) - fields.keys()
    if missing:
        raise ConfigError(f"prompt template {where}: unknown field(s) {sorted(missing)}; "
                          f"known: {sorted(fields)}")
    return _FIELD.sub(lambda m: fields[m.group(1)], template)
