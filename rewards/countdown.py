"""The countdown reward: an equation over the given numbers that reaches the target.

Rules (docs/rewards.md explains why they differ from the reference project's ``eval``-based checker):
the answer is the last complete ``<answer>…</answer>`` pair; its content, stripped of ASCII whitespace,
must be at most 1,000 characters of ASCII-digit integer literals, binary ``+ - * /``, parentheses and
ASCII whitespace; the literals must be exactly the problem's numbers as a multiset (each used once, all
used); it is evaluated in exact rationals, division by zero fails. Equal to the target → 1.0 and
``correct``; any other failure inside a complete tag pair → the format credit (0.1 by default);
no complete pair → 0.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from tinyzero.rewards.answer import extract_answer, strip_ascii_ws
from tinyzero.rewards.expr import ExprError, evaluate, parse
from tinyzero.rewards.result import NO_ANSWER, RewardResult, graded

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


def countdown_reward(
    completion: str, problem: Mapping, *, format_score: float = DEFAULT_FORMAT_SCORE
) -> RewardResult:
    """Score one completion against ``{"numbers": [...], "target": int}``."""
    numbers, target = _problem_numbers(problem)
    content = extract_answer(completion)
    if content is None:
        return NO_ANSWER
    equation = strip_ascii_ws(content)
    if len(equation) > MAX_EQUATION_CHARS:
        return graded(False, "too_long", format_score)
    if not equation:
        return graded(False, "empty", format_score)
    try:
        parsed = parse(equation)
        # Literals are compared as canonical digit strings: no hostile literal is ever turned into an int.
        expected = Counter(str(n) for n in numbers)
        if Counter(parsed.literals) != expected:
            return graded(False, "wrong_numbers", format_score)
        value = evaluate(parsed, {str(n): n for n in numbers})
    except ExprError as err:
        return graded(False, err.reason, format_score)
    if value == target:
        return graded(True, "correct", format_score)
    return graded(False, "wrong_value", format_score)
