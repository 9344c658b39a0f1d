"""The GPU layout as a pure plan: which GPU each role gets, the Ray bundles, and vLLM's tensor-parallel groups.

``plan_layout(config)`` looks only at the recipe (no torch, no Ray, no GPU), so every layout is unit-tested on
CPU and an impossible one stops before anything loads, with one sentence naming the keys to change.
``roles.py`` turns the plan into one Ray placement group and actor options.

Rules, and why:
- Every bundle holds exactly one GPU. Inside a placement group vLLM picks its Ray executor for
  ``tensor_parallel_size > 1``, and that executor rejects bundles of more than one GPU; one-GPU bundles also
  make every fraction below a share of one physical GPU.
- An engine with ``tensor_parallel_size > 1`` runs in an actor that takes no GPU itself: vLLM starts one Ray
  worker per GPU in the bundles the plan names (``VLLM_RAY_BUNDLE_INDICES``), each asking for
  ``VLLM_RAY_PER_WORKER_GPUS`` of its bundle. Without the indices every engine would pick the group's first
  GPUs.
- Shares are multiples of 1/4, so the sums per GPU are exact (Ray books resources in fixed point).
- ``split``: rollout engines own ``placement.rollout_gpus`` GPUs; learner processes (FSDP2 when several) own
  the rest, one whole GPU each, because fp32 master weights plus AdamW are the largest tenant; the reference
  model (bf16, no optimizer) shares the first rollout GPU, where vLLM leaves ``1 - gpu_memory_utilization``.
- ``colocate``: every GPU holds a rollout share and a learner process; the reference sits on GPU 0; vLLM
  sleeps (frees its weights and KV cache) while the learner updates.
- No GPUs: one CPU bundle; tensor parallelism and ``split`` need GPUs.
On a Ray cluster the bundles may span nodes (the group is placed with PACK: as few nodes as possible).
Simplification: nothing keeps a vLLM tensor-parallel group on one node; give each node enough GPUs for one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyzero.config import Config
from tinyzero.errors import TinyZeroError

CPU_PER_ACTOR = 0.01  # roles take turns (phases run one after another), so Ray need only co-locate them
ROLLOUT_SHARE = 0.5  # colocate: per-GPU shares of rollout / learner / reference (bookkeeping for Ray; memory
LEARNER_SHARE = 0.25  # is governed by rollout.gpu_memory_utilization and vLLM's sleep mode)
REFERENCE_SHARE = 0.25
MAX_UTIL_BESIDE_REFERENCE = 0.8  # split: vLLM's fraction of the GPU it shares with the reference model


@dataclass(frozen=True)
class Slot:
    """Where one actor runs: a bundle (one GPU, or the CPU bundle) and the GPU share it asks Ray for."""

    bundle: int
    gpus: float


@dataclass(frozen=True)
class Engine:
    """One vLLM engine (a data-parallel rollout worker) and its tensor-parallel GPUs."""

    bundles: tuple[int, ...]  # the bundles (GPUs) of its tensor-parallel group, in rank order
    actor: Slot  # the engine process itself (no GPU when vLLM's Ray workers hold them)
    worker_gpus: float  # GPU share of each of vLLM's Ray workers (tensor_parallel_size > 1 only, else 0)

    def env(self) -> dict[str, str]:
        """Environment for the engine's actor: which bundles vLLM's Ray workers use, and how much of each."""
        if len(self.bundles) < 2:
            return {}
        return {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, self.bundles)),
                "VLLM_RAY_PER_WORKER_GPUS": str(self.worker_gpus)}


@dataclass(frozen=True)
class Layout:
    """A placement every role fits in; ``bundles`` become one Ray placement group."""

    num_gpus: int
    bundles: tuple[dict[str, float], ...]
    engines: tuple[Engine, ...]
    learners: tuple[Slot, ...]  # one per learner process, in FSDP2 rank order
    reference: Slot | None
    rollout_sleeps: bool  # vLLM shares GPUs with a learner: it sleeps during every update

    @property
    def vllm_bundles(self) -> frozenset[int]:
        return frozenset(b for e in self.engines for b in e.bundles) if self.num_gpus else frozenset()

    def waits_for_rollout(self, slot: Slot) -> bool:
        """True when the role shares a GPU with vLLM: it must load after vLLM is ready, because vLLM counts
        every byte that disappears during its start-up profiling as its own."""
        return slot.bundle in self.vllm_bundles

    def returns_cache(self, slot: Slot) -> bool:
        """True when the role shares a GPU with a sleeping vLLM engine, which wakes after the role's work: the
        role must hand its cached free blocks back to the driver (``torch.cuda.empty_cache``), or vLLM cannot map
        its memory again (its sleep-mode pool is not PyTorch's cache; under Ray the role is another process)."""
        return self.rollout_sleeps and bool(self.num_gpus) and slot.bundle in self.vllm_bundles

    def gpu_use(self) -> dict[int, float]:
        """Total GPU share asked of each bundle (vLLM's Ray workers included)."""
        use = {b: 0.0 for b in range(len(self.bundles))}
        for engine in self.engines:
            use[engine.actor.bundle] += engine.actor.gpus
            for b in engine.bundles if len(engine.bundles) > 1 else ():
                use[b] += engine.worker_gpus
        for slot in (*self.learners, *([self.reference] if self.reference else [])):
            use[slot.bundle] += slot.gpus
        return use

    def describe(self) -> str:
        """One line per GPU, for the run's log: what lives where."""
        if not self.num_gpus:
            return "CPU: rollout, learner" + (", reference" if self.reference else "")
        tenants: dict[int, list[str]] = {b: [] for b in range(self.num_gpus)}
        for i, engine in enumerate(self.engines):
            for b in engine.bundles:
                tenants[b].append(f"rollout {i}" + (f" (TP rank {engine.bundles.index(b)})"
                                                    if len(engine.bundles) > 1 else ""))
        for r, slot in enumerate(self.learners):
            tenants[slot.bundle].append(f"learner {r}" if len(self.learners) > 1 else "learner")
        if self.reference:
            tenants[self.reference.bundle].append("reference")
        sleep = "; vLLM sleeps during updates" if self.rollout_sleeps else ""
        return "; ".join(f"GPU {b}: {', '.join(names)}" for b, names in tenants.items()) + sleep


def plan_layout(config: Config) -> Layout:
    """The layout for ``config``'s placement; raises TinyZeroError (naming the keys) if it is impossible."""
    p, tp = config.placement, config.rollout.tensor_parallel_size
    need_ref = config.algo.needs.reference and config.model.lora.rank == 0  # LoRA: the learner is the reference
    _check_common(config)
    _check_lora(config)
    if p.num_gpus == 0:
        return _cpu_layout(p.learner_workers or 1, need_ref)
    if p.strategy == "split":
        return _split_layout(config, need_ref)
    return _colocate_layout(p.num_gpus, tp, p.learner_workers or p.num_gpus, need_ref)


def _check_common(config: Config) -> None:
    p, tp = config.placement, config.rollout.tensor_parallel_size
    if p.num_gpus < 0 or p.rollout_gpus < 0 or p.learner_workers < 0 or tp < 1:
        raise TinyZeroError("placement.num_gpus, placement.rollout_gpus and placement.learner_workers must be "
                            ">= 0 and rollout.tensor_parallel_size >= 1: fix the negative value")
    if p.num_gpus == 0 and (tp > 1 or p.strategy == "split"):
        raise TinyZeroError("placement.num_gpus=0 runs on CPU, where rollout.tensor_parallel_size must be 1 and "
                            "placement.strategy must be colocate: set them, or give the run GPUs")
    if config.run.mode == "local":
        workers = p.learner_workers or 1
        if p.num_gpus > 1 or tp > 1 or workers > 1 or p.strategy == "split":
            raise TinyZeroError(
                "run.mode=local runs every role in one process on at most one device: set run.mode=ray to use "
                "several GPUs, placement.strategy=split, rollout.tensor_parallel_size or placement.learner_workers")


def _check_lora(config: Config) -> None:
    """LoRA trains adapters in one learner process, and the policy only."""
    if config.model.lora.rank == 0:
        return
    if config.algo.needs.critic:
        raise TinyZeroError(f"model.lora trains the policy's adapters only and algo.name={config.algo.name} needs a "
                            "critic: use algo.name=grpo or algo.name=rloo with LoRA, or set model.lora.rank=0")
    p = config.placement
    workers = p.learner_workers or (p.num_gpus - (p.rollout_gpus if p.strategy == "split" else 0) or 1)
    if workers > 1:
        raise TinyZeroError(f"model.lora runs one learner process, and this layout gives it {workers} (FSDP2): set "
                            "placement.learner_workers=1 (the frozen base and small adapters fit one GPU), or "
                            "model.lora.rank=0")


def _cpu_layout(n_learners: int, need_ref: bool) -> Layout:
    actors = 1 + n_learners + int(need_ref)
    return Layout(
        num_gpus=0, bundles=({"CPU": CPU_PER_ACTOR * actors},),
        engines=(Engine((0,), Slot(0, 0.0), 0.0),), learners=tuple(Slot(0, 0.0) for _ in range(n_learners)),
        reference=Slot(0, 0.0) if need_ref else None, rollout_sleeps=False,
    )


def _split_layout(config: Config, need_ref: bool) -> Layout:
    p, tp = config.placement, config.rollout.tensor_parallel_size
    if p.num_gpus < 2 or not 1 <= p.rollout_gpus < p.num_gpus:
        raise TinyZeroError(
            f"placement.strategy=split needs placement.num_gpus >= 2 and 1 <= placement.rollout_gpus < num_gpus "
            f"(got num_gpus={p.num_gpus}, rollout_gpus={p.rollout_gpus}): change them, or use strategy=colocate")
    if p.rollout_gpus % tp:
        raise TinyZeroError(
            f"placement.rollout_gpus={p.rollout_gpus} is not a multiple of rollout.tensor_parallel_size={tp}: "
            "each vLLM engine needs tensor_parallel_size whole GPUs")
    learner_gpus = p.num_gpus - p.rollout_gpus
    n_learners = p.learner_workers or learner_gpus
    if n_learners > learner_gpus:
        raise TinyZeroError(
            f"placement.learner_workers={n_learners} needs a GPU each but split leaves the learner {learner_gpus}: "
            "lower placement.learner_workers or placement.rollout_gpus")
    if need_ref and config.rollout.gpu_memory_utilization > MAX_UTIL_BESIDE_REFERENCE:
        raise TinyZeroError(
            f"the reference model shares the first rollout GPU, but rollout.gpu_memory_utilization="
            f"{config.rollout.gpu_memory_utilization} leaves it too little: set it to "
            f"{MAX_UTIL_BESIDE_REFERENCE} or less")
    ref_share = REFERENCE_SHARE if need_ref else 0.0
    engines = _engines(p.rollout_gpus, tp, lambda group: 1.0 - (ref_share if 0 in group else 0.0))
    learners = tuple(Slot(p.rollout_gpus + r, 1.0) for r in range(n_learners))
    return _layout(p.num_gpus, engines, learners, Slot(0, ref_share) if need_ref else None, sleeps=False)


def _colocate_layout(num_gpus: int, tp: int, n_learners: int, need_ref: bool) -> Layout:
    if num_gpus % tp:
        raise TinyZeroError(
            f"placement.num_gpus={num_gpus} is not a multiple of rollout.tensor_parallel_size={tp}: under colocate "
            "every GPU belongs to one vLLM engine")
    if n_learners > num_gpus:
        raise TinyZeroError(
            f"placement.learner_workers={n_learners} is more than placement.num_gpus={num_gpus}: each learner process "
            "needs a GPU of its own; lower placement.learner_workers")
    engines = _engines(num_gpus, tp, lambda group: ROLLOUT_SHARE)
    learners = tuple(Slot(r, LEARNER_SHARE) for r in range(n_learners))
    return _layout(num_gpus, engines, learners, Slot(0, REFERENCE_SHARE) if need_ref else None, sleeps=True)


def _engines(gpus: int, tp: int, share) -> list[Engine]:
    """One engine per ``tp`` consecutive GPUs of the first ``gpus``; ``share(group)`` is its share of each GPU,
    held by the engine's actor (tp 1) or by each of vLLM's Ray workers (tp > 1)."""
    engines = []
    for i in range(gpus // tp):
        group = tuple(range(i * tp, (i + 1) * tp))
        s = share(group)
        engines.append(Engine(group, Slot(group[0], s if tp == 1 else 0.0), s if tp > 1 else 0.0))
    return engines


def _layout(num_gpus: int, engines: list[Engine], learners: tuple[Slot, ...], reference: Slot | None,
            sleeps: bool) -> Layout:
    actors = {b: 0 for b in range(num_gpus)}
    for slot in (*(e.actor for e in engines), *learners, *([reference] if reference else [])):
        actors[slot.bundle] += 1
    bundles = tuple({"CPU": CPU_PER_ACTOR * max(actors[b], 1), "GPU": 1.0} for b in range(num_gpus))
    layout = Layout(num_gpus, bundles, tuple(engines), learners, reference, sleeps)
    over = {b: use for b, use in layout.gpu_use().items() if use > 1.0}
    assert not over, f"layout over-books GPUs {over}"  # a bug in this module, not a user error
    return layout
