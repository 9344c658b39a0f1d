"""The typed messages between the roles, and the token layout every model-side role shares.

Flow of one step: a rollout worker returns ``Completion``s; the driver groups them into a ``RolloutBatch``,
scores it into a ``ScoredBatch``, packs the tokens into a ``TokenBatch`` and sends the learner a
``TrainBatch``. No model code lives here: the forward passes that read a ``TokenBatch`` are in
``tinyzero/engine/forward.py``.

Layout of a ``TokenBatch`` (N sequences): prompts are LEFT-padded to width P and responses RIGHT-padded to
width T, so every response starts at column P. The logits that predict response token t sit at column
P - 1 + t for every row, so one slice ``[:, P-1 : P-1+T]`` feeds the LM head — it is applied to completion
positions only (an exact saving: prompt positions never need vocabulary logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(kw_only=True)
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]  # generated tokens only (not the prompt); includes the stop token when finished
    text: str  # the decoded tokens, special tokens skipped
    finished: bool  # True: stopped at EOS / a stop token; False: cut off at max_new_tokens


@dataclass(kw_only=True)
class RolloutBatch:
    """One step's completions, group-contiguous: prompt i's G samples are rows i*G .. i*G+G-1."""

    prompt_ids: list[list[int]]  # [N] token ids of each row's prompt (repeated G times)
    response_ids: list[list[int]]  # [N] generated token ids
    texts: list[str]  # [N] decoded completions
    finished: list[bool]  # [N] stopped at EOS (False: cut at max_new_tokens)
    problems: list[dict]  # [N] the problem each row answers
    prompts: list[str]  # [N] the prompt text (for logs)
    group_size: int  # G


@dataclass(kw_only=True)
class ScoredBatch:
    """A rollout batch with its rewards."""

    rollout: RolloutBatch
    scores: Tensor  # [N] float32, what the learner optimises
    correct: Tensor  # [N] bool, what accuracy counts
    reasons: list[str]  # [N]
    components: dict[str, Tensor] = field(default_factory=dict)  # name -> [N]
    # [N] float32, the verifier's own scores where a control run (reward.control) gave the learner others; else None
    verifier_scores: Tensor | None = None

    @property
    def verdicts(self) -> Tensor:  # [N] the verifier's scores, control run or not
        return self.scores if self.verifier_scores is None else self.verifier_scores


@dataclass(kw_only=True)
class TokenBatch:
    """Padded token tensors for the learner and the reference model (layout in the module docstring)."""

    input_ids: Tensor  # [N, P+T] long
    attention_mask: Tensor  # [N, P+T] long
    position_ids: Tensor  # [N, P+T] long, counted from each row's first real token
    response_mask: Tensor  # [N, T] float32, 1 on generated tokens
    prompt_width: int  # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_width :]

    def select(self, index: Tensor) -> TokenBatch:
        return TokenBatch(
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            position_ids=self.position_ids[index], response_mask=self.response_mask[index],
            prompt_width=self.prompt_width,
        )

    def trim_width(self) -> int:
        """The response width these rows need: their longest response (>= 1)."""
        lengths = self.response_mask.sum(dim=1)
        return max(1, int(lengths.max())) if len(lengths) else 1

    def crop(self, width: int) -> TokenBatch:
        """Drop response columns past ``width`` (padding only when width >= trim_width())."""
        end = self.prompt_width + width
        return TokenBatch(input_ids=self.input_ids[:, :end], attention_mask=self.attention_mask[:, :end],
                          position_ids=self.position_ids[:, :end], response_mask=self.response_mask[:, :width],
                          prompt_width=self.prompt_width)


@dataclass(kw_only=True)
class TrainBatch:
    """What one learner update consumes."""

    tokens: TokenBatch
    advantages: Tensor  # [N, T]
    old_logprobs: Tensor | None = None  # [N, T]; None: on-policy single pass, taken from the same forward
    ref_logprobs: Tensor | None = None  # [N, T]; None: no KL loss term
    returns: Tensor | None = None  # [N, T]; the critic's targets (estimators with a critic)
    old_values: Tensor | None = None  # [N, T]; the critic's values at rollout time

    def select(self, index: Tensor, trim: bool = False) -> TrainBatch:
        """Rows ``index``; with ``trim``, also drop the response columns that are padding for all of them
        (exact: those columns are masked out of every loss, so only the compute spent on them changes)."""
        tokens = self.tokens.select(index)
        width = tokens.trim_width() if trim else tokens.response_mask.shape[1]
        pick = lambda t: None if t is None else t[index][:, :width]  # noqa: E731
        return TrainBatch(
            tokens=tokens.crop(width), advantages=self.advantages[index][:, :width],
            old_logprobs=pick(self.old_logprobs), ref_logprobs=pick(self.ref_logprobs), returns=pick(self.returns),
            old_values=pick(self.old_values),
        )


def build_tokens(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, response_width: int | None = None
) -> TokenBatch:
    """Pack prompts (left-padded) and responses (right-padded) into one TokenBatch.

    ``response_width`` pads responses to a fixed T (Dr. GRPO's constant length); default: the longest one.
    """
    n = len(prompt_ids)
    p_width = max(len(p) for p in prompt_ids)
    t_width = max(1, max(len(r) for r in response_ids), response_width or 0)
    input_ids = torch.full((n, p_width + t_width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, p_width + t_width), dtype=torch.long)
    response_mask = torch.zeros((n, t_width), dtype=torch.float32)
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        input_ids[i, p_width - len(prompt) : p_width] = torch.tensor(prompt, dtype=torch.long)
        attention[i, p_width - len(prompt) : p_width] = 1
        if response:
            input_ids[i, p_width : p_width + len(response)] = torch.tensor(response, dtype=torch.long)
            attention[i, p_width : p_width + len(response)] = 1
            response_mask[i, : len(response)] = 1.0
    position_ids = (attention.cumsum(dim=1) - 1).clamp_min(0)  # [N, P+T]
    return TokenBatch(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                      response_mask=response_mask, prompt_width=p_width)
