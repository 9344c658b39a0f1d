"""The kit's own answer checks for reasoning-gym tasks whose verifiers hand out reward a policy can farm (docs/gym.md).

They run before the verifier and can only take credit away: an answer they refuse scores 0 with their reason and
never reaches the verifier; one they pass is scored by the verifier as before.

- Every task: an answer that spells a non-finite number (``nan``, ``inf``, ``infinity``, ``snan``, any case, with
  an ``i``/``j`` suffix for the imaginary part) is ``not_finite``, unless the oracle answer spells one too.
  ``complex_arithmetic`` scores ``min(1.0, exp(-distance))``, and with a NaN distance that is 1.0, a finite score
  that no check on scores can catch; other verifiers convert answers with ``float``, ``complex`` or ``Decimal``.
- ``puzzle24``: the answer must be an equation in the countdown grammar (integers, binary ``+ - * /``, brackets)
  over exactly the puzzle's four numbers, equal to 24 in exact rationals. Its verifier never compares the numbers
  with the puzzle's (``6*4*1*1`` was always right), truncates the value with ``int()`` (24.5 counted as 24) and lets
  sympy cancel symbols (``(x+x)/x`` is 2), so any four numbers could be made to reach 24.
- ``coin_flip``: the answer must be a number (decimal, fraction ``a/b``, optional exponent) within 1e-4 of the exact
  probability and within 1% of it. Its verifier gives full credit to any prefix of the oracle's digits (``0`` and
  ``0.2`` for 0.234375); the 1% keeps ``0`` from being close to a probability under 1e-4.
- ``game_of_life_halting``: the answer must be ``True`` or ``False`` (any case) and equal the oracle's. Its verifier
  compares ``bool(answer) == bool(oracle)``, and ``bool("False")`` is True: any non-empty answer was right.

Simplification: the non-finite check reads letters only, so an overflowing literal such as ``1e999`` is left to the
verifier; tests/test_gym.py feeds it, with the other special answers, to every task.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction

from tinyzero.rewards.expr import ExprError, evaluate, parse
from tinyzero.rewards.result import RewardResult, malformed

NON_FINITE = frozenset({"nan", "snan", "inf", "infinity"})
_LETTERS = re.compile(r"[A-Za-z]+")  # one character class, maximal runs: linear, no backtracking

PUZZLE24_TARGET = 24
COIN_FLIP_ABS_TOL = Fraction(1, 10_000)  # the verifier's own tolerance
COIN_FLIP_REL_TOL = Fraction(1, 100)
# A plain decimal with an optional exponent of at most two digits (1e-5 and 3.05e-05 are fine; no 10**999999999 is
# ever built), or a fraction of two integers; ASCII digits only.
_DECIMAL = re.compile(r"(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d{1,2}))?", re.ASCII)
_FRACTION = re.compile(r"(\d+)/(\d+)", re.ASCII)


def spells_non_finite(text: str) -> bool:
    """Whether a run of letters in ``text`` is nan/inf/infinity/snan (any case, an i/j suffix allowed)."""
    for run in _LETTERS.findall(text):
        word = run.lower()
        if word in NON_FINITE or (word[-1] in "ij" and word[:-1] in NON_FINITE):
            return True
    return False


def check(task: str, answer: str, problem: Mapping) -> RewardResult | None:
    """The kit's verdict when it refuses ``answer`` (already stripped, non-empty, length-capped); None passes it
    on to the task's verifier."""
    oracle = problem.get("answer")
    if spells_non_finite(answer) and not (isinstance(oracle, str) and spells_non_finite(oracle)):
        return malformed("not_finite")
    own = TASK_CHECKS.get(task)
    return None if own is None else own(answer, problem)


def wrong() -> RewardResult:
    """An answer of the task's shape with the wrong value: no credit (the gym tasks have no format credit)."""
    return RewardResult(0.0, False, "wrong_value", {"format": 1.0, "answer": 0.0})


def _metadata(problem: Mapping) -> dict:
    metadata = problem.get("metadata")
    return json.loads(metadata) if isinstance(metadata, str) else dict(metadata or {})


def puzzle24(answer: str, problem: Mapping) -> RewardResult | None:
    numbers = _metadata(problem).get("numbers")
    if not isinstance(numbers, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise ValueError("a gym:puzzle24 problem needs its 'numbers' in metadata")
    try:
        parsed = parse(answer)
    except ExprError as err:
        return malformed(err.reason)
    # Literals are compared as canonical digit strings, so a hostile long literal is never converted.
    if Counter(parsed.literals) != Counter(str(n) for n in numbers):
        return malformed("wrong_numbers")
    try:
        value = evaluate(parsed, {str(n): n for n in numbers})
    except ExprError:  # division by zero
        return wrong()
    return None if value == PUZZLE24_TARGET else wrong()


def number_value(text: str) -> Fraction | None:
    """The exact value of a non-negative decimal (``0.25``, ``.25``, ``3.05e-05``) or fraction (``15/64``) written in
    ASCII digits, commas ignored as the verifier ignores them; None for anything else."""
    text = text.replace(",", "")
    fraction = _FRACTION.fullmatch(text)
    if fraction:
        if len(text) > 4000:  # int() of over 4,300 digits raises; such an answer is no probability anyway
            return None
        numerator, denominator = int(fraction[1]), int(fraction[2])
        return Fraction(numerator, denominator) if denominator else None
    decimal = _DECIMAL.fullmatch(text)
    if not decimal or not (decimal[1] or decimal[2]) or len(text) > 4000:
        return None
    whole, part, exponent = decimal[1] or "0", decimal[2] or "", int(decimal[3] or 0)
    return Fraction(int(whole + part), 10 ** len(part)) * Fraction(10) ** exponent


def _probability(problem: Mapping) -> Fraction:
    """The exact probability: metadata's ``rational`` (the answer text is rounded to 10 significant digits)."""
    rational = _metadata(problem).get("rational")
    try:
        if isinstance(rational, Mapping):
            return Fraction(int(rational["numerator"]), int(rational["denominator"]))
        exact = number_value(str(problem.get("answer")))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        exact = None
    if exact is None:
        raise ValueError("a gym:coin_flip problem needs its probability as metadata.rational or as its answer")
    return exact


def coin_flip(answer: str, problem: Mapping) -> RewardResult | None:
    given = number_value(answer)
    if given is None:
        return malformed("not_number")
    exact = _probability(problem)
    tolerance = min(COIN_FLIP_ABS_TOL, COIN_FLIP_REL_TOL * abs(exact))
    return None if abs(given - exact) <= tolerance else wrong()


def game_of_life_halting(answer: str, problem: Mapping) -> RewardResult | None:
    given = answer.lower()
    if given not in ("true", "false"):
        return malformed("not_boolean")
    return None if given == str(problem.get("answer")).strip().lower() else wrong()


TASK_CHECKS = {"puzzle24": puzzle24, "coin_flip": coin_flip, "game_of_life_halting": game_of_life_halting}
