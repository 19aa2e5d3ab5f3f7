"""Keeping secrets out of what the pipeline writes and shows.

One rule for every place that passes settings along (LLM arguments in evaluator
commands, tau2's recorded ``llm_args``, results and reports): a mapping key whose name
ends in key, key_id, secret, password, credential(s), token or authorization (any case;
``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``access_token``, but not ``max_tokens``) holds a
secret. Standard library only: the CI evaluator image imports it too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["is_secret_key", "redact"]

_SECRET_KEY = re.compile(
    r"(key|key_?id|secret|password|passwd|credentials?|token|authorization)$", re.I)


def is_secret_key(name: object) -> bool:
    """True when a setting called ``name`` holds a secret (see the module docstring)."""
    return bool(_SECRET_KEY.search(str(name)))


def redact(value: Any) -> Any:
    """A copy of ``value`` without secret-named mapping keys (at any depth) and with
    ``user:password@`` removed from URLs."""
    if isinstance(value, Mapping):
        return {str(k): redact(v) for k, v in value.items() if not is_secret_key(k)}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1]:
        scheme, rest = value.split("://", 1)
        host, sep, tail = rest.partition("/")
        return f"{scheme}://{host.rsplit('@', 1)[1]}{sep}{tail}"
    return value
