"""What a stage's summary records of where its files came from: content hashes.

Every stage's ``summary.json`` names the sha256 of its inputs (``inputs_sha256``) and of
its outputs (``outputs_sha256``), ``{role: sha256}``. The file stages
(:mod:`simia.data.stages`) hash the bytes they read and write; the LLM stages' merges
hash their shard checkpoints (their inputs) and the files they wrote, with the helpers
here, and carry the hash of the processed file the judge read (``processed_sha256``).
"""

from __future__ import annotations

from pathlib import Path

from simia.errors import InputError
from simia.io import file_hashes, read_json
from simia.layout import shard_file, shard_params

__all__ = ["checkpoint_hashes", "file_hashes", "shard_checkpoints", "shard_param"]


def checkpoint_hashes(paths: list[Path]) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoints among ``paths`` that exist (a merge's
    inputs)."""
    return file_hashes({p.name: p for p in paths})


def shard_checkpoints(out_dir: str | Path, stage: str, shards: int) -> list[Path]:
    """The checkpoint files of a sharded stage's ``shards`` shards."""
    return [shard_file(out_dir, stage, k, shards) for k in range(shards)]


def shard_param(out_dir: str | Path, stage: str, shards: int, key: str) -> str | None:
    """The value of setting ``key`` that every shard of ``stage`` was started with (from
    the shards' ``.params.json``; None when none records it). Shards started with
    different values (say, judging two different processed files) cannot be merged: an
    :class:`InputError` names the first shard that differs."""
    seen: tuple[Path, str] | None = None
    for path in shard_checkpoints(out_dir, stage, shards):
        meta = shard_params(path)
        if not meta.is_file():
            continue
        params = read_json(meta, what="shard settings").get("params", {})
        value = params.get(key) if isinstance(params, dict) else None
        if value is None:
            continue
        if seen is not None and value != seen[1]:
            raise InputError(meta, f"{stage}: this shard was started with {key} {value}, "
                             f"but {seen[0]} with {seen[1]}; the shards did not work on "
                             "the same input, so they cannot be merged", field=key)
        seen = (meta, value)
    return seen[1] if seen else None
