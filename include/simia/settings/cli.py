"""The ``simia`` command line's options for run settings, derived from the models.

:func:`add_options` adds one ``--option`` per run setting of a model (name, default,
choices, help from the field, see :mod:`simia.settings.fields`), with the Param's name
as the ``argparse`` destination, so :func:`options_model` builds the model from the
parsed arguments exactly as the DAG builds it from its Params.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel

from simia.settings.fields import RunSetting, run_settings, settings_values

__all__ = ["add_options", "add_setting", "levels_type", "options_model"]

M = TypeVar("M", bound=BaseModel)


def levels_type(text: str) -> tuple[float, ...]:
    """``0,5,10,20`` -> ``(0, 5, 10, 20)`` (an argparse type)."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"levels must be comma-separated percentages like 0,5,10,20, got {text!r}"
        ) from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None`` and whether it allowed None."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _argparse_kwargs(s: RunSetting, defining: RunSetting) -> dict[str, Any]:
    annotation, _ = _plain(typing.get_type_hints(defining.model)[defining.field])
    default = defining.default()
    kw: dict[str, Any] = {"dest": s.param, "default": default}
    if annotation is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        kw.update(choices=choices, type=type(choices[0]))
    elif get_origin(annotation) is tuple:
        kw["type"] = levels_type
    elif annotation in (int, float, str):
        kw["type"] = annotation
    else:
        raise TypeError(f"{defining.model.__name__}.{defining.field}: no command-line form "
                        f"for {annotation!r}; exclude it and add the option by hand")
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    help_text = (defining.info.description or defining.info.title or "").rstrip(".")
    if shown not in (None, "") and not isinstance(default, bool):
        help_text += f" (default: {shown})"
    kw["help"] = help_text.replace("%", "%%")
    return kw


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                model: type[BaseModel], *, exclude: Iterable[str] = ()) -> None:
    """One option per run setting of ``model`` except the fields in ``exclude``; a field
    that takes another setting's value (``from_setting``) gets that setting's option."""
    from simia.settings import defined_settings

    skip = set(exclude)
    defined = defined_settings()
    for s in run_settings(model):
        if s.field in skip:
            continue
        defining = s if s.defined else defined[s.param]
        parser.add_argument(f"--{defining.cli}", **_argparse_kwargs(s, defining))


def add_setting(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                param: str) -> None:
    """The option of one run setting (by its Param's name)."""
    from simia.settings import defined_settings

    defining = defined_settings()[param]
    parser.add_argument(f"--{defining.cli}", **_argparse_kwargs(defining, defining))


def options_model(model: type[M], args: argparse.Namespace, **values: Any) -> M:
    """``model`` from parsed options (as the DAG builds it from Params); ``values`` set
    its other fields."""
    return model(**{**settings_values(model, vars(args)), **values})
