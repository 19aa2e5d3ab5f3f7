"""File-level stages: read inputs, run the pure logic, write outputs atomically, resume.

Each stage writes its outputs (each one atomically: temp file, then rename) and its
summary LAST, at the paths :mod:`simia.layout` names. The summary carries a signature
of the inputs (content hashes) and parameters, and the sha256 of every output
(``outputs_sha256``); a re-run with the same signature whose outputs still have those
hashes returns the summary without redoing any work, while a crash before the summary,
or an output that is missing, cut short or edited, re-runs the stage. These functions
are what both the ``simia`` command line and the Airflow tasks call.

Scores are checked against the conversations they label
(:func:`simia.data.datasets.check_scores_match`) wherever datasets are built from them
or a run takes them over: :func:`build_datasets_stage`, :func:`validate_scores_file`
(a judge file given to the DAG) and :func:`check_datasets_dir` (datasets reused).
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
from simia.data.datasets import (BuiltDatasets, DatasetDesign, build_datasets,
                                 check_scores_match, content_hash, load_twins,
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
    sha256_file,
    write_bytes,
    write_json,
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


def _previous(summary_path: Path) -> dict[str, Any]:
    """The summary an earlier run left (empty when there is none or it is unreadable)."""
    if not summary_path.is_file():
        return {}
    try:
        previous = read_json(summary_path)
    except InputError:
        return {}
    return previous if isinstance(previous, dict) else {}


def _changed_output(recorded: Any, outputs: dict[str, Path]) -> str | None:
    """Why the ``outputs`` (``{role: path}``) are not the ones whose sha256 the summary
    recorded (``recorded``), or None when every one is."""
    if not isinstance(recorded, dict):
        return "the summary records no hashes of its outputs"
    for role, path in outputs.items():
        if not path.is_file():
            return f"{path} is missing"
        if recorded.get(role) != sha256_file(path):
            return f"{path} is not the file this stage wrote (its sha256 differs)"
    return None


def _resume(summary_path: Path, signature: dict[str, Any], outputs: dict[str, Path],
            force: bool) -> dict[str, Any] | None:
    """The previous run's summary (marked ``resumed``) when it has the same signature
    and every output still has the sha256 it recorded; else None (the stage runs)."""
    previous = {} if force else _previous(summary_path)
    if previous.get("signature") != signature:
        return None
    why = _changed_output(previous.get("outputs_sha256"), outputs)
    if why is not None:
        log.warning("%s: redoing the stage in %s: %s", signature["stage"],
                    summary_path.parent, why)
        return None
    log.info("%s: outputs in %s are up to date (same inputs and parameters); skipping",
             signature["stage"], summary_path.parent)
    return {**previous, "resumed": True}


def _write(path: Path, data: bytes, hashes: dict[str, str], role: str) -> None:
    """Write ``data`` to ``path`` (atomically) and record its sha256 in ``hashes``."""
    write_bytes(path, data)
    hashes[role] = sha256_bytes(data)


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
    done = _resume(files.summary, signature,
                   {"processed": files.processed, "rejects": files.rejects}, force)
    if done is not None:
        return done

    t0 = time.perf_counter()
    hashes: dict[str, str] = {}
    with _gc_paused():
        raw, invalid = load_raw(raw_path, skip_invalid=skip_invalid_records,
                                data=data.pop("raw_conversations"))
        result = process_conversations(raw, dom, policy, output_format, invalid,
                                       extract_embedded_calls)
        del raw
        _write(files.processed, dumps(result.kept, indent=True), hashes, "processed")
    _write(files.rejects, dumps_jsonl(r.as_dict() for r in result.rejects), hashes, "rejects")
    summary = {**result.summary(), "input_file": str(raw_path),
               "outputs": {"processed": str(files.processed), "rejects": str(files.rejects)},
               "inputs_sha256": signature["inputs_sha256"], "outputs_sha256": hashes,
               "seconds": round(time.perf_counter() - t0, 3), "signature": signature}
    write_json(files.summary, summary, indent=True)
    log.info("process: kept %d of %d conversations (%s); rejected by reason: %s",
             result.summary()["kept"], result.total, output_format.value,
             summary["rejected_by_reason"])
    return summary


#: fields of a raw conversation that its rule scores repeat (checked against the
#: processed row they label, see :func:`simia.data.datasets.check_scores_match`)
_RAW_IDENTITY = ("based_on_sample", "simulator_mode")


def score_rules_stage(input_path: str | Path, out_path: str | Path, *,
                      force: bool = False) -> dict[str, Any]:
    """Rule scores, one JSON line per conversation (``index`` = position in the input;
    ``source_index`` and the row's ``content_sha256`` too when the input is a processed
    file, the raw conversation's ``based_on_sample`` and ``simulator_mode`` when it is a
    raw file that has them)."""
    input_path, out_path = Path(input_path), Path(out_path)
    summary_path = rule_scores_summary(out_path)
    data = _read_inputs({"conversations": input_path})
    signature = _signature("score_rules", data, {})
    done = _resume(summary_path, signature, {"scores": out_path}, force)
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
        row, conv = s.as_dict(), records[s.index]
        if processed:
            row["source_index"] = conv["source_index"]
            row["content_sha256"] = content_hash(conv)
        else:
            row.update({k: conv[k] for k in _RAW_IDENTITY if k in conv})
        rows.append(row)
    hashes: dict[str, str] = {}
    _write(out_path, dumps_jsonl(rows), hashes, "scores")
    kinds = Counter(k for s in scores for k in s.kinds)
    flagged = sum(1 for s in scores if s.score > 0)
    summary = {"conversations": len(scores), "flagged": flagged,
               "flagged_fraction": round(flagged / len(scores), 4) if scores else 0.0,
               "mean_score": round(sum(s.score for s in scores) / len(scores), 3)
               if scores else 0.0,
               "kinds": dict(sorted(kinds.items())), "input_file": str(input_path),
               "input_kind": "processed" if processed else "raw",
               "output": str(out_path), "inputs_sha256": signature["inputs_sha256"],
               "outputs_sha256": hashes, "seconds": round(time.perf_counter() - t0, 3),
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
    (``dataset_info``), the metadata (indices and content hashes per level, the inputs'
    sha256), the rejects and the summary. ``twins_path``: the accepted twins
    (``twins.jsonl``) of the twins design, whose levels swap them in.

    Scores that do not belong to the processed conversations are refused
    (:func:`~simia.data.datasets.check_scores_match`). Dataset files an earlier build in
    ``out_dir`` listed as its outputs and that this design no longer has (fewer levels or
    replicates) are removed; no other file is touched."""
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
    fixed = {f.name: f for f in (files.dataset_info, files.metadata, files.rejects)}
    outputs = {**{n: files.dataset(n) for n in names}, **fixed}
    signature = _signature("build_datasets", data, params)
    done = _resume(files.summary, signature, outputs, force)
    if done is not None:
        return done
    earlier = _listed_datasets(files)
    t0 = time.perf_counter()
    hashes: dict[str, str] = {}
    with _gc_paused():
        rows = load_processed(conversations_path, data=data.pop("conversations"))
        records = read_jsonl(scores_path, data=data.pop("scores"))
        labels = parse_score_records(records, scores_path)
        check_scores_match(records, scores_path, rows, conversations_path,
                           raw_count=_raw_count(conversations_path,
                                                signature["inputs_sha256"]["conversations"]))
        del records
        twins = load_twins(twins_path) if twins_path is not None else None
        draws = [build_datasets(rows, labels, design, replicate=k, twins=twins)
                 for k in replicates]
        for built in draws:
            for name, level_rows in built.files.items():
                _write(files.dataset(name), dumps(level_rows, indent=True), hashes, name)
    built = _merge_replicates(draws, design)
    _write(files.dataset_info, dumps(built.dataset_info, indent=True) + b"\n", hashes,
           files.dataset_info.name)
    metadata = {**built.metadata, "inputs": {"conversations": str(conversations_path),
                                             "scores": str(scores_path),
                                             **({"twins": str(twins_path)} if twins_path
                                                else {}),
                                             **{f"{k}_sha256": v for k, v in
                                                signature["inputs_sha256"].items()}}}
    _write(files.metadata, dumps(metadata, indent=True) + b"\n", hashes, files.metadata.name)
    _write(files.rejects, dumps_jsonl(built.rejects), hashes, files.rejects.name)
    removed = sorted(earlier - set(outputs))
    for name in removed:
        files.dataset(name).unlink(missing_ok=True)
    if removed:
        log.info("build-datasets: removed %d dataset file(s) of the earlier build that this "
                 "design no longer has: %s", len(removed), ", ".join(removed))
    summary = {
        "datasets": {name: {k: v for k, v in d.items()
                            if k in ("file", "total", "clean", "sycophantic", "sycophantic_pct")}
                     for name, d in built.metadata["datasets"].items()},
        "pools": built.metadata["pools"],
        "label_source": built.metadata["label_source"],
        "sycophancy_source": built.metadata.get("sycophancy_source", "natural"),
        "out_dir": str(files.dir),
        "inputs_sha256": signature["inputs_sha256"],
        "outputs_sha256": hashes,
        "removed_stale": removed,
        "seconds": round(time.perf_counter() - t0, 3),
        "signature": signature,
    }
    write_json(files.summary, summary, indent=True)
    log.info("build-datasets: %s", {n: (d["clean"], d["sycophantic"])
                                    for n, d in summary["datasets"].items()})
    return summary


def _listed_datasets(files: DatasetFiles) -> set[str]:
    """The dataset files (names in ``files.dir``) that an earlier build's summary or
    metadata lists as its own outputs: the only files a rebuild may remove."""
    listed: set[str] = set()
    summary, metadata = _previous(files.summary), _previous(files.metadata)
    for entries in (summary.get("datasets"), metadata.get("datasets")):
        if isinstance(entries, dict):
            listed.update(e["file"] for e in entries.values()
                          if isinstance(e, dict) and isinstance(e.get("file"), str))
    if isinstance(summary.get("outputs_sha256"), dict):
        listed.update(summary["outputs_sha256"])
    fixed = {files.dataset_info.name, files.metadata.name, files.rejects.name,
             files.summary.name}
    return {n for n in listed if n.endswith(".json") and n not in fixed
            and Path(n).name == n and not n.startswith(".")}


def _raw_count(processed_path: Path, processed_sha256: str) -> int | None:
    """How many raw conversations the processed file was made from (their indices are
    ``0 .. n - 1``), from the processing summary beside it when that summary recorded
    this very file (its ``outputs_sha256``); None when unknown."""
    summary = _previous(ProcessedFiles(processed_path.parent).summary)
    recorded = summary.get("outputs_sha256")
    n = summary.get("input")
    if isinstance(recorded, dict) and recorded.get("processed") == processed_sha256 \
            and isinstance(n, int) and not isinstance(n, bool):
        return n
    return None


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


def validate_scores_file(path: str | Path,
                         processed: str | Path | None = None) -> dict[str, Any]:
    """Check an existing score file (e.g. the LLM judge's) before datasets are built:
    its records, and (with ``processed``) that they label the conversations of that
    processed file (:func:`~simia.data.datasets.check_scores_match`)."""
    path = Path(path) if str(path) else None
    if path is None:
        raise ConfigError("judge_scores: give the judge score file when label_source is "
                          "judge_file")
    records = read_jsonl(path, what="scores file")
    labels = parse_score_records(records, path)
    out: dict[str, Any] = {}
    if processed is not None:
        processed = Path(processed)
        data = read_bytes(processed, what="processed conversations file")
        sha = sha256_bytes(data)
        rows = load_processed(processed, data=data)
        del data
        out["matched"] = check_scores_match(records, path, rows, processed,
                                            raw_count=_raw_count(processed, sha))
        out["processed_sha256"] = sha
    usable = [lb for lb in labels.values() if lb.score is not None]
    flagged = sum(1 for lb in usable if lb.score and lb.score > 0)
    return {"conversations": len(labels), "usable": len(usable),
            "unusable": len(labels) - len(usable), "flagged": flagged,
            "sources": sorted({lb.source for lb in labels.values()}), **out}


def check_reused_output(path: str | Path, summary_path: str | Path, role: str) -> None:
    """Refuse an earlier run's output ``path`` that is not the file its stage wrote: its
    sha256 differs from the one the stage's summary (``summary_path``) recorded for
    ``role``. A summary that records none (written before the hashes were) is let
    through."""
    path, summary_path = Path(path), Path(summary_path)
    recorded = _previous(summary_path).get("outputs_sha256")
    if not isinstance(recorded, dict) or role not in recorded:
        log.warning("%s: %s records no sha256 of it; reusing it unchecked", path,
                    summary_path)
        return
    found = _sha256_of(path)
    if found != recorded[role]:
        raise InputError(path, f"changed since its stage wrote it: sha256 {found}, but "
                         f"{summary_path} recorded {recorded[role]}")


def _sha256_of(path: Path) -> str:
    """The sha256 of the file ``path`` (an :class:`InputError` when it is not there)."""
    if not path.is_file():
        raise InputError(path, "does not exist (an output the stage's summary lists)")
    return sha256_file(path)


def check_datasets_dir(out_dir: str | Path) -> dict[str, Any]:
    """Check datasets an earlier run built before a run trains on them (``start_from =
    datasets``): every file the build recorded still has its sha256, and the scores the
    build read (when still there, and unchanged) label the conversations it read.
    Returns the metadata."""
    files = DatasetFiles(out_dir)
    metadata = read_json(files.metadata, what="dataset metadata")
    summary = _previous(files.summary)
    recorded = summary.get("outputs_sha256")
    if isinstance(recorded, dict):
        for name, sha in recorded.items():
            found = _sha256_of(files.dataset(name))
            if found != sha:
                raise InputError(files.dataset(name), f"changed since build-datasets wrote "
                                 f"it: sha256 {found}, but {files.summary} recorded {sha}")
    else:
        log.warning("%s records no sha256 of the datasets; reusing them unchecked",
                    files.summary)
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not isinstance(inputs, dict):
        raise InputError(files.metadata, "no 'inputs' (the conversations and scores the "
                         "datasets were built from)", field="inputs")
    conversations, scores = inputs.get("conversations"), inputs.get("scores")
    if not (isinstance(conversations, str) and isinstance(scores, str)
            and Path(conversations).is_file() and Path(scores).is_file()):
        log.warning("%s: the conversations or scores the datasets were built from are gone; "
                    "their match is not checked again", files.metadata)
        return metadata
    for role, file in (("conversations", conversations), ("scores", scores)):
        sha = sha256_file(file)
        if inputs.get(f"{role}_sha256") not in (None, sha):
            raise InputError(file, f"changed since the datasets in {files.dir} were built "
                             f"from it: sha256 {sha}, but {files.metadata} recorded "
                             f"{inputs[f'{role}_sha256']}", field=f"{role}_sha256")
    validate_scores_file(scores, conversations)
    return metadata
