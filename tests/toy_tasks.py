"""Test-only environments: one a tiny random model can learn in a few steps (``env.name=toy_tasks:Letters``), one
it gets right about half the time (``toy_tasks:FirstByte``, for evaluation metrics), and a buggy plug-in whose
reward is NaN (``toy_tasks:NanScore``, for the learner's non-finite guard).

They exist so tests can see training *work*, not only run: the built-in tasks give a tiny random model a reward
of 0 on nearly every sample, so GRPO's advantages are all zero and the weights never move. Importable by
module path because pytest puts ``tests/`` on ``sys.path`` (the folder has no ``__init__.py``).
Simplification: the reward ignores the prompt, which only varies so that problems have distinct keys.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from tinyzero.rewards.result import RewardResult

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class LettersOptions:
    """Letters task options.

    problems: how many distinct problems there are (train and eval keys are drawn from these)
    """

    problems: int = 100_000


class Letters:
    """Write ASCII letters: the score is the share of the completion's characters that are a-z or A-Z.

    A tiny random model (byte-level vocabulary of 320 ids, 52 of them letters) starts near 0.15, and every
    group of samples has different scores, so each step has a gradient that pushes towards letters."""

    name: ClassVar[str] = "letters"
    ability: ClassVar[str] = "test"
    Options: ClassVar[type] = LettersOptions

    def __init__(self, options: LettersOptions | None = None):
        self.options = options or LettersOptions()

    def sample(self, rng: random.Random) -> dict:
        return {"id": rng.randrange(self.options.problems)}

    def key(self, problem: Mapping) -> Hashable:
        return problem["id"]

    def task_text(self, problem: Mapping) -> str:
        return f"Write letters. ({problem['id']})"

    def ground_truth(self, problem: Mapping) -> dict:
        return {}

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        share = sum(ch in _LETTERS for ch in completion) / len(completion) if completion else 0.0
        return RewardResult(share, share == 1.0, "correct" if share == 1.0 else "wrong_value", {"letters": share})


@dataclass(frozen=True)
class FirstByteOptions:
    """First-byte task options.

    problems: how many distinct problems there are
    """

    problems: int = 100_000


class FirstByte:
    """Start the reply with a character whose code point is even: a tiny random model is right about half the time,
    so evaluation metrics of such a model are neither all 0 nor all 1 (tests/test_eval_command.py).

    ``answer`` is the first character: samples that start alike vote together."""

    name: ClassVar[str] = "first_byte"
    ability: ClassVar[str] = "test"
    Options: ClassVar[type] = FirstByteOptions

    def __init__(self, options: FirstByteOptions | None = None):
        self.options = options or FirstByteOptions()

    def levels(self) -> list[dict]:
        """Two levels for the curriculum's tests: a pool of 1,000 problems, then the task's own."""
        return [{"problems": 1000}, {"problems": self.options.problems}]

    def sample(self, rng: random.Random) -> dict:
        return {"id": rng.randrange(self.options.problems)}

    def key(self, problem: Mapping) -> Hashable:
        return problem["id"]

    def task_text(self, problem: Mapping) -> str:
        return f"Say something. ({problem['id']})"

    def ground_truth(self, problem: Mapping) -> dict:
        return {}

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        right = bool(completion) and ord(completion[0]) % 2 == 0
        return RewardResult(float(right), right, "correct" if right else "wrong_value",
                            {"format": float(bool(completion))})

    def answer(self, completion: str, problem: Mapping) -> str | None:
        return completion[0] if completion else None


class NanScore(Letters):
    """A plug-in with a bug: every score is NaN (what a reward dividing 0 by 0 returns). GRPO's advantages are then
    NaN, and so are the loss and the gradient: the learner must refuse the update rather than write NaN weights."""

    name: ClassVar[str] = "nan_score"

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        return RewardResult(float("nan"), False, "wrong_value", {})
