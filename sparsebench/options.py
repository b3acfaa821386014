"""Typed option schemas: every registered plugin object declares the options it accepts.

An option is validated (and coerced from CLI strings) before a run config is built, so a typo
is an error at the command line, never a silently ignored setting deep inside a run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sparsebench import SparsebenchError

_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}
_INTERVAL = re.compile(r"([\[(])\s*(-inf|[-+0-9.e]+)\s*,\s*(inf|[-+0-9.e]+)\s*([\])])")


def _bounds(interval: str) -> tuple[float, float, bool, bool]:
    """(low, high, low_open, high_open) of an interval written as in maths: "(0, 1]", "[1, inf)"."""
    match = _INTERVAL.fullmatch(interval.strip())
    if match is None:
        raise ValueError(interval)
    low, high = float(match[2]), float(match[3])
    if not low <= high:
        raise ValueError(interval)
    return low, high, match[1] == "(", match[4] == ")"


@dataclass(frozen=True)
class Option:
    """One option of a plugin: name, type, default, what it means, and the values allowed.

    `interval` bounds an int or float option, written as in maths: "(0, 1]" excludes 0 and
    includes 1, "[1, inf)" is any value from 1 up. Out-of-range values would otherwise train
    something other than what was asked and be stored as `done`.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    interval: str | None = None

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"option {self.name!r}: type must be one of int, float, str, bool")
        if self.interval is not None:
            if self.type not in (int, float):
                raise TypeError(f"option {self.name!r}: only int and float options take an interval")
            try:
                _bounds(self.interval)
            except ValueError:
                raise TypeError(
                    f"option {self.name!r}: interval {self.interval!r} is not like '(0, 1]' or '[1, inf)'"
                ) from None
        if self.default is not None and self.type in (int, float):
            try:
                self.check(self.default, "its default")
            except SparsebenchError as exc:
                raise TypeError(str(exc)) from None

    def check(self, value: Any, owner: str) -> None:
        """Refuse NaN, infinities and values outside `interval` with a one-line error naming `owner`."""
        if self.type is float and not math.isfinite(value):
            raise SparsebenchError(f"{owner}: option {self.name!r} expects a finite float, got {value!r}")
        if self.interval is None:
            return
        low, high, low_open, high_open = _bounds(self.interval)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise SparsebenchError(f"{owner}: option {self.name!r} must lie in {self.interval}, got {value!r}")

    def coerce(self, value: Any, owner: str) -> Any:
        """Return `value` as this option's type, or raise a one-line error naming `owner`."""
        if value is None:
            return None
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = low in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise SparsebenchError(
                f"{owner}: option {self.name!r} expects {_TYPES[self.type]}, got {value!r}"
            ) from None
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise SparsebenchError(f"{owner}: option {self.name!r} must be one of {allowed}, got {value!r}")
        if self.type in (int, float):
            self.check(value, owner)
        return value


def validate_options(schema: tuple[Option, ...], given: Mapping[str, Any], owner: str) -> dict:
    """Check `given` against `schema`: unknown names, ill-typed and out-of-range values are errors.

    Returns the full option dict with defaults filled in.
    """
    known = {o.name: o for o in schema}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise SparsebenchError(f"{owner}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    out = {}
    for name, opt in known.items():
        out[name] = opt.coerce(given[name], owner) if name in given else opt.default
    return out


def parse_option_strings(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, str]]:
    """Parse CLI `--option target.name=value` strings into {target: {name: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        target, dot, name = key.partition(".")
        if not sep or not dot or not target or not name:
            raise SparsebenchError(f"--option {item!r}: expected PLUGIN.NAME=VALUE, e.g. stugan.explore=gd")
        if name in out.get(target, {}):
            raise SparsebenchError(
                f"--option {target}.{name} given twice ({out[target][name]!r} and {value!r}); give it once"
            )
        out.setdefault(target, {})[name] = value
    return out
