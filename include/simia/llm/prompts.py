"""Prompt templates: text files with ``{{name}}`` fields.

The defaults ship in ``simia/prompts/``. A user who wants to change a prompt copies that
folder, edits it and passes it as ``prompts_dir``; a file missing there falls back to
the default. Rendering is strict: a field the template names but the caller does not
give is an error (a typo would otherwise silently send a broken prompt); a template may
leave out fields it does not want.

**Cache points.** A stage's prompt is a system prompt (the shared part, identical for
every item of a run) and a user message (the item's own text). The client puts a Bedrock
cache point after the system prompt; a template can mark one more place with the field
``{{cache_point}}`` (always known to :func:`render`), which becomes the marker
:data:`CACHE_POINT`: the Bedrock backend turns it into a ``cachePoint`` content block,
and removes it (as every other backend does) when caching is off.
:func:`load_pair` loads a stage's two templates, ``NAME_system.txt`` and ``NAME.txt``.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from simia.errors import ConfigError, InputError

_FIELD = re.compile(r"\{\{(\w+)\}\}")

#: where ``{{cache_point}}`` was: a Bedrock cache point, when caching is on (control
#: characters that no prompt text holds)
CACHE_POINT = "\x1e<cache point>\x1e"


def split_cache_points(text: str) -> list[str]:
    """``text`` cut at its cache-point markers (one part when it has none)."""
    return text.split(CACHE_POINT)


def strip_cache_points(text: str) -> str:
    """``text`` without cache-point markers (what a backend without caching sends)."""
    return text.replace(CACHE_POINT, "") if CACHE_POINT in text else text


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


def load_pair(name: str, prompts_dir: str | Path | None = None
              ) -> tuple[tuple[str, str] | None, tuple[str, str]]:
    """A stage's ((system template, where) or None, (user template, where)).

    ``NAME_system.txt`` holds what every item shares (it goes first, as the system prompt,
    and is cached), ``NAME.txt`` the item's own text. A ``prompts_dir`` with its own
    ``NAME.txt`` but no ``NAME_system.txt`` holds a one-message template of the layout
    before prompt caching: it is sent alone, as the user message (no system prompt).
    """
    user = load_template(f"{name}.txt", prompts_dir)
    if prompts_dir and (Path(prompts_dir) / f"{name}.txt").is_file() \
            and not (Path(prompts_dir) / f"{name}_system.txt").is_file():
        return None, user
    return load_template(f"{name}_system.txt", prompts_dir), user


def render(template: str, where: str, **fields: str) -> str:
    """Fill ``{{name}}`` fields; every field the template names must be given, except
    ``cache_point`` (the :data:`CACHE_POINT` marker)."""
    fields = {"cache_point": CACHE_POINT, **fields}
    missing = set(_FIELD.findall(template)) - fields.keys()
    if missing:
        raise ConfigError(f"prompt template {where}: unknown field(s) {sorted(missing)}; "
                          f"known: {sorted(fields)}")
    return _FIELD.sub(lambda m: fields[m.group(1)], template)
