"""Assembling the roles: plain objects in one process (``local``) or Ray actors on one placement group (``ray``).

The roles themselves (``RolloutWorker``, ``Learner``, ``ReferenceModel``) never import Ray. This module builds
them along one path for both modes: ``tinyzero.engine.placement.plan_layout`` says where each role goes, a backend
(``_LocalBackend`` or ``_RayBackend``) creates it there, and typed facades (``RolloutPool``, ``LearnerGroup``,
``ReferenceHandle``) are what the driver calls — ``roles.learner.update(batch)``, never a method name string.

Start order: a role that shares a GPU with vLLM is created only after every engine is ready, because vLLM
counts every byte that disappears during its start-up profiling as its own (roles on other GPUs load meanwhile).
Weight sync under Ray passes the learner's weights (already cast to the rollout dtype) as one object reference
straight to every rollout worker; the driver never holds a copy. With several learner processes (FSDP2) every
call goes to all of them and the first one's answer is returned.
On a Ray cluster (``cluster.address``) the roles may land on several nodes; the learner group's rendezvous is
on the node of its first process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyzero.config import Config
from tinyzero.engine.placement import CPU_PER_ACTOR, Layout, Slot, plan_layout
from tinyzero.errors import TinyZeroError


# ------------------------------------------------------------------------------------------- backends
class _LocalBackend:
    """Roles are plain objects; a call runs at once and its "future" is its result."""

    def spawn(self, cls, slot: Slot, env: dict[str, str], *args, **kwargs) -> Any:
        return cls(*args, **kwargs)

    def submit(self, target: Any, method: str, *args, **kwargs) -> Any:
        return getattr(target, method)(*args, **kwargs)

    def get(self, futures: list) -> list:
        return list(futures)

    def close(self) -> None:
        pass


class _RayBackend:
    """Roles are Ray actors on one placement group of one-GPU bundles (see ``tinyzero.engine.placement``)."""

    def __init__(self, layout: Layout, *, cores: int, env_vars: dict[str, str], ready_timeout_s: float = 600,
                 address: str = ""):
        """``address``: empty starts Ray on this machine; ``auto`` or ``host:port`` joins a running cluster."""
        if address:
            _check_reachable(address)
            _token_mode_for_joining()  # before Ray is imported: it reads its auth mode once, at import
        import ray
        from ray.util.placement_group import placement_group

        if not ray.is_initialized():
            if address:
                _join_cluster(address, env_vars)
            else:
                ray.init(num_cpus=max(cores, 1), num_gpus=layout.num_gpus, include_dashboard=False,
                         log_to_driver=True, runtime_env={"env_vars": env_vars}, configure_logging=False)
        have = ray.cluster_resources().get("GPU", 0)
        if layout.num_gpus > have:
            raise TinyZeroError(f"the Ray cluster has {have:g} GPU(s) but placement.num_gpus={layout.num_gpus}: "
                                "lower placement.num_gpus or add GPU nodes to the cluster")
        self.group = placement_group(list(layout.bundles), strategy="PACK")
        # A bounded wait: a placement group that cannot be placed fails here instead of hanging the run.
        if not self.group.wait(ready_timeout_s):
            raise TinyZeroError(f"Ray could not reserve {list(layout.bundles)} within {ready_timeout_s:.0f} s: "
                                "another job holds the GPUs, or placement.num_gpus is more than the cluster has")

    def _strategy(self, slot: Slot):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=slot.bundle)

    def rendezvous(self, slot: Slot) -> str:
        """A free ``tcp://ip:port`` on the node that holds ``slot`` (the first learner process): on a cluster,
        that node need not be the driver's."""
        import ray

        task = ray.remote(num_cpus=0)(_node_address).options(scheduling_strategy=self._strategy(slot))
        return ray.get(task.remote())

    def spawn(self, cls, slot: Slot, env: dict[str, str], *args, **kwargs) -> Any:
        import ray

        options: dict[str, Any] = dict(num_cpus=CPU_PER_ACTOR, num_gpus=slot.gpus, scheduling_strategy=self._strategy(slot))
        if env:
            options["runtime_env"] = {"env_vars": env}  # merged with the job's env_vars by Ray
        return ray.remote(cls).options(**options).remote(*args, **kwargs)

    def submit(self, target: Any, method: str, *args, **kwargs) -> Any:
        return getattr(target, method).remote(*args, **kwargs)

    def get(self, futures: list) -> list:
        import ray

        return ray.get(list(futures))

    def close(self) -> None:
        import ray

        ray.shutdown()


def _token_mode_for_joining() -> None:
    """`ray start` (Ray 2.60) turns token authentication on and keeps the token in ~/.ray/auth_token, but a driver
    joining by address sends it only in token mode: without it, it retries for 30 s and fails "Unauthenticated"."""
    if "RAY_AUTH_MODE" not in os.environ and _ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and not _listening(host, int(port)):  # Ray itself would retry for minutes
        raise TinyZeroError(
            f"nothing answers at cluster.address={address}: start the head with `ray start --head --port={port}` "
            "there, or leave cluster.address empty to run on this machine only")


def _join_cluster(address: str, env_vars: dict[str, str]) -> None:
    import ray

    try:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise TinyZeroError(
            f"could not join the Ray cluster at cluster.address={address} ({type(err).__name__}): start it with "
            "`ray start --head` on the head node (and `ray start --address=HEAD:6379` on the others, each with the "
            "head's ~/.ray/auth_token; RAY_AUTH_MODE=token if this process imported Ray first), or leave "
            "cluster.address empty to run on this machine only") from None


def _listening(host: str, port: int, timeout_s: float = 5.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _ray_token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _node_address() -> str:
    import ray

    return f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"


# ---------------------------------------------------------------------------------------- facades
class RolloutPool:
    """The data-parallel rollout workers: prompts are split across them and results concatenated in order."""

    def __init__(self, backend, workers: list, *, sleeps: bool, dtype: str, adapters: bool = False):
        """``adapters``: the engines take LoRA adapters (``update_adapters``) instead of weights."""
        self.backend, self.workers, self.sleeps, self.dtype, self.adapters = backend, workers, sleeps, dtype, adapters
        self.asleep = False

    def _map(self, method: str, prompts: list, aligned: dict[str, list | None], **kwargs) -> list:
        """Split ``prompts`` (and each list in ``aligned``, one entry per prompt, passed by keyword) into one
        contiguous chunk per worker; the results come back concatenated in prompt order."""
        aligned = {key: values for key, values in aligned.items() if values is not None}
        for key, values in aligned.items():
            if len(values) != len(prompts):
                raise ValueError(f"got {len(values)} {key} for {len(prompts)} prompts")
        size = -(-len(prompts) // len(self.workers))
        futures = []
        for i, worker in enumerate(self.workers):
            part = slice(i * size, (i + 1) * size)
            if prompts[part]:
                extra = {key: values[part] for key, values in aligned.items()}
                futures.append(self.backend.submit(worker, method, prompts[part], **kwargs, **extra))
        return [item for part in self.backend.get(futures) for item in part]

    def generate(self, prompts: list[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seeds: list[int] | None = None) -> list:
        """``n`` completions per prompt (``seeds``: one per prompt, used where the platform supports them)."""
        self.wake_up()
        return self._map("generate", prompts, {"seeds": seeds}, n=n, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list:
        self.wake_up()
        return self._map("greedy", prompts, {}, max_new_tokens=max_new_tokens)

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """The engines' per-token log-probs of each response given its prompt (see ``RolloutWorker.logprobs``)."""
        self.wake_up()
        return self._map("logprobs", prompt_ids, {"response_ids": response_ids})

    def reseed(self, seed: int) -> None:
        self.backend.get([self.backend.submit(w, "reseed", seed) for w in self.workers])

    def sleep(self) -> None:
        """Free the engines' GPU memory for the update (colocated layouts only; elsewhere nothing to free)."""
        if self.sleeps and not self.asleep:
            self.backend.get([self.backend.submit(w, "sleep") for w in self.workers])
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.backend.get([self.backend.submit(w, "wake_up") for w in self.workers])
            self.asleep = False

    def update_weights(self, weights: Any) -> int:
        """Push ``weights`` into every engine; returns the bytes the first one received."""
        self.wake_up()
        return self.backend.get([self.backend.submit(w, "update_weights", weights) for w in self.workers])[0]

    def update_adapters(self, push: Any) -> int:
        """LoRA: hand every engine the learner's adapters (an ``AdapterPush``, or its Ray object reference); returns
        the bytes the first one received."""
        self.wake_up()
        return self.backend.get([self.backend.submit(w, "update_adapters", push) for w in self.workers])[0]

    def close(self) -> None:
        for worker in self.workers:
            try:
                self.backend.get([self.backend.submit(worker, "close")])
            except Exception as exc:  # shutting down anyway: say so, then go on with the others
                print(f"tinyzero: a rollout worker did not close cleanly ({type(exc).__name__}: {exc})")


class LearnerGroup:
    """One learner, or several processes sharding it (FSDP2): every call goes to all, rank 0 answers."""

    def __init__(self, backend, processes: list):
        self.backend, self.processes = backend, processes

    def _all(self, method: str, *args, **kwargs) -> Any:
        return self.backend.get([self.backend.submit(p, method, *args, **kwargs) for p in self.processes])[0]

    def update(self, batch) -> dict[str, float]:
        return self._all("update", batch)

    def logprobs(self, tokens):
        return self._all("logprobs", tokens)

    def values(self, tokens):
        return self._all("values", tokens)

    def save(self, folder: str) -> None:
        self._all("save", folder)

    def load(self, folder: str) -> None:
        self._all("load", folder)

    def submit_named_weights(self, dtype: str) -> list:
        """Futures of every process's ``named_weights(dtype)`` (all must gather); the first holds the weights."""
        return [self.backend.submit(p, "named_weights", dtype) for p in self.processes]

    def iter_weights(self, dtype: str):
        """A lazy iterator over the weights on the learner's device (one unsharded learner in this process)."""
        return self.processes[0].iter_weights(dtype)

    def submit_adapter_push(self, dtype: str) -> Any:
        """LoRA (one learner process): a future of its adapters for the engines, in their dtype."""
        return self.backend.submit(self.processes[0], "adapter_push", dtype)


class ReferenceHandle:
    """The reference log-probs: a ReferenceModel's ``logprobs``, or with LoRA the learner's ``ref_logprobs`` (the
    policy with its adapters off: no second copy of the model is loaded)."""

    def __init__(self, backend, model, method: str = "logprobs"):
        self.backend, self.model, self.method = backend, model, method

    def logprobs(self, tokens):
        return self.backend.get([self.backend.submit(self.model, self.method, tokens)])[0]


@dataclass
class Roles:
    rollout: RolloutPool
    learner: LearnerGroup
    reference: ReferenceHandle | None
    layout: Layout
    backend: Any

    def sync_weights(self) -> int:
        """Push the learner's weights, cast to the rollout engine's dtype, into every rollout worker in place;
        returns the bytes one engine received (``rollout/push_bytes``).

        LoRA with the adapter push: the adapters only (small, copied to host memory once; under Ray one object
        reference for every engine). One process with one engine (local mode): the engine reads the learner's
        tensors lazily, where they are, with no copy through host memory (an iterator can be read once, hence one
        engine)."""
        if self.rollout.adapters:
            return self.rollout.update_adapters(self.learner.submit_adapter_push(self.rollout.dtype))
        if isinstance(self.backend, _LocalBackend) and len(self.rollout.workers) == 1:
            return self.rollout.update_weights(self.learner.iter_weights(self.rollout.dtype))
        futures = self.learner.submit_named_weights(self.rollout.dtype)
        nbytes = self.rollout.update_weights(futures[0])  # Ray: an object reference, resolved inside each worker
        self.backend.get(futures[1:])
        return nbytes

    def close(self) -> None:
        self.rollout.close()
        self.backend.close()
        # Local mode: the roles are objects of this process; a closed Roles keeps none of them alive.
        self.rollout.workers, self.learner.processes, self.reference = [], [], None


# ------------------------------------------------------------------------------------------ building
def check_gpus(config: Config, available: int | None = None) -> Layout:
    """Stop early, with the fix, when the recipe's layout is impossible or this machine cannot serve it."""
    layout = plan_layout(config)
    if config.run.mode == "ray" and config.cluster.address:
        return layout  # a cluster: its GPUs are counted when Ray joins it
    if available is None:
        import torch

        available = torch.cuda.device_count()
    if layout.num_gpus > available:
        raise TinyZeroError(gpu_shortfall(layout.num_gpus, available))
    return layout


def gpu_shortfall(asked: int, have: int) -> str:
    """What to do when a recipe asks for more GPUs than the machine has."""
    if have == 0:
        return (f"this recipe needs {asked} GPU(s) and this machine has none: run it on a GPU box, or try the "
                "kit here with the CPU demo (`make demo`, recipes/demo-cpu.yaml)")
    return (f"this recipe asks for {asked} GPU(s) but this machine has {have}: rent a box with {asked}, or run a "
            f"smaller layout here (placement.num_gpus={have}, with placement.strategy=colocate for one GPU; "
            "a model of 1.5B or less fits one GPU)")


def rollout_dtype(config: Config) -> str:
    """The dtype the rollout engine and reference model hold weights in: the compute dtype."""
    from tinyzero.engine.devices import dtype_name

    return dtype_name(config.model.compute_dtype, _device(config))


def lora_push(config: Config) -> str:
    """What a push carries to the engines: ``weights`` (full training), or with LoRA ``adapters`` or ``merged``
    (``tinyzero.engine.lora.push_mode``, from ``model.lora.push`` and the engine's dtype). The trainer calls it before
    anything loads, so a combination it refuses stops the run in one sentence."""
    from tinyzero.engine.lora import engine_rank, push_mode

    lora = config.model.lora
    if not lora.rank:
        return "weights"
    mode = push_mode(lora.push, rollout_dtype(config))
    if mode == "adapters" and config.rollout.backend == "vllm":
        engine_rank(lora.rank)  # a rank vLLM cannot serve stops here, in one sentence
    return mode


def _device(config: Config) -> str:
    return "cuda" if config.placement.num_gpus else "cpu"


def _max_model_len(model_path: Path, cap: int = 4096) -> int:
    """The model's own context limit, capped: prompts here are short, and the cap bounds KV-cache planning."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None) or cap
    return int(min(limit, cap))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def build_roles(config: Config, model_path: Path, cache_dir: Path, layout: Layout | None = None) -> Roles:
    """Create every role where ``layout`` (default: ``check_gpus(config)``) puts it, vLLM first."""
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.lora import engine_targets
    from tinyzero.engine.reference import ReferenceModel
    from tinyzero.engine.rollout import RolloutWorker

    layout = layout or check_gpus(config)
    backend = _make_backend(config, layout)
    r, device, dtype = config.rollout, _device(config), rollout_dtype(config)
    adapters = lora_push(config) == "adapters"  # model.lora: the engines serve the adapters themselves
    max_model_len = _max_model_len(model_path)
    engines = [
        backend.spawn(RolloutWorker, e.actor, e.env(), model_path, backend=r.backend, dtype=dtype,
                      seed=config.run.seed + i, device=device, max_model_len=max_model_len,
                      kv_cache_gib=r.kv_cache_gib, gpu_memory_utilization=r.gpu_memory_utilization,
                      tensor_parallel_size=r.tensor_parallel_size, cache_dir=cache_dir,
                      sleep_mode=layout.rollout_sleeps, lora_rank=config.model.lora.rank if adapters else 0,
                      lora_targets=engine_targets(config.model.lora, model_path) if adapters else None)
        for i, e in enumerate(layout.engines)
    ]
    n = len(layout.learners)
    init = None
    if n > 1:
        init = backend.rendezvous(layout.learners[0]) if config.run.mode == "ray" else f"tcp://127.0.0.1:{_free_port()}"
    learner_kwargs = dict(algo=config.algo, optim=config.optim, compute_dtype=config.model.compute_dtype,
                          device=device, gradient_checkpointing=config.model.gradient_checkpointing,
                          seed=config.run.seed, lora=config.model.lora, model_name=config.model.name)
    specs: list[tuple[Slot, Any]] = [
        (slot, lambda rank=rank, slot=slot: backend.spawn(
            Learner, slot, {}, model_path, **learner_kwargs, rank=rank, world_size=n, init_method=init,
            release_cache=layout.returns_cache(slot)))
        for rank, slot in enumerate(layout.learners)
    ]
    if layout.reference is not None:
        specs.append((layout.reference, lambda: backend.spawn(
            ReferenceModel, layout.reference, {}, model_path, dtype=dtype, device=device,
            micro_batch_size=config.optim.micro_batch_size, release_cache=layout.returns_cache(layout.reference))))
    made = {i: make() for i, (slot, make) in enumerate(specs) if not layout.waits_for_rollout(slot)}
    if len(made) < len(specs):
        backend.get([backend.submit(e, "ready") for e in engines])
        made.update({i: make() for i, (_, make) in enumerate(specs) if i not in made})
    objects = [made[i] for i in range(len(specs))]
    learner = LearnerGroup(backend, objects[:n])
    reference = ReferenceHandle(backend, objects[n]) if layout.reference is not None else None
    if config.model.lora.rank > 0 and config.algo.needs.reference:
        reference = ReferenceHandle(backend, objects[0], "ref_logprobs")  # one learner process with LoRA
    pool = RolloutPool(backend, engines, sleeps=layout.rollout_sleeps, dtype=dtype, adapters=adapters)
    return Roles(pool, learner, reference, layout, backend)


def _make_backend(config: Config, layout: Layout):
    if config.run.mode == "local":
        return _LocalBackend()
    cores = config.run.threads or os.cpu_count() or 1
    env_vars = {
        # A Ray actor computes on one thread unless told otherwise (measured: vLLM CPU in an actor).
        "OMP_NUM_THREADS": str(cores),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return _RayBackend(layout, cores=cores, env_vars=env_vars, address=config.cluster.address)
