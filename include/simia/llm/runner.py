"""Run many LLM work items with bounded concurrency and a crash-proof checkpoint.

A stage hands :func:`run_items` a stream of :class:`WorkItem` s and a function that turns
one item into a finished record (a result or a recorded failure). Every finished record
goes to a JSONL :class:`Checkpoint` the moment it completes (a writer thread appends it
to the file within milliseconds, so no LLM thread ever waits for the disk), so a stage
killed at any point (even SIGKILL) and run again calls the LLM only for items not in the
checkpoint. With a ``target``, no more items are in flight than successes still needed,
so a run ends with exactly ``target`` successes (or at the attempt bound) and a restart
costs at most the remaining items plus the items that were in flight when it died (or
had finished in the last milliseconds, their lines not yet written).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from simia.errors import InputError
from simia.io import OUTPUT_MODE
from simia.llm.accounting import add_item_usage

log = logging.getLogger("simia.llm")


def item_id(run_seed: int | str, stage: str, index: int) -> str:
    """A stable id for item ``index`` of ``stage`` in a run (same on every machine and
    every re-run, unlike Python's ``hash()``)."""
    return hashlib.sha256(f"{run_seed}:{stage}:{index}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkItem:
    index: int
    id: str
    payload: Any = None


class Checkpoint:
    """Append-only JSONL of finished items (one JSON object per line, keyed by ``id``).

    :meth:`append` records an item in :attr:`records` at once and queues its line; a
    writer thread (started on the first append) writes the queued lines, in order, with
    ``write`` calls on an ``O_APPEND`` descriptor. The threads that call the LLM so
    never block on the disk (a busy disk stalls a ``write`` for tens of milliseconds),
    nor on each other's writes. A crash can at worst leave a partial last line; loading
    drops such a line (and cuts it off the file) and re-does that item, like the items
    whose lines were still queued. A corrupt line anywhere else is an error.
    :meth:`close` writes what is queued and fsyncs; a failed write is raised by the
    next :meth:`append` or by :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # None: close
        self._writer: threading.Thread | None = None
        self._closing = False
        self._error: OSError | None = None
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # the mode of every output, whatever the umask
            os.fchmod(self._fd, OUTPUT_MODE)
        except PermissionError:  # another user's file that we may write to: keep its mode
            pass

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise InputError(self.path, f"cannot read checkpoint: {exc}") from None
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("checkpoint %s: dropping a partial last line (%d bytes) left by a "
                        "crash; that item will be redone", self.path, len(data) - end)
            os.truncate(self.path, end)
        for line_no, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(self.path, f"line {line_no}: malformed JSON: {exc}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise InputError(self.path, f"line {line_no}: expected an object with an "
                                 "'id'", record=line_no, field="id")
            self.records[rec["id"]] = rec  # a later line (a retried failure) wins

    def append(self, record: dict[str, Any]) -> None:
        """Record ``record`` and queue its line for the writer thread (no disk I/O here)."""
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            if self._error is not None:
                raise self._write_failed()
            if self._fd < 0 or self._closing:
                raise ValueError(f"checkpoint {self.path} is closed")
            self.records[record["id"]] = record
            self._queue.put(line)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, daemon=True,
                                                name=f"checkpoint-{self.path.name}")
                self._writer.start()

    def _write_queued(self) -> None:
        """The writer thread: write the queued lines (all that are queued, in one
        ``write``) until :meth:`close` queues None; a failed write is kept for
        :meth:`append`/:meth:`close` to raise."""
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closing = batch[-1] is None  # close() queues None after the last line
            try:
                view = memoryview(b"".join(line for line in batch if line is not None))
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                with self._lock:
                    self._error = exc
                return
            if closing:
                return

    def close(self) -> None:
        """Write the queued lines, fsync and close (idempotent)."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None and not self._closing:
                self._queue.put(None)
            self._closing = True
        if writer is not None:
            writer.join()
        with self._lock:
            if self._fd >= 0:
                try:
                    if self._error is None:
                        os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = -1
            if self._error is not None:
                error, self._error = self._write_failed(), None
                raise error

    def _write_failed(self) -> OSError:
        assert self._error is not None
        return OSError(self._error.errno, f"checkpoint {self.path}: write failed: "
                       f"{self._error.strerror}")

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Progress:
    """Where a running stage stands (for a progress line in the task log)."""

    ok: int
    attempted: int
    inflight: int
    resumed: int
    target: int | None
    elapsed_s: float

    def line(self, usage: dict[str, Any] | None = None) -> str:
        """``37/100 done (40 attempted), 1.2/s, ETA 52 s, 812,000 tokens, $4.10``
        (tokens: input, cached input and output; with cached input, the share read from
        the cache follows: ``, 71% cached``)."""
        new = self.attempted - self.resumed
        rate = new / self.elapsed_s if self.elapsed_s > 0 else 0.0
        goal = self.target
        text = f"{self.ok}/{goal} done" if goal is not None else f"{self.ok} done"
        text += f" ({self.attempted} attempted, {self.inflight} in flight), {rate:.2f}/s"
        if goal is not None and rate > 0 and self.ok < goal:
            ok_rate = max(self.ok - self.resumed, 1) / self.elapsed_s
            text += f", ETA {(goal - self.ok) / ok_rate:.0f} s"
        if usage:
            tokens = sum(int(usage.get(k, 0)) for k in ("input_tokens", "output_tokens",
                                                        "cache_read_tokens",
                                                        "cache_write_tokens"))
            text += f", {tokens:,} tokens, ${float(usage.get('cost_usd', 0.0)):.2f}"
            if usage.get("cache_read_tokens"):
                text += f", {float(usage.get('cache_read_share', 0.0)):.0%} cached"
        return text


def progress_logger(client: Any, stage: str, label: str,
                    logger: logging.Logger | None = None) -> Callable[[Progress], None]:
    """A ``progress`` callback that logs ``<label>: <Progress.line>`` with the stage's
    tokens and estimated cost so far (``client.usage_summary(stage)``)."""
    out = logger or log

    def report(p: Progress) -> None:
        try:
            usage = client.usage_summary(stage)
        except Exception:  # noqa: BLE001 - a progress line must never fail the stage
            usage = None
        out.info("%s: %s", label, p.line(usage))

    return report


def carry_over(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new``, the record of a redone item, with what its earlier record ``old`` cost
    added to its ``usage`` and ``runs`` (how many times the item ran) counted up: a
    stage's usage, summed over its records, so counts every try."""
    out = {**new, "runs": int(old.get("runs", 1)) + int(new.get("runs", 1))}
    if old.get("usage") or new.get("usage"):
        out["usage"] = add_item_usage(old.get("usage"), new.get("usage"))
    return out


@dataclass
class RunReport:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    resumed: int = 0  # records found in the checkpoint at start


def run_items(
    items: Iterable[WorkItem],
    work: Callable[[WorkItem], dict[str, Any]],
    checkpoint: Checkpoint,
    *,
    concurrency: int,
    is_success: Callable[[dict[str, Any]], bool],
    target: int | None = None,
    max_attempts: int | None = None,
    redo: Callable[[dict[str, Any]], bool] = lambda rec: False,
    progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 30.0,
    total: int | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> RunReport:
    """Run ``work`` on ``items`` not yet in ``checkpoint`` (or whose record ``redo``
    accepts), at most ``concurrency`` at a time.

    ``target``: stop once this many records (old and new) are successes; ``max_attempts``:
    stop once this many records exist in all. ``work`` must return a record with the
    item's ``id``; exceptions it raises (configuration errors) stop the run after the
    in-flight items' results are saved, and propagate. A redone item's new record
    carries its old record's usage (:func:`carry_over`).

    ``concurrency`` worker threads each take the next item, run it and save its record,
    with no hand-off through the calling thread (which only waits): one thread switch
    less per item. A worker stops when no item may start (target or bound reached,
    items exhausted, an error); that never strands work, because the successes still
    needed only grow when an item fails, and its worker is then still running.

    ``stop_when``: checked before each item starts (under the runner's lock, so keep it
    cheap); true stops the run once the items in flight are saved (e.g. pools full, or a
    budget spent).

    ``progress`` is called from the waiting thread every ``progress_every_s`` seconds
    and once at the end (a steady progress line in the task log); ``total`` is what
    "done" counts towards when there is no ``target`` (e.g. items to judge).
    """
    done = {rid for rid, rec in checkpoint.records.items() if not redo(rec)}
    report = RunReport(resumed=len(done))
    source: Iterator[WorkItem] = (it for it in items if it.id not in done)
    lock = threading.Lock()
    state = {"ok": sum(1 for rid in done if is_success(checkpoint.records[rid])),
             "attempted": len(done), "inflight": 0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def take() -> WorkItem | None:
        with lock:
            busy = state["inflight"]
            if (errors or stop.is_set() or (stop_when is not None and stop_when())
                    or (target is not None and state["ok"] + busy >= target)
                    or (max_attempts is not None and state["attempted"] + busy >= max_attempts)):
                return None
            item = next(source, None)
            if item is not None:
                state["inflight"] += 1
                report.submitted += 1
            return item

    def worker() -> None:
        while True:
            try:
                item = take()
            except BaseException as exc:  # noqa: BLE001 -- the items iterator failed
                with lock:
                    errors.append(exc)
                return
            if item is None:
                return
            try:
                rec = work(item)
                if rec.get("id") != item.id:
                    raise AssertionError(f"work returned id {rec.get('id')!r} for {item.id}")
                old = checkpoint.records.get(item.id)  # a recorded failure, redone
                if old is not None:
                    rec = carry_over(old, rec)
                checkpoint.append(rec)
                success = is_success(rec)
            except BaseException as exc:  # noqa: BLE001 -- re-raised by the caller
                with lock:
                    state["inflight"] -= 1
                    errors.append(exc)
                return
            with lock:
                state["inflight"] -= 1
                state["attempted"] += 1
                if success:
                    state["ok"] += 1
                    report.succeeded += 1
                else:
                    report.failed += 1

    started: list[threading.Thread] = []
    t0 = time.monotonic()

    def tell() -> None:
        if progress is None:
            return
        with lock:
            snap = Progress(ok=state["ok"], attempted=state["attempted"],
                            inflight=state["inflight"], resumed=report.resumed,
                            target=target if target is not None else total,
                            elapsed_s=time.monotonic() - t0)
        progress(snap)

    try:
        for i in range(concurrency):
            thread = threading.Thread(target=worker, name=f"llm_{i}", daemon=True)
            thread.start()
            started.append(thread)
        next_tell = time.monotonic() + progress_every_s
        for thread in started:
            while progress is not None and thread.is_alive():
                thread.join(timeout=max(0.05, min(1.0, next_tell - time.monotonic())))
                if time.monotonic() >= next_tell:
                    tell()
                    next_tell += progress_every_s
            thread.join()
        tell()
    except BaseException:  # e.g. KeyboardInterrupt: start nothing new, save the in-flight
        stop.set()
        for thread in started:
            thread.join()
        raise
    if errors:
        raise errors[0]
    return report
