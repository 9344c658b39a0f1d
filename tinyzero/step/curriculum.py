"""The curriculum's two mechanisms as pure state (issue 29; not yet wired into the driver): a level ladder and a
bounded table of pass rates.

- ``Ladder``: the training level among an environment's declared levels (``envs.base.levels``, easiest first). After
  each step the level's pass rate (the share of its completions judged correct) is recorded; the level moves up once
  ``patience`` steps in a row were at or above ``up``, down once they were at or below ``down``, and the streak starts
  again after a move (hysteresis: a rate between the two thresholds never moves it, and one good step is not enough).
- ``PassRates``: what each problem's groups scored, for at most ``size`` problems (the least recently seen are
  forgotten first), and which of them to draw again so that groups land near a target pass rate: problems whose
  estimated rate, (correct + 1) / (trials + 2), is closest to the target, never one whose every sample so far agreed
  (a group with one verdict teaches GRPO nothing), at most a share of each step so that fresh problems keep coming.

Both hold only JSON values, so a checkpoint stores them as they are and a resumed run draws what an uninterrupted
one would. Simplification: a problem's estimate pools every group it has had, at whatever weights, though the policy
that produced the older ones has since changed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Ladder:
    """The training level, 0 (easiest) to ``levels - 1`` (the target), and the streak that moves it."""

    levels: int
    up: float = 0.8
    down: float = 0.2
    patience: int = 2
    level: int = 0
    streak: int = 0  # steps in a row beyond a threshold: > 0 above ``up``, < 0 below ``down``

    def __post_init__(self) -> None:
        if not 0 <= self.down < self.up <= 1:
            raise ValueError(f"the thresholds need 0 <= down < up <= 1, got down {self.down} and up {self.up}")
        if not 0 <= self.level < self.levels:
            raise ValueError(f"level {self.level} is not one of the {self.levels} levels")

    def record(self, pass_rate: float) -> int:
        """The step's pass rate at the current level; returns the move made (+1, -1 or 0)."""
        if pass_rate >= self.up:
            self.streak = max(self.streak, 0) + 1
        elif pass_rate <= self.down:
            self.streak = min(self.streak, 0) - 1
        else:
            self.streak = 0
        move = 0
        if self.streak >= self.patience and self.level < self.levels - 1:
            move = 1
        elif self.streak <= -self.patience and self.level > 0:
            move = -1
        if move:
            self.level += move
            self.streak = 0
        return move

    def state(self) -> dict:
        return {"level": self.level, "streak": self.streak}

    def load(self, state: dict) -> None:
        self.level, self.streak = int(state["level"]), int(state["streak"])


class PassRates:
    """Per problem (by key), at most ``size`` of them: its level, the problem, completions tried and judged correct."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError("the table's size cannot be negative")
        self.size = size
        self.rows: OrderedDict[str, list] = OrderedDict()  # key -> [level, problem, trials, correct]

    def record(self, key: str, problem: dict, level: int, trials: int, correct: int) -> None:
        """One group's verdicts; the problem becomes the most recently seen."""
        row = self.rows.pop(key, [level, problem, 0, 0])
        row[2] += trials
        row[3] += correct
        self.rows[key] = row
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)

    @staticmethod
    def estimate(trials: int, correct: int) -> float:
        return (correct + 1) / (trials + 2)

    def pick(self, level: int, count: int, target: float, exclude: set[str] = frozenset()) -> list[tuple[str, dict]]:
        """Up to ``count`` (key, problem) at ``level`` to draw again: the ones whose estimate is nearest ``target``
        (the more recently seen first among equals), none whose samples all agreed so far."""
        candidates = [(abs(self.estimate(trials, correct) - target), -order, key, problem)
                      for order, (key, (lvl, problem, trials, correct)) in enumerate(self.rows.items())
                      if lvl == level and 0 < correct < trials and key not in exclude]
        return [(key, problem) for *_, key, problem in sorted(candidates, key=lambda c: c[:2])[:count]]

    def state(self) -> list:
        return [[key, *row] for key, row in self.rows.items()]

    def load(self, state: list) -> None:
        self.rows = OrderedDict((key, [level, problem, trials, correct])
                                for key, level, problem, trials, correct in state)


def revisits(count: int, fresh_share: float) -> int:
    """How many of a step's ``count`` prompts may be drawn again: the rest, at least ``fresh_share`` of them rounded
    up, are fresh problems."""
    return count - math.ceil(fresh_share * count)


def zero_variance_share(pass_rate: float, group: int) -> float:
    """The expected share of groups of ``group`` samples whose verdicts all agree at a pass rate: p^G + (1 - p)^G
    (the assumption behind the cost estimate's share of groups that teach)."""
    return pass_rate**group + (1 - pass_rate) ** group
