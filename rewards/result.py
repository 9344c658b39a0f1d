"""The value every reward function returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RewardResult:
    """One completion's verdict.

    score:      what the learner optimises (e.g. 1.0 correct, 0.1 format credit, 0.0 no answer).
    correct:    whether the answer is right; accuracy and pass@k count this, never ``score``.
    components: named parts of the score, logged under ``reward/`` (e.g. ``format``, ``answer``).
    reason:     a machine-readable word for why (``correct``, ``no_answer``, ``wrong_value``, ...).
    """

    score: float
    correct: bool
    reason: str
    components: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "correct": self.correct,
            "components": dict(self.components),
            "reason": self.reason,
        }


def graded(correct: bool, reason: str, format_score: float) -> RewardResult:
    """A verdict for an answer of the task's shape (right or wrong): wrong ones earn the format credit."""
    if correct:
        return RewardResult(1.0, True, reason, {"format": 1.0, "answer": 1.0})
    return RewardResult(format_score, False, reason, {"format": 1.0, "answer": 0.0})


def malformed(reason: str) -> RewardResult:
    """A verdict for a complete answer pair whose content is not an answer of the task's shape: no credit.

    Why none: the prompts themselves hold complete tag pairs (``inside <answer> </answer>``), so credit for any
    content would pay a model for echoing its prompt."""
    return RewardResult(0.0, False, reason, {"format": 0.0, "answer": 0.0})


NO_ANSWER = RewardResult(0.0, False, "no_answer", {"format": 0.0, "answer": 0.0})
