"""Token and cost accounting for LLM calls.

Every call's ``usage`` is added to a thread-safe :class:`Usage` per stage; stage
summaries carry it, and the run total is the sum over stages. Input comes in three
kinds, as Bedrock reports it: ``input_tokens`` (neither read from nor written to the
prompt cache: Bedrock's ``inputTokens``), ``cache_read_tokens`` (``cacheReadInputTokens``)
and ``cache_write_tokens`` (``cacheWriteInputTokens``); the whole input is their sum, and
``cache_read_share`` is the part of it read from the cache. The cost is an estimate from a
:class:`PriceTable` (US dollars per million tokens, each kind at its own price),
configurable because prices change and differ between models and regions::

    cost = (input x input price + output x output price
            + cache read x cache-read price + cache write x cache-write price) / 1e6
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from simia.settings.llm import PriceTable

#: the token counts of a usage record, summed as they are
TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
#: decimals of ``cost_usd`` (a millionth of a dollar: below one token's price at $3 a
#: million, so a summary's cost is its token counts at the table's prices)
COST_DECIMALS = 6


def cache_read_share(usage: dict[str, Any]) -> float:
    """The share of all input tokens (uncached + cache read + cache write) read from the
    prompt cache; 0.0 without input."""
    read = int(usage.get("cache_read_tokens", 0))
    total = read + int(usage.get("input_tokens", 0)) + int(usage.get("cache_write_tokens", 0))
    return round(read / total, 4) if total else 0.0


class Usage:
    """Running totals of one stage's calls (safe to update from many threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.failed_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.call_seconds = 0.0
        self.errors: Counter[str] = Counter()

    def add_call(self, *, input_tokens: int = 0, output_tokens: int = 0,
                 cache_read_tokens: int = 0, cache_write_tokens: int = 0,
                 seconds: float = 0.0, error: str | None = None) -> None:
        with self._lock:
            self.calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cache_read_tokens += cache_read_tokens
            self.cache_write_tokens += cache_write_tokens
            self.call_seconds += seconds
            if error:
                self.failed_calls += 1
                self.errors[error] += 1

    def as_dict(self, prices: PriceTable, model_id: str) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "model_id": model_id,
                "calls": self.calls,
                "failed_calls": self.failed_calls,
                "errors": dict(sorted(self.errors.items())),
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "call_seconds": round(self.call_seconds, 3),
                "cost_usd": round(prices.cost(model_id, self.input_tokens, self.output_tokens,
                                              self.cache_read_tokens,
                                              self.cache_write_tokens), COST_DECIMALS),
            }
        out["cache_read_share"] = cache_read_share(out)
        return out

    def record(self, prices: PriceTable, model_id: str) -> dict[str, Any]:
        """The totals as an item's record keeps them (no model id, no cache share)."""
        out = self.as_dict(prices, model_id)
        del out["model_id"], out["cache_read_share"]
        return out


#: the summed keys of a usage record (``errors`` is merged by class)
_SUMMED = ("calls", "failed_calls", *TOKEN_KEYS, "call_seconds", "cost_usd")


def add_usage(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """Two usage records (:meth:`Usage.record`) added up; either may be empty or None."""
    a, b = a or {}, b or {}
    out: dict[str, Any] = {}
    for key in _SUMMED:
        if key in a or key in b:
            out[key] = a.get(key, 0) + b.get(key, 0)
    if "call_seconds" in out:
        out["call_seconds"] = round(out["call_seconds"], 3)
    if "cost_usd" in out:
        out["cost_usd"] = round(out["cost_usd"], COST_DECIMALS)
    errors = Counter(a.get("errors") or {})
    errors.update(b.get("errors") or {})
    if errors or "errors" in a or "errors" in b:
        out["errors"] = dict(sorted(errors.items()))
    return out


def add_item_usage(a: dict[str, dict[str, Any]] | None,
                   b: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Two records' ``usage`` (usage records by kind: ``generate``, ``judge``, ...)
    added up kind by kind."""
    a, b = a or {}, b or {}
    return {k: add_usage(a.get(k), b.get(k)) for k in sorted(set(a) | set(b))}


def sum_usage(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up ``Usage.as_dict`` results (e.g. the shards of a stage, or all stages); a
    part written before prompt caching counts no cache tokens."""
    total: dict[str, Any] = {"calls": 0, "failed_calls": 0,
                             **dict.fromkeys(TOKEN_KEYS, 0),
                             "call_seconds": 0.0, "cost_usd": 0.0}
    errors: Counter[str] = Counter()
    for part in parts:
        for key in total:
            total[key] += part.get(key, 0)
        errors.update(part.get("errors", {}))
    total["call_seconds"] = round(total["call_seconds"], 3)
    total["cost_usd"] = round(total["cost_usd"], COST_DECIMALS)
    total["cache_read_share"] = cache_read_share(total)
    total["errors"] = dict(sorted(errors.items()))
    models = sorted({p["model_id"] for p in parts if p.get("model_id")})
    total["model_id"] = models[0] if len(models) == 1 else models
    return total


def usage_of(records: Iterable[dict[str, Any]], kinds: Iterable[str], prices: PriceTable,
             model_id: str) -> dict[str, Any]:
    """The summed usage of ``kinds`` (``generate``, ``judge``, ...) over ``records``, its
    cost priced once from the summed token counts (not a sum of rounded item costs)."""
    kinds = tuple(kinds)
    total = sum_usage([{**u, "model_id": model_id} for r in records
                       for k, u in (r.get("usage") or {}).items() if k in kinds])
    total["cost_usd"] = round(prices.cost(model_id, *(int(total[k]) for k in TOKEN_KEYS)),
                              COST_DECIMALS)
    total["model_id"] = model_id
    return total
