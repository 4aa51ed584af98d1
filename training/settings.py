"""One run-config key as a `Setting`: its type, its valid range and, when it has a flag, the flag's help.
The shared keys are listed in config.py; a task adds its own in its registry entry (training/tasks.py)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from utils.checks import check_bool, check_choice, check_int, check_number


class UsageError(ValueError):
    """Bad input: the message is one sentence saying what was wrong and what is expected."""


@dataclass(frozen=True)
class Setting:
    """One config key: its type, its valid range and, when it has a command-line flag, the flag's help.

    kind: "int", "float", "str", "bool", "int|float" (an int count or a float fraction), "devices", "any".
    lo / hi bound numbers (lo_open / hi_open: the bound itself is excluded); `special` values are valid
    outside them (-1: no limit); `choices` lists the valid values; `nullable`: None is valid.
    """
    key: str
    kind: str
    help: Optional[str] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    special: Tuple[Any, ...] = ()
    choices: Tuple[Any, ...] = ()
    nullable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, where: str, value: Any) -> None:
        """UsageError naming `where` (the flag, or the key and its file), the value and what is expected.
        Numbers, booleans and choices are checked by utils.checks, the one validator of the suite."""
        if (value is None and self.nullable) or self.kind == "any":
            return
        if value in self.special and not isinstance(value, bool):
            return
        try:
            if self.choices:
                check_choice(where, value, self.choices)
            elif self.kind == "bool":
                check_bool(where, value)
            elif self.kind == "int":
                check_int(where, value, low=int(self.lo) if self.lo is not None else -(2**63),
                          high=int(self.hi) if self.hi is not None else None)
            elif self.kind == "float":
                check_number(where, value, self.lo, self.hi, self.lo_open, self.hi_open)
            elif self.kind == "int|float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                        isinstance(value, int) and value < (self.lo or 0)) or (
                        isinstance(value, float) and not (math.isfinite(value) and 0 < value <= 1)):
                    raise ValueError(f"{where} must be an integer >= {int(self.lo or 0)} (a count) or a number in "
                                     f"(0, 1] (a fraction), got {value!r}")
            elif self.kind == "devices" and not _valid_devices(value):
                raise ValueError(f"{where} must be 'auto', a device count (-1: all) or a comma-separated list of "
                                 f"device indices such as 0,1, got {value!r}")
            elif self.kind == "str" and not isinstance(value, str):
                raise ValueError(f"{where} must be a string, got {value!r}")
        except ValueError as e:
            message = str(e)
            if self.special:  # the values valid outside the range, said before the value given
                message = message.replace(", got ", f" (or {' or '.join(map(str, self.special))} for no limit), got ", 1)
            if self.nullable:
                message = message.replace(", got ", " (or null), got ", 1)
            if isinstance(value, str) and self.kind not in ("str", "devices"):
                message += f" (a {type(value).__name__})"
            raise UsageError(message) from None


def _valid_devices(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not isinstance(value, str):
        return False
    if value == "auto":
        return True
    parts = value.split(",")
    if len(parts) == 1:
        return re.fullmatch(r"-1|[1-9]\d*", value.strip()) is not None
    return all(re.fullmatch(r"\d+", p.strip()) for p in parts)


def S(key, kind, help=None, **kw) -> Setting:
    return Setting(key, kind, help, **kw)


POSITIVE = dict(lo=0, lo_open=True)
PROBABILITY = dict(lo=0, hi=1, hi_open=True)  # a rate in [0, 1)
