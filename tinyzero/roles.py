"""Assembling the roles: plain objects in one process (``local``) or Ray actors on placement groups (``ray``).

The roles themselves (``RolloutWorker``, ``Learner``, ``ReferenceModel``) never import Ray; this module is
the one place that wraps them with ``ray.remote`` and places them:

- ``colocate``: one placement-group bundle holds every role; they share its CPUs/GPUs (fractional GPUs).
- ``split``: rollout workers get their own GPUs (one data-parallel vLLM engine per ``tensor_parallel_size``
  GPUs), learner and reference share the rest — the TinyZero 2-GPU layout.

Weight sync under Ray passes the learner's weights as an object reference straight to every rollout worker
(Ray's object store moves them; the driver never holds a copy), then each worker reloads them in place.
With several learner GPUs (or ``placement.learner_workers``), the learner is a group of actors sharding the
policy with FSDP2; every call goes to all of them. Simplification: one node (the group's rendezvous address).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyzero.config import Config
from tinyzero.errors import TinyZeroError


class LocalHandle:
    """Calls methods on a plain object."""

    def __init__(self, obj: Any):
        self.obj = obj

    def call(self, method: str, *args, **kwargs) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)

    def submit(self, method: str, *args, **kwargs) -> Any:
        return self.call(method, *args, **kwargs)

    @staticmethod
    def wait(results: list) -> list:
        return results


class RayHandle:
    """Calls methods on a Ray actor."""

    def __init__(self, actor: Any):
        self.actor = actor

    def call(self, method: str, *args, **kwargs) -> Any:
        import ray

        return ray.get(getattr(self.actor, method).remote(*args, **kwargs))

    def submit(self, method: str, *args, **kwargs) -> Any:
        return getattr(self.actor, method).remote(*args, **kwargs)

    @staticmethod
    def wait(results: list) -> list:
        import ray

        return ray.get(results)


class GroupHandle:
    """Several learner processes sharding one model: every call goes to all of them (each forward of a
    sharded model is a collective), and the first process's result is the answer."""

    def __init__(self, handles: list[RayHandle]):
        self.handles = handles
        self.pending: list = []

    def call(self, method: str, *args, **kwargs) -> Any:
        return RayHandle.wait([h.submit(method, *args, **kwargs) for h in self.handles])[0]

    def submit(self, method: str, *args, **kwargs) -> Any:
        refs = [h.submit(method, *args, **kwargs) for h in self.handles]
        self.pending = refs[1:]
        return refs[0]


@dataclass
class Roles:
    rollout: list  # handles of the rollout workers (data-parallel)
    learner: Any
    reference: Any | None
    mode: str

    def generate(self, method: str, prompts: list, **kwargs) -> list:
        """Split prompts across rollout workers, run them concurrently, concatenate in order."""
        k = len(self.rollout)
        size = -(-len(prompts) // k)
        chunks = [prompts[i * size : (i + 1) * size] for i in range(k)]
        pending = [h.submit(method, chunk, **kwargs) for h, chunk in zip(self.rollout, chunks, strict=True) if chunk]
        out: list = []
        for part in self.rollout[0].wait(pending):
            out.extend(part)
        return out

    def sync_weights(self) -> None:
        if self.mode == "ray":
            weights = self.learner.submit("named_weights")
            RayHandle.wait([h.submit("update_weights", weights) for h in self.rollout])
            RayHandle.wait(getattr(self.learner, "pending", []))
        else:
            weights = self.learner.call("named_weights")
            for handle in self.rollout:
                handle.call("update_weights", weights)

    def close(self) -> None:
        for handle in self.rollout:
            try:
                handle.call("close")
            except Exception:  # best effort on shutdown
                pass
        if self.mode == "ray":
            import ray

            ray.shutdown()


def _max_model_len(model_path: Path, cap: int = 4096) -> int:
    """The model's own context limit, capped: prompts here are short, and the cap bounds KV-cache planning."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None) or cap
    return int(min(limit, cap))


def _rollout_kwargs(config: Config, cache_dir: Path, seed: int, model_path: Path) -> dict:
    r = config.rollout
    return dict(
        backend=r.backend, dtype=_dtype_name(config.model.dtype), seed=seed,
        max_model_len=_max_model_len(model_path), kv_cache_gib=r.kv_cache_gib, gpu_memory_utilization=r.gpu_memory_utilization,
        tensor_parallel_size=r.tensor_parallel_size, cache_dir=cache_dir,
    )


def _dtype_name(name: str) -> str:
    """The learner's dtype rule (``resolve_dtype``), as the string vLLM and the HF engine take."""
    from tinyzero.learner import resolve_device, resolve_dtype

    return str(resolve_dtype(name, resolve_device())).removeprefix("torch.")


def _learner_kwargs(config: Config) -> dict:
    return dict(algo=config.algo, optim=config.optim, dtype=config.model.dtype,
                gradient_checkpointing=config.model.gradient_checkpointing, seed=config.run.seed)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def learner_processes(config: Config) -> int:
    """How many learner processes shard the policy: placement.learner_workers, else one per learner GPU."""
    p = config.placement
    if p.learner_workers:
        return p.learner_workers
    return (p.num_gpus - p.rollout_gpus) if p.strategy == "split" else 1


def check_gpus(config: Config) -> None:
    """Stop early, with the fix, when the recipe's GPU layout cannot be served here."""
    p = config.placement
    import torch

    have = torch.cuda.device_count()
    if p.num_gpus > have:
        raise TinyZeroError(
            f"the recipe asks for {p.num_gpus} GPU(s) but this machine has {have}: set placement.num_gpus={have} "
            "(0 runs on CPU) or run on a machine with more GPUs"
        )
    if p.strategy == "split":
        if p.num_gpus < 2 or not 1 <= p.rollout_gpus < p.num_gpus:
            raise TinyZeroError(
                "placement.strategy=split needs at least 2 GPUs with 1 <= placement.rollout_gpus < num_gpus: "
                "use strategy=colocate on one GPU"
            )
        if p.rollout_gpus % config.rollout.tensor_parallel_size:
            raise TinyZeroError("placement.rollout_gpus must be a multiple of rollout.tensor_parallel_size")
    learner_gpus = (p.num_gpus - p.rollout_gpus) if p.strategy == "split" else p.num_gpus
    if p.num_gpus and learner_processes(config) > max(learner_gpus, 1):
        raise TinyZeroError(
            f"placement.learner_workers={learner_processes(config)} needs a GPU each but the learner has "
            f"{learner_gpus}: lower placement.learner_workers or give the learner more GPUs"
        )
    if learner_processes(config) > 1 and config.run.mode != "ray":
        raise TinyZeroError("several learner processes (FSDP2) need run.mode=ray: set it, or placement.learner_workers=1")


def build_roles(config: Config, model_path: Path, cache_dir: Path) -> Roles:
    """Build the roles; call ``check_gpus(config)`` first (the trainer does, before the model loads)."""
    from tinyzero.learner import Learner, ReferenceModel
    from tinyzero.rollout import RolloutWorker

    need_ref = config.algo.kl_coef > 0
    if config.run.mode == "local":
        rollout = RolloutWorker(model_path, **_rollout_kwargs(config, cache_dir, config.run.seed, model_path))
        learner = Learner(model_path, **_learner_kwargs(config))
        reference = ReferenceModel(model_path, dtype=config.model.dtype,
                                   micro_batch_size=config.optim.micro_batch_size) if need_ref else None
        return Roles([LocalHandle(rollout)], LocalHandle(learner),
                     LocalHandle(reference) if reference else None, "local")
    return _build_ray_roles(config, model_path, cache_dir, need_ref)


def _build_ray_roles(config: Config, model_path: Path, cache_dir: Path, need_ref: bool) -> Roles:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tinyzero.learner import Learner, ReferenceModel
    from tinyzero.rollout import RolloutWorker

    p = config.placement
    cores = config.run.threads or os.cpu_count() or 1
    env_vars = {
        # A Ray actor computes on one thread unless told otherwise (measured: vLLM CPU in an actor).
        "OMP_NUM_THREADS": str(cores),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not ray.is_initialized():
        ray.init(num_cpus=max(cores, 1), num_gpus=p.num_gpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": env_vars}, configure_logging=False)
    n_roles = 3 if need_ref else 2
    n_learners = learner_processes(config)
    # Tiny CPU shares: the roles take turns, so Ray only needs to co-locate them, not reserve cores.
    learner_cpus = 0.01 * (n_learners + (1 if need_ref else 0))
    if p.strategy == "split":
        n_workers = p.rollout_gpus // config.rollout.tensor_parallel_size
        bundles = [{"CPU": 0.01, "GPU": config.rollout.tensor_parallel_size} for _ in range(n_workers)]
        bundles.append({"CPU": learner_cpus, "GPU": p.num_gpus - p.rollout_gpus})
        gpu_rollout, gpu_learner = float(config.rollout.tensor_parallel_size), 1.0 / (n_roles - 1)
        rollout_bundles, learner_bundle = list(range(n_workers)), n_workers
    else:
        n_workers = 1
        bundles = [{"CPU": 0.01 + learner_cpus, **({"GPU": p.num_gpus} if p.num_gpus else {})}]
        share = p.num_gpus / n_roles if p.num_gpus else 0.0
        gpu_rollout, gpu_learner = share, share
        rollout_bundles, learner_bundle = [0], 0
    group = placement_group(bundles, strategy="PACK")
    ray.get(group.ready())

    def place(cls, bundle: int, gpus: float):
        strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=bundle)
        return ray.remote(num_cpus=0.01, num_gpus=gpus, scheduling_strategy=strategy)(cls)

    rollout = [
        RayHandle(place(RolloutWorker, b, gpu_rollout).remote(
            model_path, **_rollout_kwargs(config, cache_dir, config.run.seed + i, model_path)))
        for i, b in enumerate(rollout_bundles)
    ]
    if n_learners == 1:
        learner = RayHandle(place(Learner, learner_bundle, gpu_learner).remote(model_path, **_learner_kwargs(config)))
    else:
        # FSDP2 across n learner processes; a per-process GPU share leaves room for the reference model.
        per_gpu = (0.9 if need_ref else 1.0) if p.num_gpus else 0.0
        init = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"  # simplification: one node
        learner = GroupHandle([
            RayHandle(place(Learner, learner_bundle, per_gpu).remote(
                model_path, **_learner_kwargs(config), rank=r, world_size=n_learners, init_method=init))
            for r in range(n_learners)
        ])
        gpu_learner = 0.1 if p.num_gpus else 0.0
    reference = None
    if need_ref:
        reference = RayHandle(place(ReferenceModel, learner_bundle, gpu_learner).remote(
            model_path, dtype=config.model.dtype, micro_batch_size=config.optim.micro_batch_size))
    return Roles(rollout, learner, reference, "ray")
