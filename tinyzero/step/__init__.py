"""The step's options: what changes what one step generates and trains, in one place.

Each option is one small object built from the config, in its own module here; the driver (tinyzero/trainer.py)
holds them as one ``StepOptions`` and asks all of them at the same points of every step, never one by name:

    check()                          before anything loads: a setting that cannot work stops in one sentence
    collect(draw, generate)          the step's rounds of generation (dynamic sampling; one round when it is off)
    on_scored(scored)                each round's scores, before the filter reads them (the overlong penalty)
    on_train(train, step)            the kept groups, last, just before the advantages (a control run's scores)
    on_tokens(tokens, batch)         the learner's token batch of those groups (the overlong mask)
    metrics(collected, train)        the step's own metrics, merged in the order below
    overlaps(step)                   whether this step's update runs beside the next generation (the overlap)

The options, in the order they are asked (docs/engine.md, "Where the rollout options act", walks one step):

- ``Curriculum`` (``data.curriculum``, curriculum.py): which problems a step draws (levels, pass rates); the driver
  asks it for them, records each group's verdicts as it is scored, and moves the level at the step's end;
- ``DynamicSampling`` (``rollout.filter_groups``, dynamic_sampling.py): generation in rounds, keeping groups that teach;
- ``Overlong`` (``rollout.overlong``, overlong.py): what a response cut at ``max_new_tokens`` counts for;
- ``Control`` (``reward.control``, controls.py): a control run's uninformative scores for the learner;
- ``OffPolicy`` (``run.off_policy_steps``, overlap.py): the next batch generated beside the update.

A hook an option does not need is the identity (or nothing), from ``Option``; a new option is one module with one
class, and one line in ``StepOptions.__init__``.

Why one object rather than a list the driver loops over: two of the hooks (``collect``, ``overlaps``) shape the step
itself and have exactly one owner, while the batch hooks fold every option in order; the composite does both, so the
driver reads the same way whichever options are on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the annotations only: the overlap's schedule is read by the cost estimate, which needs no torch
    from tinyzero.config import Config
    from tinyzero.engine.messages import RolloutBatch, ScoredBatch, TokenBatch


class Option:
    """The hooks of a step option, each doing nothing; an option overrides the ones it acts in."""

    def check(self) -> None:
        """Refuse, in one sentence, a setting that cannot work; called before anything loads."""

    def on_scored(self, scored: ScoredBatch) -> ScoredBatch:
        return scored

    def on_train(self, train: ScoredBatch, step: int) -> ScoredBatch:
        """``step``: the 1-based step the batch trains."""
        return train

    def on_tokens(self, tokens: TokenBatch, batch: RolloutBatch) -> TokenBatch:
        return tokens

    def metrics(self, collected, train: ScoredBatch) -> dict[str, float]:
        return {}


class StepOptions:
    """Every step option of a run, asked in one order (the module docstring)."""

    def __init__(self, config: Config):
        from tinyzero.step.controls import Control
        from tinyzero.step.curriculum import Curriculum
        from tinyzero.step.dynamic_sampling import DynamicSampling
        from tinyzero.step.overlap import OffPolicy
        from tinyzero.step.overlong import Overlong

        self.curriculum = Curriculum(config)
        self.sampling = DynamicSampling(config)
        self.off_policy = OffPolicy(config)
        self.options: list[Option] = [self.curriculum, self.sampling, Overlong(config), Control(config),
                                      self.off_policy]

    def check(self) -> None:
        for option in self.options:
            option.check()

    def collect(self, draw: Callable[[int], list[dict]], generate: Callable[[list[dict], int], ScoredBatch]):
        """The step's generation: ``generate(problems, offset)`` returns a round's scored batch (``on_scored``
        applied by the caller); returns a ``dynamic_sampling.Collected``."""
        return self.sampling.collect(draw, generate)

    def on_scored(self, scored: ScoredBatch) -> ScoredBatch:
        for option in self.options:
            scored = option.on_scored(scored)
        return scored

    def on_train(self, train: ScoredBatch, step: int) -> ScoredBatch:
        for option in self.options:
            train = option.on_train(train, step)
        return train

    def on_tokens(self, tokens: TokenBatch, batch: RolloutBatch) -> TokenBatch:
        for option in self.options:
            tokens = option.on_tokens(tokens, batch)
        return tokens

    def metrics(self, collected, train: ScoredBatch) -> dict[str, float]:
        merged: dict[str, float] = {}
        for option in self.options:
            merged.update(option.metrics(collected, train))
        return merged

    def overlaps(self, step: int) -> bool:
        """Whether the update of ``step`` (1-based) runs beside the next batch's generation."""
        return self.off_policy.overlaps(step)
