"""SFT datasets at controlled sycophancy levels, ready for LLaMA-Factory.

Design (the reference experiment's, made explicit and reproducible): every level's
dataset has ``size`` conversations; ``shared_clean`` clean conversations are common to
all levels; the remaining slots hold ``round(size * level / 100)`` sycophantic
conversations and clean ones for the rest. Selections are nested: the sycophantic
conversations of a lower level are a subset of those of a higher level, and the extra
clean conversations of a higher level are a prefix of those of a lower level, so two
levels differ only in the swapped slots. Everything is drawn with one seeded RNG.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from simia.io import read_jsonl
from simia.settings.data import DatasetDesign, format_level as _fmt
from simia.errors import DesignError, InputError

log = logging.getLogger("simia.datasets")

#: LLaMA-Factory's ShareGPT tags for our records
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
}


@dataclass(frozen=True)
class Label:
    index: int
    score: float | None
    source: str  # "rules" | "judge"
    error: str | None = None


def parse_score_records(rows: Sequence[Any], path: str | Path) -> dict[int, Label]:
    """Labels from a score file, keyed by the conversation's raw-file index.

    Accepts our rule scores (``index``/``source_index`` + ``score``) and LLM judge
    results (``conv_idx``/``index``/``source_index`` + ``wm_sycophancy_score``, as the
    reference judge wrote them). A judge record without an integer score (a reply
    that could not be parsed) becomes an unlabeled entry, never a silent clean.
    """
    labels: dict[int, Label] = {}
    for line, rec in enumerate(rows, start=1):
        if not isinstance(rec, dict):
            raise InputError(path, f"line {line}: expected a JSON object, got "
                             f"{type(rec).__name__}")
        key = next((k for k in ("source_index", "conv_idx", "index") if k in rec), None)
        if key is None:
            raise InputError(path, f"line {line}: no conversation index (expected one of "
                             "'source_index', 'conv_idx', 'index')", field="index")
        idx = rec[key]
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise InputError(path, f"line {line}: index must be a non-negative integer, "
                             f"got {idx!r}", field=key)
        if "wm_sycophancy_score" in rec:
            source, field = "judge", "wm_sycophancy_score"
        elif "score" in rec:
            source, field = "rules", "score"
        elif "error" in rec:  # a judge failure record: kept, but it labels nothing
            source, field = "judge", "error"
        else:
            raise InputError(path, f"line {line}: no score (expected 'score' or "
                             "'wm_sycophancy_score')", field="score")
        score = rec.get(field)
        if field == "error" or isinstance(score, bool) or not isinstance(score, (int, float)):
            if source == "rules":
                raise InputError(path, f"line {line}: score must be a number, got {score!r}",
                                 field=field)
            label = Label(idx, None, source, str(rec.get("error") or f"{field}={score!r}"))
        elif not 0 <= score <= 100:
            raise InputError(path, f"line {line}: score must be within 0..100, got {score}",
                             field=field)
        else:
            label = Label(idx, float(score), source)
        if idx in labels:
            raise InputError(path, f"line {line}: conversation {idx} is scored twice",
                             field=key)
        labels[idx] = label
    if not labels:
        raise InputError(path, "no score records")
    return labels


#: fields of a score record that must equal the processed row's (the reference judge's
#: ``based_on_sample``/``simulator_mode``; its rule scores call the mode ``mode``)
_SAME_AS_ROW = (("based_on_sample", "based_on_sample"), ("simulator_mode", "simulator_mode"),
                ("mode", "simulator_mode"))


def check_scores_match(records: Sequence[Any], path: str | Path,
                       rows: Sequence[dict[str, Any]], processed_path: str | Path, *,
                       raw_count: int | None = None) -> int:
    """Refuse score records (as :func:`parse_score_records` accepted them) that do not
    belong to the conversations of the processed file ``rows``; returns how many records
    label one of its rows.

    A record's conversation (its ``source_index``, else ``conv_idx``, else ``index``) must
    be a row of the processed file, or a conversation that processing rejected: an index
    below ``raw_count`` (the raw file's length, read from the processing summary beside
    the processed file). Without it (a processed file without its summary) an index past
    the last row cannot be told from a trailing rejected conversation: such records are
    ignored with a warning, not refused. Of a record labelling a row, the fields it carries must
    match the row: ``index`` beside another key (the position in the processed file),
    ``content_sha256`` (:func:`content_hash` of the row), ``based_on_sample`` and the
    simulator mode. The first mismatch raises :class:`InputError` naming the score file,
    its line, the field, and the value expected (from ``processed_path``) and found.
    """
    by_index = {row["source_index"]: pos for pos, row in enumerate(rows)}
    known = max([raw_count or 0, *(i + 1 for i in by_index)])
    matched = 0
    beyond: list[int] = []

    def refuse(line: int, idx: int, field: str, expected: Any, found: Any) -> InputError:
        return InputError(path, f"line {line}: conversation {idx} does not belong to "
                          f"{processed_path}: {field} is {found!r}, expected {expected!r}",
                          field=field)

    for line, rec in enumerate(records, start=1):
        key = next(k for k in ("source_index", "conv_idx", "index") if k in rec)
        idx = rec[key]
        pos = by_index.get(idx)
        if pos is None:
            if idx >= known:
                if raw_count is None:
                    beyond.append(idx)
                    continue
                raise InputError(path, f"line {line}: conversation {idx} is not in "
                                 f"{processed_path}, whose raw conversations are numbered "
                                 f"0..{known - 1}", field=key)
            continue  # a conversation that processing rejected: it labels nothing
        row = rows[pos]
        if key != "index" and "index" in rec and rec["index"] != pos:
            raise refuse(line, idx, "index", pos, rec["index"])
        if "content_sha256" in rec and rec["content_sha256"] != (want := content_hash(row)):
            raise refuse(line, idx, "content_sha256", want, rec["content_sha256"])
        for field, row_field in _SAME_AS_ROW:
            if field in rec and row_field in row and rec[field] != row[row_field]:
                raise refuse(line, idx, field, row[row_field], rec[field])
        matched += 1
    if beyond:
        log.warning("%s: %d score record(s) name conversations past the last row of %s "
                    "(first: %d); without its processing summary the raw file's length is "
                    "unknown, so they are ignored", path, len(beyond), processed_path,
                    beyond[0])
    return matched


@lru_cache(maxsize=64)
def _text_sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def content_hash(row: dict[str, Any]) -> str:
    """sha256 of what training sees of a conversation: the turns, and the system prompt
    and tool list (by their own sha256, computed once per distinct text)."""
    payload = {"system_sha256": _text_sha256(row.get("system")),
               "tools_sha256": _text_sha256(row.get("tools")),
               "conversations": row.get("conversations")}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class BuiltDatasets:
    files: dict[str, list[dict[str, Any]]]  # dataset file name -> rows
    dataset_info: dict[str, Any]
    metadata: dict[str, Any]
    rejects: list[dict[str, Any]]


def build_datasets(
    conversations: Sequence[dict[str, Any]],
    labels: dict[int, Label],
    design: DatasetDesign,
    *,
    replicate: int = 1,
    twins: dict[int, dict[str, Any]] | None = None,
) -> BuiltDatasets:
    """Select each level's conversations for one replicate (its own draw, seeded by
    :meth:`DatasetDesign.replicate_seed`) and assemble LLaMA-Factory files + metadata.
    ``twins``: accepted twins by their original's index (the twins design)."""
    by_index: dict[int, dict[str, Any]] = {}
    for pos, row in enumerate(conversations):
        idx = row["source_index"]
        if idx in by_index:
            raise InputError(None, f"processed conversations: source_index {idx} appears twice",
                             record=pos, field="source_index")
        by_index[idx] = row
    native = any("tools" in row for row in conversations)

    clean: list[int] = []
    syco: list[int] = []
    rejects: list[dict[str, Any]] = []
    for idx in sorted(by_index):
        label = labels.get(idx)
        if label is None:
            rejects.append({"index": idx, "reason": "no_score",
                            "detail": "the score file has no entry for this conversation"})
        elif label.score is None:
            rejects.append({"index": idx, "reason": "score_unavailable",
                            "detail": label.error or "judge gave no usable score"})
        elif label.score > design.threshold:
            syco.append(idx)
        else:
            clean.append(idx)

    n_syc = {lv: design.n_sycophantic(lv) for lv in design.levels}
    need_syc = max(n_syc.values())
    if twins is not None:
        return _build_twins(by_index, labels, design, replicate, clean, syco, twins, rejects,
                            native)
    need_clean = design.size - min(n_syc.values())
    if len(syco) < need_syc or len(clean) < need_clean:
        problems = []
        if len(clean) < need_clean:
            problems.append(
                f"{need_clean} clean conversations (shared core {design.shared_clean} + "
                f"{need_clean - design.shared_clean} for the "
                f"{_fmt(min(design.levels))} % level) but found {len(clean)}")
        if len(syco) < need_syc:
            problems.append(f"{need_syc} sycophantic conversations (score > {design.threshold:g})"
                            f" for the {_fmt(max(design.levels))} % level but found {len(syco)}")
        raise DesignError(
            f"not enough labeled conversations for levels {[_fmt(x) for x in design.levels]} "
            f"of size {design.size}: need " + "; need ".join(problems) +
            f" ({len(by_index)} processed, {len(rejects)} without a usable score)")

    rng = random.Random(design.replicate_seed(replicate))
    clean_order = clean[:]
    rng.shuffle(clean_order)
    syc_order = syco[:]
    rng.shuffle(syc_order)
    core = clean_order[: design.shared_clean]
    extra = clean_order[design.shared_clean:]

    hashes: dict[int, str] = {}
    files: dict[str, list[dict[str, Any]]] = {}
    info: dict[str, Any] = {}
    per_level: dict[str, Any] = {}
    for lv in sorted(design.levels):
        chosen_syc = syc_order[: n_syc[lv]]
        chosen_clean = core + extra[: design.size - design.shared_clean - n_syc[lv]]
        indices = sorted(chosen_clean + chosen_syc)
        name = design.dataset_name(lv, replicate)
        file_name = f"{name}.json"
        rows = []
        for idx in indices:
            src = by_index[idx]
            if idx not in hashes:
                hashes[idx] = content_hash(src)
            rows.append(_row(src, idx, labels[idx].score, native))
        files[file_name] = rows
        info[name] = _registration(file_name, native)
        per_level[name] = {
            "level_pct": lv,
            "replicate": replicate,
            "file": file_name,
            "total": len(indices),
            "clean": len(chosen_clean),
            "sycophantic": len(chosen_syc),
            "sycophantic_pct": round(100 * len(chosen_syc) / len(indices), 3),
            "indices": indices,
            "sycophantic_indices": sorted(chosen_syc),
            "content_sha256": {str(i): hashes[i] for i in indices},
        }

    label_sources = sorted({labels[i].source for i in clean + syco})
    metadata = {
        "design": {
            "levels_pct": list(design.levels),
            "size": design.size,
            "shared_clean": design.shared_clean,
            "seed": design.replicate_seed(replicate),
            "threshold": design.threshold,
            "label_rule": f"sycophantic if score > {design.threshold:g}, else clean",
        },
        "format": "native" if native else "hermes",
        "label_source": label_sources[0] if len(label_sources) == 1 else label_sources,
        "sycophancy_source": "natural",
        "pools": {"processed": len(by_index), "clean": len(clean), "sycophantic": len(syco),
                  "unlabeled": len(rejects)},
        "shared_clean_core": sorted(core),
        "datasets": per_level,
    }
    return BuiltDatasets(files, info, metadata, rejects)


def _registration(file_name: str, native: bool) -> dict[str, Any]:
    """A dataset's entry in LLaMA-Factory's ``dataset_info.json``."""
    columns = {"messages": "conversations", "system": "system"}
    if native:
        columns["tools"] = "tools"
    return {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
            "tags": dict(SHAREGPT_TAGS)}


def _row(src: dict[str, Any], idx: int, score: float | None, native: bool,
         conversations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    row = {"conversations": conversations if conversations is not None
           else src["conversations"], "system": src["system"]}
    if native:
        row["tools"] = src["tools"]
    row["source_index"] = idx
    row["sycophancy_score"] = score
    return row


def _build_twins(by_index: dict[int, dict[str, Any]], labels: dict[int, Label],
                 design: DatasetDesign, replicate: int, clean: list[int], syco: list[int],
                 twins: dict[int, dict[str, Any]], rejects: list[dict[str, Any]],
                 native: bool) -> BuiltDatasets:
    """The twins design (see the module's docs)."""
    n_syc = {lv: design.n_sycophantic(lv) for lv in design.levels}
    need_twins = max(n_syc.values())
    twinned = [i for i in clean if i in twins]
    unknown = sorted(set(twins) - set(clean))
    if unknown:
        raise InputError(None, f"twins: {len(unknown)} twin(s) of conversations that are not "
                         f"in the clean pool (first: {unknown[0]})", field="source_index")
    if len(clean) < design.size or len(twinned) < need_twins:
        raise DesignError(
            f"not enough conversations for the twins design of levels "
            f"{[_fmt(x) for x in design.levels]} and size {design.size}: need {design.size} "
            f"clean conversations (found {len(clean)}) and {need_twins} twins (found "
            f"{len(twinned)})")
    rng = random.Random(design.replicate_seed(replicate))
    swap = twinned[:]
    rng.shuffle(swap)
    swap = swap[:need_twins]
    rest = [i for i in clean if i not in set(swap)]
    rng.shuffle(rest)
    core = rest[: design.shared_clean]
    fill = rest[design.shared_clean: design.size - need_twins]
    hashes: dict[str, str] = {}
    files: dict[str, list[dict[str, Any]]] = {}
    info: dict[str, Any] = {}
    per_level: dict[str, Any] = {}
    for lv in sorted(design.levels):
        swapped = set(swap[: n_syc[lv]])
        indices = sorted(core + fill + swap)
        rows = []
        for idx in indices:
            src = by_index[idx]
            if idx in swapped:
                twin = twins[idx]
                row = _row(src, idx, float(twin["twin_score"]), native, twin["conversations"])
                row["twin_of"] = idx
                key = f"{idx}:twin"
            else:
                row = _row(src, idx, labels[idx].score, native)
                key = str(idx)
            if key not in hashes:
                hashes[key] = content_hash(row)
            rows.append(row)
        name = design.dataset_name(lv, replicate)
        file_name = f"{name}.json"
        files[file_name] = rows
        info[name] = _registration(file_name, native)
        per_level[name] = {
            "level_pct": lv, "replicate": replicate, "file": file_name,
            "total": len(indices), "clean": len(indices) - len(swapped),
            "sycophantic": len(swapped),
            "sycophantic_pct": round(100 * len(swapped) / len(indices), 3),
            "indices": indices, "sycophantic_indices": sorted(swapped),
            "twin_indices": sorted(swapped),
            "content_sha256": {(f"{i}:twin" if i in swapped else str(i)):
                               hashes[f"{i}:twin" if i in swapped else str(i)]
                               for i in indices},
        }
    metadata = {
        "design": {"levels_pct": list(design.levels), "size": design.size,
                   "shared_clean": design.shared_clean,
                   "seed": design.replicate_seed(replicate), "threshold": design.threshold,
                   "label_rule": f"sycophantic if score > {design.threshold:g}, else clean",
                   "sycophancy_source": "twins",
                   "swap_rule": "level L = the 0 % dataset with the swap set's first "
                                "round(size x L / 100) conversations replaced by their twins"},
        "format": "native" if native else "hermes",
        "label_source": "judge",
        "sycophancy_source": "twins",
        "pools": {"processed": len(by_index), "clean": len(clean), "sycophantic": len(syco),
                  "twins": len(twinned), "unlabeled": len(rejects)},
        "shared_clean_core": sorted(core),
        "swap_set": swap,
        "datasets": per_level,
    }
    return BuiltDatasets(files, info, metadata, rejects)


def load_twins(path: str | Path) -> dict[int, dict[str, Any]]:
    """Accepted twins by the source index of their original (``twins.jsonl``)."""
    out: dict[int, dict[str, Any]] = {}
    for line, rec in enumerate(read_jsonl(path, what="twins file"), start=1):
        if not isinstance(rec, dict):
            raise InputError(path, "expected a JSON object", record=line)
        for key, kind in (("source_index", int), ("conversations", list),
                          ("twin_score", (int, float)), ("observation_turn_index", int)):
            if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
                raise InputError(path, f"missing or not a {getattr(kind, '__name__', 'number')}",
                                 record=line, field=key)
        if rec["source_index"] in out:
            raise InputError(path, f"a second twin of conversation {rec['source_index']}",
                             record=line, field="source_index")
        out[rec["source_index"]] = rec
    return out

