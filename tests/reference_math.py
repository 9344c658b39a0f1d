"""Reference implementations the tests compare the production code with (not used by the kit itself).

Written the plain way: a log-softmax per row of full ``[B, T, V]`` logits, and the entropy from its
definition. ``tinyzero.engine.forward.token_logprobs_and_entropy`` must agree with them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] per position: [B, T, V], [B, T] -> [B, T] in float32 (label logit minus a
    float32 logsumexp, one row at a time)."""
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).float()  # [B, T]
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # [B, T]
    return picked - lse  # [B, T]


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per position: [B, T, V] -> [B, T] in float32, one row at a time."""
    return torch.stack([_row_entropy(row.float()) for row in logits])  # [B, T]


def _row_entropy(row: Tensor) -> Tensor:
    """H = logsumexp(z) - sum_v p_v z_v for one row of logits z: [T, V] -> [T]."""
    probs = torch.softmax(row, dim=-1)  # [T, V]
    return torch.logsumexp(row, dim=-1) - (probs * row).sum(-1)  # [T]
