"""Typed fields shared by config sections and environment options: help lines, constraints and one coercer.

- Help: one ``name: help`` line per field in the class docstring (``--help-config`` and ``tinyzero envs`` print
  the words the code carries).
- Constraints live on the field itself: allowed values as ``Literal[...]`` in the annotation (read back with
  ``typing.get_args``), a lower bound with ``at_least(n, default)``, and values that come from a registry (an
  advantage estimator's name, say) with ``one_of(lookup, default)``; ``plain_name(default)`` is a single folder
  name (no separators, not ``.`` or ``..``).
- ``coerce`` checks one value against its field — typed YAML values and command-line strings alike — and
  names the dotted key in its one-sentence error.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from tinyzero.errors import TinyZeroError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def field_helps(cls: type) -> dict[str, str]:
    helps: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name.isidentifier():
            helps[name] = rest.strip()
    return helps


def at_least(minimum: int | float, default: Any) -> Any:
    """A field whose value must be ``minimum`` or more."""
    return dataclasses.field(default=default, metadata={"min": minimum})


def one_of(lookup: Callable[[], Iterable[str]], default: str) -> Any:
    """A field whose value must be one of ``lookup()``'s names (read when a value is checked, so names
    registered after the class was defined count too)."""
    return dataclasses.field(default=default, metadata={"choices": lookup})


def plain_name(default: str) -> Any:
    """A field whose value names one folder inside another: not empty, not ``.`` or ``..``, no path separators."""
    return dataclasses.field(default=default, metadata={"check": _plain_name_problem})


def _plain_name_problem(value: str) -> str | None:
    """Why ``value`` is not a plain folder name, or None when it is one."""
    if value.strip() in ("", ".", ".."):
        return "a folder name (not empty, '.' or '..')"
    if any(sep in value for sep in ("/", "\\", "\0")):
        return "a plain folder name, without '/', '\\' or NUL"
    return None


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(str(choice) for choice in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, dotted: str) -> Any:
    """``value`` as the type ``hint`` names; strings (from a command line) are converted where they plainly
    mean a bool or a number. Anything else is one sentence naming ``dotted``."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value in choices:
            return value
        raise TinyZeroError(f"{dotted} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string: it is plainly a number
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise TinyZeroError(f"{dotted} must be a mapping, got {value!r}")
    else:
        return value
    raise TinyZeroError(f"{dotted} must be {type_name(hint)}, got {value!r}")


def check_constraints(field: dataclasses.Field, value: Any, dotted: str) -> None:
    """The bounds and registry choices declared on ``field`` (Literal choices are checked by ``coerce``)."""
    lookup = field.metadata.get("choices")
    if lookup is not None:
        names = tuple(lookup())
        if value not in names:
            raise TinyZeroError(f"{dotted} must be one of {', '.join(names)}, got {value!r}")
    check = field.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem is not None:
        raise TinyZeroError(f"{dotted} must be {problem}, got {value!r}")
    minimum = field.metadata.get("min")
    if minimum is not None and value < minimum:
        bound = "at least 1" if minimum == 1 else "0 or more" if minimum == 0 else f"at least {minimum}"
        raise TinyZeroError(f"{dotted} must be {bound}, got {value!r}")


def build(cls: type, values: Mapping[str, Any], prefix: str, *, unknown: Callable[[str, list[str]], str],
          nested: Callable[[type, Any, str], Any] | None = None) -> Any:
    """An instance of the dataclass ``cls`` from ``values``, every value coerced and checked against its field.

    ``unknown(dotted, valid_names)`` words the error for a key the class lacks; ``nested`` builds a field whose
    type is itself a dataclass (config sections)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise TinyZeroError(unknown(dotted, list(fields)))
        hint = hints[key]
        if nested is not None and dataclasses.is_dataclass(hint):
            kwargs[key] = nested(hint, value, dotted + ".")
            continue
        kwargs[key] = coerce(value, hint, dotted)
        check_constraints(fields[key], kwargs[key], dotted)
    return cls(**kwargs)
