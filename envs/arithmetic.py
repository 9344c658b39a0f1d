"""Arithmetic: multi-digit ``a op b`` with an exact integer answer.

Two answer formats: ``tags`` (the answer goes in ``<answer>…</answer>``, with format credit) and
``last_integer`` (the integer the reply ends with is its answer; no tags, no format credit). A small
instruct model almost never writes tags unprompted and, shown a literal example answer, learns to copy it
for the format credit; ``last_integer`` lets the accuracy signal through on such models (the CPU demo).
"""

from __future__ import annotations

import random
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from tinyzero.rewards.arithmetic import (
    DEFAULT_FORMAT_SCORE,
    arithmetic_reward,
    last_integer_answer,
    last_integer_reward,
    tagged_integer_answer,
)
from tinyzero.rewards.checks import Checks, arithmetic_checks
from tinyzero.rewards.result import RewardResult

AnswerFormat = Literal["tags", "last_integer"]
ANSWER_FORMATS = typing.get_args(AnswerFormat)


@dataclass(frozen=True)
class ArithmeticOptions:
    """Arithmetic problem options.

    digits: digits in each operand (1 means 0-9, 2 means 10-99, ...)
    ops: operators to draw from, any of + - *
    answer_format: tags (answer in <answer> tags, with format credit) or last_integer (the integer the reply ends with, not an operand)
    format_score: score for a complete <answer> pair holding a wrong integer (tags format); anything else scores 0
    """

    digits: int = 2
    ops: str = "+-*"
    answer_format: AnswerFormat = "tags"
    format_score: float = DEFAULT_FORMAT_SCORE

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 30:
            raise ValueError("digits must be between 1 and 30")
        if not self.ops or any(op not in "+-*" for op in self.ops):
            raise ValueError("ops must be a non-empty string of + - *")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


class Arithmetic:
    """Compute ``a op b`` exactly."""

    name: ClassVar[str] = "arithmetic"
    ability: ClassVar[str] = "math"
    Options: ClassVar[type] = ArithmeticOptions

    def __init__(self, options: ArithmeticOptions | None = None):
        self.options = options or ArithmeticOptions()

    def sample(self, rng: random.Random) -> dict:
        d = self.options.digits
        lo = 0 if d == 1 else 10 ** (d - 1)
        a, b = rng.randint(lo, 10**d - 1), rng.randint(lo, 10**d - 1)
        op = rng.choice(self.options.ops)
        return {"a": a, "b": b, "op": op, "answer": _apply(a, op, b)}

    def key(self, problem: Mapping) -> Hashable:
        return (problem["a"], problem["op"], problem["b"])

    def task_text(self, problem: Mapping) -> str:
        question = f"What is {problem['a']} {problem['op']} {problem['b']}?"
        if self.options.answer_format == "last_integer":
            return question
        return (
            f"{question} Reason step by step inside <think> </think>, then write only the final integer "
            "inside <answer> </answer>."
        )

    def ground_truth(self, problem: Mapping) -> dict:
        return {"answer": problem["answer"]}

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        if self.options.answer_format == "last_integer":
            return last_integer_reward(completion, problem)
        return arithmetic_reward(completion, problem, format_score=self.options.format_score)

    def answer(self, completion: str, problem: Mapping) -> str | None:
        """The integer the reward reads (canonical: ``-007`` is ``-7``), or None: what a majority vote counts."""
        if self.options.answer_format == "last_integer":
            return last_integer_answer(completion)
        return tagged_integer_answer(completion)

    def levels(self) -> list[dict]:
        """Optional hook (a curriculum): one level per operand length, 1 digit up to the task's own."""
        return [{"digits": d} for d in range(1, self.options.digits + 1)]

    def verification_checks(self, text: str, problem: Mapping) -> Checks:
        """Optional hook (aha metrics): the result re-computed a second way."""
        return arithmetic_checks(text, problem)
