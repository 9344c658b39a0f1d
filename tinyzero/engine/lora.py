"""LoRA (``model.lora``): low-rank adapters on a frozen base, built on peft.

What changes when ``model.lora.rank`` > 0, and why:
- The base weights are loaded in the compute dtype and never updated, so they need no float32 master (bf16
  storage loses nothing); the adapters A and B are float32 masters, trained under the same autocast as full
  training. AdamW holds moments for the adapters only.
- The reference log-probs are the policy's with its adapters switched off: the same network, no second copy.
- The rollout engine gets, for each adapted linear layer, its merged weight ``W + (alpha / rank) * B @ A``
  (peft's ``get_delta_weight``), cast to the engine's dtype; every other weight is the base's, which the engine
  loaded itself. vLLM fuses q/k/v and gate/up into one layer each and reloads a fused layer from all its parts,
  so a sibling of an adapted projection travels too (its base weight, unchanged).
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
        saved = json.loads((folder / BASE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise TinyZeroError(f"{folder / BASE_FILE} cannot be read ({type(err).__name__}), so the adapters' base is "
                            "unknown: resume from an earlier checkpoint") from None
    if not isinstance(saved, dict):
        raise TinyZeroError(f"{folder / BASE_FILE} is not a mapping: resume from an earlier checkpoint")
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
    model = PeftModel.from_pretrained(load_causal_lm(base_path, torch.float32, "cpu"), str(adapter_dir))
    merged = model.merge_and_unload().to(dtype)
    merged.config.use_cache = True
    merged.save_pretrained(out, safe_serialization=True)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_path).save_pretrained(out)
    return out
