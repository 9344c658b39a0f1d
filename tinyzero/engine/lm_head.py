"""Whether the learner's LM-head chunks are kept for backward or recomputed there: a pure rule, no torch import, so
the memory estimate (``tinyzero/sizing/preflight.py``) uses the same rule as the forward pass
(``tinyzero/engine/forward.py``)."""

from __future__ import annotations

# Float32 LM-head tensors one micro-batch's forward may keep for backward rather than recompute them there.
HEAD_KEEP_BYTES = 1 << 30


def head_recompute(tokens: int, vocab: int, *, entropy_grad: bool, keep_bytes: int | None = None) -> bool:
    """Whether the LM-head chunks of a forward over ``tokens`` response tokens are recomputed in backward.

    Kept, every chunk holds its [k, V] float32 log-softmax until backward, and its exponential too when the
    entropy takes a gradient: ``tokens x vocab x 4`` bytes (twice that). Recomputing costs one more LM-head
    matmul, log-softmax and exponential per chunk (measured on 2 CPU cores with SmolLM2-135M: bench/learner_update.py)
    and saves all of it, so it is done only when the kept bytes would exceed ``keep_bytes`` (``HEAD_KEEP_BYTES``).
    """
    budget = HEAD_KEEP_BYTES if keep_bytes is None else keep_bytes
    return head_kept_bytes(tokens, vocab, entropy_grad=entropy_grad) > budget


def head_kept_bytes(tokens: int, vocab: int, *, entropy_grad: bool) -> int:
    """Bytes the LM-head chunks of ``tokens`` response tokens keep for backward when they are not recomputed."""
    return tokens * vocab * 4 * (2 if entropy_grad else 1)
