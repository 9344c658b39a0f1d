"""Arithmetic rewards: an exact integer answer.

``arithmetic_reward`` (answer format ``tags``): the stripped content of the last complete
``<answer>…</answer>`` pair must be an integer literal of ASCII digits with an optional leading ``-``;
equal to the answer → 1.0 and ``correct``; anything else inside the pair → the format credit (0.1 by
default); no complete pair → 0.0.

``last_integer_reward`` (answer format ``last_integer``): the last integer written anywhere in the
completion is the answer; equal → 1.0, otherwise 0.0. No format credit, so there is nothing to copy.

Integers are compared as canonical digit strings, never converted with ``int()``: a 5,000-digit answer is
simply wrong, and Python's limit on int-from-string conversion is never hit.
"""

from __future__ import annotations

from collections.abc import Mapping

from tinyzero.rewards.answer import extract_answer, strip_ascii_ws
from tinyzero.rewards.expr import DIGITS, canonical_digits
from tinyzero.rewards.result import NO_ANSWER, RewardResult, graded

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
        return graded(False, "not_integer", format_score)
    if given == expected:
        return graded(True, "correct", format_score)
    return graded(False, "wrong_value", format_score)


def last_integer(text: str) -> str | None:
    """The last maximal run of ASCII digits, with a '-' sign when one directly precedes it and is not
    itself preceded by a digit (so ``"5-3"`` ends in ``3``, ``"is -3"`` in ``-3``). Linear scan from the end."""
    end = len(text)
    while end > 0 and text[end - 1] not in DIGITS:
        end -= 1
    if end == 0:
        return None
    start = end
    while start > 0 and text[start - 1] in DIGITS:
        start -= 1
    digits = text[start:end]
    negative = start > 0 and text[start - 1] == "-" and (start < 2 or text[start - 2] not in DIGITS)
    return ("-" if negative else "") + digits


def last_integer_reward(completion: str, problem: Mapping, *, format_score: float = 0.0) -> RewardResult:
    """Score one completion by the last integer it writes (no tags needed)."""
    expected = _expected(problem)
    found = last_integer(completion) if isinstance(completion, str) else None
    if found is None:
        return RewardResult(0.0, False, "no_integer", {"format": 0.0, "answer": 0.0})
    if canonical_integer(found) == expected:
        return RewardResult(1.0, True, "correct", {"format": 1.0, "answer": 1.0})
    return RewardResult(format_score, False, "wrong_value", {"format": 1.0, "answer": 0.0})
