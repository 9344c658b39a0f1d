"""Typed fields shared by config sections and environment options: help lines, constraints and one coercer.

- Help: one ``name: help`` line per field in the class docstring (``--help-config`` and ``tinyzero envs`` print
  the words the code carries).
- Constraints live on the field itself: allowed values as ``Literal[...]`` in the annotation (read back with
  ``typing.get_args``), a range with ``at_least(n, default)`` or ``between(low, high, default)`` (``low_open``
  for (low, high]), and values that come from a registry (an advantage estimator's name, say)
  with ``one_of(lookup, default)``; ``plain_name(default)`` is a single folder name (no separators, not ``.``
  or ``..``).
- ``coerce`` checks one value against its field — typed YAML values and command-line strings alike — and
  names the dotted key in its one-sentence error. Every number is finite and fits a signed 64-bit integer or a
  double (what torch, numpy and vLLM take); a number written as text uses ASCII digits only (Python's ``int``
  and ``float`` would read ``٣`` as 3). An error quotes at most a short prefix of the value (``short``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from tinyzero.errors import TinyZeroError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
INT_BITS = 63  # |int| < 2**63: a signed 64-bit integer
_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_REPR = reprlib.Repr()  # bounded: a few items per container, a few levels, long texts cut in the middle
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 3
SHORT = 80  # most characters of a value an error message quotes


def short(value: Any) -> str:
    """``repr(value)``, cut to at most ``SHORT`` characters whatever the value's size (a recipe can hold a huge
    text, list or integer; an error must stay one readable line and cost nothing to build)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer past 4,300 digits nested inside
        text = f"a {type(value).__name__}"
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


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


def between(low: int | float, high: int | float, default: Any, *, low_open: bool = False) -> Any:
    """A field whose value must lie in [low, high], or (low, high] with ``low_open``."""
    return dataclasses.field(default=default, metadata={"min": low, "max": high, "min_open": low_open})


def range_words(low, high, low_open: bool = False) -> str:
    """How a range reads in an error: "at least 1", "greater than 0", "in (0, 1]", "between 0 and 1"."""
    if high is not None and low is not None:
        return f"in ({low}, {high}]" if low_open else f"between {low} and {high}"
    if high is not None:
        return f"at most {high}"
    if low_open:
        return f"greater than {low}"
    return "at least 1" if low == 1 else "0 or more" if low == 0 else f"at least {low}"


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
        raise TinyZeroError(f"{dotted} must be one of {', '.join(map(str, choices))}, got {short(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    elif hint is int:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            # int() of more than 4,300 digits raises; more than 19 never fits anyway
            number = int(value) if len(value.strip().lstrip("+-")) <= 19 else 2**INT_BITS
        if number is not None:
            if abs(number) >= 2**INT_BITS:
                raise TinyZeroError(f"{dotted} must fit in a 64-bit integer, got {short(value)}")
            return number
    elif hint is float:
        return _coerce_float(value, dotted)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise TinyZeroError(f"{dotted} must be a mapping, got {short(value)}")
    else:
        return value
    raise TinyZeroError(f"{dotted} must be {type_name(hint)}, got {short(value)}")


def _coerce_float(value: Any, dotted: str) -> float:
    """A finite float from a number, or from ASCII text that plainly writes one (YAML 1.1 reads ``1e-5``, with no
    dot, as a string)."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past the largest double
            number = math.inf
    elif isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        number = float(value)  # "1e999" reads as inf, refused below
    elif isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity"):
        number = math.nan
    if number is None:
        raise TinyZeroError(f"{dotted} must be float, got {short(value)}")
    if not math.isfinite(number):
        raise TinyZeroError(f"{dotted} must be a finite number, got {short(value)}")
    return number


def check_constraints(field: dataclasses.Field, value: Any, dotted: str) -> None:
    """The range, check and registry choices declared on ``field`` (Literal choices are checked by ``coerce``)."""
    lookup = field.metadata.get("choices")
    if lookup is not None:
        names = tuple(lookup())
        if value not in names:
            raise TinyZeroError(f"{dotted} must be one of {', '.join(names)}, got {short(value)}")
    check = field.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem is not None:
        raise TinyZeroError(f"{dotted} must be {problem}, got {short(value)}")
    low, high, low_open = (field.metadata.get(key) for key in ("min", "max", "min_open"))
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise TinyZeroError(f"{dotted} must be {range_words(low, high, bool(low_open))}, got {short(value)}")


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
