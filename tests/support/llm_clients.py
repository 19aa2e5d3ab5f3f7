"""LLM clients for tests: the real client (boto3 underneath) pointed at the local Converse
server (tests/converse_server.py), with short backoffs and timeouts."""

from __future__ import annotations

from typing import Any

from simia.llm.client import LLMClient, LLMSettings, make_client


def local_client(server: Any, *, concurrency: int = 8, **extra: Any) -> LLMClient:
    """A client of ``server`` (a running ``ConverseServer``); ``extra`` sets other
    :class:`LLMSettings` fields."""
    fields = {"endpoint_url": server.url, "concurrency": concurrency, "backoff_base_s": 0.01,
              "backoff_max_s": 0.05, "timeout_s": 5.0, **extra}
    return make_client(LLMSettings(**fields))
