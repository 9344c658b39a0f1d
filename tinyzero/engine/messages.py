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
    # [len(token_ids)] the engine's log-prob of each sampled token under the raw model (before temperature and
    # top-p, as the learner computes them); None: the engine did not report them
    logprobs: list[float] | None = None


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
    rollout_logprobs: list[list[float]] | None = None  # [N] the engine's log-prob of each generated token


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

    def without_prompt_padding(self) -> TokenBatch:
        """Drop the prompt columns that are left padding for every row (keeps at least one column). Exact: padding
        is masked out of attention and positions count from each row's first real token."""
        used = max(1, int(self.attention_mask[:, : self.prompt_width].sum(dim=1).max())) if len(self) else 1
        start = self.prompt_width - min(used, self.prompt_width)
        return TokenBatch(input_ids=self.input_ids[:, start:], attention_mask=self.attention_mask[:, start:],
                          position_ids=self.position_ids[:, start:], response_mask=self.response_mask,
                          prompt_width=self.prompt_width - start)

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
    rollout_logprobs: Tensor | None = None  # [N, T]; the rollout engine's log-probs of the sampled tokens, 0 off mask

    def select(self, index: Tensor, trim: bool = False, trim_prompt: bool = False) -> TrainBatch:
        """Rows ``index``; with ``trim``, also drop the response columns that are padding for all of them
        (exact: those columns are masked out of every loss, so only the compute spent on them changes); with
        ``trim_prompt``, the prompt columns that are left padding for all of them too."""
        tokens = self.tokens.select(index)
        width = tokens.trim_width() if trim else tokens.response_mask.shape[1]
        pick = lambda t: None if t is None else t[index][:, :width]  # noqa: E731
        tokens = tokens.crop(width)
        return TrainBatch(
            tokens=tokens.without_prompt_padding() if trim_prompt else tokens, advantages=self.advantages[index][:, :width],
            old_logprobs=pick(self.old_logprobs), ref_logprobs=pick(self.ref_logprobs), returns=pick(self.returns),
            old_values=pick(self.old_values), rollout_logprobs=pick(self.rollout_logprobs),
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


def pad_logprobs(rows: list[list[float]] | None, width: int) -> Tensor | None:
    """Per-row log-prob lists as one [N, width] float32 tensor, 0 past each row's end (the response layout)."""
    if rows is None:
        return None
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row[:width], dtype=torch.float32)
    return out


def take_rows(batch, rows: list[int]):
    """A ``RolloutBatch`` or ``ScoredBatch`` restricted to ``rows``, in that order: every per-row field (lists,
    tensors, dicts of tensors, a nested batch) is indexed; per-batch values (``group_size``) are kept."""
    index = torch.tensor(rows, dtype=torch.long)
    values = {}
    for name, value in vars(batch).items():
        if isinstance(value, list):
            values[name] = [value[i] for i in rows]
        elif isinstance(value, Tensor):
            values[name] = value[index]
        elif isinstance(value, dict):
            values[name] = {key: part[index] for key, part in value.items()}
        elif isinstance(value, RolloutBatch):
            values[name] = take_rows(value, rows)
        else:
            values[name] = value
    return type(batch)(**values)


def join_rows(batches: list):
    """Several ``RolloutBatch``es or ``ScoredBatch``es as one, rows in order. A component one batch lacks is 0 in
    its rows (as ``score`` fills a component a reward did not report); per-batch values must agree."""
    first = batches[0]
    values = {}
    for name, value in vars(first).items():
        parts = [getattr(batch, name) for batch in batches]
        if isinstance(value, list):
            values[name] = [item for part in parts for item in part]
        elif isinstance(value, Tensor):
            values[name] = torch.cat(parts)
        elif isinstance(value, dict):
            keys = sorted({key for part in parts for key in part})
            values[name] = {key: torch.cat([_column(part, key, batch) for part, batch in zip(parts, batches,
                                                                                          strict=True)])
                            for key in keys}
        elif isinstance(value, RolloutBatch):
            values[name] = join_rows(parts)
        else:
            if any(part != value for part in parts):
                raise ValueError(f"cannot join batches whose {name} differ: {parts}")
            values[name] = value
    return type(first)(**values)


def _column(part: dict[str, Tensor], key: str, batch) -> Tensor:
    """``part[key]``, or zeros as long as ``batch`` when that batch has no such component."""
    if key in part:
        return part[key]
    return torch.zeros(len(batch.scores), dtype=torch.float32)


@dataclass(kw_only=True)
class AdapterPush:
    """The learner's LoRA adapters as a rollout engine takes them (``model.lora``): the engine computes
    ``W·x + (alpha / rank)·B·(A·x)`` itself, as the learner does, instead of receiving ``W + (alpha / rank)·B·A``
    rounded to its dtype (which loses every update smaller than half a step of W in bf16)."""

    config: str  # peft's adapter_config.json text (rank, alpha, the adapted layers by full name)
    # peft's adapter names -> lora_A [rank, in] and lora_B [out, rank], CPU tensors in the engine's dtype
    tensors: dict[str, Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors: what a push moves."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
