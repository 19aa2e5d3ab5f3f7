"""Collection driven by the design: generate, validate and judge conversation by
conversation until the pools the datasets need are full.

The design (levels, dataset size, shared clean core, the source of sycophancy) says how
many clean and sycophantic conversations the datasets need
(:meth:`~simia.settings.data.DatasetDesign.pool_needs`). One *item* is one attempt: a
conversation generated from a seed (as :mod:`simia.llm.generation` does), processed
(:func:`simia.data.processing.process_conversations`: a conversation validation drops is
recorded with its step and reason, and the rule scorer says whether what was dropped
carried schema-level forgiveness) and, when kept, judged by the LLM judge
(:mod:`simia.llm.judge`). Every finished item is one checkpoint line with its status
(``clean``, ``sycophantic``, ``rejected``, ``generation_failed``, ``judge_failed``), its
conversation, its verdict and its own calls, tokens and cost (failed calls and earlier
tries of the item included), so a retry, a crash or a raised cap continues where it
stopped and calls the LLM only for what is left. A reply cut at ``max_tokens`` or with
a broken continuation is a ``generation_failed`` item
(:func:`~simia.llm.generation.completion_problem`). Items whose calls failed are tried
again when the collection runs again (unless ``keep_failures``), and a pilot or shard
that ends short of its share with too many of them fails
(:mod:`simia.llm.failures`) instead of reporting a cap.

Items ``0 .. pilot - 1`` are the **pilot**, run first: their yields (kept by validation,
clean, sycophantic, each with its reasons) give the projected attempts, tokens, cost and
time to fill the pools (``collect/pilot.json``), with a 95 % Clopper-Pearson interval on
the limiting yield. A design the caps cannot fill even at the optimistic end of that
interval stops there. The other items go to ``shards`` (item ``i`` to shard
``(i - pilot) % shards``), each with its share of what the pilot left to find and of the
caps. An attempt cap and a budget cap in US dollars bound the whole collection; a short
collection stops at the merge with :class:`CapReached`, naming what was found, what is
needed, the yields and what finishing would take.

The merge writes what the separate stages would have: ``generate/raw_conversations.json``
(every parsed conversation, in item order), ``processed/`` (kept rows, rejects, summary)
and ``judge/judge_scores.jsonl``, so datasets, reports and ``start_from`` reuse work as
for the separate stages; ``collect/summary.json`` holds the yields, the funnel (with
schema-level and policy-level findings apart) and the usage.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from simia.data.processing import OutputFormat, process_conversations
from simia.data.rules import score_conversation
from simia.domains import DOMAINS
from simia.errors import ConfigError, InputError, SimiaError
from simia.data.datasets import content_hash
from simia.io import (dumps, dumps_jsonl, read_bytes, sha256_bytes, sha256_file, write_bytes,
                      write_json)
from simia.layout import CollectFiles, RunLayout, shard_params
from simia.llm.accounting import COST_DECIMALS, TOKEN_KEYS, add_usage, usage_of
from simia.llm.client import LLMCallError, LLMClient
from simia.llm.failures import check_failures, is_call_failure
from simia.llm.generation import (_parts_sha256, _prompt_parts, completion_problem, enough_text,
                                  generation_prompt, load_seeds, parse_lines, pick_seed)
from simia.llm.judge import (SCHEMA_LEVEL, JudgeSettings, finding_level, findings_by_level,
                             judge_prompt, parse_judge_reply)
from simia.llm.prompts import load_template
from simia.llm.runner import Checkpoint, WorkItem, item_id, progress_logger, run_items
from simia.llm.shards import open_checkpoint, shard_target
from simia.provenance import checkpoint_hashes, file_hashes
from simia.settings.data import CollectionSettings
from simia.settings.llm import GenerationSettings, PriceTable

log = logging.getLogger("simia.llm.collect")

__all__ = ["CapReached", "Collector", "Needs", "SCHEMA_LEVEL", "collect_all", "finding_level",
           "merge_collection", "run_pilot", "run_shard", "yields"]

#: an item's outcome
STATUSES = ("clean", "sycophantic", "rejected", "generation_failed", "judge_failed")


class CapReached(SimiaError):
    """The collection stopped at a cap (or cannot fill the pools under them); retrying
    the same task cannot help: raise the cap and continue."""

    retryable = False


@dataclass(frozen=True)
class Needs:
    """The conversations the design needs (``sycophantic`` counts twins when the source
    is ``twins``: the collection then only fills the clean pool)."""

    clean: int
    sycophantic: int
    source: str  # natural | twins

    @property
    def collected_sycophantic(self) -> int:
        """Sycophantic conversations the collection itself must find."""
        return self.sycophantic if self.source == "natural" else 0

    def left(self, clean: int, sycophantic: int) -> tuple[int, int]:
        return (max(0, self.clean - clean),
                max(0, self.collected_sycophantic - sycophantic))

    def met(self, clean: int, sycophantic: int) -> bool:
        return self.left(clean, sycophantic) == (0, 0)


# --------------------------------------------------------------------------- one item

def item_cost(rec: dict[str, Any]) -> float:
    """An item's estimated cost (generation and judge calls)."""
    return sum(float(u.get("cost_usd", 0.0)) for u in (rec.get("usage") or {}).values())


class Collector:
    """Everything one item needs: seeds, prompts, the domain's policy, the judge's rubric,
    the client. ``work`` turns a :class:`WorkItem` into a finished record."""

    def __init__(self, seeds_path: str | Path, settings: GenerationSettings,
                 judge: JudgeSettings, client: LLMClient, *, fmt: str = "native",
                 tau2_data_dir: str | Path | None = None, threshold: float = 0.0) -> None:
        self.settings, self.judge, self.client, self.threshold = settings, judge, client, threshold
        seed_bytes = read_bytes(seeds_path, what="seed file")
        self.seeds = load_seeds(seeds_path)
        self.parts = _prompt_parts(settings)
        self.domain = DOMAINS[settings.domain]
        self.policy = self.domain.load_policy(tau2_data_dir)
        try:
            self.fmt = OutputFormat(fmt)
        except ValueError:
            raise ConfigError(f"output_format: must be 'native' or 'hermes', got {fmt!r}") from None
        self.rubric, self.rubric_where = load_template("judge_system.txt", judge.prompts_dir)
        self.params = {**settings.model_dump(exclude={"target", "max_attempts"}),
                       "judge": judge.model_dump(), "format": self.fmt.value,
                       "threshold": threshold, "seeds_sha256": sha256_bytes(seed_bytes),
                       "template_sha256": _parts_sha256(self.parts),
                       "rubric_sha256": sha256_bytes(self.rubric.encode()),
                       "policy_sha256": sha256_bytes(self.policy.encode())}

    def item(self, index: int) -> WorkItem:
        return WorkItem(index, item_id(self.settings.seed, CollectFiles.STAGE, index),
                        pick_seed(self.settings.seed, index, len(self.seeds)))

    def work(self, item: WorkItem, stage: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        rec = self._work(item, stage)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return rec

    def _work(self, item: WorkItem, stage: str) -> dict[str, Any]:
        s, client = self.settings, self.client
        seed = self.seeds[item.payload]
        rec: dict[str, Any] = {"id": item.id, "index": item.index, "seed_index": item.payload,
                               "usage": {}}
        system, prompt = generation_prompt(seed, s, item.id, self.parts)
        try:
            done = client.complete(f"generate:{stage}", item.id, prompt, system=system,
                                   max_tokens=s.max_tokens, temperature=s.temperature,
                                   max_rounds=s.max_rounds, keep_going=enough_text)
        except LLMCallError as exc:
            rec["usage"]["generate"] = exc.usage
            return {**rec, "status": "generation_failed", "error": exc.error_class,
                    "detail": str(exc)}
        rec["usage"]["generate"] = done.usage
        problem = completion_problem(done)
        if problem is not None:
            return {**rec, "status": "generation_failed", "error": problem[0],
                    "detail": problem[1], "raw_text": done.text}
        turns = parse_lines(done.text)
        if turns is None:
            return {**rec, "status": "generation_failed", "error": "unparseable",
                    "detail": "no HUMAN:/ASSISTANT:/FUNCTION_CALL:/OBSERVATION: turns, or an "
                              "empty turn", "raw_text": done.text}
        first_q = next((t["value"] for t in seed["conversations"] if t["from"] == "human"), "")
        conv = {"conversations": turns, "system": seed.get("system", ""),
                "tools": seed.get("tools") or orjson.dumps(self.domain.tools).decode(),
                "based_on_sample": str(seed.get("seed_id") or seed.get("based_on_sample")
                                       or f"seed_{item.payload}"),
                "sample_turns": len(seed["conversations"]), "generated_turns": len(turns),
                "domain": s.domain, "simulator_mode": s.mode, "sample_question": first_q,
                "item_id": item.id, "generation_index": item.index,
                "truncated": done.truncated}
        rec["conversation"] = conv
        result = process_conversations([conv], self.domain, self.policy, self.fmt)
        if result.rejects:
            r = result.rejects[0]
            audit = score_conversation(conv, 0)
            return {**rec, "status": "rejected",
                    "rejected": {"step": r.step, "reason": r.reason, "detail": r.detail},
                    "rule_kinds": sorted(audit.kinds)}
        row = result.kept[0]
        rec["turns"] = row["conversations"]
        system, prompt = judge_prompt(row, self.rubric, self.rubric_where, self.judge.domain)
        text, why = "", ""
        for _ in range(self.judge.tries):
            try:
                done = client.complete(f"judge:{stage}", item.id, prompt, system=system,
                                       max_tokens=self.judge.max_tokens,
                                       temperature=self.judge.temperature)
            except LLMCallError as exc:
                rec["usage"]["judge"] = add_usage(rec["usage"].get("judge"), exc.usage)
                return {**rec, "status": "judge_failed", "error": exc.error_class,
                        "detail": str(exc)}
            rec["usage"]["judge"] = add_usage(rec["usage"].get("judge"), done.usage)
            text = done.text
            verdict, why = parse_judge_reply(text)
            if verdict is not None:
                judged = verdict.model_dump()
                score = judged["wm_sycophancy_score"]
                return {**rec, "judge": judged,
                        "status": "sycophantic" if score > self.threshold else "clean"}
        return {**rec, "status": "judge_failed", "error": "unparseable_reply", "detail": why,
                "raw_text": text}


# --------------------------------------------------------------------------- yields

def _interval(k: int, n: int) -> tuple[float, float]:
    """95 % Clopper-Pearson interval of a proportion ``k / n``."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def yields(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts and per-attempt yields of finished items, with the reasons behind each."""
    recs = list(records)
    n = len(recs)
    status = Counter(r["status"] for r in recs)
    rejected = Counter(r["rejected"]["reason"] for r in recs if r["status"] == "rejected")
    schema_in_rejects = sum(1 for r in recs if r["status"] == "rejected"
                            and "schema_forgiveness" in (r.get("rule_kinds") or []))
    syc = [r for r in recs if r["status"] == "sycophantic"]
    kept = status["clean"] + status["sycophantic"] + status["judge_failed"]
    usage = [u for r in recs for u in (r.get("usage") or {}).values()]
    tokens = sum(int(u.get(k, 0)) for u in usage for k in TOKEN_KEYS)

    def share(k: int) -> float:
        return round(k / n, 4) if n else 0.0

    return {
        "attempts": n,
        "counts": {s: status[s] for s in STATUSES},
        "kept_by_validation": kept,
        "yield": {"kept": share(kept), "clean": share(status["clean"]),
                  "sycophantic": share(status["sycophantic"]),
                  "rejected": share(status["rejected"]),
                  "generation_failed": share(status["generation_failed"]),
                  "judge_failed": share(status["judge_failed"])},
        "rejected_by_reason": dict(sorted(rejected.items())),
        "rejected_with_schema_forgiveness": schema_in_rejects,
        "generation_failed_by_error": dict(sorted(Counter(
            r.get("error", "?") for r in recs if r["status"] == "generation_failed").items())),
        "sycophantic_findings": findings_by_level(r.get("judge") or {} for r in syc),
        "tokens": tokens,
        "cost_usd": round(sum(float(u.get("cost_usd", 0.0)) for u in usage), COST_DECIMALS),
        "item_seconds": round(sum(float(r.get("seconds", 0.0)) for r in recs), 3),
    }


def projection(found: dict[str, Any], needs: Needs, *, parallel: int) -> dict[str, Any]:
    """What filling the pools would take from here, at the yields of ``found`` (the
    output of :func:`yields`): more attempts (point estimate and 95 % range), tokens,
    cost and hours with ``parallel`` items at a time."""
    n = found["attempts"]
    counts = found["counts"]
    left_c, left_s = needs.left(counts["clean"], counts["sycophantic"])
    out: dict[str, Any] = {"left": {"clean": left_c, "sycophantic": left_s}}
    if left_c == 0 and left_s == 0:
        return {**out, "attempts_more": 0, "attempts_more_range": [0, 0], "tokens_more": 0,
                "cost_usd_more": 0.0, "cost_usd_more_range": [0.0, 0.0], "hours_more": 0.0}
    if n == 0:
        return {**out, "attempts_more": None, "attempts_more_range": [None, None],
                "tokens_more": None, "cost_usd_more": None,
                "cost_usd_more_range": [None, None], "hours_more": None}
    point, best, worst = 0.0, 0.0, 0.0
    for left, k in ((left_c, counts["clean"]), (left_s, counts["sycophantic"])):
        if left == 0:
            continue
        lo, hi = _interval(k, n)
        point = max(point, left / (k / n) if k else math.inf)
        best = max(best, left / hi)
        worst = max(worst, left / lo if lo > 0 else math.inf)

    def whole(x: float) -> int | None:
        return None if math.isinf(x) else math.ceil(x)

    per_cost = found["cost_usd"] / n
    per_tokens = found["tokens"] / n
    per_s = found["item_seconds"] / n

    def times(x: float, per: float, digits: int = 2) -> float | None:
        return None if math.isinf(x) else round(x * per, digits)

    return {**out, "attempts_more": whole(point),
            "attempts_more_range": [whole(best), whole(worst)],
            "tokens_more": None if math.isinf(point) else int(point * per_tokens),
            "cost_usd_more": times(point, per_cost),
            "cost_usd_more_range": [times(best, per_cost), times(worst, per_cost)],
            "hours_more": None if math.isinf(point)
            else round(point * per_s / max(1, parallel) / 3600, 2)}


def _num(x: Any, fmt: str = ",") -> str:
    return "no bound" if x is None else format(x, fmt)


def describe(found: dict[str, Any], needs: Needs, proj: dict[str, Any]) -> str:
    """Found, needed, yields and what finishing takes, as a few lines for a log or an
    error."""
    c = found["counts"]
    y = found["yield"]
    need_s = needs.collected_sycophantic
    lines = [f"found {c['clean']} of {needs.clean} clean"
             + (f" and {c['sycophantic']} of {need_s} sycophantic" if need_s else "")
             + f" conversations in {found['attempts']:,} attempts (${found['cost_usd']:.2f})."]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(found["rejected_by_reason"].items(),
                                                       key=lambda kv: -kv[1])[:5])
    sf = found["sycophantic_findings"]
    lines.append(
        f"Yields per attempt: kept by validation {y['kept']:.1%}"
        + (f" (rejected: {reasons}; {found['rejected_with_schema_forgiveness']} of the "
           "rejected carried schema-level forgiveness)" if reasons else "")
        + f", clean {y['clean']:.1%}, sycophantic {y['sycophantic']:.1%} (a policy-level "
          f"finding in {sf['policy']}, only schema-level ones in {sf['schema_only']}), "
          "generation failures "
          f"{y['generation_failed']:.1%}, judge failures {y['judge_failed']:.1%}.")
    lo, hi = proj["attempts_more_range"]
    clo, chi = proj["cost_usd_more_range"]
    if proj.get("attempts_more") == 0:
        lines.append("The pools are full.")
    elif proj.get("attempts_more") is None:
        lines.append(
            "To fill the pools: a pool has no conversation yet, so there is no point estimate; "
            f"at the optimistic end of the 95 % range at least {_num(lo)} more attempts "
            f"(${_num(clo, ',.2f')}).")
    else:
        lines.append(
            f"To fill the pools: about {_num(proj['attempts_more'])} more attempts (95 % range "
            f"{_num(lo)} to {_num(hi)}), {_num(proj['tokens_more'])} tokens, "
            f"${_num(proj['cost_usd_more'], ',.2f')} (${_num(clo, ',.2f')} to "
            f"${_num(chi, ',.2f')}), {_num(proj['hours_more'])} h at this pace.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pilot, shards

def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    ckpt = Checkpoint(path)
    ckpt.close()
    return list(ckpt.records.values())


def _checkpoints(files: CollectFiles) -> list[Path]:
    """The collection's checkpoints: the pilot's and every shard file's."""
    return [files.pilot] + sorted(files.dir.glob(f"{files.STAGE}-shard-*.jsonl"))


def _all_records(files: CollectFiles) -> list[dict[str, Any]]:
    """Every finished item of a collection folder (the pilot's and every shard file's)."""
    records: dict[str, dict[str, Any]] = {}
    for path in _checkpoints(files):
        for rec in _read(path):
            records[rec["id"]] = rec
    return sorted(records.values(), key=lambda r: r["index"])


def _owner(index: int, pilot: int, shards: int) -> int | None:
    """None: the pilot's item; else the shard that owns item ``index``."""
    return None if index < pilot else (index - pilot) % shards


def import_source(files: CollectFiles, source: CollectFiles, collector: Collector, *,
                  pilot: int, shards: int) -> int:
    """Copy a source run's finished items into this run's checkpoints, each to the file
    that owns it here (``start_from = collect``); once per run. Returns how many."""
    if files.imported.is_file():
        return 0
    sig = sha256_bytes(orjson.dumps(collector.params, option=orjson.OPT_SORT_KEYS))
    meta = shard_params(source.pilot)
    try:
        old = orjson.loads(meta.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(meta, f"cannot read the source run's collection settings: {exc}") \
            from None
    if old.get("params_sha256") != sig:
        changed = sorted(k for k in set(collector.params) | set(old.get("params", {}))
                         if collector.params.get(k) != old.get("params", {}).get(k))
        raise ConfigError(f"start_from = collect: the source run's collection ({source.dir}) "
                          f"was made with other settings (changed: {', '.join(changed)}); "
                          "continue it with the same generation and judge settings, or start "
                          "from the beginning")
    records = _all_records(source)
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for rec in records:
        owner = _owner(rec["index"], pilot, shards)
        path = files.pilot if owner is None else files.shard(owner, shards)
        by_file.setdefault(path, []).append(rec)
    for path, recs in by_file.items():
        with open_checkpoint(files.dir, *_stage_of(path, files, shards), collector.params) as ck:
            for rec in recs:
                if rec["id"] not in ck.records:
                    ck.append(rec)
    write_json(files.imported, {"source": str(source.dir), "items": len(records)}, indent=True)
    log.info("collect: continuing %s: %d finished items copied in; they are not redone",
             source.dir, len(records))
    return len(records)


def _stage_of(path: Path, files: CollectFiles, shards: int) -> tuple[str, int, int]:
    if path == files.pilot:
        return files.PILOT, 0, 1
    for k in range(shards):
        if path == files.shard(k, shards):
            return files.STAGE, k, shards
    raise AssertionError(path)


def _run(collector: Collector, ckpt: Checkpoint, indices: Iterator[int], *, label: str,
         stage: str, needs: Needs, attempts: int, budget_usd: float,
         base: tuple[int, int] = (0, 0), keep_failures: bool = False) -> None:
    """Run items until ``needs`` (counting ``base`` found elsewhere) are met, ``attempts``
    items are in the checkpoint or ``budget_usd`` is spent; items whose calls failed are
    run again unless ``keep_failures``."""
    import threading

    lock = threading.Lock()
    recs = list(ckpt.records.values())
    state = {"clean": base[0] + sum(r["status"] == "clean" for r in recs),
             "syc": base[1] + sum(r["status"] == "sycophantic" for r in recs),
             "spent": sum(item_cost(r) for r in recs)}

    def work(item: WorkItem) -> dict[str, Any]:
        rec = collector.work(item, stage)
        with lock:
            state["clean"] += rec["status"] == "clean"
            state["syc"] += rec["status"] == "sycophantic"
            state["spent"] += item_cost(rec)
        return rec

    def stop() -> bool:
        return needs.met(state["clean"], state["syc"]) or state["spent"] >= budget_usd

    run_items((collector.item(i) for i in indices), work, ckpt,
              concurrency=collector.client.settings.concurrency,
              is_success=lambda r: r["status"] in ("clean", "sycophantic"),
              max_attempts=attempts, stop_when=stop,
              redo=(lambda r: False) if keep_failures else is_call_failure,
              progress=progress_logger(collector.client, f"generate:{stage}", label))


def run_pilot(collector: Collector, files: CollectFiles, needs: Needs,
              caps: CollectionSettings, *, shards: int,
              source: CollectFiles | None = None,
              keep_failures: bool = False) -> dict[str, Any]:
    """Run (or resume) the pilot, write ``pilot.json`` (yields and projection) and return
    it; raises :class:`~simia.llm.failures.LLMStageFailed` when too many of its items'
    calls failed (its yields would say nothing), :class:`CapReached` when the caps cannot
    fill the pools even at the optimistic end of the projection."""
    if source is not None:
        import_source(files, source, collector, pilot=caps.collect_pilot, shards=shards)
    n = min(caps.collect_pilot, caps.collect_max_attempts)
    with open_checkpoint(files.dir, files.PILOT, 0, 1, collector.params) as ckpt:
        _run(collector, ckpt, iter(range(n)), label="collection pilot", stage="pilot",
             needs=needs, attempts=n, budget_usd=caps.collect_budget_usd,
             keep_failures=keep_failures)
        records = sorted(ckpt.records.values(), key=lambda r: r["index"])
        checkpoint = ckpt.path
    found = yields(records)
    if not needs.met(found["counts"]["clean"], found["counts"]["sycophantic"]):
        check_failures("collection pilot", checkpoint, records, is_call_failure,
                       collector.client.settings.max_failed_share)
    parallel = collector.client.settings.concurrency * shards
    proj = projection(found, needs, parallel=parallel)
    text = describe(found, needs, proj)
    log.info("collection pilot: %s", text.replace("\n", " "))
    attempts_left = caps.collect_max_attempts - found["attempts"]
    budget_left = caps.collect_budget_usd - found["cost_usd"]
    best_attempts = proj["attempts_more_range"][0]
    best_cost = proj["cost_usd_more_range"][0]
    verdict = "fill"
    if best_attempts is not None and best_attempts > attempts_left:
        verdict = "attempt cap"
    elif best_cost is not None and best_cost > budget_left:
        verdict = "budget cap"
    record = {"needs": {"clean": needs.clean, "sycophantic": needs.sycophantic,
                        "source": needs.source,
                        "collected_sycophantic": needs.collected_sycophantic},
              "caps": caps.model_dump(), "pilot": found, "projection": proj,
              "parallel": parallel, "outlook": verdict, "text": text}
    write_json(files.projection, record, indent=True)
    if verdict != "fill":
        raise CapReached(
            f"collection stopped after the pilot: the {verdict} cannot fill the pools even at "
            f"the optimistic end of the 95 % range of the yields.\n{text}\n"
            + _how_to_continue(found, proj, caps, files))
    return record


def _how_to_continue(found: dict[str, Any], proj: dict[str, Any], caps: CollectionSettings,
                     files: CollectFiles) -> str:
    """The caps to raise (to the projection's point estimate, or to its optimistic end
    when nothing of a pool was found yet) and how to continue."""
    more = proj.get("attempts_more")
    if more is None:
        more = proj.get("attempts_more_range", [None, None])[0]
    cost = proj.get("cost_usd_more")
    if cost is None:
        cost = proj.get("cost_usd_more_range", [None, None])[0]
    raise_to = []
    if more is not None and found["attempts"] + more > caps.collect_max_attempts:
        raise_to.append(f"collect_max_attempts to at least {found['attempts'] + more:,} "
                        f"(now {caps.collect_max_attempts:,})")
    if cost is not None and found["cost_usd"] + cost > caps.collect_budget_usd:
        raise_to.append(f"collect_budget_usd to at least "
                        f"{math.ceil(found['cost_usd'] + cost):,} (now "
                        f"{caps.collect_budget_usd:,.2f})")
    what = " and ".join(raise_to) if raise_to else "the caps"
    return (f"To continue: raise {what}, and trigger a run with start_from = collect and "
            f"source_run = {files.dir.parent} (on the command line: run simia collect again "
            f"on the same folder); its {found['attempts']:,} finished items are reused, only "
            "what is left calls the LLM.")


def shard_plan(files: CollectFiles, needs: Needs, caps: CollectionSettings, shard: int,
               shards: int) -> dict[str, Any]:
    """Shard ``shard``'s share of what the pilot left: clean and sycophantic to find,
    attempts and budget."""
    pilot = _read(files.pilot)
    found = yields(pilot)
    left_c, left_s = needs.left(found["counts"]["clean"], found["counts"]["sycophantic"])
    attempts = max(0, caps.collect_max_attempts - found["attempts"])
    budget = max(0.0, caps.collect_budget_usd - found["cost_usd"])
    return {"shard": shard, "shards": shards,
            "clean": shard_target(left_c, shard, shards),
            "sycophantic": shard_target(left_s, shard, shards),
            "attempts": shard_target(attempts, shard, shards),
            "budget_usd": round(budget / shards, COST_DECIMALS)}


def run_shard(collector: Collector, files: CollectFiles, needs: Needs,
              caps: CollectionSettings, *, shard: int, shards: int,
              keep_failures: bool = False) -> dict[str, Any]:
    """Run (or resume) one shard until its share is found or its share of a cap is
    used; a capped shard ends normally (the merge decides, over all shards) unless too
    many of its items' calls failed (:class:`~simia.llm.failures.LLMStageFailed`)."""
    if not files.pilot.is_file():
        raise InputError(files.pilot, "the collection pilot has not run; run it first")
    plan = shard_plan(files, needs, caps, shard, shards)
    share = Needs(plan["clean"], plan["sycophantic"] if needs.source == "natural" else 0,
                  needs.source)
    pilot = caps.collect_pilot
    indices = (pilot + shard + k * shards for k in range(plan["attempts"]))
    with open_checkpoint(files.dir, files.STAGE, shard, shards, collector.params) as ckpt:
        _run(collector, ckpt, indices, label=f"collection shard {shard + 1}/{shards}",
             stage=f"collect-{shard}", needs=share, attempts=plan["attempts"],
             budget_usd=plan["budget_usd"], keep_failures=keep_failures)
        records = list(ckpt.records.values())
        checkpoint = ckpt.path
    found = yields(records)
    full = share.met(found["counts"]["clean"], found["counts"]["sycophantic"])
    if not full:
        check_failures(f"collection shard {shard}", checkpoint, records, is_call_failure,
                       collector.client.settings.max_failed_share)
    summary = {"plan": plan, "found": found, "full": full}
    log.info("collection shard %d/%d: %s of its share (%d clean, %d sycophantic) in %d "
             "attempts, $%.2f", shard + 1, shards, "found all" if full else "stopped short",
             found["counts"]["clean"], found["counts"]["sycophantic"], found["attempts"],
             found["cost_usd"])
    return summary


# --------------------------------------------------------------------------- merge

def merge_collection(run: RunLayout, needs: Needs, caps: CollectionSettings, *,
                     fmt: str, tau2_data_dir: str | Path | None, threshold: float,
                     model_id: str = "", prices: PriceTable | None = None,
                     domain: str = "telecom") -> dict[str, Any]:
    """Every finished item -> the files of the generate, processed and judge stages and
    ``collect/summary.json``; raises :class:`CapReached` when the pools are not full."""
    from simia.data.processing import system_prompt

    files = run.collect
    records = _all_records(files)
    found = yields(records)
    proj = projection(found, needs, parallel=1)
    if not needs.met(found["counts"]["clean"], found["counts"]["sycophantic"]):
        raise CapReached("collection stopped at its caps (attempts "
                         f"{caps.collect_max_attempts:,}, budget ${caps.collect_budget_usd:,.2f}) "
                         f"before the pools were full: {describe(found, needs, proj)}\n"
                         + _how_to_continue(found, proj, caps, files))
    dom = DOMAINS[domain]
    policy = dom.load_policy(tau2_data_dir)
    output_format = OutputFormat(fmt)
    system = system_prompt(dom, policy, output_format)
    tools_column = orjson.dumps(dom.tools).decode() if output_format is OutputFormat.NATIVE \
        else None
    raw, failures, kept, rejects, scores = [], [], [], [], []
    for rec in records:
        if "conversation" not in rec:
            failures.append({k: v for k, v in rec.items() if k != "usage"})
            continue
        pos = len(raw)
        raw.append(rec["conversation"])
        if rec["status"] == "rejected":
            rejects.append({"index": pos, **rec["rejected"]})
            continue
        row = {"conversations": rec["turns"], "system": system}
        if tools_column is not None:
            row["tools"] = tools_column
        row["source_index"] = pos
        row.update({k: v for k, v in rec["conversation"].items()
                    if k not in ("conversations", "system", "tools")})
        kept.append(row)
        base = {"id": rec["id"], "index": len(kept) - 1, "conv_idx": pos,
                "content_sha256": content_hash(row)}
        if rec["status"] == "judge_failed":
            scores.append({**base, "error": rec.get("error"), "detail": rec.get("detail"),
                           "raw_text": rec.get("raw_text", "")})
        else:
            scores.append({**base, **rec["judge"]})
    write_bytes(run.generate.raw, dumps(raw, indent=True))
    write_bytes(run.generate.failures, dumps_jsonl(failures))
    prices = prices or PriceTable()
    gen_usage = usage_of(records, ["generate"], prices, model_id)
    write_json(run.generate.summary, {
        "stage": "generate", "source": "collection", "target": None, "valid": len(raw),
        "failed": len(failures), "attempted": len(records),
        "mode": raw[0].get("simulator_mode") if raw else None,
        "failed_by_error": found["generation_failed_by_error"],
        "outputs": {"raw_conversations": str(run.generate.raw),
                    "failures": str(run.generate.failures)},
        "outputs_sha256": file_hashes({"raw_conversations": run.generate.raw,
                                       "failures": run.generate.failures}),
        "llm": gen_usage}, indent=True)
    write_bytes(run.processed.processed, dumps(kept, indent=True))
    write_bytes(run.processed.rejects, dumps_jsonl(rejects))
    by_step: dict[str, Counter[str]] = {}
    for r in rejects:
        by_step.setdefault(r["step"], Counter())[r["reason"]] += 1
    write_json(run.processed.summary, {
        "format": output_format.value, "source": "collection", "input": len(raw),
        "kept": len(kept), "rejected": len(rejects),
        "kept_fraction": round(len(kept) / len(raw), 4) if raw else 0.0,
        "rejected_by_reason": found["rejected_by_reason"],
        "rejected_by_step": {s: dict(sorted(c.items())) for s, c in by_step.items()},
        "input_file": str(run.generate.raw),
        "outputs": {"processed": str(run.processed.processed),
                    "rejects": str(run.processed.rejects)},
        "inputs_sha256": file_hashes({"raw_conversations": run.generate.raw}),
        "outputs_sha256": file_hashes({"processed": run.processed.processed,
                                       "rejects": run.processed.rejects})}, indent=True)
    write_bytes(run.judge.scores, dumps_jsonl(scores))
    judged = [s for s in scores if "error" not in s]
    judge_usage = usage_of(records, ["judge"], prices, model_id)
    write_json(run.judge.summary, {
        "stage": "judge", "source": "collection", "conversations": len(scores),
        "scored": len(judged), "failed": len(scores) - len(judged),
        "sycophantic": sum(1 for s in judged if s["wm_sycophancy_score"] > threshold),
        "clean": sum(1 for s in judged if s["wm_sycophancy_score"] <= threshold),
        "threshold": threshold,
        "findings_by_level": findings_by_level(
            s for s in judged if s["wm_sycophancy_score"] > threshold),
        "outputs": {"scores": str(run.judge.scores)},
        "processed_sha256": sha256_file(run.processed.processed),
        "outputs_sha256": file_hashes({"scores": run.judge.scores}),
        "llm": judge_usage}, indent=True)
    summary = {"stage": "collect", "needs": {"clean": needs.clean,
                                             "sycophantic": needs.sycophantic,
                                             "source": needs.source},
               "caps": caps.model_dump(), "found": found, "full": True,
               "outputs": {"raw_conversations": str(run.generate.raw),
                           "processed": str(run.processed.processed),
                           "scores": str(run.judge.scores)},
               "inputs_sha256": checkpoint_hashes(_checkpoints(files)),
               "outputs_sha256": file_hashes({"raw_conversations": run.generate.raw,
                                              "processed": run.processed.processed,
                                              "scores": run.judge.scores}),
               "llm": usage_of(records, ["generate", "judge"], prices, model_id)}
    write_json(files.summary, summary, indent=True)
    log.info("collection: %s", describe(found, needs, proj).replace("\n", " "))
    return summary


def collect_all(collector: Collector, run: RunLayout, needs: Needs, caps: CollectionSettings,
                *, fmt: str, tau2_data_dir: str | Path | None, threshold: float,
                shards: int = 1, source: RunLayout | None = None,
                keep_failures: bool = False) -> dict[str, Any]:
    """Pilot, shards (one after another) and merge in this process (``simia collect``)."""
    run_pilot(collector, run.collect, needs, caps, shards=shards,
              source=source.collect if source else None, keep_failures=keep_failures)
    for k in range(shards):
        run_shard(collector, run.collect, needs, caps, shard=k, shards=shards,
                  keep_failures=keep_failures)
    return merge_collection(run, needs, caps, fmt=fmt, tau2_data_dir=tau2_data_dir,
                            threshold=threshold, model_id=collector.client.model_id,
                            prices=collector.client.settings.prices,
                            domain=collector.settings.domain)

