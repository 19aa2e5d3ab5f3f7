"""Settings written once: a field of a typed model is the only definition of a setting.

A run's settings are fields of the stage models (:class:`simia.containers.training.
TrainingConfig`, :class:`simia.evaluation.evaluator.EvalSettings`, ...) and of the
run-level models in :mod:`simia.run_config`. A field declared with :func:`setting` is a
*run setting*: its name (or ``param``), default, bounds, choices, title, description and
section make the DAG's ``Param`` (trigger form), the ``simia`` command line's option and
what ``validate_params`` checks. A field declared with :func:`from_setting` takes its value
from a run setting that another model defines (one seed for every stage, say). Other
fields are internal (fixed by the code, or given by the caller).

Defaults that depend on the host (the GPUs it has, where its data lives) come from
environment variables through the functions below, read when a model is built or when
the DAG file is parsed (no I/O).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

__all__ = ["RunSetting", "SettingsModel", "env_default", "from_setting", "gpu_ids_default",
           "gpus_per_training_default", "has_gpus", "run_settings", "setting", "settings_values"]

_KEY = "simia_setting"


def setting(default: Any = ..., *, title: str, description: str = "",
            param: str | None = None, default_factory: Callable[[], Any] | None = None,
            cli: str | None = None, **constraints: Any) -> Any:
    """A field that is a run setting (a DAG Param and a command-line option).

    Args:
        default: the default value (or use ``default_factory``, e.g. :func:`env_default`).
        title: the trigger form's label.
        description: the form's help text and the option's help.
        param: the Param's name when it differs from the field's (``batch_size`` for
            ``per_device_train_batch_size``); unique across the run's settings.
        cli: the long option's name when it differs from the Param's (``model`` for
            ``base_model``); default: the Param's with dashes.
        constraints: pydantic's ``ge``, ``gt``, ``le``, ``min_length``, ...
    """
    extra = {_KEY: {"param": param, "cli": cli}}
    if default_factory is not None:
        return Field(default_factory=default_factory, title=title, description=description,
                     json_schema_extra=extra, **constraints)
    return Field(default, title=title, description=description, json_schema_extra=extra,
                 **constraints)


def from_setting(param: str, default: Any = ..., *,
                 default_factory: Callable[[], Any] | None = None, **constraints: Any) -> Any:
    """A field whose value is the run setting ``param`` (defined by another model's
    :func:`setting`); its default must equal that setting's (a test checks it)."""
    extra = {_KEY: {"from": param}}
    if default_factory is not None:
        return Field(default_factory=default_factory, json_schema_extra=extra, **constraints)
    return Field(default, json_schema_extra=extra, **constraints)


class SettingsModel(BaseModel):
    """A model some of whose fields are run settings; ``section`` is the trigger form's
    section of its settings."""

    section: ClassVar[str] = ""


@dataclass(frozen=True)
class RunSetting:
    """One run setting: where it is defined and how it is named outside."""

    param: str  # the DAG Param's name (also run.json's key)
    field: str  # the field's name in ``model``
    model: type[SettingsModel]
    info: FieldInfo
    defined: bool  # False: the field takes the value of a setting defined elsewhere
    cli: str  # the long command-line option, without dashes

    @property
    def section(self) -> str:
        return self.model.section

    def default(self) -> Any:
        """The default as the model computes it now (host-dependent ones included)."""
        return self.info.get_default(call_default_factory=True)


def run_settings(model: type[BaseModel]) -> Iterator[RunSetting]:
    """The run settings among ``model``'s fields, in declaration order."""
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        meta = extra.get(_KEY) if isinstance(extra, dict) else None
        if not isinstance(meta, dict):
            continue
        if "from" in meta:
            param = str(meta["from"])
            yield RunSetting(param, name, model, info, False, param.replace("_", "-"))
            continue
        param = meta.get("param") or name
        cli = meta.get("cli") or param
        yield RunSetting(param, name, model, info, True, cli.replace("_", "-"))


def settings_values(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """``model``'s field values from run settings keyed by Param name (the DAG's Params,
    run.json's ``params``, or the command line's options): only the settings present."""
    return {s.field: values[s.param] for s in run_settings(model) if s.param in values}


# --------------------------------------------------------------------------- host defaults

def env_default(name: str, fallback: Any = None) -> Callable[[], Any]:
    """A default factory: the environment variable ``name`` when set and not empty, else
    ``fallback``."""
    def factory() -> Any:
        return os.environ.get(name, "").strip() or fallback
    factory.__qualname__ = f"env_default({name!r})"
    return factory


def gpu_ids_default() -> str | None:
    """``SIMIA_GPU_IDS``: the GPUs of this host the pipeline may use ("0,1,2,3"); None:
    train and serve on the CPU."""
    return os.environ.get("SIMIA_GPU_IDS", "").strip() or None


def has_gpus() -> bool:
    """Whether the pipeline has GPUs: ``SIMIA_GPU_IDS`` is not empty, or with
    ``SIMIA_GPU_HOSTS`` (several hosts) one of its hosts has GPU ids."""
    from simia.settings.hosts import gpu_hosts

    hosts = gpu_hosts()
    if hosts:
        return any(h.gpus for h in hosts)
    return gpu_count() > 0


def gpus_per_training_default() -> int:
    """The default GPUs per training: every GPU of ``SIMIA_GPU_IDS`` on one host; with
    ``SIMIA_GPU_HOSTS``, the GPUs of the smallest GPU host (so that every GPU host can
    train; 0 when none has GPUs)."""
    from simia.settings.hosts import gpu_hosts

    hosts = gpu_hosts()
    if hosts:
        return min((h.gpus for h in hosts if h.gpus), default=0)
    return gpu_count()


def gpu_count() -> int:
    """How many GPU ids ``SIMIA_GPU_IDS`` lists."""
    return len([g for g in (gpu_ids_default() or "").split(",") if g.strip()])
