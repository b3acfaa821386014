"""Typed option schemas: every registered plugin object declares the options it accepts.

An option is validated (and coerced from CLI strings) before a run config is built, so a typo
is an error at the command line, never a silently ignored setting deep inside a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sparsebench import SparsebenchError

_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}


@dataclass(frozen=True)
class Option:
    """One option of a plugin: name, type, default and what it means."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None  # smallest allowed value of a numeric option

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"option {self.name!r}: type must be one of int, float, str, bool")

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
        if self.minimum is not None and value < self.minimum:
            raise SparsebenchError(f"{owner}: option {self.name!r} must be >= {self.minimum:g}, got {value!r}")
        return value


def validate_options(schema: tuple[Option, ...], given: Mapping[str, Any], owner: str) -> dict:
    """Check `given` against `schema`: unknown names and ill-typed values are errors.

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
        out.setdefault(target, {})[name] = value
    return out
