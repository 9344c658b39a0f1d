"""Responses cut at ``rollout.max_new_tokens``: keep them, drop them from the loss, or penalise their length.

A response that hits the limit was stopped, not finished: its verdict is scored on a truncated text, and training on
it as on a finished one rewards filling the budget (TinyZero users report runs that fill it with repeated end
tokens). ``rollout.overlong`` (DAPO, Yu et al. 2025, arXiv:2503.14476, section 3.4):

- ``keep``: scored and trained like any other response (the kit's behaviour before the option existed);
- ``mask``: truncated responses add no loss: their response mask is zeroed in the learner's batch, so no policy,
  KL or entropy term and no loss-normaliser count comes from them. Their scores still enter their group's
  statistics (the baseline the other samples are compared with), as in DAPO's overlong filtering;
- ``penalty``: DAPO's soft overlong punishment, 0 down to -1 over the last ``rollout.overlong_buffer`` tokens before
  the limit (``algos.overlong_penalty``), added to every response's score and kept as the reward component
  ``overlong``. It acts before dynamic sampling, so ``filter_groups=score`` sees it; ``correct`` never changes.
"""

from __future__ import annotations

import dataclasses

import torch

from tinyzero import algos
from tinyzero.config import Config, RolloutConfig
from tinyzero.engine.messages import ScoredBatch, TokenBatch
from tinyzero.errors import TinyZeroError
from tinyzero.step import Option

COMPONENT = "overlong"


def check_overlong(config: Config) -> None:
    """Before anything loads: the penalty's buffer must fit inside the generation limit."""
    rollout = config.rollout
    if rollout.overlong == "penalty" and rollout.overlong_buffer > rollout.max_new_tokens:
        raise TinyZeroError(
            f"rollout.overlong_buffer={rollout.overlong_buffer} is longer than rollout.max_new_tokens="
            f"{rollout.max_new_tokens}, so the overlong penalty would start before the first token: set "
            "overlong_buffer to at most max_new_tokens (DAPO used a fifth of it)")


def shape_scores(scored: ScoredBatch, settings: RolloutConfig) -> ScoredBatch:
    """With ``overlong=penalty``: scores plus the length penalty, which is also recorded as a component."""
    if settings.overlong != "penalty":
        return scored
    lengths = torch.tensor([len(ids) for ids in scored.rollout.response_ids])  # [N]
    penalty = algos.overlong_penalty(lengths, settings.max_new_tokens, settings.overlong_buffer)  # [N]
    return dataclasses.replace(scored, scores=scored.scores + penalty,
                               components={**scored.components, COMPONENT: penalty})


def mask_truncated(tokens: TokenBatch, finished: list[bool], settings: RolloutConfig) -> TokenBatch:
    """With ``overlong=mask``: the batch with the response mask of every truncated row zeroed."""
    if settings.overlong != "mask" or all(finished):
        return tokens
    keep = torch.tensor(finished, dtype=tokens.response_mask.dtype).unsqueeze(1)  # [N, 1]
    return dataclasses.replace(tokens, response_mask=tokens.response_mask * keep)


def metrics(scored: ScoredBatch) -> dict[str, float]:
    """The mean penalty over the step's completions, when one was charged (``rollout/truncated_frac``, always
    logged, is the trainer's)."""
    if COMPONENT not in scored.components:
        return {}
    return {"reward/overlong_penalty": float(scored.components[COMPONENT].mean())}


class Overlong(Option):
    """The step option (tinyzero/step/__init__.py): the penalty on each round's scores, the mask on the learner's
    tokens, the penalty's metric."""

    def __init__(self, config: Config):
        self.config, self.rollout = config, config.rollout

    def check(self) -> None:
        check_overlong(self.config)

    def on_scored(self, scored: ScoredBatch) -> ScoredBatch:
        return shape_scores(scored, self.rollout)

    def on_tokens(self, tokens: TokenBatch, batch) -> TokenBatch:
        return mask_truncated(tokens, batch.finished, self.rollout)

    def metrics(self, collected, train: ScoredBatch) -> dict[str, float]:
        return metrics(collected.scored)
