"""Keeping secrets out of what the pipeline writes and shows.

One rule for every place that passes settings along (LLM arguments in evaluator
commands, tau2's recorded ``llm_args``, results and reports): a mapping key whose name
ends in key, key_id, secret, password, credential(s), token or authorization (any case;
``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``access_token``, but not ``max_tokens``) holds a
secret.

And one for every log line, at every level (botocore's debug log prints each request's
signed headers): :class:`SecretsFilter` rewrites a record's text with :func:`redact_text`,
which replaces the values of ``Authorization`` headers, ``X-Amz-Security-Token`` headers
and query parameters, ``Credential=`` / ``X-Amz-Credential=``, ``Signature=`` /
``X-Amz-Signature=`` (and botocore's ``Signature:`` line), session-token and secret-key
fields, AWS access key ids (``AKIA``/``ASIA`` and 16 characters) and the values of the
process's own AWS secrets (``AWS_SESSION_TOKEN``, ``AWS_SECURITY_TOKEN``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ACCESS_KEY_ID``) with :data:`REDACTED`.
:func:`install_log_redaction` puts it on every record the process logs, whichever
handler writes it (the command line's stderr, an Airflow task's log).

Standard library only: the CI evaluator image imports it too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "SecretsFilter", "install_log_redaction", "is_secret_key", "redact",
           "redact_text"]

#: what a secret's value is replaced with
REDACTED = "[REDACTED]"

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


# --------------------------------------------------------------------------- log text

_QUOTE = r"""['"]"""
#: (pattern, replacement); the first group keeps the name, the value becomes REDACTED
_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I | re.M), repl) for pattern, repl in (
        # a header or field in a Python/JSON mapping: 'Authorization': b'AWS4-... ...'
        (rf"((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
         rf"|session_?token|security_?token|secret_?access_?key|api_?key)"
         rf"{_QUOTE}?\s*[:=]\s*b?)({_QUOTE})(?:(?!\2).)*\2", rf"\1\2{REDACTED}\2"),
        # a header line or text: "authorization: Bearer x", "x-amz-security-token:x" (the
        # rest of the line: a header value may hold spaces and commas)
        (r"(\bauthorization\s*:[ \t]*)([^'\"\s].*)$", rf"\1{REDACTED}"),
        (r"(\bx-amz-security-token\s*[:=][ \t]*)([^'\"\s&;,]+)", rf"\1{REDACTED}"),
        # SigV4 parts, in headers and presigned URLs: Credential=AKIA.../..., Signature=hex;
        # botocore.auth logs "Signature:" and the hex on the next line
        (r"(\b(?:x-amz-)?credential\s*=\s*)([^\s,&'\"]+)", rf"\1{REDACTED}"),
        (r"(\b(?:x-amz-)?signature\s*=\s*)([^\s,&'\"]+)", rf"\1{REDACTED}"),
        (r"(\b(?:x-amz-)?signature\s*:\s*)([0-9a-f]{16,})", rf"\1{REDACTED}"),
        # an AWS access key id anywhere
        (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", REDACTED),
    ))
#: the environment variables whose values are redacted wherever they appear
SECRET_ENV_VARS = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_SECRET_ACCESS_KEY",
                   "AWS_ACCESS_KEY_ID")
#: shorter values are not replaced as text (a dummy "test" would blank every "test")
_MIN_LITERAL = 12


def _env_secrets() -> tuple[str, ...]:
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS}
    return tuple(sorted((v for v in values if len(v) >= _MIN_LITERAL), key=len, reverse=True))


def redact_text(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """``text`` with credentials, signatures and tokens replaced by :data:`REDACTED` (see
    the module docstring); ``secrets``: literal values to replace too (default: the
    values of :data:`SECRET_ENV_VARS` now)."""
    for value in _env_secrets() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern, repl in _TEXT_RULES:
        text = pattern.sub(repl, text)
    return text


class SecretsFilter(logging.Filter):
    """A logging filter (for a handler or a logger) that redacts each record's message,
    exception text and stack in place; it never drops a record. The literal secrets are
    the environment's when it is made."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.secrets = _env_secrets() if secrets is None else secrets

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.secrets)
        return True


def redact_record(record: logging.LogRecord, secrets: tuple[str, ...] | None = None) -> None:
    """Redact ``record`` in place (once): its formatted message becomes its ``msg``."""
    if getattr(record, "_simia_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format: leave it to the handler to report as usual
        return
    record.msg, record.args = redact_text(message, secrets), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info, secrets)
    record._simia_redacted = True


_install_lock = threading.Lock()


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on, whichever logger
    makes it and whichever handler writes it (handlers configured later too, as an
    Airflow task's): wraps the log record factory, and puts a :class:`SecretsFilter` on
    the root logger's handlers for records made elsewhere (``logging.makeLogRecord``).
    Idempotent; the environment's secrets are read again at each call."""
    with _install_lock:
        secrets = _env_secrets()
        previous = logging.getLogRecordFactory()
        inner = getattr(previous, "_simia_inner", previous)

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = inner(*args, **kwargs)
            redact_record(record, secrets)
            return record

        factory._simia_inner = inner  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
        for handler in logging.getLogger().handlers:
            for old in [f for f in handler.filters if isinstance(f, SecretsFilter)]:
                handler.removeFilter(old)
            handler.addFilter(SecretsFilter(secrets))
