"""Shards of an LLM stage: where their checkpoints live and how they are put together.

Item ``i`` of a stage belongs to shard ``i % shards``, so every shard is a fixed, small
part of the work that an orchestrator can run (and retry) on its own. A shard's
checkpoint (:func:`simia.layout.shard_file`) sits next to a ``.params.json`` holding the
settings it was started with (:func:`simia.layout.shard_params`); a re-run with other
settings would mix incompatible items, so it is refused unless forced (which discards
the old checkpoint).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from simia.errors import ConfigError, InputError
from simia.io import read_json, sha256_bytes, write_json
from simia.layout import shard_file, shard_params, shard_summary
from simia.llm.accounting import sum_usage
from simia.llm.runner import Checkpoint

log = logging.getLogger("simia.llm")


def shard_of(index: int, shards: int) -> int:
    return index % shards


def shard_target(total: int, shard: int, shards: int) -> int:
    """This shard's share of ``total`` (the shares add up to ``total`` exactly)."""
    return total // shards + (1 if shard < total % shards else 0)


def check_shard(shard: int, shards: int) -> None:
    if shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"shard: need 0 <= shard < shards, got shard={shard}, "
                          f"shards={shards}")


def open_checkpoint(out_dir: Path, stage: str, shard: int, shards: int,
                    params: dict[str, Any], *, force: bool = False) -> Checkpoint:
    """The shard's checkpoint, after checking it was made with the same ``params``."""
    check_shard(shard, shards)
    path = shard_file(out_dir, stage, shard, shards)
    meta = shard_params(path)
    sig = sha256_bytes(orjson.dumps(params, option=orjson.OPT_SORT_KEYS))
    if meta.is_file():
        try:
            old = read_json(meta)
        except InputError:
            old = {}
        if isinstance(old, dict) and old.get("params_sha256") != sig:
            if not force:
                changed = sorted(k for k in set(params) | set(old.get("params", {}))
                                 if params.get(k) != old.get("params", {}).get(k))
                raise ConfigError(
                    f"{stage}: {path} was started with other settings (changed: "
                    f"{', '.join(changed) or 'inputs'}); use another output folder, or "
                    "force to discard the finished items")
            log.warning("%s: discarding %s (settings changed, forced)", stage, path)
            path.unlink(missing_ok=True)
    write_json(meta, {"params_sha256": sig, "params": params}, indent=True)
    return Checkpoint(path)


def read_shards(out_dir: Path, stage: str, shards: int) -> list[dict[str, Any]]:
    """Every shard's finished records (a missing shard is an error: merge too early)."""
    records: list[dict[str, Any]] = []
    for shard in range(shards):
        path = shard_file(out_dir, stage, shard, shards)
        if not path.is_file():
            raise InputError(path, f"{stage}: shard {shard} of {shards} has not run (no "
                             "checkpoint); run every shard before merging")
        ckpt = Checkpoint(path)
        ckpt.close()
        records.extend(ckpt.records.values())
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        raise InputError(out_dir, f"{stage}: the same item id appears in two shards")
    return sorted(records, key=lambda r: r.get("index", 0))


def summary_path(out_dir: Path, stage: str, shard: int, shards: int) -> Path:
    """A shard's summary file (beside its checkpoint)."""
    return shard_summary(shard_file(out_dir, stage, shard, shards))


def write_shard_summary(out_dir: Path, stage: str, shard: int, shards: int,
                        summary: dict[str, Any]) -> dict[str, Any]:
    """Write a shard's summary, counting its ``invocations``. Its ``llm`` usage is the
    sum of the checkpoint's records (each keeps what its item cost, over every try), so
    it covers every invocation, a killed one's finished items included."""
    path = summary_path(out_dir, stage, shard, shards)
    runs = 1
    if path.is_file():
        try:
            old = read_json(path)
        except InputError:
            old = {}
        if isinstance(old, dict):
            runs = int(old.get("invocations", 1)) + 1
    summary["invocations"] = runs
    write_json(path, summary, indent=True)
    return summary


def merged_usage(out_dir: Path, stage: str, shards: int) -> dict[str, Any]:
    """The LLM usage of all shards of a stage."""
    parts = []
    for shard in range(shards):
        path = summary_path(out_dir, stage, shard, shards)
        if path.is_file():
            parts.append(read_json(path).get("llm", {}))
    return sum_usage(parts)
