"""Serving settings: how each level's model is served for its evaluation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from simia.settings.fields import SettingsModel, env_default, from_setting, has_gpus, setting

__all__ = ["Backend", "DEFAULT_VLLM_IMAGE", "ServerSettings", "ServingRunSettings",
           "default_backend", "default_server_image"]

# Pinned; a Param overrides it. v0.10.1.1 serves Qwen2.5 with the hermes tool parser.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.10.1.1"


Backend = Literal["vllm", "transformers", "llamafactory-api"]


def default_backend() -> Backend:
    """vLLM (the production server) on a host with GPUs; the CPU server without."""
    return "vllm" if has_gpus() else "transformers"


def default_server_image() -> str:
    """``SIMIA_SERVER_IMAGE``, else the pinned vLLM image on a host with GPUs and the CPU
    evaluator image (which holds the CPU server) without."""
    return env_default("SIMIA_SERVER_IMAGE",
                       DEFAULT_VLLM_IMAGE if has_gpus() else "simia/evaluator:cpu")()


class ServerSettings(SettingsModel):
    """How a level's model is served (identical for every level of a run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Serving"

    backend: Backend = setting(
        default_factory=default_backend, param="serve_backend", title="Server backend",
        description="vllm (GPUs; the production server); transformers (CPU, machines "
                    "without a GPU: the chat template + hermes tool parser as vLLM, in "
                    "simia/evaluator:cpu); llamafactory-api (llamafactory-cli api: rejects "
                    "tau2's greeting-first conversations).")
    image: str = setting(default_factory=default_server_image, param="server_image",
                         min_length=1, title="Server image",
                         description="vllm/vllm-openai (pinned) for vllm; simia/evaluator:cpu "
                                     "for transformers; the trainer image for "
                                     "llamafactory-api.")
    port: int = Field(8000, ge=1, le=65535)
    max_model_len: int = setting(32768, ge=256, title="Max model length",
                                 description="Tokens per request; tau2's system prompt and 13 "
                                             "tools take about 8k.")
    gpu_memory_utilization: float = setting(0.9, gt=0, le=1, title="GPU memory fraction",
                                            description="vLLM's --gpu-memory-utilization.")
    gpus_per_server: int = setting(1, ge=0, title="GPUs per server",
                                   description="Leased like training GPUs (tensor parallel). "
                                               "0 with llamafactory-api.")
    template: str = from_setting("template", "qwen", min_length=1)
    startup_timeout_s: float = setting(
        1200.0, param="server_startup_timeout_s", ge=10, title="Server start timeout (s)",
        description="serve_model fails (with the server's log) if the server is not healthy "
                    "by then.")
    seed: int = from_setting("seed", 42)
    extra_args: tuple[str, ...] = setting((), param="server_extra_args",
                                          title="Extra server arguments",
                                          description='e.g. ["--enforce-eager"].')
    model_cache_dir: str = Field(..., min_length=1)
    hub_offline: bool = from_setting("hub_offline", False)
    shm_size_gb: float = Field(8.0, gt=0)


class ServingRunSettings(SettingsModel):
    """Whether trained models are served and evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = "Serving"

    evaluate_models: bool = setting(True, title="Serve and evaluate",
                                    description="Off: stop after training.")
