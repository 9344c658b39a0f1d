"""Control runs (``reward.control``) as a step option: the learner trains on scores that carry no information
about which completion was right, while everything else (sampling, the verifier's verdicts, accuracy, evaluation)
is the run's own. The scores themselves come from ``tinyzero.scoring.control_scores`` (``shuffled``: the batch's
own scores permuted; ``random``: 1 with the batch's success rate); docs/metrics.md says how a report compares them.

The control acts last, on the final scores (the overlong penalty included) of the groups dynamic sampling kept, so
the learner sees nothing else; the penalty and the filter before it read the real scores and verdicts.
"""

from __future__ import annotations

import dataclasses

import torch

from tinyzero.config import Config
from tinyzero.engine.messages import ScoredBatch
from tinyzero.scoring import control_scores
from tinyzero.step import Option


class Control(Option):
    """The kept groups' scores replaced by the control's (the real ones kept as ``verifier_scores``)."""

    def __init__(self, config: Config):
        self.control, self.seed = config.reward.control, config.run.seed

    def on_train(self, train: ScoredBatch, step: int) -> ScoredBatch:
        if self.control == "none":
            return train
        given = control_scores(train.scores.tolist(), train.correct.tolist(), self.control, self.seed, step)
        return dataclasses.replace(train, scores=torch.tensor(given, dtype=torch.float32), verifier_scores=train.scores)

    def metrics(self, collected, train: ScoredBatch) -> dict[str, float]:
        if train.verifier_scores is None or not len(train.scores):
            return {}
        return {"reward/control_mean": float(train.scores.mean())}  # what the learner was given
