"""Bytes a piece of CPU code allocates, keeps and peaks at, from the tensors its ops create (tests only).

A ``TorchDispatchMode`` sees every op's outputs, forward and backward (CPU backward runs on the calling thread,
inside the mode); each new tensor storage is counted when it appears and uncounted by a weak-reference callback
when it is freed. What is live at the end is what the call kept (for a forward pass: what autograd saved for
backward, and the outputs); the most live at once is its peak. Storages that existed before (weights, AdamW's
moments) are never counted, even when an op writes into them. Temporaries a kernel allocates and frees inside
itself are not tensors and are not seen. torch's own ``torch.distributed._tools.mem_tracker.MemTracker`` does the
same bookkeeping but refuses a module called twice in one context (a learner's micro-batches); the profiler's
memory records drop the frees of blocks allocated before profiling, which a learner's first step always has.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class Measured:
    kept: int  # bytes of storages created inside the call and still alive after it
    peak: int  # the most bytes of such storages alive at once during the call
    result: object = None


class _LiveBytes(TorchDispatchMode):
    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self._tracked: dict[int, weakref.ref] = {}
        self._existing = {t.untyped_storage()._cdata for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self._tracked or key in self._existing:
            return
        size = storage.nbytes()

        def freed(_ref, key=key, size=size):
            self._tracked.pop(key, None)
            self.live -= size

        self._tracked[key] = weakref.ref(storage, freed)
        self.live += size
        self.peak = max(self.peak, self.live)


def measure(fn, *args, existing: tuple[torch.Tensor, ...] = (), **kwargs) -> Measured:
    """Run ``fn(*args, **kwargs)``; ``existing``: tensors alive before the call (their storages are not counted).
    The result's own tensors count as kept."""
    params = [t for a in (*args, *kwargs.values()) if isinstance(a, torch.nn.Module) for t in a.parameters()]
    mode = _LiveBytes([*existing, *params])
    with mode:
        result = fn(*args, **kwargs)
    return Measured(kept=mode.live, peak=mode.peak, result=result)
