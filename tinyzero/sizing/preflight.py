"""Preflight: everything that would make a run fail later, checked before any model loads.

A run on a rented GPU box must fail in its first seconds, not after an hour of downloads and an out-of-memory
crash. ``preflight(config, layout, model_config)`` checks, each failure one sentence with the fix:
- GPU memory per GPU against an estimate of the recipe's peak (``gpu_needs``: the formula is in docs/engine.md);
- a writable run folder, and free disk for ``checkpoint.keep_last`` + 1 checkpoints of this model;
- host memory for the learner's weight gather and Ray's object store (``run.mode=ray``).
The estimate is arithmetic from the model's config (no weights loaded). Simplifications: decoder-only
transformers of the Llama/Qwen2 family; activations per layer ≈ 34·tokens·hidden bytes at 16-bit (Korthikanti
et al. 2022, with fused attention, no attention-score matrix); vLLM takes exactly its ``gpu_memory_utilization``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tinyzero.config import Config
from tinyzero.engine.placement import Layout
from tinyzero.errors import TinyZeroError

GB = 1e9
HEADROOM = 0.92  # of a GPU's memory: the CUDA context, the allocator's fragmentation and NCCL buffers need the rest
LM_HEAD_CHUNK = 2048  # tinyzero.engine.forward.HEAD_CHUNK (fp32 logits; a test keeps the two equal)
PROMPT_TOKENS = 256  # a generous prompt length for activation estimates


@dataclass(frozen=True)
class ModelShape:
    params: float
    layers: int
    hidden: int
    vocab: int

    @classmethod
    def from_config(cls, cfg) -> ModelShape:
        """Parameter count of a Llama/Qwen2-style decoder from its HF config (embeddings, attention, MLP, norms)."""
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        h, layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or h // heads
        bias = getattr(cfg, "attention_bias", cfg.model_type == "qwen2")  # Qwen2 has q/k/v biases
        attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
        attn += (heads + 2 * kv) * head_dim if bias else 0
        per_layer = attn + 3 * h * inter + 2 * h
        embed = vocab * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
        return cls(float(layers * per_layer + embed + h), layers, h, vocab)


@dataclass
class GpuNeed:
    """Estimated peak bytes on one GPU, with what makes them up."""

    gpu: int
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {value / GB:.1f}" for name, value in self.parts.items() if value)


def learner_bytes(config: Config, shape: ModelShape, world: int, gpu: bool) -> dict[str, float]:
    """One learner process: float32 states (masters, grads, AdamW m and v: 16 bytes a parameter, sharded over
    ``world``), the 16-bit copies autocast makes, activations of one micro-batch, and the LM-head chunk."""
    nets = 2 if config.algo.needs.critic else 1  # a critic (PPO) is a second body of the same size
    compute_bytes = 2 if gpu and config.model.compute_dtype in ("auto", "bfloat16") else 4
    tokens = config.optim.micro_batch_size * (PROMPT_TOKENS + config.rollout.max_new_tokens)
    layer_act = 34 * tokens * shape.hidden * compute_bytes / 2
    stored = shape.layers if not config.model.gradient_checkpointing else 1
    checkpoints = tokens * shape.hidden * compute_bytes * shape.layers if config.model.gradient_checkpointing else 0
    copies = shape.params * compute_bytes if compute_bytes == 2 and world == 1 else 0.0
    return {
        "learner states": 16 * shape.params * nets / world,
        "bf16 weight copies": copies * nets,
        "activations": layer_act * stored + checkpoints,
        "LM head chunk": 3 * LM_HEAD_CHUNK * shape.vocab * 4,
    }


def gpu_needs(config: Config, layout: Layout, shape: ModelShape, gpu_bytes: list[float]) -> list[GpuNeed]:
    """Estimated peak per GPU of ``layout``. Under colocate vLLM sleeps during the update, so a GPU's peak is
    the larger of the rollout phase (vLLM + the learner's resident states) and the update phase."""
    needs = [GpuNeed(g) for g in range(layout.num_gpus)]
    learner = learner_bytes(config, shape, len(layout.learners), gpu=True)
    ref = {"reference": shape.params * 2 + LM_HEAD_CHUNK * shape.vocab * 4} if layout.reference else {}
    for g, need in enumerate(needs):
        vllm = config.rollout.gpu_memory_utilization * gpu_bytes[g] if g in layout.vllm_bundles else 0.0
        here = any(s.bundle == g for s in layout.learners)
        if layout.rollout_sleeps:
            update = dict(learner) if here else {}
            rollout = {"vLLM (awake)": vllm, **({"learner states": learner["learner states"]} if here else {})}
            need.parts.update(rollout if sum(rollout.values()) >= sum(update.values()) else update)
        else:
            need.parts.update({"vLLM": vllm} if vllm else {})
            need.parts.update(learner if here else {})
        if layout.reference is not None and layout.reference.bundle == g:
            need.parts.update(ref)
    return needs


def check_gpu_memory(config: Config, layout: Layout, shape: ModelShape, gpu_bytes: list[float]) -> list[GpuNeed]:
    needs = gpu_needs(config, layout, shape, gpu_bytes)
    for need in needs:
        have = gpu_bytes[need.gpu] * HEADROOM
        if need.peak > have:
            raise TinyZeroError(
                f"this recipe needs about {need.peak / GB:.0f} GB on GPU {need.gpu} ({need.describe()} GB) but it has "
                f"{gpu_bytes[need.gpu] / GB:.0f} GB ({HEADROOM:.0%} usable): {_memory_fix(config, layout, shape)}")
    return needs


def _memory_fix(config: Config, layout: Layout, shape: ModelShape) -> str:
    fixes = []
    if layout.rollout_sleeps and layout.num_gpus:
        fixes.append("lower rollout.gpu_memory_utilization")
    if not config.model.gradient_checkpointing:
        fixes.append("set model.gradient_checkpointing=true")
    fixes.append("lower optim.micro_batch_size")
    if shape.params > 1e9:
        fixes.append("use a smaller model (recipes/countdown-0.5b.yaml) or more GPUs")
    return ", ".join(fixes)


def checkpoint_bytes(config: Config, shape: ModelShape) -> float:
    """One checkpoint: the float32 policy (4 bytes a parameter) and its AdamW moments (8), twice for PPO."""
    return 12 * shape.params * (2 if config.algo.needs.critic else 1)


def check_run_folder(config: Config, shape: ModelShape, free_bytes=None) -> None:
    """The run folder must be writable and hold ``keep_last`` + 1 checkpoints (one is written before pruning)."""
    out = Path(config.run.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".tinyzero-write-test-"):
            pass
    except OSError as err:
        raise TinyZeroError(f"run.out_dir={out} is not writable ({err.strerror or err}): set run.out_dir to a folder "
                            "you can write to") from None
    free = shutil.disk_usage(out).free if free_bytes is None else free_bytes
    need = checkpoint_bytes(config, shape) * (max(config.checkpoint.keep_last, 1) + 1)
    if need > free:
        raise TinyZeroError(
            f"checkpoints of this model need about {need / GB:.0f} GB ({config.checkpoint.keep_last} kept + 1 being "
            f"written) but {out} has {free / GB:.0f} GB free: free disk space, point run.out_dir at a bigger disk, "
            "or lower checkpoint.keep_last")


def check_host_memory(config: Config, layout: Layout, shape: ModelShape, available_bytes: float | None = None) -> None:
    """The weight push gathers the full policy on the host (float32 when sharded) and, under Ray, puts a copy in
    the object store in the engine's dtype."""
    sharded = len(layout.learners) > 1
    gather = 0.0 if config.run.mode == "local" else shape.params * (4 if sharded else 2)  # local: on the device
    store = shape.params * 2 if config.run.mode == "ray" else 0.0
    need = gather + store
    have = _available_ram() if available_bytes is None else available_bytes
    if have is not None and need > have:
        raise TinyZeroError(f"the weight push needs about {need / GB:.0f} GB of host memory but {have / GB:.0f} GB is "
                            "available: use a machine with more RAM or a smaller model")


def _available_ram() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gpu_inventory() -> list[tuple[str, float]]:
    """(name, bytes) of each visible GPU, read with nvidia-smi: asking torch would create a CUDA context in the
    driver process, and under Ray that context would sit on a GPU that vLLM is about to profile."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if mib.strip().isdigit():
            gpus.append((name.strip(), float(mib) * 2**20))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() and all(v.strip().isdigit() for v in visible.split(",")):
        gpus = [gpus[int(v)] for v in visible.split(",") if int(v) < len(gpus)]
    return gpus


def gpu_memory() -> list[float]:
    return [memory for _, memory in gpu_inventory()]


def preflight(config: Config, layout: Layout, model_config) -> list[GpuNeed]:
    """All checks; returns the per-GPU estimate (empty on CPU) for the run log."""
    shape = ModelShape.from_config(model_config)
    needs: list[GpuNeed] = []
    if layout.num_gpus and not config.cluster.address:  # on a cluster, Ray counts the nodes' GPUs
        gpus = gpu_memory()
        if len(gpus) >= layout.num_gpus:
            needs = check_gpu_memory(config, layout, shape, gpus)
    check_run_folder(config, shape)
    check_host_memory(config, layout, shape)
    return needs
