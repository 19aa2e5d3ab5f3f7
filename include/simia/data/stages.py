"""File-level stages: read inputs, run the pure logic, write outputs atomically, resume.

Each stage writes its outputs (each one atomically: temp file, then rename) and its
summary LAST, at the paths :mod:`simia.layout` names. The summary carries a signature
of the inputs (content hashes) and parameters; a re-run with the same signature finds
the summary and returns it without redoing any work, while a crash before the summary
simply re-runs the stage. These functions are what both the ``simia`` command line and
the Airflow tasks call.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simia import __version__
from simia.data.datasets import (BuiltDatasets, DatasetDesign, build_datasets, load_twins,
                                 parse_score_records)
from simia.data.processing import OutputFormat, process_conversations
from simia.data.records import load_processed, load_raw
from simia.data.rules import score_all
from simia.domains import DOMAINS
from simia.errors import ConfigError, InputError
from simia.io import (
    dumps,
    dumps_jsonl,
    read_bytes,
    read_json,
    read_jsonl,
    sha256_bytes,
    write_bytes,
    write_json,
    write_jsonl,
)
from simia.layout import DatasetFiles, ProcessedFiles, rule_scores_summary

log = logging.getLogger("simia")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a stage builds its data.

    A stage parses and builds hundreds of thousands of acyclic containers (parsed JSON,
    turn lists); the collector would walk all of them again and again, for nothing
    (reference counting frees them). It is re-enabled (if it was on) on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_inputs(inputs: dict[str, Path]) -> dict[str, bytes]:
    """Read every input once (clear errors for missing/empty/unreadable files)."""
    return {role: read_bytes(path, what=f"{role.replace('_', ' ')} file")
            for role, path in inputs.items()}


def _signature(stage: str, data: dict[str, bytes], params: dict[str, Any]) -> dict[str, Any]:
    hashes = {role: sha256_bytes(raw) for role, raw in data.items()}
    return {"stage": stage, "simia_version": __version__, "inputs_sha256": hashes,
            "params": params}


def _resume(summary_path: Path, signature: dict[str, Any], outputs: list[Path],
            force: bool) -> dict[str, Any] | None:
    """The previous run's summary (marked ``resumed``) when it has the same signature
    and every output is still there; else None (the stage runs)."""
    if force or not summary_path.is_file() or not all(p.is_file() for p in outputs):
        return None
    try:
        previous = read_json(summary_path)
    except InputError:
        return None
    if isinstance(previous, dict) and previous.get("signature") == signature:
        log.info("%s: outputs in %s are up to date (same inputs and parameters); skipping",
                 signature["stage"], summary_path.parent)
        return {**previous, "resumed": True}
    return None


def _domain(name: str):
    try:
        return DOMAINS[name]
    except KeyError:
        raise ConfigError(f"domain: unknown domain {name!r}; known: {sorted(DOMAINS)}") from None


def process_stage(
    raw_path: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "native",
    tau2_data_dir: str | Path | None = None,
    domain: str = "telecom",
    skip_invalid_records: bool = False,
    extract_embedded_calls: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Raw conversations -> the kept rows, the rejects and the summary of
    :class:`~simia.layout.ProcessedFiles` in ``out_dir``."""
    raw_path, files = Path(raw_path), ProcessedFiles(out_dir)
    try:
        output_format = OutputFormat(fmt)
    except ValueError:
        raise ConfigError(f"format: must be 'native' or 'hermes', got {fmt!r}") from None
    dom = _domain(domain)
    policy = dom.load_policy(tau2_data_dir)
    params = {"format": output_format.value, "domain": dom.name,
              "skip_invalid_records": skip_invalid_records,
              "extract_embedded_calls": extract_embedded_calls,
              "policy_sha256": sha256_bytes(policy.encode())}
    data = _read_inputs({"raw_conversations": raw_path})
    signature = _signature("process", data, params)
    done = _resume(files.summary, signature, [files.processed, files.rejects], force)
    if done is not None:
        return done

    t0 = time.perf_counter()
    with _gc_paused():
        raw, invalid = load_raw(raw_path, skip_invalid=skip_invalid_records,
                                data=data.pop("raw_conversations"))
        result = process_conversations(raw, dom, policy, output_format, invalid,
                                       extract_embedded_calls)
        del raw
        write_bytes(files.processed, dumps(result.kept, indent=True))
    write_bytes(files.rejects, dumps_jsonl(r.as_dict() for r in result.rejects))
    summary = {**result.summary(), "input_file": str(raw_path),
               "outputs": {"processed": str(files.processed), "rejects": str(files.rejects)},
               "seconds": round(time.perf_counter() - t0, 3), "signature": signature}
    write_json(files.summary, summary, indent=True)
    log.info("process: kept %d of %d conversations (%s); rejected by reason: %s",
             result.summary()["kept"], result.total, output_format.value,
             summary["rejected_by_reason"])
    return summary


def score_rules_stage(input_path: str | Path, out_path: str | Path, *,
                      force: bool = False) -> dict[str, Any]:
    """Rule scores, one JSON line per conversation (``index`` = position in the input;
    ``source_index`` too when the input is a processed file)."""
    input_path, out_path = Path(input_path), Path(out_path)
    summary_path = rule_scores_summary(out_path)
    data = _read_inputs({"conversations": input_path})
    signature = _signature("score_rules", data, {})
    done = _resume(summary_path, signature, [out_path], force)
    if done is not None:
        return done
    t0 = time.perf_counter()
    with _gc_paused():
        records, invalid = load_raw(input_path, skip_invalid=True,
                                    data=data.pop("conversations"))
    if invalid:
        first = invalid[0]
        raise InputError(input_path, f"{len(invalid)} invalid record(s); first: field "
                         f"'{first.field}': {first.message}", record=first.index,
                         field=first.field)
    processed = any(isinstance(r, dict) and "source_index" in r for r in records)
    if processed and not any(t.get("from") == "function_call"
                             for r in records for t in r["conversations"]):
        raise InputError(input_path, "no function_call turns: this looks like a hermes-format "
                         "processed file, whose tool calls are inside gpt text; score the raw "
                         "conversations file instead")
    with _gc_paused():
        scores = score_all(records)
    rows = []
    for s in scores:
        row = s.as_dict()
        if processed:
            row["source_index"] = records[s.index]["source_index"]
        rows.append(row)
    write_jsonl(out_path, rows)
    kinds = Counter(k for s in scores for k in s.kinds)
    flagged = sum(1 for s in scores if s.score > 0)
    summary = {"conversations": len(scores), "flagged": flagged,
               "flagged_fraction": round(flagged / len(scores), 4) if scores else 0.0,
               "mean_score": round(sum(s.score for s in scores) / len(scores), 3)
               if scores else 0.0,
               "kinds": dict(sorted(kinds.items())), "input_file": str(input_path),
               "output": str(out_path), "seconds": round(time.perf_counter() - t0, 3),
               "signature": signature}
    write_json(summary_path, summary, indent=True)
    log.info("score-rules: %d of %d conversations flagged (%s)", flagged, len(scores),
             dict(kinds))
    return summary


def build_datasets_stage(
    conversations_path: str | Path,
    scores_path: str | Path,
    out_dir: str | Path,
    design: DatasetDesign,
    *,
    twins_path: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Processed conversations + scores -> the files of :class:`~simia.layout.DatasetFiles`
    in ``out_dir``: one LLaMA-Factory dataset per level, their registration
    (``dataset_info``), the metadata (indices and content hashes per level), the
    rejects and the summary. ``twins_path``: the accepted twins (``twins.jsonl``) of the
    twins design, whose levels swap them in."""
    conversations_path, scores_path = Path(conversations_path), Path(scores_path)
    files = DatasetFiles(out_dir)
    params = {"levels": list(design.levels), "size": design.size,
              "shared_clean": design.shared_clean, "seed": design.seed,
              "threshold": design.threshold, "name_prefix": design.name_prefix}
    if design.replicates > 1:  # a one-replicate build keeps the signature it always had
        params["replicates"] = design.replicates
    replicates = range(1, design.replicates + 1)
    inputs = {"conversations": conversations_path, "scores": scores_path}
    if twins_path is not None:
        params["sycophancy_source"] = "twins"
        inputs["twins"] = Path(twins_path)
    data = _read_inputs(inputs)
    names = [f"{design.dataset_name(lv, k)}.json" for k in replicates for lv in design.levels]
    outputs = [files.dataset(n) for n in names] + [files.dataset_info, files.metadata]
    signature = _signature("build_datasets", data, params)
    done = _resume(files.summary, signature, outputs, force)
    if done is not None:
        return done
    t0 = time.perf_counter()
    with _gc_paused():
        rows = load_processed(conversations_path, data=data.pop("conversations"))
        labels = parse_score_records(read_jsonl(scores_path, data=data.pop("scores")),
                                     scores_path)
        twins = load_twins(twins_path) if twins_path is not None else None
        draws = [build_datasets(rows, labels, design, replicate=k, twins=twins)
                 for k in replicates]
        for built in draws:
            for name, level_rows in built.files.items():
                write_bytes(files.dataset(name), dumps(level_rows, indent=True))
    built = _merge_replicates(draws, design)
    write_json(files.dataset_info, built.dataset_info, indent=True)
    metadata = {**built.metadata, "inputs": {"conversations": str(conversations_path),
                                             "scores": str(scores_path),
                                             **({"twins": str(twins_path)} if twins_path
                                                else {}),
                                             **{f"{k}_sha256": v for k, v in
                                                signature["inputs_sha256"].items()}}}
    write_json(files.metadata, metadata, indent=True)
    write_bytes(files.rejects, dumps_jsonl(built.rejects))
    summary = {
        "datasets": {name: {k: v for k, v in d.items()
                            if k in ("file", "total", "clean", "sycophantic", "sycophantic_pct")}
                     for name, d in built.metadata["datasets"].items()},
        "pools": built.metadata["pools"],
        "label_source": built.metadata["label_source"],
        "sycophancy_source": built.metadata.get("sycophancy_source", "natural"),
        "out_dir": str(files.dir),
        "seconds": round(time.perf_counter() - t0, 3),
        "signature": signature,
    }
    write_json(files.summary, summary, indent=True)
    log.info("build-datasets: %s", {n: (d["clean"], d["sycophantic"])
                                    for n, d in summary["datasets"].items()})
    return summary


def _merge_replicates(draws: list[BuiltDatasets], design: DatasetDesign) -> BuiltDatasets:
    """One registration and metadata for every replicate's draw: replicate 1's design,
    pools and shared core at the top (as a build without replicates writes them), every
    replicate's datasets, and each replicate's seed and shared core."""
    first = draws[0]
    if len(draws) == 1:
        return first
    metadata = {**first.metadata,
                "design": {**first.metadata["design"], "seed": design.seed,
                           "replicates": design.replicates},
                "datasets": {name: entry for built in draws
                             for name, entry in built.metadata["datasets"].items()},
                "replicates": {str(k): {"seed": built.metadata["design"]["seed"],
                                        "shared_clean_core": built.metadata["shared_clean_core"]}
                               for k, built in enumerate(draws, start=1)}}
    info = {name: entry for built in draws for name, entry in built.dataset_info.items()}
    return BuiltDatasets({}, info, metadata, first.rejects)


def validate_scores_file(path: str | Path) -> dict[str, Any]:
    """Check an existing score file (e.g. the LLM judge's) before datasets are built."""
    path = Path(path) if str(path) else None
    if path is None:
        raise ConfigError("judge_scores: give the judge score file when label_source is "
                          "judge_file")
    labels = parse_score_records(read_jsonl(path, what="scores file"), path)
    usable = [lb for lb in labels.values() if lb.score is not None]
    flagged = sum(1 for lb in usable if lb.score and lb.score > 0)
    return {"conversations": len(labels), "usable": len(usable),
            "unusable": len(labels) - len(usable), "flagged": flagged,
            "sources": sorted({lb.source for lb in labels.values()})}
