"""The countdown reward: an equation over the given numbers that reaches the target.

Rules (docs/rewards.md explains why they differ from the reference project's ``eval``-based checker):
the answer is the last complete ``<answer>…</answer>`` pair; its content, stripped of ASCII whitespace,
must be at most 1,000 characters of ASCII-digit integer literals, binary ``+ - * /``, parentheses and
ASCII whitespace; the literals must be exactly the problem's numbers as a multiset (each used once, all
used); it is evaluated in exact rationals. Equal to the target → 1.0 and ``correct``; a well-formed equation
over exactly the problem's numbers that misses the target (or divides by zero) → the format credit (0.1 by
default); anything else — no complete pair, an empty one, text, the target or the numbers copied from the
prompt — → 0.0, so echoing the prompt (which holds tag pairs) earns nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from fractions import Fraction

from tinyzero.rewards.answer import extract_answer, strip_ascii_ws
from tinyzero.rewards.expr import ExprError, evaluate, parse
from tinyzero.rewards.result import NO_ANSWER, RewardResult, graded, malformed

MAX_EQUATION_CHARS = 1000
DEFAULT_FORMAT_SCORE = 0.1


def _problem_numbers(problem: Mapping) -> tuple[list[int], int]:
    """Read and check (numbers, target) from a stored problem; raises ValueError when malformed."""
    if not isinstance(problem, Mapping):
        raise ValueError("a countdown problem must be an object with 'numbers' and 'target'")
    numbers = problem.get("numbers", problem.get("nums"))
    target = problem.get("target")
    if not isinstance(numbers, list | tuple) or not numbers:
        raise ValueError("a countdown problem needs 'numbers', a non-empty list of integers")
    if any(not _is_int(n) for n in numbers) or not _is_int(target):
        raise ValueError("a countdown problem's 'numbers' and 'target' must be integers")
    return [int(n) for n in numbers], int(target)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _equation_value(completion: str, numbers: list[int], format_score: float) -> Fraction | RewardResult:
    """The exact value of the completion's equation, or the verdict that stops short of one.

    The one parsing path shared by the reward and ``countdown_answer``, so a vote counts what the reward scores."""
    content = extract_answer(completion)
    if content is None:
        return NO_ANSWER
    equation = strip_ascii_ws(content)
    if len(equation) > MAX_EQUATION_CHARS:
        return malformed("too_long")
    if not equation:
        return malformed("empty")
    try:
        parsed = parse(equation)
    except ExprError as err:
        return malformed(err.reason)
    # Literals are compared as canonical digit strings: no hostile literal is ever turned into an int.
    if Counter(parsed.literals) != Counter(str(n) for n in numbers):
        return malformed("wrong_numbers")
    try:
        return evaluate(parsed, {str(n): n for n in numbers})
    except ExprError as err:  # division by zero: a real attempt at the task, so it keeps the format credit
        return graded(False, err.reason, format_score)


def countdown_reward(
    completion: str, problem: Mapping, *, format_score: float = DEFAULT_FORMAT_SCORE
) -> RewardResult:
    """Score one completion against ``{"numbers": [...], "target": int}``."""
    numbers, target = _problem_numbers(problem)
    value = _equation_value(completion, numbers, format_score)
    if isinstance(value, RewardResult):
        return value
    if value == target:
        return graded(True, "correct", format_score)
    return graded(False, "wrong_value", format_score)


def countdown_answer(completion: str, problem: Mapping) -> str | None:
    """The value of the completion's equation as the reward parses it (``"24"``, ``"7/2"``), or None when the
    reward finds no well-formed equation over exactly the given numbers (or it divides by zero).

    Two equations with the same value are the same answer: that is what a majority vote should count."""
    numbers, _ = _problem_numbers(problem)
    value = _equation_value(completion, numbers, 0.0)
    return None if isinstance(value, RewardResult) else str(value)
