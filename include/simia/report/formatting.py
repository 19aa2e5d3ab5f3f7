"""How the report writes numbers: shared by the headline, the templates (as filters) and
the plots' labels."""

from __future__ import annotations

import json
from typing import Any

from simia.report.stats import Estimate

__all__ = ["bounds", "ci", "effect", "g", "interval", "num", "p_short", "p_value", "pct",
           "points", "to_json_text"]


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


def bounds(point: float | None, low: float | None, high: float | None,
           digits: int = 2) -> str:
    """``point [low, high]``; the point alone without both bounds; ``n/a`` without a point."""
    if point is None:
        return "n/a"
    if low is None or high is None:
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def points(x: float | None, digits: int = 1) -> str:
    """A change of pass^1 in points, signed: ``-0.031`` -> ``-3.1``; ``n/a`` for None."""
    if x is None:
        return "n/a"
    text = f"{x * 100:+.{digits}f}"
    return text if text.strip("+-0.") else text[1:]  # no sign on a zero (-0.0)


def effect(estimate: float | None, low: float | None = None, high: float | None = None,
           digits: int = 1) -> str:
    """A change of pass^1 (or of a rate) in points with its interval: ``-3.1 [-6.0, -0.2]``;
    the estimate alone without both bounds; ``n/a`` without an estimate."""
    if estimate is None:
        return "n/a"
    if low is None or high is None:
        return points(estimate, digits)
    return f"{points(estimate, digits)} [{points(low, digits)}, {points(high, digits)}]"


def p_short(p: float | None) -> str:
    """A p-value with two significant digits (:func:`simia.analysis.format_p`): ``0.046``,
    ``0.054``, ``<0.0001``, ``n/a``."""
    from simia.analysis.results import format_p  # numpy and statsmodels: only when used

    return format_p(p)


def p_value(p: float | None) -> str:
    """``p = 0.046``, ``p < 0.0001`` (two significant digits); ``n/a`` for None."""
    text = p_short(p)
    if text == "n/a":
        return text
    return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def to_json_text(value: Any, sort_keys: bool = False) -> str:
    """A value as compact-ish JSON text, the standard library's way (``{"a": 1}``)."""
    return json.dumps(value, sort_keys=sort_keys)
