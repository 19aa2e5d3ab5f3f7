"""How the report writes numbers: shared by the headline, the templates (as filters) and
the plots' labels."""

from __future__ import annotations

import json
from typing import Any

from simia.report.stats import Estimate

__all__ = ["ci", "g", "interval", "num", "p_value", "pct", "to_json_text"]


def pct(level: float) -> str:
    """A sycophancy level: ``5`` -> ``5 %``."""
    return f"{level:g} %"


def g(value: float) -> str:
    """A number in its shortest general form (``50``, ``12.5``)."""
    return f"{value:g}"


def num(x: float | None, digits: int = 2) -> str:
    """Fixed-point with ``digits`` decimals; ``n/a`` for None."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def interval(point: float, bounds: Estimate, digits: int = 2) -> str:
    """``point [low, high]`` with the interval of ``bounds``."""
    return f"{point:.{digits}f} [{bounds.low:.{digits}f}, {bounds.high:.{digits}f}]"


def ci(e: Estimate | None, digits: int = 2) -> str:
    """An estimate with its interval; ``n/a`` for None."""
    return "n/a" if e is None else interval(e.estimate, e, digits)


def p_value(p: float | None) -> str:
    """``p < 0.001``, ``p = 0.004`` (three decimals below 0.01), ``p = 0.12``."""
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def to_json_text(value: Any, sort_keys: bool = False) -> str:
    """A value as compact-ish JSON text, the standard library's way (``{"a": 1}``)."""
    return json.dumps(value, sort_keys=sort_keys)
