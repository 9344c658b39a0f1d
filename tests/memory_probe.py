"""Bytes a piece of CPU code allocates and keeps, from the profiler's record of every allocation and free.

``torch.profiler`` with ``profile_memory=True`` records each CPU allocation against the op that made it (its
``self_cpu_memory_usage``; frees outside any op appear as ``[memory]`` events with negative sizes). Summed in
start order they give the bytes live at every moment: the peak, and what is still live at the end (for a
forward pass, what autograd keeps for backward). Ops are ordered by their start, so within one op an
allocation may be counted before a free it follows: the peak can read high by at most one op's temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.profiler import ProfilerActivity, profile


@dataclass
class Measured:
    kept: int  # bytes allocated inside the call and still live after it (outputs, saved tensors)
    peak: int  # the most bytes live at once during the call, above what was live before it
    result: object = None


def measure(fn, *args, **kwargs) -> Measured:
    """Run ``fn(*args, **kwargs)`` under the profiler; the result's own tensors count as kept."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return Measured(kept=live, peak=peak, result=result)
