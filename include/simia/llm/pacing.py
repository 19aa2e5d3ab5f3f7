"""Client-side request pacing: one shared rate for every thread of an LLM client.

Bedrock's throttling quotas are per account and model (requests and tokens per minute),
shared by every process that calls the model. Retrying throttled calls with backoff
loses nothing, but a client that keeps sending faster than its share wastes calls on
429s and, with backoff, idles its threads. :class:`RatePacer` spaces the *start* of every
HTTP attempt (first tries and retries, ours and botocore's) of one client evenly at a
rate that is

- at most ``max_rps`` when one is set (a fixed share of the quota: e.g. the account's
  requests per minute / 60 / the number of concurrent shard tasks), and
- with ``learn`` on, learnt from throttling, AIMD-style: unpaced until the service
  throttles; then, at most once per ``hold_s``, the rate is cut to ``decrease`` times
  the rate the service *accepted* (non-throttled responses per second over the last
  ``window_s``), but never by more than half at once. While requests queue for the
  pacer (the rate, not the threads, limits the client) it grows by ``probe_per_s``
  (5 %) a second, so it keeps probing for more capacity and settles just below the
  sustainable rate. An idle or latency-bound client does not grow its rate.

It replaces what botocore's *adaptive* retry mode does with a gentler rule: adaptive
cuts its rate to 70 % of the measured send rate on every throttle and climbs back along
a cubic curve, which on a steady quota leaves it well below the quota most of the time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class RatePacer:
    """Spaces request starts at a shared, learnt rate; thread-safe.

    :param max_rps: ceiling on request starts per second (None: no fixed ceiling).
    :param learn: learn the sustainable rate from throttling (see the module docstring).
    :param min_rps: the learnt rate never goes below this.
    :param decrease: on throttling, the new rate is this fraction of the accepted rate.
    :param probe_per_s: relative growth per second of the rate while requests queue for it.
    :param hold_s: minimum time between two cuts (throttles of requests sent before a
        cut must not cut again), and before the first one (the accepted rate needs that
        much history).
    :param window_s: how far back the accepted and sent rates are measured.
    :param clock: monotonic seconds; ``sleep``: how to wait (both replaceable in tests).
    """

    def __init__(self, max_rps: float | None = None, *, learn: bool = True,
                 min_rps: float = 0.05, decrease: float = 0.95, probe_per_s: float = 0.05,
                 hold_s: float = 1.0, window_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_rps is not None and max_rps <= 0:
            raise ValueError("max_rps must be > 0 or None")
        if not 0 < decrease <= 1 or min_rps <= 0 or probe_per_s < 0 or hold_s < 0 \
                or window_s <= 0:
            raise ValueError("invalid pacer parameters")
        self.max_rps = max_rps
        self.learn = learn
        self.min_rps = min_rps
        self.decrease = decrease
        self.probe_per_s = probe_per_s
        self.hold_s = hold_s
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        #: the current rate; None: unpaced
        self.rate: float | None = max_rps
        self._next = 0.0  # the earliest start of the next request
        self._grown = 0.0  # when the rate last grew (or was found not limiting)
        self._start: float | None = None  # the first request
        self._last_cut = 0.0
        self._sent: deque[float] = deque()
        self._accepted: deque[float] = deque()
        #: totals since construction
        self.requests = 0
        self.throttled = 0
        self.cuts = 0
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        """Whether this pacer can ever delay a request."""
        return self.learn or self.max_rps is not None

    def acquire(self) -> float:
        """Wait for this request's slot; return the seconds waited."""
        if not self.active:
            return 0.0
        with self._lock:
            now = self._clock()
            if self._start is None:
                self._start = self._last_cut = self._grown = now
            self.requests += 1
            if self.learn:
                self._sent.append(now)
                self._trim(self._sent, now)
            rate = self.rate
            if rate is None:
                return 0.0
            if self.learn and self.probe_per_s:
                if self._next > now:  # the rate limits us: probe for more
                    rate *= math.exp(self.probe_per_s * (now - self._grown))
                    if self.max_rps is not None:
                        rate = min(rate, self.max_rps)
                    self.rate = rate
                self._grown = now
            slot = max(now, self._next)
            self._next = slot + 1.0 / rate
            wait = slot - now
            self.waited_s += wait
        if wait > 0:
            self._sleep(wait)
        return wait

    def record(self, throttled: bool) -> None:
        """Note one response: throttled (429 / a throttling error code) or not."""
        if not self.learn:
            if throttled:
                with self._lock:
                    self.throttled += 1
            return
        with self._lock:
            now = self._clock()
            if not throttled:
                self._accepted.append(now)
                self._trim(self._accepted, now)
                return
            self.throttled += 1
            start = self._start if self._start is not None else now
            if now - self._last_cut < self.hold_s or now - start < self.hold_s:
                return
            span = min(self.window_s, now - start)
            self._trim(self._accepted, now)
            self._trim(self._sent, now)
            accepted = sum(1 for t in self._accepted if t >= now - span) / span
            current = self.rate
            if current is None:
                current = sum(1 for t in self._sent if t >= now - span) / span
            new = max(self.min_rps, min(current, max(self.decrease * accepted, 0.5 * current)))
            if self.max_rps is not None:
                new = min(new, self.max_rps)
            self.rate = new
            self._last_cut = self._grown = now
            self.cuts += 1

    def _trim(self, times: deque[float], now: float) -> None:
        horizon = now - self.window_s
        while times and times[0] < horizon:
            times.popleft()

    def stats(self) -> dict[str, float | int | None]:
        """Rate and totals, for summaries and logs."""
        with self._lock:
            return {"rate": None if self.rate is None else round(self.rate, 3),
                    "max_rps": self.max_rps, "requests": self.requests,
                    "throttled": self.throttled, "cuts": self.cuts,
                    "waited_s": round(self.waited_s, 3)}
