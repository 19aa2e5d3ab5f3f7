"""Getting structured data out of free-text LLM replies."""

from __future__ import annotations

from typing import Any

import orjson


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The reply as a JSON object: the whole text, else the span from the first ``{`` to
    the last ``}`` (models like to wrap JSON in prose or code fences). None if neither
    parses to an object."""
    for candidate in (text.strip(), text[text.find("{"): text.rfind("}") + 1]):
        if not candidate:
            continue
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
