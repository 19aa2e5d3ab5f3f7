"""Serving a trained model for evaluation: one OpenAI-compatible server container per level.

Three backends start the same kind of server (``GET /v1/models``,
``POST /v1/chat/completions`` with ``tools`` and ``tool_choice: "auto"``):

- ``vllm`` (production, on GPUs): the official ``vllm/vllm-openai`` image with
  ``--served-model-name``, ``--enable-auto-tool-choice --tool-call-parser hermes`` (what
  Qwen2.5 emits), ``--max-model-len``, ``--gpu-memory-utilization`` and tensor parallelism
  over the leased GPUs;
- ``transformers`` (machines without a GPU, CI): :mod:`simia.containers.chat_server` in the CPU
  evaluator image: the model's chat template and the hermes tool-call parser, as vLLM,
  with transformers on the CPU;
- ``llamafactory-api``: ``llamafactory-cli api`` with the Hugging Face backend, in the
  trainer image. LLaMA-Factory's API only accepts alternating user/assistant turns that
  start with the user, so it rejects tau2's conversations (they start with the agent's
  greeting): use it for other clients only.

The server joins a Docker network of its own (one per run and level) under its
container name, so the evaluator container reaches it at ``http://<name>:<port>/v1``
and no port is ever published on the host. Health is a Docker ``HEALTHCHECK`` that asks
``/v1/models`` from inside the container, so whoever waits only needs the Docker API.
This module only describes containers (plain data); starting and stopping them is the
Airflow operators' job (``plugins/simia_airflow/serving.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


from simia.settings.serving import DEFAULT_VLLM_IMAGE, ServerSettings
from simia.errors import ConfigError, InputError
from simia.containers.training import default_user
from simia.layout import TrainFiles, run_slug

__all__ = [
    "DEFAULT_VLLM_IMAGE",
    "ServerSettings",
    "health_command",
    "network_name",
    "served_model_name",
    "server_container_name",
    "server_spec",
    "trained_model",
]


def _digest(run_key: str) -> str:
    return hashlib.sha256(run_key.encode()).hexdigest()[:10]


def server_container_name(run_key: str, level: float, replicate: int = 1) -> str:
    """``simia-serve-<sha10>-<run slug>``: deterministic, so a retry or a teardown finds
    it."""
    return f"simia-serve-{_digest(run_key)}-{run_slug(level, replicate)}"


def network_name(run_key: str, level: float, replicate: int = 1) -> str:
    """The training run's private Docker network (server + evaluator)."""
    return f"simia-net-{_digest(run_key)}-{run_slug(level, replicate)}"


def served_model_name(level: float, replicate: int = 1) -> str:
    """The ``model`` the evaluator sends (``--served-model-name`` / ``API_MODEL_NAME``)."""
    return f"simia-{run_slug(level, replicate)}"


def health_command(port: int) -> list[str]:
    """A Docker HEALTHCHECK that succeeds once the server lists its models."""
    probe = ("import sys, urllib.request; "
             f"r = urllib.request.urlopen('http://127.0.0.1:{port}/v1/models', timeout=5); "
             "sys.exit(0 if r.status == 200 else 1)")
    return ["CMD", "python3", "-c", probe]


def trained_model(train_dir: str | Path) -> dict[str, Any]:
    """What a level's training produced: model path, base model and fine-tuning type.

    Reads ``train/<slug>/training_summary.json`` and the YAML the training ran with
    (LoRA adapters are served on top of their base model); ``train_dir`` is the level's
    folder (:class:`simia.layout.TrainFiles`).
    """
    files = TrainFiles(train_dir)
    summary_path = files.summary
    if not summary_path.is_file():
        raise InputError(summary_path, "no training summary: this level was not trained "
                         "(train_model must succeed before serve_model)")
    from simia.io import read_json

    summary = read_json(summary_path, what="training summary")
    model_path = summary.get("model_path") if isinstance(summary, dict) else None
    if not isinstance(model_path, str) or not Path(model_path).is_dir():
        raise InputError(summary_path, f"model_path {model_path!r} is not a folder",
                         field="model_path")
    config_path = summary.get("config_path") or files.config
    return model_from_config(config_path, model_path, summary.get("level"))


def model_from_config(config_path: str | Path, model_path: str,
                      level: float | None) -> dict[str, Any]:
    """The model a level serves, :func:`trained_model`'s shape: ``model_path`` (the
    training's output) with the base model and fine-tuning type of the YAML the level
    trains with (LoRA adapters are served on top of their base model)."""
    import yaml

    config_path = Path(config_path)
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(config_path, f"cannot read the training config: {exc}") from None
    if not isinstance(config, dict):
        raise InputError(config_path, "the training config is not a mapping")
    return {"model_path": model_path, "base_model": str(config.get("model_name_or_path", "")),
            "finetuning_type": str(config.get("finetuning_type", "full")), "level": level}


def server_spec(settings: ServerSettings, *, model: dict[str, Any], level: float,
                run_key: str, run_dir: str | Path, replicate: int = 1) -> dict[str, Any]:
    """Image, command, environment, mounts, network and health check of one server.

    ``model`` is :func:`trained_model`'s result. Returned as plain, JSON-able data with no
    secrets; paths are the same on the host, in the worker and in the container.
    """
    name = server_container_name(run_key, level, replicate)
    served = served_model_name(level, replicate)
    run_dir = Path(run_dir).resolve()
    cache = Path(settings.model_cache_dir).resolve()
    lora = model["finetuning_type"] == "lora"
    if lora and not model["base_model"]:
        raise ConfigError(f"level {level:g} %: a LoRA adapter needs its base model, and the "
                          "training config names none")
    offline = "1" if settings.hub_offline else "0"
    env = {"HF_HOME": str(cache), "HF_HUB_OFFLINE": offline, "TRANSFORMERS_OFFLINE": offline,
           "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    port = str(settings.port)
    if settings.backend == "vllm":
        entrypoint = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        weights = model["base_model"] if lora else model["model_path"]
        command = ["--model", weights, "--served-model-name", served,
                   "--host", "0.0.0.0", "--port", port,
                   "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                   "--max-model-len", str(settings.max_model_len),
                   "--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}",
                   "--tensor-parallel-size", str(max(1, settings.gpus_per_server)),
                   "--seed", str(settings.seed)]
        if lora:
            command += ["--enable-lora", "--lora-modules", f"{served}={model['model_path']}",
                        "--max-lora-rank", "64"]
        env["VLLM_NO_USAGE_STATS"] = "1"
    elif settings.backend == "transformers":
        entrypoint = None
        command = ["python3", "-m", "simia.containers.chat_server", "--served-model-name", served,
                   "--port", port, "--max-model-len", str(settings.max_model_len)]
        if lora:
            command += ["--model", model["base_model"], "--adapter", model["model_path"]]
        else:
            command += ["--model", model["model_path"]]
    else:
        entrypoint = None
        command = ["llamafactory-cli", "api", "--template", settings.template,
                   "--infer_backend", "huggingface", "--infer_dtype", "float32"]
        if lora:
            command += ["--model_name_or_path", model["base_model"],
                        "--adapter_name_or_path", model["model_path"],
                        "--finetuning_type", "lora"]
        else:
            command += ["--model_name_or_path", model["model_path"]]
        env.update({"API_HOST": "0.0.0.0", "API_PORT": port, "API_MODEL_NAME": served,
                    "DISABLE_VERSION_CHECK": "1"})
    command += list(settings.extra_args)
    mounts = [{"source": str(run_dir), "target": str(run_dir), "type": "bind",
               "read_only": True},
              {"source": str(cache), "target": str(cache), "type": "bind",
               "read_only": False}]
    for path in {model["model_path"], model["base_model"]}:
        p = Path(path) if path else None
        if p is not None and p.is_absolute() and p.is_dir() and not (
                p.is_relative_to(run_dir) or p.is_relative_to(cache)):
            mounts.append({"source": str(p), "target": str(p), "type": "bind",
                           "read_only": True})
    return {
        "level": float(level),
        "replicate": replicate,
        "slug": run_slug(level, replicate),
        "backend": settings.backend,
        "image": settings.image,
        "entrypoint": entrypoint,
        "command": command,
        "environment": env,
        "mounts": mounts,
        "shm_size": int(settings.shm_size_gb * 1024**3),
        "user": default_user(),
        "container_name": name,
        "network": network_name(run_key, level, replicate),
        "served_model_name": served,
        "base_url": f"http://{name}:{port}/v1",
        "healthcheck": health_command(settings.port),
        "startup_timeout_s": settings.startup_timeout_s,
        "gpus_per_server": settings.gpus_per_server if settings.backend == "vllm" else 0,
        "model_path": model["model_path"],
    }
