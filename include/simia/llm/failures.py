"""When an LLM stage has failed, and which recorded failures a re-run retries.

A stage's items end as results or recorded failures. Some failures are **yields**: what
the model wrote was not usable in a way another call would most likely repeat (a
generated reply that does not parse, is cut at ``max_tokens`` or has a broken
continuation, a conversation validation rejects). The others are **call failures**: the
call itself failed (:class:`~simia.llm.client.LLMCallError`: retries exhausted on
throttling, 5xx, timeouts, an unreachable endpoint, or a request the service refused).

A stage **fails** (:class:`LLMStageFailed`, so the command line exits 2 and the Airflow
task fails and is retried) when every item failed, or more than ``max_failed_share``
(:class:`~simia.settings.llm.LLMSettings`) of them did, counting as failed:

- seeds and the judge: every failure (an unusable reply after all tries labels or seeds
  nothing, like a failed call);
- generation and the collection: call failures only, and only when the shard ended short
  of its target (with the target met its output is complete; retrying would only buy
  conversations beyond it).

The message gives the counts and the first few failures (item, error class, detail). A
re-run retries failures by default (seeds and judge: all of them; generation and the
collection: call failures), so a stage that failed during an outage completes on its
retry once the service is back; ``keep_failures`` (``--keep-failures``) keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from simia.errors import SimiaError

__all__ = ["CONTENT_ERRORS", "LLMStageFailed", "check_failures", "is_call_failure"]

#: errors of recorded failures that are yields, not call failures: a generated reply
#: that does not parse, still stops at max_tokens, or whose continuation restarts or
#: refuses; a judge reply that never parsed (in the collection)
CONTENT_ERRORS = frozenset({"unparseable", "truncated", "bad_continuation",
                            "unparseable_reply"})
#: failures quoted in the message
SHOWN = 3


class LLMStageFailed(SimiaError):
    """Every item of an LLM stage, or more than ``max_failed_share`` of them, failed
    (a retry may help: failures are retried by default)."""


def is_call_failure(rec: dict[str, Any]) -> bool:
    """Whether a recorded failure is a failed call (:class:`LLMCallError`), not a yield."""
    error = rec.get("error")
    return bool(error) and error not in CONTENT_ERRORS


def check_failures(stage: str, where: str | Path, records: Iterable[dict[str, Any]],
                   is_failed: Callable[[dict[str, Any]], bool], max_share: float) -> None:
    """Raise :class:`LLMStageFailed` when every one of ``records`` (at least one) or
    more than ``max_share`` of them ``is_failed``; ``where`` (the checkpoint) and
    ``stage`` start the message."""
    recs = list(records)
    failed = [r for r in recs if is_failed(r)]
    if not recs or not failed:
        return
    share = len(failed) / len(recs)
    if len(failed) < len(recs) and share <= max_share:
        return
    why = ("every item failed" if len(failed) == len(recs)
           else f"more than max_failed_share = {max_share:.0%}")
    shown = "; ".join(
        f"item {r.get('index', '?')} (id {r.get('id')}): {r.get('error', '?')}: "
        f"{' '.join(str(r.get('detail', '')).split())[:200]}"
        for r in sorted(failed, key=lambda r: r.get("index", 0))[:SHOWN])
    raise LLMStageFailed(
        f"{where}: {stage}: {len(failed)} of {len(recs)} items failed ({share:.0%}, {why}); "
        f"first failures: {shown}. Fix the cause (endpoint, credentials, quota, prompts) "
        "and run it again: recorded failures are retried (keep_failures keeps them)")
