"""JSON-schema type checks of tool-call arguments, shared by processing and the rule scorer.

Both reference scripts checked an argument against its declared ``type`` with the same
table, except that the validation step (tool_correct) let a boolean pass as an integer
or number (Python's ``bool`` is an ``int``) and checked an array's item type, while the
rule scorer did neither. :func:`json_type_ok` is that one table, with those two
differences as arguments.
"""

from __future__ import annotations

from typing import Any

__all__ = ["json_type_ok"]


def json_type_ok(value: Any, expected: Any, items: Any = None, *,
                 bool_is_number: bool = False) -> bool:
    """Whether ``value`` has the JSON-schema type ``expected`` (string, integer, number,
    boolean, array, object; anything else, e.g. a missing type, accepts every value).

    ``items``: an array's item type, checked on every element when given (one level
    deep, as the reference did). ``bool_is_number``: let ``True``/``False`` pass as an
    integer or number (the reference validation step's behaviour).
    """
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return isinstance(value, int) and (bool_is_number or not isinstance(value, bool))
    if expected == "number":
        return isinstance(value, (int, float)) and (bool_is_number
                                                    or not isinstance(value, bool))
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        if not isinstance(value, list):
            return False
        return not items or all(json_type_ok(v, items, bool_is_number=bool_is_number)
                                for v in value)
    if expected == "object":
        return isinstance(value, dict)
    return True
