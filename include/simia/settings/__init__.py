"""A run's settings, each written once: a field of one of these models.

:mod:`simia.settings.fields` says how a field becomes a run setting. The models, by
section: :mod:`~simia.settings.data` (where data comes from, labels, the dataset design),
:mod:`~simia.settings.llm` (the LLM, generation, seeds), :mod:`~simia.settings.training`,
:mod:`~simia.settings.serving`, :mod:`~simia.settings.evaluation` and
:mod:`~simia.settings.analysis` (the verdict's declared test and the power plan). From them,
:func:`param_specs` gives the DAG's Params (default, JSON schema, title, description,
section), the ``simia`` command line its options, and :func:`build` any model from a
run's Params (or run.json). This package imports only pydantic and the standard library
(the DAG file imports it when it is parsed).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from simia.settings.analysis import AnalysisSettings
from simia.settings.data import (CollectionSettings, DataSettings, DatasetDesign, InputSettings,
                                 JudgingSettings)
from simia.settings.evaluation import EvalSettings, EvaluationConnection
from simia.settings.fields import RunSetting, SettingsModel, run_settings, settings_values
from simia.settings.llm import (GenerationSettings, LLMConnection, LLMSettings, PriceTable,
                                SeedSettings)
from simia.settings.serving import ServerSettings, ServingRunSettings
from simia.settings.training import ContainerSettings, TrainingConfig, TrainingRunSettings

__all__ = ["AnalysisSettings", "CollectionSettings", "ContainerSettings", "DataSettings",
           "DatasetDesign", "EvalSettings", "EvaluationConnection", "GenerationSettings",
           "InputSettings", "JudgingSettings",
           "LLMConnection", "LLMSettings", "PriceTable", "RUN_MODELS", "RunSetting",
           "SeedSettings", "ServerSettings", "ServingRunSettings", "SettingsModel",
           "TrainingConfig", "TrainingRunSettings", "build", "defined_settings",
           "param_specs", "require", "run_settings", "shared_settings"]

M = TypeVar("M", bound=BaseModel)

#: every model that defines run settings, in the trigger form's order
RUN_MODELS: tuple[type[SettingsModel], ...] = (
    DataSettings, InputSettings, CollectionSettings, SeedSettings, GenerationSettings,
    LLMSettings, LLMConnection, JudgingSettings, DatasetDesign, TrainingRunSettings,
    TrainingConfig, ContainerSettings, ServingRunSettings, ServerSettings, EvaluationConnection,
    EvalSettings, AnalysisSettings)


def _all_settings() -> Iterator[RunSetting]:
    for model in RUN_MODELS:
        yield from run_settings(model)


def defined_settings() -> dict[str, RunSetting]:
    """Each run setting by Param name, where it is defined (a name defined twice is a
    programming error)."""
    out: dict[str, RunSetting] = {}
    for s in _all_settings():
        if not s.defined:
            continue
        if s.param in out:
            raise RuntimeError(f"run setting {s.param!r} is defined by both "
                               f"{out[s.param].model.__name__} and {s.model.__name__}")
        out[s.param] = s
    return out


def shared_settings() -> list[RunSetting]:
    """The fields that take the value of a setting defined elsewhere (``from_setting``)."""
    return [s for s in _all_settings() if not s.defined]


# --------------------------------------------------------------------------- Params

def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _schema(s: RunSetting) -> dict[str, Any]:
    """The JSON schema of one setting as an Airflow Param takes it (no title, default)."""
    schema = dict(s.model.model_json_schema()["properties"][s.field])
    for key in ("title", "description", "default", "simia_setting"):
        schema.pop(key, None)
    branches = schema.pop("anyOf", None)
    if branches:  # "X | None" -> type [null, X] with X's constraints
        types = ["null"] if any(b.get("type") == "null" for b in branches) else []
        for branch in branches:
            if branch.get("type") != "null":
                types.append(branch["type"])
                schema.update({k: v for k, v in branch.items() if k != "type"})
        schema["type"] = types
    if "const" in schema:  # a single choice
        schema["enum"] = [schema.pop("const")]
    if schema.get("type") == "object":
        schema.pop("additionalProperties", None)
    return schema


def param_specs() -> dict[str, dict[str, Any]]:
    """Each run setting as the keyword arguments of an Airflow ``Param``: ``default``,
    its JSON schema (type, bounds, choices), ``title``, ``description``, ``section``.
    Host-dependent defaults are read now (the DAG file is parsed on the host)."""
    out = {}
    for name, s in defined_settings().items():
        out[name] = {"default": _json_value(s.default()), **_schema(s),
                     "title": s.info.title or name, "description": s.info.description or "",
                     "section": s.section}
    return out


# --------------------------------------------------------------------------- building models

def build(model: type[M], params: Mapping[str, Any], **values: Any) -> M:
    """``model`` from a run's Params (settings it does not define keep their defaults);
    ``values`` set its other fields."""
    return model(**{**settings_values(model, params), **values})


def require(params: Mapping[str, Any], *models: type[BaseModel]) -> None:
    """A ``KeyError`` naming the first setting of ``models`` that ``params`` lacks (a
    run.json written by another version of the DAG)."""
    for model in models:
        for s in run_settings(model):
            if s.param not in params:
                raise KeyError(s.param)
