"""Tiny random models with a hub-free byte tokenizer: fixtures for the tests (and bench/gpu_check.py's tokenizer).

Not part of the kit: a run always loads a real model (the bundled SmolLM2, a hub id or a folder).
"""

from __future__ import annotations

from pathlib import Path

from tinyzero.errors import TinyZeroError

# The chat format of Qwen and SmolLM2 (ChatML), so tiny models render prompts the way real ones do.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(
    out_dir: str | Path, *, arch: str = "qwen2", tie_word_embeddings: bool = False, seed: int = 0
) -> Path:
    """Save a tiny random float32 causal LM ("qwen2" or "llama") with a hub-free tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = _tiny_config(arch, tokenizer, tie_word_embeddings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _tiny_config(arch: str, tokenizer, tie_word_embeddings: bool):
    from transformers import LlamaConfig, Qwen2Config

    classes = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in classes:
        raise TinyZeroError(f"unknown tiny model architecture {arch!r}; use one of {sorted(classes)}.")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return classes[arch](
        # A multiple of 64 above the tokenizer's 259 entries, as real checkpoints pad their vocabularies.
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs head_dim >= 32
        num_key_value_heads=1,  # grouped-query attention, as in Qwen2.5, so that code path is exercised
        max_position_embeddings=1024,
        # Larger than the usual 0.02 so logits have clear margins: greedy decoding then does not flip
        # between engines on float rounding, which the weight-sync tests rely on.
        initializer_range=0.1,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=eos,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        dtype="float32",
    )


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + ChatML specials) that encodes any text and needs no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    # A BPE with no merges is a byte-level tokenizer: every byte is one token.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(TINY_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=1024,
    )


def one_tiny_step(model_dir, out_dir, name: str, *extra: str, prompts: int, new_tokens: int,
                  eval_new_tokens: int) -> dict:
    """The metrics of one real training step of the tiny model on the HF engine (toy letters task, 4 samples a
    prompt, lr 1e-2, no evaluation or checkpoint), with ``extra`` overrides on top."""
    from tinyzero.config import load_config
    from tinyzero.trainer import Trainer

    args = [f"model.name={model_dir}", f"run.out_dir={out_dir}", f"run.name={name}", "run.steps=1",
            "rollout.backend=hf", f"rollout.prompts_per_step={prompts}", "rollout.samples_per_prompt=4",
            f"rollout.max_new_tokens={new_tokens}", "eval.size=2", f"eval.max_new_tokens={eval_new_tokens}",
            "eval.every=0", "checkpoint.every=0", "env.name=toy_tasks:Letters", "env.options={}", "optim.lr=1e-2",
            *extra]
    trainer = Trainer(load_config(None, args))
    try:
        return trainer.train_step()
    finally:
        trainer.close()
