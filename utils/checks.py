"""Argument checks and value parsing, one way everywhere: every bad value is one ValueError sentence naming
the argument, the value and what is expected (the CLIs turn ValueError into their one-line usage errors)."""
from __future__ import annotations

import ast
import math
import numbers
from typing import Any, Optional, Sequence, Tuple


def _int_expected(low: int, high: Optional[int]) -> str:
    if high is not None:
        return f"an integer in [{low}, {high}]"
    return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")


def check_int(name: str, value, low: int = 1, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high]. bool (True would be 1), floats, NaN and strings are refused; numpy
    integers are accepted."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{name} must be {_int_expected(low, high)}, got {value!r}")
    return int(value)


def check_int_list(name: str, value, low: int = 1) -> Tuple[int, ...]:
    """A non-empty list or tuple of ints >= low, as a tuple (a bare int or a string is refused whole)."""
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
        not isinstance(v, bool) and isinstance(v, numbers.Integral) and v >= low for v in value)
    if not ok:
        expected = {0: "non-negative integers", 1: "positive integers"}.get(low, f"integers >= {low}")
        raise ValueError(f"{name} must be a non-empty list of {expected}, got {value!r}")
    return tuple(int(v) for v in value)


def check_number(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within the bounds given (each end open or closed), as a float."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (low is None or value > low or (not low_open and value == low))
          and (high is None or value < high or (not high_open and value == high)))
    if not ok:
        if low is not None and high is not None:
            expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            expected = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            expected = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            expected = "a finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def check_fraction(name: str, value, low_open: bool = False, high_open: bool = True) -> float:
    """A finite number in [0, 1], each end open or closed as asked (default [0, 1))."""
    return check_number(name, value, 0, 1, low_open, high_open)


def check_probability(name: str, value) -> float:
    """A rate in [0, 1), such as dropout."""
    return check_number(name, value, 0, 1, high_open=True)


def check_bool(name: str, value) -> bool:
    """Only True or False: a string such as "no" would otherwise count as True."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence[Any]) -> Any:
    if isinstance(value, bool) or value not in choices or (isinstance(value, str) != all(isinstance(c, str) for c in choices)):
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """A command-line value: true/false and none/null in any case, then a Python literal when it reads as
    one (8, 0.5, (1, 2), 'x'), else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text
