"""Training: one LLaMA-Factory SFT run per sycophancy level, identical hyperparameters.

The typed :class:`TrainingConfig` holds everything that must be equal across levels
(the reference recipe by default: Qwen/Qwen2.5-7B-Instruct, template ``qwen``, full
fine-tuning, lr 5e-6, batch 1, grad-accum 2, cutoff 12000, fa2, neat packing, bf16,
DeepSpeed ZeRO-3, 2 epochs, cosine schedule). :func:`level_train_config` turns it into
the YAML mapping ``llamafactory-cli train`` reads for one level; only ``dataset`` and
``output_dir`` differ between levels, and :func:`differing_keys` checks exactly that.

Paths in a level's YAML are the paths the trainer container sees. The DAG bind-mounts
the run directory (and the model cache) at the *same* paths inside the container, so a
YAML written here is valid there unchanged.

After a run, :func:`read_training_result` reads LLaMA-Factory's own result files
(``trainer_log.jsonl``, ``all_results.json``/``train_results.json``,
``trainer_state.json``) into a small summary, and refuses a run whose loss is not finite.
A level whose ``training_summary.json`` exists for the same config is not trained again.
Where a level's files lie is :class:`simia.layout.TrainFiles`'s business.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


from simia.settings.training import ContainerSettings, TrainingConfig
from simia.errors import ConfigError, InputError
from simia.io import read_json, write_bytes, write_json
from simia.layout import DatasetFiles, TrainFiles, TrainRoot, level_slug, run_slug

__all__ = [
    "DEEPSPEED_FILES",
    "PER_LEVEL_KEYS",
    "PER_RUN_KEYS",
    "TrainingConfig",
    "TrainingPlan",
    "ContainerSettings",
    "completed_summary",
    "config_sha256",
    "container_name",
    "container_spec",
    "dataset_for_level",
    "deepspeed_config",
    "differing_keys",
    "level_train_config",
    "level_slug",
    "plan_level",
    "read_training_result",
    "to_yaml",
    "write_summary",
]


DEEPSPEED_FILES: dict[str, str] = {
    "zero2": "ds_zero2.json",
    "zero3": "ds_zero3.json",
    "zero3_offload": "ds_zero3_offload.json",
}
# the only keys whose values may differ between the levels of one run
PER_LEVEL_KEYS = frozenset({"dataset", "output_dir"})
# ... and between the training runs of a run: each replicate also has its own seed
PER_RUN_KEYS = PER_LEVEL_KEYS | {"seed"}


def deepspeed_config(mode: str) -> dict[str, Any] | None:
    """The DeepSpeed JSON shipped in the package for ``mode`` (None for ``none``)."""
    if mode == "none":
        return None
    if mode not in DEEPSPEED_FILES:
        raise ConfigError(f"unknown DeepSpeed mode {mode!r}; one of none, "
                          + ", ".join(DEEPSPEED_FILES))
    folder = resources.files("simia.containers") / "deepspeed"
    text = folder.joinpath(DEEPSPEED_FILES[mode]).read_text()
    return json.loads(text)


def level_train_config(cfg: TrainingConfig, *, dataset: str, dataset_dir: str | Path,
                       output_dir: str | Path, deepspeed_path: str | Path | None) -> dict:
    """The ``llamafactory-cli train`` YAML mapping of one level (insertion-ordered)."""
    if cfg.deepspeed != "none" and deepspeed_path is None:
        raise ConfigError(f"DeepSpeed {cfg.deepspeed} needs the path of its JSON config")
    out: dict[str, Any] = {
        "model_name_or_path": cfg.model,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": cfg.finetuning_type,
    }
    if cfg.finetuning_type == "lora":
        out.update(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                   lora_target=cfg.lora_target)
    if cfg.deepspeed != "none":
        out["deepspeed"] = str(deepspeed_path)
    out.update(
        flash_attn=cfg.flash_attn,
        neat_packing=cfg.neat_packing,
        dataset=dataset,
        dataset_dir=str(dataset_dir),
        template=cfg.template,
        cutoff_len=cfg.cutoff_len,
        overwrite_cache=True,
        preprocessing_num_workers=cfg.preprocessing_num_workers,
        output_dir=str(output_dir),
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        plot_loss=False,
        overwrite_output_dir=True,
        save_only_model=True,
        report_to="none",
        lr_scheduler_type=cfg.lr_scheduler_type,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        bf16=cfg.bf16,
        seed=cfg.seed,
        ddp_timeout=180000000,
    )
    if cfg.max_steps:
        out["max_steps"] = cfg.max_steps
    # a field added to TrainingConfig is a LLaMA-Factory key of the same name
    written = {"model", "finetuning_type", "lora_rank", "lora_alpha", "lora_target", "deepspeed",
               "max_steps", "extra", *out}
    out.update({name: getattr(cfg, name) for name in type(cfg).model_fields
                if name not in written})
    out.update(cfg.extra)
    return out


def differing_keys(configs: list[dict[str, Any]]) -> set[str]:
    """Keys whose values are not the same in every one of ``configs``."""
    keys = set().union(*configs) if configs else set()
    return {k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1}


def to_yaml(mapping: dict[str, Any]) -> str:
    """The YAML text of a flat LLaMA-Factory mapping, keys in insertion order.

    Written with PyYAML (the library LLaMA-Factory reads it with), so that every value
    reads back with its type: a hand-written ``5e-06`` would come back as a *string*
    under YAML 1.1.
    """
    import yaml

    for key in mapping:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise ConfigError(f"LLaMA-Factory key {key!r} is not a plain identifier")
    return yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=1_000_000)


def config_sha256(mapping: dict[str, Any]) -> str:
    """A stable hash of a level's YAML mapping (skip decisions and container labels)."""
    return hashlib.sha256(json.dumps(mapping, sort_keys=True).encode()).hexdigest()


def dataset_for_level(datasets_dir: str | Path, level: float, replicate: int = 1) -> str:
    """The dataset name built for ``level`` (%) and ``replicate``, from ``metadata.json``
    of the datasets stage; checked against ``dataset_info.json``."""
    files = DatasetFiles(datasets_dir)
    meta_path, info_path = files.metadata, files.dataset_info
    meta = read_json(meta_path, what="datasets metadata")
    info = read_json(info_path, what="LLaMA-Factory dataset_info.json")
    entries = meta.get("datasets") if isinstance(meta, dict) else None
    if not isinstance(entries, dict):
        raise InputError(meta_path, "no 'datasets' mapping; was it written by the datasets "
                                    "stage?", field="datasets")
    found = [name for name, d in entries.items()
             if isinstance(d, dict) and isinstance(d.get("level_pct"), (int, float))
             and math.isclose(float(d["level_pct"]), float(level))
             and d.get("replicate", 1) == replicate]
    if not found:
        levels = sorted({d.get("level_pct") for d in entries.values() if isinstance(d, dict)})
        drawn = max((d.get("replicate", 1) for d in entries.values() if isinstance(d, dict)),
                    default=0)
        raise InputError(meta_path, f"no dataset for level {level:g} % replicate {replicate}; "
                         f"built levels: {levels}, replicates 1..{drawn}", field="datasets")
    name = found[0]
    if not isinstance(info, dict) or name not in info:
        raise InputError(info_path, f"dataset {name!r} (level {level:g} %) is not registered",
                         field=name)
    return name


def container_name(run_key: str, level: float, *, stage: str = "train",
                   replicate: int = 1) -> str:
    """Deterministic container name for one training run of one DAG run, e.g.
    ``simia-train-3f2a9c1b7d-5pct`` (``-5pct-r2`` for replicate 2): a retry or a clean-up
    finds it by name."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    return f"simia-{stage}-{digest}-{run_slug(level, replicate)}"


@dataclass(frozen=True)
class TrainingPlan:
    """Everything the trainer container needs for one training run of a level (host path
    = container path)."""

    level: float
    dataset: str
    dataset_dir: str
    output_dir: str
    config_path: str
    config_sha256: str
    container_name: str
    replicate: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write, skipped when the file already holds exactly ``data``."""
    if not (path.is_file() and path.read_bytes() == data):
        write_bytes(path, data)


def plan_level(cfg: TrainingConfig, *, datasets_dir: str | Path, train_dir: str | Path,
               level: float, run_key: str, replicate: int = 1) -> TrainingPlan:
    """Write the level's YAML (and the run's DeepSpeed JSON) under ``train_dir``.

    Layout (:class:`simia.layout.TrainRoot`): ``train_dir/deepspeed.json`` (shared),
    ``train_dir/<slug>/train_config.yaml`` and ``train_dir/<slug>/output/``
    (LLaMA-Factory's ``output_dir``). Rewriting an identical YAML is a no-op, so planning
    again after a crash changes nothing.
    """
    datasets_dir = Path(datasets_dir).resolve()
    root = TrainRoot(Path(train_dir).resolve())
    dataset = dataset_for_level(datasets_dir, level, replicate)
    ds_path = None
    ds = deepspeed_config(cfg.deepspeed)
    if ds is not None:
        ds_path = root.deepspeed
        _write_if_changed(ds_path, json.dumps(ds, indent=2).encode())
    files = root.level(level, replicate)
    output_dir = files.output
    mapping = level_train_config(cfg, dataset=dataset, dataset_dir=datasets_dir,
                                 output_dir=output_dir, deepspeed_path=ds_path)
    config_path = files.config
    _write_if_changed(config_path, to_yaml(mapping).encode())
    return TrainingPlan(level=float(level), dataset=dataset, dataset_dir=str(datasets_dir),
                        output_dir=str(output_dir), config_path=str(config_path),
                        config_sha256=config_sha256(mapping),
                        container_name=container_name(run_key, level, replicate=replicate),
                        replicate=replicate)


def _read_lf_json(path: Path) -> Any:
    """LLaMA-Factory/transformers JSON (stdlib: it writes ``NaN``/``Infinity`` for a
    diverged loss, which strict parsers refuse)."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {exc}") from None


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir()
             and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def read_training_result(output_dir: str | Path) -> dict[str, Any]:
    """Summarise a finished LLaMA-Factory run from its own files in ``output_dir``.

    Returns final loss (last logged step), train loss (the trainer's average), steps,
    runtime, the loss curve, and where the model is (``output_dir`` when the final
    weights were saved there, else the last ``checkpoint-N``). Raises InputError when
    the run left no results or a loss is not finite.
    """
    output_dir = Path(output_dir)
    results_path = output_dir / "all_results.json"
    if not results_path.is_file():
        results_path = output_dir / "train_results.json"
    if not results_path.is_file():
        raise InputError(output_dir, "no all_results.json or train_results.json: the "
                                     "training did not finish (see the container log above)")
    results = _read_lf_json(results_path)
    log_path = output_dir / "trainer_log.jsonl"
    steps: list[dict[str, Any]] = []
    if log_path.is_file():
        for n, line in enumerate(log_path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                steps.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(log_path, f"not JSON: {exc}", record=n) from None
    losses = [(s.get("current_steps"), s["loss"]) for s in steps
              if isinstance(s.get("loss"), (int, float))]
    state_path = output_dir / "trainer_state.json"
    state = _read_lf_json(state_path) if state_path.is_file() else {}
    if not losses:  # fall back on the trainer state's log history
        losses = [(h.get("step"), h["loss"]) for h in state.get("log_history", [])
                  if isinstance(h.get("loss"), (int, float))]
    train_loss = results.get("train_loss")
    bad = [(step, loss) for step, loss in losses if not math.isfinite(loss)]
    if bad or (isinstance(train_loss, (int, float)) and not math.isfinite(train_loss)):
        raise InputError(log_path, f"loss is not finite (train_loss={train_loss}, first bad "
                                   f"step/loss: {bad[:1]})", field="loss")
    weights = any((output_dir / n).exists() for n in
                  ("model.safetensors", "model.safetensors.index.json",
                   "adapter_model.safetensors", "pytorch_model.bin"))
    checkpoints = _checkpoints(output_dir)
    model_path = output_dir if weights else (checkpoints[-1] if checkpoints else None)
    if model_path is None:
        raise InputError(output_dir, "no saved model (no weights and no checkpoint-N)")
    total_steps = (steps[-1].get("total_steps") if steps else None) or state.get("max_steps")
    return {
        "final_loss": losses[-1][1] if losses else None,
        "train_loss": train_loss,
        "steps": (steps[-1].get("current_steps") if steps else None)
        or state.get("global_step"),
        "total_steps": total_steps,
        "epoch": results.get("epoch"),
        "train_runtime_s": results.get("train_runtime"),
        "train_samples_per_second": results.get("train_samples_per_second"),
        "model_path": str(model_path),
        "checkpoints": [str(p) for p in checkpoints],
        "loss_curve": [[s, loss] for s, loss in losses],
    }


def completed_summary(output_dir: str | Path, config_sha: str) -> dict[str, Any] | None:
    """The saved summary of a level trained with this exact config, else None."""
    path = TrainFiles.of_output(output_dir).summary
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("config_sha256") != config_sha:
        return None
    if not Path(summary.get("model_path", "")).exists():
        return None
    return summary


def write_summary(plan: TrainingPlan, result: dict[str, Any]) -> dict[str, Any]:
    """Record a finished level next to its output (atomic); returns what was written."""
    summary = {"level": plan.level, "replicate": plan.replicate, "dataset": plan.dataset,
               "config_sha256": plan.config_sha256, "config_path": plan.config_path,
               "output_dir": plan.output_dir, **result}
    write_json(TrainFiles.of_output(plan.output_dir).summary, summary, indent=True)
    return summary


def default_user() -> str:
    """``uid:gid`` of this process: the container writes files the worker can manage."""
    return f"{os.getuid()}:{os.getgid()}"


def container_spec(cfg: TrainingConfig, plan: TrainingPlan, run_dir: str | Path,
                   settings: ContainerSettings) -> dict[str, Any]:
    """Image, command, environment, mounts and shm size of one level's container.

    Mounts keep host paths (source = target): the run directory (read-write), the model
    cache (read-write), the datasets folder when it lies outside the run directory and a
    local model directory (both read-only). Returned as plain data (JSON-able, for XCom
    and ``expand_kwargs``); secrets are never part of it.
    """
    if not settings.model_cache_dir:
        raise ConfigError("model_cache_dir: the trainer container needs a model cache folder "
                          "(HF_HOME) on the host")
    run_dir = Path(run_dir).resolve()
    cache = Path(settings.model_cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    offline = "1" if settings.hub_offline else "0"
    env = {
        "HF_HOME": str(cache),
        "HF_HUB_OFFLINE": offline,
        "TRANSFORMERS_OFFLINE": offline,
        "HF_DATASETS_OFFLINE": offline,
        "HOME": "/tmp",
        "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "DISABLE_VERSION_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.deepspeed != "none":
        env["FORCE_TORCHRUN"] = "1"
        env["NPROC_PER_NODE"] = str(max(1, settings.gpus_per_training))
    mounts = [{"source": str(run_dir), "target": str(run_dir), "type": "bind",
               "read_only": False},
              {"source": str(cache), "target": str(cache), "type": "bind",
               "read_only": False}]
    datasets = Path(plan.dataset_dir)
    if not datasets.is_relative_to(run_dir):
        mounts.append({"source": str(datasets), "target": str(datasets), "type": "bind",
                       "read_only": True})
    model = Path(cfg.model)
    if model.is_absolute():
        if not model.is_dir():
            raise ConfigError(f"model {cfg.model!r} looks like a local path but is not a "
                              "folder the worker can see (use a hub id or an existing path)")
        if not (model.is_relative_to(run_dir) or model.is_relative_to(cache)):
            mounts.append({"source": str(model), "target": str(model), "type": "bind",
                           "read_only": True})
    return {
        "image": settings.image,
        "command": ["llamafactory-cli", "train", plan.config_path],
        "environment": env,
        "mounts": mounts,
        "shm_size": int(settings.shm_size_gb * 1024**3),
        "user": default_user(),
        "container_name": plan.container_name,
    }


def write_train_config(cfg: TrainingConfig, *, datasets_dir: str | Path, level: float,
                       out_file: str | Path, output_dir: str | Path | None = None,
                       replicate: int = 1) -> dict[str, Any]:
    """``simia train-config``: the YAML one training run (level, replicate) would train
    with, written to ``out_file`` (with ``deepspeed.json`` beside it when DeepSpeed is
    on). ``cfg`` is the run's config: the replicate's seed is derived here, as the DAG
    does.

    ``output_dir`` defaults to ``<folder of out_file>/<dataset name>``. Nothing is
    written when it fails: a ``deepspeed.json`` written before the YAML could not be is
    put back as it was (removed, if it was new).
    """
    cfg = cfg.for_replicate(replicate)
    out_file = Path(out_file).resolve()
    datasets_dir = Path(datasets_dir).resolve()
    dataset = dataset_for_level(datasets_dir, level, replicate)
    ds = deepspeed_config(cfg.deepspeed)
    ds_path = TrainRoot(out_file.parent).deepspeed if ds is not None else None
    output_dir = Path(output_dir).resolve() if output_dir else out_file.parent / dataset
    mapping = level_train_config(cfg, dataset=dataset, dataset_dir=datasets_dir,
                                 output_dir=output_dir, deepspeed_path=ds_path)
    if ds_path is None:
        write_bytes(out_file, to_yaml(mapping).encode())
    else:
        before = ds_path.read_bytes() if ds_path.is_file() else None
        write_json(ds_path, ds, indent=True)
        try:
            write_bytes(out_file, to_yaml(mapping).encode())
        except BaseException:
            if before is None:
                ds_path.unlink(missing_ok=True)
            else:
                write_bytes(ds_path, before)
            raise
    return {"config": str(out_file), "deepspeed": str(ds_path) if ds_path else None,
            "dataset": dataset, "output_dir": str(output_dir),
            "config_sha256": config_sha256(mapping)}
