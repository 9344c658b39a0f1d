"""Typed messages between the roles, and the token layout every model-side role shares.

Layout of a ``TokenBatch`` (N sequences): prompts are LEFT-padded to width P and responses RIGHT-padded to
width T, so every response starts at column P. The logits that predict response token t sit at column
P - 1 + t for every row, so one slice ``[:, P-1 : P-1+T]`` feeds the LM head — it is applied to completion
positions only (an exact saving: prompt positions never need vocabulary logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """One step's completions, group-contiguous: prompt i's G samples are rows i*G .. i*G+G-1."""

    prompt_ids: list[list[int]]  # [N] token ids of each row's prompt (repeated G times)
    response_ids: list[list[int]]  # [N] generated token ids
    texts: list[str]  # [N] decoded completions
    finished: list[bool]  # [N] stopped at EOS (False: cut at max_new_tokens)
    problems: list[dict]  # [N] the problem each row answers
    prompts: list[str]  # [N] the prompt text (for logs)
    group_size: int  # G


@dataclass
class ScoredBatch:
    """A rollout batch with its rewards."""

    rollout: RolloutBatch
    scores: Tensor  # [N] float32, what the learner optimises
    correct: Tensor  # [N] bool, what accuracy counts
    reasons: list[str]  # [N]
    components: dict[str, Tensor] = field(default_factory=dict)  # name -> [N]


@dataclass
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
            self.input_ids[index], self.attention_mask[index], self.position_ids[index],
            self.response_mask[index], self.prompt_width,
        )

    def trim_width(self) -> int:
        """The response width these rows need: their longest response (>= 1)."""
        lengths = self.response_mask.sum(dim=1)
        return max(1, int(lengths.max())) if len(lengths) else 1

    def crop(self, width: int) -> TokenBatch:
        """Drop response columns past ``width`` (padding only when width >= trim_width())."""
        end = self.prompt_width + width
        return TokenBatch(self.input_ids[:, :end], self.attention_mask[:, :end], self.position_ids[:, :end],
                          self.response_mask[:, :width], self.prompt_width)


@dataclass
class TrainBatch:
    """What one learner update consumes."""

    tokens: TokenBatch
    advantages: Tensor  # [N, T]
    old_logprobs: Tensor | None = None  # [N, T]; None: on-policy single pass, taken from the same forward
    ref_logprobs: Tensor | None = None  # [N, T]; None: no KL loss term
    returns: Tensor | None = None  # [N, T]; PPO critic targets
    old_values: Tensor | None = None  # [N, T]; PPO critic values at rollout time

    def select(self, index: Tensor, trim: bool = False) -> TrainBatch:
        """Rows ``index``; with ``trim``, also drop the response columns that are padding for all of them
        (exact: those columns are masked out of every loss, so only the compute spent on them changes)."""
        tokens = self.tokens.select(index)
        width = tokens.trim_width() if trim else tokens.response_mask.shape[1]
        pick = lambda t: None if t is None else t[index][:, :width]  # noqa: E731
        return TrainBatch(
            tokens.crop(width), self.advantages[index][:, :width], pick(self.old_logprobs),
            pick(self.ref_logprobs), pick(self.returns), pick(self.old_values),
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
    return TokenBatch(input_ids, attention, position_ids, response_mask, p_width)


def sequence_logprobs(
    model, tokens: TokenBatch, *, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the response tokens under ``model`` ([N, T]); entropy [N, T] when asked
    (detached unless ``entropy_grad``: as a metric it needs no backward pass).

    The LM head and the log-softmax run only on real response tokens (not on prompts, not on padding):
    exact savings, since no other position's vocabulary distribution is ever used.
    """
    from tinyzero.algos import token_logprobs_and_entropy

    device = next(model.parameters()).device
    hidden = response_hidden(model.base_model, tokens, device)  # [N, T, H]
    mask = tokens.response_mask.to(device) > 0  # [N, T]
    picked_hidden = hidden[mask]  # [K, H], K = real response tokens
    labels = tokens.response_ids.to(device)[mask]  # [K]
    head = model.get_output_embeddings()
    lp_parts, ent_parts = [], []
    for start in range(0, picked_hidden.shape[0], _HEAD_CHUNK):
        logits = head(picked_hidden[start : start + _HEAD_CHUNK])  # [k, V]
        lp, ent = token_logprobs_and_entropy(logits, labels[start : start + _HEAD_CHUNK],
                                             with_entropy=with_entropy, entropy_grad=entropy_grad)
        lp_parts.append(lp)
        if ent is not None:
            ent_parts.append(ent)
    logprobs = _scatter(mask, lp_parts)  # [N, T] float32, 0 off the mask
    entropy = _scatter(mask, ent_parts) if with_entropy else None
    return logprobs, entropy


_HEAD_CHUNK = 2048  # tokens per LM-head chunk: bounds the float32 [k, V] logits held at once


def _scatter(mask: Tensor, parts: list[Tensor]) -> Tensor:
    """Put per-token values (in mask order) back into an [N, T] tensor, zeros elsewhere (differentiable)."""
    flat = torch.cat(parts) if parts else torch.zeros(0, device=mask.device)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return out.masked_scatter(mask, flat.float())


def response_hidden(body, tokens: TokenBatch, device) -> Tensor:
    """Hidden states at the positions that predict each response token, [N, T, H].

    Rows that share a prompt (a GRPO group: G samples of one prompt) share one forward pass of that prompt:
    the prompt runs once per distinct prompt, its key/value cache is gathered out to every row that uses it
    (``index_select`` — the gradient flows back through it), and only the responses run per row. The result
    equals the full per-row forward up to float rounding; with prompts of ~40 tokens and G = 8 it removes
    7/8 of the prompt compute from the learner's forward and backward passes.
    """
    p, t = tokens.prompt_width, tokens.response_mask.shape[1]
    ids, attn, pos = (x.to(device) for x in (tokens.input_ids, tokens.attention_mask, tokens.position_ids))
    # The key holds the mask too: with pad == a real token id, equal ids could still differ in length.
    keys = torch.cat([ids[:, :p], attn[:, :p]], dim=1)  # [N, 2P]
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    # HF turns the cache off under gradient checkpointing in training, so sharing needs it off.
    checkpointing = getattr(body, "gradient_checkpointing", False) and body.training
    if len(unique) == len(ids) or t < 2 or checkpointing:
        hidden = body(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        return hidden[:, p - 1 : p - 1 + t]  # [N, T, H]
    first = torch.full((len(unique),), len(ids), dtype=torch.long, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=device), reduce="amin")  # a row per prompt
    shared = body(input_ids=ids[first, :p], attention_mask=attn[first, :p], position_ids=pos[first, :p], use_cache=True)
    cache = shared.past_key_values
    cache.reorder_cache(inverse)  # [U, ...] -> [N, ...] along the batch dimension
    last_prompt = shared.last_hidden_state[:, -1][inverse]  # [N, H]: predicts response token 0
    rest = body(
        input_ids=ids[:, p : p + t - 1], attention_mask=attn[:, : p + t - 1], position_ids=pos[:, p : p + t - 1],
        past_key_values=cache, use_cache=True,
    ).last_hidden_state  # [N, T-1, H]: predict response tokens 1..T-1
    return torch.cat([last_prompt.unsqueeze(1), rest], dim=1)  # [N, T, H]
