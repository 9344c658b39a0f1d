"""FSDP2 sharding of the learner across several processes (one per GPU; gloo on CPU for tests).

Each learner process holds a shard of the policy (torch ``fully_shard`` on every decoder layer and on the
root); the driver sends the whole batch to every process and each one trains on its own slice of the rows.
Simplifications: data-parallel over rows only (no tensor/sequence parallelism); inference passes
(``logprobs``/``values``) run the whole batch on every process, because every forward of a sharded model is a
collective; per-step stats are the first process's.
"""

from __future__ import annotations

from datetime import timedelta

import torch


def init_distributed(rank: int, world_size: int, init_method: str) -> str:
    """Join the learner process group; returns this process's device."""
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        # A bounded wait: a process that never joins (e.g. an actor Ray could not place) fails instead of hanging.
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=10))
    if torch.cuda.is_available():
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def shard(module: torch.nn.Module, layers, compute_dtype: torch.dtype = torch.float32) -> None:
    """FSDP2: each decoder layer is its own unit (gathered just in time), then the root (embeddings, head).

    The shards (master weights, AdamW states) stay float32; with a bf16 ``compute_dtype`` FSDP gathers bf16
    copies for the forward and backward, and reduces gradients in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mixed = compute_dtype != torch.float32
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype if mixed else None,
                                  reduce_dtype=torch.float32 if mixed else None)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(module, mp_policy=policy)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (every process must call it; all receive them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 broadcast_from_rank0=False))


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))


def to_local_float(value) -> float:
    """A scalar that may be a DTensor (e.g. the clipped global grad norm) as a plain float."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)
