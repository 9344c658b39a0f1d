"""Arithmetic rewards: an exact integer answer.

``arithmetic_reward`` (answer format ``tags``): the stripped content of the last complete
``<answer>…</answer>`` pair must be an integer literal of ASCII digits with an optional leading ``-``;
equal to the answer → 1.0 and ``correct``; another integer → the format credit (0.1 by default); anything
else — no complete pair, an empty one (the prompt's own ``<answer> </answer>``), words, an expression such as
the question restated — → 0.0.

``last_integer_reward`` (answer format ``last_integer``): the last integer written anywhere in the
completion is the answer, unless it is the right operand of an arithmetic operator (``20 - 10``, ``(7 * 1)``):
then the completion ends in an expression, not an answer, and scores 0.0 — so echoing or restating the
question ("What is 20 - 10?" when the answer is 10) earns nothing. Nor are digits glued to other notation an
integer (``not_integer``): a decimal's fraction (``0.90``), a power (``10^2``), a separator (``1_000``), an exponent
(``4.7e1``, ``1e-5``), hex (``0x10``, ``0xFF``). Equal → 1.0, otherwise 0.0; no format credit.

Integers are compared as canonical digit strings, never converted with ``int()``: a 5,000-digit answer is
simply wrong, and Python's limit on int-from-string conversion is never hit.
"""

from __future__ import annotations

from collections.abc import Mapping

from tinyzero.rewards.answer import ASCII_WS, extract_answer, strip_ascii_ws
from tinyzero.rewards.expr import canonical_digits
from tinyzero.rewards.result import NO_ANSWER, RewardResult, graded, malformed

DEFAULT_FORMAT_SCORE = 0.1


def _expected(problem: Mapping) -> str:
    """The problem's answer as canonical signed text, e.g. ``"-47"``; raises ValueError when malformed."""
    if not isinstance(problem, Mapping):
        raise ValueError("an arithmetic problem must be an object with an integer 'answer'")
    answer = problem.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise ValueError("an arithmetic problem needs 'answer', an integer")
    return str(answer)


def canonical_integer(text: str) -> str | None:
    """``"-007"`` -> ``"-7"``, ``"-0"`` -> ``"0"``; None unless text is ``-?[0-9]+`` in ASCII."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    # isascii() first: str.isdigit() alone would accept non-ASCII digits such as Arabic-Indic ones.
    if not (digits.isascii() and digits.isdigit()):
        return None
    value = canonical_digits(digits)
    return "-" + value if negative and value != "0" else value


def arithmetic_reward(
    completion: str, problem: Mapping, *, format_score: float = DEFAULT_FORMAT_SCORE
) -> RewardResult:
    """Score one completion whose answer sits in ``<answer>…</answer>`` tags."""
    expected = _expected(problem)
    content = extract_answer(completion)
    if content is None:
        return NO_ANSWER
    given = canonical_integer(strip_ascii_ws(content))
    if given is None:
        return malformed("not_integer")
    if given == expected:
        return graded(True, "correct", format_score)
    return graded(False, "wrong_value", format_score)


# Characters that make the integer after them an operand: ASCII + - * / ^, and × ÷ · − (U+2212), which a
# model may use when it restates "a * b" or "a - b". ASCII '-' alone is also a sign (see last_integer).
OPERATORS = frozenset("+-*/^×÷·−")
ASCII_DIGITS = "0123456789"
_BLANK_OR_OPEN = " \t\n\r\x0b\x0c("


def glued(before: str, digits: str, after: str) -> bool:
    """Whether a run of ``digits`` is part of other notation, judging by the characters touching it: a ``.``,
    ``^`` or ``_`` just before it (``0.90``, ``.5``, ``10^2``, ``1_000``, ``x_1``), a ``^`` or an ``e``/``E`` after
    a digit with a sign between (``10^-2``, ``1e-5``, ``4.7e+1``) or without (``4.7e1``), an ``x``/``X`` after a
    ``0`` (``0x10``), or a lone ``0`` followed by one (``0xFF``). A ``.`` after the digits is a full stop
    (``42.``): a digit after it would have been the last run."""
    mark = before[-1:]
    if mark in (".", "^", "_"):
        return True
    if mark in ("x", "X"):
        return before[-2:-1] == "0"
    unsigned = before[:-1] if mark in ("+", "-") else before
    if unsigned[-1:] == "^":
        return True
    if unsigned[-1:] in ("e", "E") and unsigned[-2:-1].isdigit() and unsigned[-2:-1].isascii():
        return True
    return digits == "0" and after[:1] in ("x", "X")


def _read_last_integer(text: str) -> tuple[str | None, str]:
    """(the signed digits a completion ends with, ``""``) or (None, why not: ``no_integer``, ``not_integer``
    or ``operand``); see ``last_integer``."""
    end = max(text.rfind(d) for d in ASCII_DIGITS) + 1
    if end == 0:
        return None, "no_integer"
    before = text[:end].rstrip(ASCII_DIGITS)  # everything left of the last run of digits
    digits = text[len(before) : end]
    if glued(before, digits, text[end : end + 1]):
        return None, "not_integer"
    left = before.rstrip(_BLANK_OR_OPEN)
    if not left or left[-1] not in OPERATORS:
        return digits, ""
    if left[-1] != "-":
        return None, "operand"
    ahead = left[:-1].rstrip(ASCII_WS)
    if ahead and (ahead[-1] in ASCII_DIGITS or ahead[-1] == ")"):
        return None, "operand"  # a binary minus: "20 - 10", "(3 + 4) - 10"
    return "-" + digits, ""


def last_integer(text: str) -> str | None:
    """The answer a completion ends with: its last maximal run of ASCII digits, signed, or None.

    Digits glued to other notation are no integer (see ``glued``: ``0.90``, ``10^2``, ``1_000``, ``4.7e1``,
    ``0x0``). Otherwise, looking left from the digits past ASCII whitespace and ``(``: an operator from OPERATORS
    means the digits are a right operand (``20 - 10``, ``(7 * 1)``) and there is no answer — except an ASCII ``-``
    that is not itself preceded (past ASCII whitespace) by a digit or ``)``, which is a sign: ``is -3`` and
    ``= (-3)`` end in ``-3``. Only ``str`` methods that run in C (rfind, rstrip) touch the text, and a few
    characters around the digits: linear and fast on a megabyte.
    """
    return _read_last_integer(text)[0]


def tagged_integer_answer(completion: str) -> str | None:
    """The canonical integer in the last complete answer pair, as ``arithmetic_reward`` parses it, or None."""
    content = extract_answer(completion)
    return None if content is None else canonical_integer(strip_ascii_ws(content))


def last_integer_answer(completion: str) -> str | None:
    """The canonical integer the completion ends with, as ``last_integer_reward`` parses it, or None."""
    found = last_integer(completion) if isinstance(completion, str) else None
    return None if found is None else canonical_integer(found)


def last_integer_reward(completion: str, problem: Mapping, *, format_score: float = 0.0) -> RewardResult:
    """Score one completion by the integer it ends with (no tags needed; see ``last_integer``)."""
    expected = _expected(problem)
    found, why = _read_last_integer(completion) if isinstance(completion, str) else (None, "no_integer")
    if found is None:
        return malformed(why)
    if canonical_integer(found) == expected:
        return RewardResult(1.0, True, "correct", {"format": 1.0, "answer": 1.0})
    return RewardResult(format_score, False, "wrong_value", {"format": 1.0, "answer": 0.0})
