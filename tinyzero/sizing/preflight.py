"""Preflight: everything that would make a run fail later, checked before any model loads.

A run on a rented GPU box must fail in its first seconds, not after an hour of downloads and an out-of-memory
crash. ``preflight(config, layout, model_config)`` checks, each failure one sentence with the fix:
- a LoRA rank no larger than the smallest adapted layer's inputs or outputs (``check_lora_rank``);
- GPU memory per GPU against an estimate of the recipe's peak (``gpu_needs``: the formula is in docs/engine.md);
- a writable run folder, and free disk for ``checkpoint.keep_last`` + 1 checkpoints of this model;
- host memory for the learner's weight gather and Ray's object store (``run.mode=ray``), and for a checkpoint
  save (weights and AdamW's moments on the host).
The estimate is arithmetic from the model's config (no weights loaded). Simplifications: decoder-only
transformers of the Llama/Qwen2 family; what a decoder layer saves for backward is the per-token byte count
measured on CPU (``LAYER_BYTES``; ``tests/test_preflight.py`` re-measures it and holds a whole
learner update's measured peak to this estimate); fused attention (no attention-score matrix); vLLM takes exactly
its ``gpu_memory_utilization``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tinyzero.config import Config
from tinyzero.engine.lm_head import head_kept_bytes, head_recompute
from tinyzero.engine.placement import Layout
from tinyzero.errors import TinyZeroError

GB = 1e9
HEADROOM = 0.92  # of a GPU's memory: the CUDA context, the allocator's fragmentation and NCCL buffers need the rest
LM_HEAD_CHUNK = 2048  # tinyzero.engine.forward.HEAD_CHUNK (fp32 logits; a test keeps the two equal)
PROMPT_TOKENS = 256  # a generous prompt length for activation estimates
# Bytes one Llama/Qwen2 decoder layer saves for backward, per token, as multiples of (hidden size, MLP width,
# key/value width), by compute dtype. Measured on CPU (tests/test_preflight.py, tests/memory_probe.py): under bf16
# autocast the residual stream, the norms' inputs and outputs stay float32 while the matmul inputs and outputs
# are bf16. Qwen2.5-3B under bf16: 30·2048 + 8·11008 + 4·256 = 150.5 kB a token a layer.
LAYER_BYTES = {"bfloat16": (30, 8, 4), "float32": (32, 16, 8)}
CHECKPOINT_BYTES = 4  # a token's saved layer input under gradient checkpointing, per hidden unit: fp32 residual
OUTSIDE_LAYERS = 12.5  # per token and hidden unit: embedding output, final norm, the LM head's fp32 inputs
# [chunk, V] float32 tensors alive at once in one LM-head chunk (measured): forward: logits, log-softmax, its
# exponential and their product (the entropy); backward: four, and a fifth with an entropy bonus (the entropy's
# own gradient), beside the head weight's [V, H] gradient before it is added to the others.
HEAD_TENSORS, ENTROPY_TENSORS = 4, 1
MLP_GRADIENTS = 3  # float32 [tokens, MLP width] gradients alive at once in a layer's backward, beside its activations
REFERENCE_HEAD_TENSORS = 3  # [chunk, V] float32 tensors of a chunk without gradients: bf16 logits, fp32 copy, log-softmax
RESIDENT_BYTES = 12  # a parameter's bytes a learner keeps between updates: fp32 master 4, AdamW m and v 8


@dataclass(frozen=True)
class ModelShape:
    params: float
    layers: int
    hidden: int
    vocab: int
    intermediate: int  # the MLP's width
    kv_width: int  # key/value heads x head size
    q_width: int = 0  # query heads x head size (0: the hidden size)

    def adapted_layers(self, targets: str | list[str] = "all-linear") -> dict[str, tuple[int, int]]:
        """(inputs, outputs) of each adapted projection of a block (``all-linear``: the seven of a Llama/Qwen2 block;
        otherwise the listed names among them, ``LoraConfig.targets``; peft matches a name against the end of a dotted
        path, so ``mlp.down_proj`` is ``down_proj``). Names outside a Llama/Qwen2 block are left out."""
        h, q, kv, inter = self.hidden, self.q_width or self.hidden, self.kv_width, self.intermediate
        dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
        if targets == "all-linear":
            return dims
        return {name: dims[name] for name in (t.rsplit(".", 1)[-1] for t in targets) if name in dims}

    def adapter_params(self, rank: int, targets: str | list[str] = "all-linear") -> float:
        """LoRA's trained parameters: rank x (inputs + outputs) of every adapted projection of every block
        (``adapted_layers``)."""
        return float(rank * self.layers * sum(a + b for a, b in self.adapted_layers(targets).values()))

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
        return cls(float(layers * per_layer + embed + h), layers, h, vocab, inter, kv * head_dim, heads * head_dim)


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


def micro_batch_tokens(config: Config) -> tuple[int, int]:
    """(tokens, response tokens) of ``config``'s largest learner micro-batch. Fixed micro-batches:
    ``micro_batch_size`` rows of a ``PROMPT_TOKENS`` prompt and a ``max_new_tokens`` response. With
    ``optim.max_tokens_per_micro_batch`` the budget is the micro-batch's padded size, unless one such row is longer
    (it then runs alone), and bounds its response tokens too."""
    micro, response = config.optim.micro_batch_size, config.rollout.max_new_tokens
    if budget := config.optim.max_tokens_per_micro_batch:
        return max(budget, PROMPT_TOKENS + response), max(budget, response)
    return micro * (PROMPT_TOKENS + response), micro * response


def learner_bytes(config: Config, shape: ModelShape, world: int, compute: str) -> dict[str, float]:
    """One learner process's peak for ``config``'s micro-batch (``micro_batch_tokens``), with ``compute`` the matmul
    dtype ("bfloat16" or "float32"); see ``learner_peak``."""
    tokens, head = micro_batch_tokens(config)
    return learner_peak(shape, tokens=tokens, head_tokens=min(head, LM_HEAD_CHUNK), response_tokens=head,
                        compute=compute, checkpointing=config.model.gradient_checkpointing,
                        entropy=config.algo.entropy_coef > 0,
                        nets=2 if config.algo.needs.critic else 1, world=world, adapters=_adapters(config, shape))


def _adapters(config: Config, shape: ModelShape) -> float:
    """LoRA's trained parameters (0: full training)."""
    lora = config.model.lora
    return shape.adapter_params(lora.rank, lora.targets()) if lora.rank else 0.0


def check_lora_rank(config: Config, shape: ModelShape) -> None:
    """An adapter's update B·A of a layer with ``in`` inputs and ``out`` outputs has rank at most min(in, out): a
    larger ``model.lora.rank`` adds parameters, optimizer states and memory but nothing the adapter can express
    (rank 4,096 on the 135M model grew past 7 GB before anything said no). Bounded by the smallest adapted layer."""
    lora = config.model.lora
    layers = shape.adapted_layers(lora.targets()) if lora.rank else {}
    if not layers:  # off, or names outside a Llama/Qwen2 block: peft names them when it loads
        return
    name, (inputs, outputs) = min(layers.items(), key=lambda item: min(item[1]))
    bound = min(inputs, outputs)
    if lora.rank > bound:
        raise TinyZeroError(
            f"model.lora.rank={lora.rank} is more than {config.model.name}'s {name} can use: its {inputs} inputs and "
            f"{outputs} outputs bound an adapter's rank to {bound} (a larger rank adds memory, not expressiveness): "
            f"set model.lora.rank to {bound} or less")


def weight_bytes(compute: str) -> int:
    """Bytes a parameter of a frozen network held in the compute dtype (reference model, LoRA's base)."""
    return 2 if compute == "bfloat16" else 4


def learner_peak(shape: ModelShape, *, tokens: int, head_tokens: int, compute: str, checkpointing: bool,
                 entropy: bool, nets: int = 1, world: int = 1, adapters: float = 0.0,
                 response_tokens: int | None = None) -> dict[str, float]:
    """Bytes at the peak of an update of one micro-batch of ``tokens`` tokens (``head_tokens`` of them in one
    LM-head chunk, ``response_tokens`` (default ``head_tokens``) through the LM head in all), by what holds them:
    - float32 states: masters, gradients (alive across the micro-batches of a step), AdamW m and v: 16 bytes a
      parameter, sharded over ``world``; ``nets`` = 2 with PPO's critic;
    - kept activations: every layer's saved tensors (``LAYER_BYTES``), or with gradient checkpointing every
      layer's fp32 input; and what lies outside the layers;
    - the largest of three moments (in the first two, the other LM-head chunks' log-softmax, and with an entropy
      bonus their exponential, when forward.py keeps them for backward: ``lm_head.head_recompute``): the end of the
      forward (autocast's bf16 copy of every weight, alive until autocast exits, beside one LM-head chunk's
      forward); one chunk's backward (an entropy bonus (``entropy``) adds the entropy's gradient) with the head
      weight's gradient; a layer's backward (recomputed under checkpointing) with its MLP-wide gradients. Without
      checkpointing the bf16 copies are saved for backward, so they are in all three.
    With LoRA (``adapters`` > 0 trained parameters): the frozen base sits in the compute dtype and the 16 bytes a
    parameter are the adapters' only; autocast copies only the (fp32) adapters; the frozen head has no weight
    gradient; activations and the LM-head chunks are as in full training (each adapted layer still keeps its
    input for the adapter's gradient)."""
    h, per_h, per_i, per_kv = shape.hidden, *LAYER_BYTES[compute]
    layer = tokens * (per_h * h + per_i * shape.intermediate + per_kv * shape.kv_width)
    kept = tokens * CHECKPOINT_BYTES * h * shape.layers if checkpointing else layer * shape.layers
    trained = adapters or shape.params
    copies = 2 * trained if compute == "bfloat16" and world == 1 else 0.0  # sharded: FSDP gathers per layer
    saved_copies = 0.0 if checkpointing else copies
    chunk = head_tokens * shape.vocab * 4  # one [chunk, V] float32 tensor
    response = head_tokens if response_tokens is None else response_tokens
    kept_head = 0 if head_recompute(response, shape.vocab, entropy_grad=entropy) else head_kept_bytes(
        response, shape.vocab, entropy_grad=entropy)
    # Kept chunks live from their forward to their backward (freed before the layers' backward), beside one chunk's
    # own work; that chunk's kept tensors are among its HEAD_TENSORS.
    others = kept_head - head_kept_bytes(head_tokens, shape.vocab, entropy_grad=entropy) if kept_head else 0
    moments = {
        "bf16 weight copies + LM-head forward": copies + HEAD_TENSORS * chunk + others,
        "LM-head backward": saved_copies + (HEAD_TENSORS + (ENTROPY_TENSORS if entropy else 0)) * chunk + others
        + (0.0 if adapters else shape.vocab * h * 4),
        "a layer's backward": saved_copies + (layer if checkpointing else 0.0)
        + MLP_GRADIENTS * tokens * shape.intermediate * 4,
    }
    moment = max(moments, key=moments.get)
    if adapters:
        states = {"frozen base": weight_bytes(compute) * shape.params, "learner states": 16 * adapters}
    else:
        states = {"learner states": 16 * shape.params * nets / world}
    return {
        **states,
        "activations": kept + tokens * OUTSIDE_LAYERS * h,
        moment: moments[moment],
    }


def gpu_compute(config: Config) -> str:
    """The matmul dtype on a GPU: ``auto`` is bfloat16 there (tinyzero.engine.devices.resolve_dtype)."""
    return "float32" if config.model.compute_dtype == "float32" else "bfloat16"


def gpu_needs(config: Config, layout: Layout, shape: ModelShape, gpu_bytes: list[float]) -> list[GpuNeed]:
    """Estimated peak per GPU of ``layout``. Under colocate vLLM sleeps during the update, so a GPU's peak is
    the larger of the rollout phase (vLLM awake + what the learner keeps between updates) and the update phase."""
    needs = [GpuNeed(g) for g in range(layout.num_gpus)]
    learner = learner_bytes(config, shape, len(layout.learners), gpu_compute(config))
    # Between updates a learner keeps its fp32 masters and AdamW's moments; it frees its gradients after each step
    # and, beside a sleeping vLLM, hands its cache back (Layout.returns_cache) before vLLM wakes.
    resident = RESIDENT_BYTES * shape.params * (2 if config.algo.needs.critic else 1) / len(layout.learners)
    if adapters := _adapters(config, shape):  # LoRA: the frozen base, and the adapters' masters and moments
        resident = weight_bytes(gpu_compute(config)) * shape.params + RESIDENT_BYTES * adapters
    head = REFERENCE_HEAD_TENSORS * min(LM_HEAD_CHUNK, config.optim.micro_batch_size * config.rollout.max_new_tokens)
    weights = shape.params * weight_bytes(gpu_compute(config))  # held in the compute dtype
    ref = {"reference": weights + head * shape.vocab * 4} if layout.reference else {}
    for g, need in enumerate(needs):
        vllm = config.rollout.gpu_memory_utilization * gpu_bytes[g] if g in layout.vllm_bundles else 0.0
        here = any(s.bundle == g for s in layout.learners)
        if layout.rollout_sleeps:
            update = dict(learner) if here else {}
            rollout = {"vLLM (awake)": vllm, **({"learner (resident)": resident} if here else {})}
            need.parts.update(rollout if sum(rollout.values()) >= sum(update.values()) else update)
        else:
            need.parts.update({"vLLM": vllm} if vllm else {})
            need.parts.update(learner if here else {})
        if layout.reference is not None and layout.reference.bundle == g:
            need.parts.update(ref)
    return needs


def vllm_share(config: Config, shape: ModelShape, share: float) -> dict[str, float]:
    """What one engine's share of a GPU (``share`` bytes: ``gpu_memory_utilization`` x the card) holds, per GPU of
    its tensor-parallel group: the weights in the compute dtype, with the adapter push (model.lora) vLLM's LoRA
    slots (one adapter of ``max_lora_rank`` on every adapted layer, in the compute dtype, allocated at start), and
    what is left for the KV cache. vLLM's activations and CUDA graphs also come out of the share (not counted)."""
    from tinyzero.engine.lora import engine_rank
    from tinyzero.engine.roles import lora_push

    tp, lora = config.rollout.tensor_parallel_size, config.model.lora
    parts = {"weights": shape.params * weight_bytes(gpu_compute(config)) / tp}
    if lora_push(config) == "adapters":
        slots = shape.adapter_params(engine_rank(lora.rank), lora.targets())
        parts["LoRA slots"] = slots * weight_bytes(gpu_compute(config)) / tp
    parts["KV cache"] = share - sum(parts.values())
    return parts


def kv_bytes_per_token(config: Config, shape: ModelShape) -> float:
    """A token's keys and values in every layer, in the compute dtype, per GPU of a tensor-parallel group."""
    return 2 * shape.layers * shape.kv_width * weight_bytes(gpu_compute(config)) / config.rollout.tensor_parallel_size


def check_vllm_share(config: Config, layout: Layout, shape: ModelShape, gpu_bytes: list[float]) -> None:
    """vLLM refuses to start when its share leaves no KV cache for one sequence; say so before anything loads."""
    sequence = (PROMPT_TOKENS + config.rollout.max_new_tokens) * kv_bytes_per_token(config, shape)
    for g in sorted(layout.vllm_bundles):
        parts = vllm_share(config, shape, config.rollout.gpu_memory_utilization * gpu_bytes[g])
        if parts["KV cache"] < sequence:
            held = ", ".join(f"{name} {value / GB:.2f}" for name, value in parts.items() if name != "KV cache")
            raise TinyZeroError(
                f"vLLM's share of GPU {g} (rollout.gpu_memory_utilization={config.rollout.gpu_memory_utilization} of "
                f"{gpu_bytes[g] / GB:.0f} GB) holds its {held} GB and leaves no room for one sequence's KV cache "
                f"({sequence / GB:.2f} GB): raise rollout.gpu_memory_utilization, or use a bigger card")


def check_gpu_memory(config: Config, layout: Layout, shape: ModelShape, gpu_bytes: list[float]) -> list[GpuNeed]:
    if config.rollout.backend == "vllm":
        check_vllm_share(config, layout, shape, gpu_bytes)
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
    fixes.append("lower optim.max_tokens_per_micro_batch" if config.optim.max_tokens_per_micro_batch
                 else "lower optim.micro_batch_size")
    if shape.params > 1e9:
        fixes.append("use a smaller model (recipes/countdown-0.5b.yaml) or more GPUs")
    return ", ".join(fixes)


def checkpoint_bytes(config: Config, shape: ModelShape) -> float:
    """One checkpoint: the float32 policy (4 bytes a parameter) and its AdamW moments (8), twice for PPO; with LoRA
    the float32 adapters and their moments only (the base is not saved again)."""
    if adapters := _adapters(config, shape):
        return 12 * adapters
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
    """Two moments hold the most host memory, one after the other: the weight push gathers the full policy on the
    host (float32 when sharded) and, under Ray, puts a copy in the object store in the engine's dtype; a checkpoint
    save brings the float32 weights and AdamW's moments to the host of the first learner process (12 bytes a
    parameter, twice with PPO's critic: 37 GB for a 3B policy)."""
    sharded = len(layout.learners) > 1
    gather = 0.0 if config.run.mode == "local" else shape.params * (4 if sharded else 2)  # local: on the device
    store = shape.params * 2 if config.run.mode == "ray" else 0.0
    push, save = gather + store, checkpoint_bytes(config, shape)
    have = _available_ram() if available_bytes is None else available_bytes
    if have is not None and max(push, save) > have:
        what = "the weight push" if push >= save else "a checkpoint save (float32 weights and AdamW's moments)"
        raise TinyZeroError(f"{what} needs about {max(push, save) / GB:.0f} GB of host memory but {have / GB:.0f} GB "
                            "is available: use a machine with more RAM or a smaller model")


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
    check_lora_rank(config, shape)  # first: it needs no GPU, disk or memory figure
    needs: list[GpuNeed] = []
    if layout.num_gpus and not config.cluster.address:  # on a cluster, Ray counts the nodes' GPUs
        gpus = gpu_memory()
        if len(gpus) >= layout.num_gpus:
            needs = check_gpu_memory(config, layout, shape, gpus)
    check_run_folder(config, shape)
    check_host_memory(config, layout, shape)
    return needs
