"""The reference model: a frozen copy of the initial policy that gives ``ref_logprobs`` for the KL term."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyzero.engine.devices import release_cached_memory, resolve_device, resolve_dtype
from tinyzero.engine.forward import in_chunks, sequence_logprobs
from tinyzero.engine.messages import TokenBatch
from tinyzero.engine.models import load_causal_lm


class ReferenceModel:
    """A frozen copy of the initial policy; gives ``ref_logprobs`` for the KL term.

    Held in the compute dtype (``dtype``, e.g. bfloat16 on GPU): it never takes an optimizer step, so it needs no
    float32 master copy, and bf16 halves its memory (6.2 GB instead of 12.3 GB for a 3B model)."""

    def __init__(self, model_path: str | Path, *, dtype: str = "auto", device: str = "auto",
                 micro_batch_size: int = 16, release_cache: bool = False):
        """``release_cache``: a sleeping vLLM shares this GPU and wakes after this pass (``Layout.returns_cache``)."""
        self.device = resolve_device(device)
        self.release_cache = release_cache
        self.model = load_causal_lm(model_path, resolve_dtype(dtype, self.device), self.device).eval()
        self.model.requires_grad_(False)
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def logprobs(self, tokens: TokenBatch) -> torch.Tensor:
        out = in_chunks(lambda part: sequence_logprobs(self.model, part)[0], tokens, self.micro_batch_size)
        if self.release_cache:
            release_cached_memory()
        return out
