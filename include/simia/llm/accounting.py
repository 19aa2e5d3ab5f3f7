"""Token and cost accounting for LLM calls.

Every call's ``usage`` (input/output tokens) is added to a thread-safe :class:`Usage`
per stage; stage summaries carry it, and the run total is the sum over stages. The cost
is an estimate from a :class:`PriceTable` (US dollars per million tokens), configurable
because prices change and differ between models and regions.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from simia.settings.llm import PriceTable


class Usage:
    """Running totals of one stage's calls (safe to update from many threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.failed_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.call_seconds = 0.0
        self.errors: Counter[str] = Counter()

    def add_call(self, *, input_tokens: int = 0, output_tokens: int = 0, seconds: float = 0.0,
                 error: str | None = None) -> None:
        with self._lock:
            self.calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.call_seconds += seconds
            if error:
                self.failed_calls += 1
                self.errors[error] += 1

    def as_dict(self, prices: PriceTable, model_id: str) -> dict[str, Any]:
        with self._lock:
            return {
                "model_id": model_id,
                "calls": self.calls,
                "failed_calls": self.failed_calls,
                "errors": dict(sorted(self.errors.items())),
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "call_seconds": round(self.call_seconds, 3),
                "cost_usd": round(prices.cost(model_id, self.input_tokens,
                                              self.output_tokens), 4),
            }


def sum_usage(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up ``Usage.as_dict`` results (e.g. the shards of a stage, or all stages)."""
    total: dict[str, Any] = {"calls": 0, "failed_calls": 0, "input_tokens": 0,
                             "output_tokens": 0, "call_seconds": 0.0, "cost_usd": 0.0}
    errors: Counter[str] = Counter()
    for part in parts:
        for key in total:
            total[key] += part.get(key, 0)
        errors.update(part.get("errors", {}))
    total["call_seconds"] = round(total["call_seconds"], 3)
    total["cost_usd"] = round(total["cost_usd"], 4)
    total["errors"] = dict(sorted(errors.items()))
    models = sorted({p["model_id"] for p in parts if p.get("model_id")})
    total["model_id"] = models[0] if len(models) == 1 else models
    return total
