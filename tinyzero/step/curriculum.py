"""The curriculum (``data.curriculum``): which problems a step draws, so that its groups teach.

Two mechanisms, each off by default, that combine; both act through the step option ``Curriculum`` below, which the
driver asks for a step's problems (``draw``) in place of the plain training stream:

- ``Ladder``: the training level among an environment's declared levels (``envs.base.levels``, easiest first). After
  each step the level's pass rate (the share of its fresh problems' completions judged correct: problems drawn again
  were chosen for a rate near the target and would bias it) is recorded; the level moves up once
  ``patience`` steps in a row were at or above ``up``, down once they were at or below ``down``, and the streak starts
  again after a move (hysteresis: a rate between the two thresholds never moves it, and one good step is not enough).
- ``PassRates``: what each problem's groups scored, for at most ``size`` problems (the least recently seen are
  forgotten first), and which of them to draw again so that groups land near a target pass rate: problems whose
  estimated rate, (correct + 1) / (trials + 2), is closest to the target, never one whose every sample so far agreed
  (a group with one verdict teaches GRPO nothing), at most a share of each step so that fresh problems keep coming.

Each level has its own training stream (the target level's is the plain run's stream), every one excluding the
held-out problems, so the splits stay disjoint at every level; a level changes only which problems are drawn: prompts
and rewards come from the task's own options. The state (level, streak, table, each stream's cursor) holds only JSON
values: a checkpoint stores it and a resumed run draws exactly what an uninterrupted one would.
Simplifications: a problem's estimate pools every group it has had, though the policy that produced the older ones
has changed since; the curriculum refuses the one-step overlap (the next batch would be drawn before this one's
scores are in).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinyzero.errors import TinyZeroError
from tinyzero.step import Option

if TYPE_CHECKING:
    from tinyzero.config import Config
    from tinyzero.engine.messages import ScoredBatch

# Pass-rate bins of a step's groups (curriculum/groups_*): all wrong, some right (below and above one half), all right.
BINS = (("all_wrong", lambda p: p == 0), ("below_half", lambda p: 0 < p < 0.5),
        ("half_or_more", lambda p: 0.5 <= p < 1), ("all_right", lambda p: p == 1))


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


class Curriculum(Option):
    """The step option: a step's problems from the current level (fresh, or drawn again by pass rate), each group's
    verdicts recorded as it is scored, the level moved at the end of the step."""

    def __init__(self, config: Config):
        self.config, self.settings = config, config.data.curriculum
        self.on = self.settings.on
        self.table = PassRates(self.settings.table_size)
        self.pending: deque = deque()  # (key, level, problem, fresh) of each group drawn, not yet scored, in draw order
        self.drawn: set[str] = set()  # keys drawn this step: a problem is drawn again in a later step, not twice in one
        self.tally: list[tuple[int, int, int, bool]] = []  # (level, trials, correct, fresh) of each group scored
        self.revisited = 0
        self.last: dict[str, float] = {}

    def check(self) -> None:
        if self.on and self.config.run.off_policy_steps:
            raise TinyZeroError("data.curriculum chooses a step's problems from the scores of the step before, and "
                                "run.off_policy_steps=1 draws the next batch before those scores are in: set "
                                "run.off_policy_steps=0, or turn data.curriculum.levels and .pass_rate off")

    def attach(self, env, eval_keys: set, seed: int) -> None:
        """The levels of ``env`` (the task at its own options) and their training streams, none drawing a held-out
        problem. Called once the environment exists, before the first draw or a resume's ``load``."""
        from tinyzero.data import iter_train
        from tinyzero.envs import make_env
        from tinyzero.envs.base import levels

        declared = levels(env) if self.settings.levels else [{}]
        if self.settings.start_level >= len(declared):
            raise TinyZeroError(f"data.curriculum.start_level={self.settings.start_level}, and {env.name} declares "
                                f"{len(declared)} level(s) at these options (0 to {len(declared) - 1}): pick one of "
                                "them")
        options = self.config.env.options
        self.envs = [make_env(self.config.env.name, {**options, **level}) for level in declared[:-1]] + [env]
        top = len(self.envs) - 1
        self.streams = [iter_train(e, seed, eval_keys, split="train" if i == top else f"train-level-{i}")
                        for i, e in enumerate(self.envs)]
        self.cursors = [0] * len(self.envs)
        s = self.settings
        self.ladder = Ladder(len(self.envs), up=s.up, down=s.down, patience=s.patience, level=s.start_level)
        self._attached = (env, eval_keys, seed)

    def draw(self, count: int) -> list[dict]:
        level = self.ladder.level
        again = []
        if self.settings.pass_rate:
            again = self.table.pick(level, revisits(count, self.settings.fresh_share), self.settings.target,
                                    self.drawn)
        fresh = [next(self.streams[level]) for _ in range(count - len(again))]
        self.cursors[level] += len(fresh)
        self.revisited += len(again)
        env = self.envs[level]
        drawn = [*again, *((repr(env.key(p)), p) for p in fresh)]
        self.pending.extend((key, level, problem, i >= len(again)) for i, (key, problem) in enumerate(drawn))
        self.drawn.update(key for key, _ in drawn)
        return [problem for _, problem in drawn]

    def on_scored(self, scored: ScoredBatch) -> ScoredBatch:
        if not self.on:
            return scored
        g = scored.rollout.group_size
        correct = scored.correct.view(-1, g).sum(dim=1).tolist()  # [groups]
        for right in correct:
            key, level, problem, fresh = self.pending.popleft()
            self.tally.append((level, g, int(right), fresh))
            if self.settings.pass_rate:
                self.table.record(key, problem, level, g, int(right))
        return scored

    def on_train(self, train: ScoredBatch, step: int) -> ScoredBatch:
        """The step's end: its groups' pass rates, and the level's move."""
        if not self.on:
            return train
        level = self.ladder.level
        # The level's pass rate from its fresh problems only: those drawn again were chosen for a rate near the
        # target, so counting them would pull the estimate towards it (and keep a level the model has mastered).
        at_level = [(t, c) for lvl, t, c, fresh in self.tally if lvl == level and fresh]
        at_level = at_level or [(t, c) for lvl, t, c, _ in self.tally if lvl == level]  # fresh_share 0: all again
        rate = sum(c for _, c in at_level) / max(sum(t for t, _ in at_level), 1)
        groups = len(self.tally)
        self.last = {"curriculum/level": float(level), "curriculum/pass_rate": rate,
                     "curriculum/revisited_frac": self.revisited / max(groups, 1)}
        self.last.update({f"curriculum/groups_{name}": sum(1 for _, t, c, _ in self.tally if test(c / t)) / max(groups, 1)
                          for name, test in BINS})
        if self.settings.levels:
            self.ladder.record(rate)
        self.tally, self.revisited, self.drawn = [], 0, set()
        return train

    def metrics(self, collected, train: ScoredBatch) -> dict[str, float]:
        return dict(self.last) if self.on else {}

    def state(self) -> dict:
        """JSON values: what a checkpoint keeps so that a resumed run draws what an uninterrupted one would."""
        return {"ladder": self.ladder.state(), "table": self.table.state(), "cursors": list(self.cursors)}

    def load(self, state, ckpt) -> None:
        """A checkpoint's state (after ``attach``): the ladder, the table, each level's stream fast-forwarded; a
        state that is missing or not what this run writes is one sentence naming the checkpoint."""
        try:
            self.ladder.load(state["ladder"])
            self.table.load(state["table"])
            cursors = [int(c) for c in state["cursors"]]
            if len(cursors) != len(self.streams) or min(cursors) < 0 or not 0 <= self.ladder.level < len(self.streams):
                raise ValueError("levels")
        except (KeyError, TypeError, ValueError):
            raise TinyZeroError(f"{ckpt / 'state.json'} holds no curriculum state for these {len(self.streams)} "
                                "level(s) (a run started without data.curriculum, or with other levels, or a damaged "
                                "file): resume with the curriculum settings the run started with") from None
        for stream, cursor in zip(self.streams, cursors, strict=True):
            for _ in range(cursor):
                next(stream)
        self.cursors = cursors
        self.pending.clear()
        self.tally, self.revisited, self.drawn = [], 0, set()

    def rewind(self, state: dict) -> None:
        """Back to ``state`` (taken at a step's start), streams re-created: what a stop mid-step rolls back to."""
        self.attach(*self._attached)
        self.load(state, None)
