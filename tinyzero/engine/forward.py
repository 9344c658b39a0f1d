"""Model forward passes over a ``TokenBatch``: the response tokens' log-probs, entropy and hidden states.

Shared by the learner, the reference model, the critic and the HF rollout engine's ``logprobs``. Two exact
savings live here:
- the LM head and the log-softmax run on real response tokens only (never on prompt positions or padding),
  in chunks of ``HEAD_CHUNK`` tokens so the float32 ``[k, V]`` logits stay bounded;
- with gradients on, each chunk is recomputed in the backward pass (``torch.utils.checkpoint``) when keeping
  it would cost more than ``HEAD_KEEP_BYTES`` (``tinyzero/engine/lm_head.py``): the forward then keeps only the chunk's
  hidden states ([k, H]), not its [k, V] log-softmax (and, with an entropy bonus, its exponential too), which
  would be 2 x 8,192 tokens x 151,936 x 4 bytes = 10 GB for Qwen2.5-3B at 8 x 1,024 response tokens. The
  recompute runs the same ops on the same inputs, so values and gradients are bit-for-bit those of the plain
  graph either way; it costs one more LM-head matmul, log-softmax and exponential per chunk, which is why a
  micro-batch whose chunks fit the budget (the CPU demo's: at most 2,048 tokens x 49,152 x 4 bytes = 0.4 GB)
  keeps them instead;
- rows that share a prompt (a GRPO group) share one forward pass of that prompt (``response_hidden``).
The token layout is described in ``tinyzero/engine/messages.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from tinyzero.engine.lm_head import head_recompute
from tinyzero.engine.messages import TokenBatch

HEAD_CHUNK = 2048  # tokens per LM-head chunk: bounds the float32 [k, V] logits held at once


def token_logprobs_and_entropy(
    logits: Tensor, labels: Tensor, *, with_entropy: bool = True, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each label and (optionally) the entropy, from one fused float32 log-softmax.

    logits [K, V], labels [K] -> logprobs [K], entropy [K] (detached unless ``entropy_grad``).
    Same values as a separate log-softmax gather and entropy, for a flat run of K tokens; one
    log-softmax serves both (its backward is a single fused kernel), which measured faster on CPU than the
    logsumexp route. The caller bounds K so the [K, V] float32 intermediate fits in memory.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [K, V]
    picked = log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # [K]
    if not with_entropy:
        return picked, None
    source = log_probs if entropy_grad else log_probs.detach()
    entropy = -(source.exp() * source).sum(-1)  # [K]
    return picked, entropy


def in_chunks(fn, tokens: TokenBatch, size: int) -> torch.Tensor:
    """``fn`` over ``size``-row slices of ``tokens`` (bounded activation memory), concatenated on CPU, [N, T]."""
    return torch.cat([fn(tokens.select(rows)).cpu() for rows in torch.arange(len(tokens)).split(size)])


def sequence_logprobs(
    model, tokens: TokenBatch, *, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the response tokens under ``model`` ([N, T]); entropy [N, T] when asked
    (detached unless ``entropy_grad``: as a metric it needs no backward pass).

    The LM head and the log-softmax run only on real response tokens (not on prompts, not on padding):
    exact savings, since no other position's vocabulary distribution is ever used.
    """
    device = next(model.parameters()).device
    hidden = response_hidden(model.base_model, tokens, device)  # [N, T, H]
    mask = tokens.response_mask.to(device) > 0  # [N, T]
    picked_hidden = hidden[mask]  # [K, H], K = real response tokens
    labels = tokens.response_ids.to(device)[mask]  # [K]
    head = model.get_output_embeddings()
    recompute = torch.is_grad_enabled() and picked_hidden.requires_grad and head_recompute(
        picked_hidden.shape[0], head.weight.shape[0], entropy_grad=entropy_grad)
    lp_parts, ent_parts = [], []
    for start in range(0, picked_hidden.shape[0], HEAD_CHUNK):
        chunk = (head, picked_hidden[start : start + HEAD_CHUNK], labels[start : start + HEAD_CHUNK],
                 with_entropy, entropy_grad)
        # use_reentrant=False: the chunk's autocast state is replayed, and the head's weight gets its gradient
        # even though it is not an argument.
        lp, ent = checkpoint(_head_chunk, *chunk, use_reentrant=False) if recompute else _head_chunk(*chunk)
        lp_parts.append(lp)
        if ent is not None:
            ent_parts.append(ent)
    logprobs = _scatter(mask, lp_parts)  # [N, T] float32, 0 off the mask
    entropy = _scatter(mask, ent_parts) if with_entropy else None
    return logprobs, entropy


def _head_chunk(head, hidden: Tensor, labels: Tensor, with_entropy: bool, entropy_grad: bool):
    """One chunk: hidden [k, H], labels [k] -> log-probs [k], entropy [k] or None."""
    return token_logprobs_and_entropy(head(hidden), labels, with_entropy=with_entropy, entropy_grad=entropy_grad)


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
    share = len(unique) < len(ids) and t >= 2 and not checkpointing
    if not _on_every_process(body, share):
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


def _on_every_process(body, flag: bool) -> bool:
    """``flag`` and-ed over the learner processes when ``body``'s layers are sharded (FSDP2), else ``flag``.

    The shared prompt pass calls every layer twice, so under FSDP2 it gathers every layer's weights twice: the
    processes must all take it or all skip it, or their collectives stop matching and the update hangs. Each
    process decides from its own micro-batch (which rows share a prompt there), so they agree by one all-reduce."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(module, FSDPModule) for module in body.modules()):
        return flag
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=next(body.parameters()).device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
