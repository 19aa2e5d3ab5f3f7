"""Training settings: the hyperparameters every level shares, the trainer container, and
whether and where models are trained."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from simia.settings.data import replicate_seed
from simia.settings.fields import (SettingsModel, env_default, from_setting,
                                   gpu_ids_default, gpus_per_training_default, has_gpus,
                                   setting)

__all__ = ["ContainerSettings", "DeepSpeedMode", "TrainingConfig", "TrainingRunSettings",
           "default_trainer_image"]

DeepSpeedMode = Literal["none", "zero2", "zero3", "zero3_offload"]


# LLaMA-Factory keys that the typed fields (under other names) or the per-level plan own;
# a field's own name is owned too. `extra` may not set them
_OWNED_KEYS = frozenset({"model_name_or_path", "packing", "dataset", "dataset_dir",
                         "output_dir", "stage", "do_train"})


class TrainingConfig(SettingsModel):
    """Hyperparameters shared by every level of a run (defaults: the reference recipe).

    ``extra`` adds further LLaMA-Factory keys (e.g. ``warmup_ratio``, ``use_cpu``,
    ``save_total_limit``); it may not redefine a key that a field owns, nor the per-level
    keys. ``max_steps`` (0 = off) caps the run for smoke tests regardless of epochs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Training"

    model: str = setting("Qwen/Qwen2.5-7B-Instruct", param="base_model", cli="model",
                         min_length=1, title="Base model",
                         description="Hub id, or a local folder the workers and Docker can see.")
    template: str = setting("qwen", min_length=1, title="Chat template",
                            description="LLaMA-Factory template (qwen renders what vLLM "
                                        "serves).")
    finetuning_type: Literal["full", "lora"] = setting(
        "full", title="Fine-tuning", description="full (the reference) or lora (rank 8, all "
                                                 "linear layers).")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_target: str = "all"
    num_train_epochs: float = setting(2.0, param="epochs", gt=0, title="Epochs",
                                      description="Passes over each level's dataset.")
    max_steps: int = setting(0, ge=0, title="Max steps",
                             description="0: by epochs. A cap for smoke runs.")
    learning_rate: float = setting(5e-6, gt=0, title="Learning rate",
                                   description="Peak, cosine schedule.")
    per_device_train_batch_size: int = setting(
        1, param="batch_size", ge=1, title="Batch size per device",
        description="Packed sequences per GPU and step.")
    gradient_accumulation_steps: int = setting(
        2, param="grad_accum", ge=1, title="Gradient accumulation",
        description="Steps accumulated per optimizer update.")
    cutoff_len: int = setting(12000, ge=16, title="Cutoff length",
                              description="Tokens per packed sequence.")
    neat_packing: bool = setting(True, title="Neat packing",
                                 description="Pack conversations without cross-attention "
                                             "between them.")
    flash_attn: Literal["fa2", "sdpa", "auto", "disabled"] = setting(
        "fa2", title="Attention kernel", description="fa2 falls back to SDPA where flash-attn "
                                                     "is absent.")
    bf16: bool = setting(True, title="bf16",
                         description="Off on CPUs (or set use_cpu in extra keys).")
    deepspeed: DeepSpeedMode = setting(
        "zero3", title="DeepSpeed", description="zero3_offload: ZeRO-3 with CPU offload "
                                                "(8x40 GB); zero2 for 80 GB GPUs.")
    lr_scheduler_type: str = "cosine"
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    preprocessing_num_workers: int = setting(
        32, param="preprocessing_workers", ge=1, title="Preprocessing workers",
        description="Tokenization processes.")
    seed: int = from_setting("seed", 42)
    extra: dict[str, Any] = setting(
        default_factory=dict, param="train_extra", title="Extra LLaMA-Factory keys",
        description='e.g. {"warmup_ratio": 0.1}. May not redefine the settings above.')

    def for_replicate(self, replicate: int) -> TrainingConfig:
        """The config of training run ``replicate`` (1-based): its own seed."""
        return self.model_copy(update={"seed": replicate_seed(self.seed, replicate)})

    @field_validator("extra")
    @classmethod
    def _extra_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(value) & (_OWNED_KEYS | set(cls.model_fields) - {"extra", "model"}))
        if clash:
            raise ValueError(
                f"extra LLaMA-Factory keys may not set {', '.join(clash)}: use the typed "
                "setting (dataset, dataset_dir and output_dir are chosen per level)")
        for key, item in value.items():
            try:
                json.dumps(item)
            except TypeError:
                raise ValueError(f"extra key {key!r}: value {item!r} is not a plain "
                                 "JSON/YAML value") from None
        return value


def default_trainer_image() -> str:
    """``SIMIA_TRAINER_IMAGE``, else the CUDA image on a host with GPUs, the CPU one
    without."""
    return env_default("SIMIA_TRAINER_IMAGE",
                       "simia/trainer:cuda" if has_gpus() else "simia/trainer:cpu")()


class ContainerSettings(SettingsModel):
    """How the trainer container runs (not hyperparameters: they may differ by host).

    ``model_cache_dir`` is the Hugging Face cache (``HF_HOME``) on the host, bind-mounted
    at the same path (a run without one uses ``<data_root>/hf-cache``); ``hub_offline``
    sets ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Training"

    image: str = setting(default_factory=default_trainer_image, param="trainer_image",
                         min_length=1, title="Trainer image",
                         description="simia/trainer:cuda (docker/trainer/Dockerfile) or "
                                     "simia/trainer:cpu for machines without a GPU.")
    gpus_per_training: int = setting(
        default_factory=gpus_per_training_default, ge=0, title="GPUs per training",
        description="Each level trains on this many leased GPUs; with 8 GPUs and 2 per "
                    "training, 4 levels train at once. 0: CPU. Default: every GPU of "
                    "SIMIA_GPU_IDS; with SIMIA_GPU_HOSTS, those of the smallest GPU host.")
    model_cache_dir: str | None = setting(
        default_factory=env_default("SIMIA_HF_CACHE"), title="Model cache (HF_HOME)",
        description="Host folder for hub downloads, mounted at the same path. Empty: "
                    "$SIMIA_HF_CACHE, else <data_root>/hf-cache.")
    hub_offline: bool = setting(False, title="Hub offline",
                                description="HF_HUB_OFFLINE=1: only the cache or local paths.")
    shm_size_gb: float = setting(16.0, gt=0, title="Shared memory (GB)",
                                 description="/dev/shm of the trainer container.")

    @field_validator("model_cache_dir")
    @classmethod
    def _cache_given(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value


class TrainingRunSettings(SettingsModel):
    """Whether models are trained, and on which GPUs of the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Training"

    train_models: bool = setting(True, title="Train models",
                                 description="Off: stop after the datasets.")
    gpu_ids: str | None = setting(
        default_factory=gpu_ids_default, title="GPU ids",
        description="GPUs the trainings may use, e.g. 0,1,2,3 (default: SIMIA_GPU_IDS). "
                    "Empty: CPU.")
