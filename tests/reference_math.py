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


def plain_sequence_logprobs(model, tokens, *, with_entropy: bool = False, entropy_grad: bool = False):
    """``tinyzero.engine.forward.sequence_logprobs`` as it was before the LM-head chunks were recomputed in
    backward: every chunk's graph (its [k, V] log-softmax, and with ``entropy_grad`` its exponential) stays
    alive until backward. The reference for values, gradients and kept memory."""
    from tinyzero.engine.forward import HEAD_CHUNK, response_hidden, token_logprobs_and_entropy

    device = next(model.parameters()).device
    hidden = response_hidden(model.base_model, tokens, device)  # [N, T, H]
    mask = tokens.response_mask.to(device) > 0  # [N, T]
    picked_hidden, labels = hidden[mask], tokens.response_ids.to(device)[mask]  # [K, H], [K]
    head = model.get_output_embeddings()
    lp_parts, ent_parts = [], []
    for start in range(0, picked_hidden.shape[0], HEAD_CHUNK):
        logits = head(picked_hidden[start : start + HEAD_CHUNK])  # [k, V]
        lp, ent = token_logprobs_and_entropy(logits, labels[start : start + HEAD_CHUNK],
                                             with_entropy=with_entropy, entropy_grad=entropy_grad)
        lp_parts.append(lp)
        if ent is not None:
            ent_parts.append(ent)

    def scatter(parts):
        flat = torch.cat(parts) if parts else torch.zeros(0, device=mask.device)
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, flat.float())

    return scatter(lp_parts), (scatter(ent_parts) if with_entropy else None)
