"""tinyzero.engine.forward: LM-head chunks recomputed in backward give the plain graph's values and gradients bit
for bit, and keep only the chunks' hidden states (measured allocations, tests/memory_probe.py); below
``lm_head.HEAD_KEEP_BYTES`` they are kept instead, which is the plain graph itself."""

from __future__ import annotations

import pytest
import torch
from memory_probe import measure
from reference_math import plain_sequence_logprobs
from transformers import AutoModelForCausalLM, Qwen2Config

from tinyzero.engine import forward, lm_head
from tinyzero.engine.forward import sequence_logprobs
from tinyzero.engine.messages import build_tokens

PROMPTS = [[1, 2, 3], [1, 2, 3], [4, 5], [6, 7, 8, 9]]
RESPONSES = [[10, 11, 12, 13, 14], [15, 16], [17, 18, 19, 20, 21, 22, 23], [24, 25, 26]]


def _model(vocab: int = 320, seed: int = 0):
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         initializer_range=0.1)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _loss_and_grads(fn, model, tokens, entropy_grad: bool, dtype: torch.dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        logprobs, entropy = fn(model, tokens, with_entropy=True, entropy_grad=entropy_grad)
    weights = torch.linspace(-1.0, 1.0, logprobs.numel()).view_as(logprobs)  # every token counts differently
    loss = (logprobs * weights).sum() + (0.3 * entropy * weights.flip(0)).sum()
    loss.backward() if loss.requires_grad else None
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logprobs.detach(), entropy.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30], ids=["recomputed", "kept"])
def test_head_chunks_equal_the_plain_graph(monkeypatch, entropy_grad, dtype, keep_bytes):
    monkeypatch.setattr(forward, "HEAD_CHUNK", 4)  # 17 response tokens: five chunks, the last one short
    monkeypatch.setattr(lm_head, "HEAD_KEEP_BYTES", keep_bytes)
    model, tokens = _model(), build_tokens(PROMPTS, RESPONSES, pad_id=0)
    new = _loss_and_grads(sequence_logprobs, model, tokens, entropy_grad, dtype)
    old = _loss_and_grads(plain_sequence_logprobs, model, tokens, entropy_grad, dtype)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    assert new[2].keys() == old[2].keys() and len(new[2]) == len(list(model.parameters()))
    for name in old[2]:
        assert torch.equal(new[2][name], old[2][name]), name


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_forward_keeps_the_chunks_hidden_states_not_their_logits(monkeypatch, entropy_grad):
    """The plain graph keeps K x V x 4 bytes (the log-softmax), twice that with an entropy gradient (its
    exponential too); recomputed chunks keep their [k, H] inputs only. Measured, not assumed."""
    vocab = 8192
    k = 408  # the response tokens below
    lm_head_bytes = k * vocab * 4
    # The budget just under what the chunks would keep: the rule recomputes them (one byte more would keep them).
    monkeypatch.setattr(lm_head, "HEAD_KEEP_BYTES", (2 if entropy_grad else 1) * lm_head_bytes - 1)
    model = _model(vocab)
    tokens = build_tokens(PROMPTS * 4, [r * 6 for r in RESPONSES] * 4, pad_id=0)
    assert int(tokens.response_mask.sum()) == k  # one chunk
    plain = measure(plain_sequence_logprobs, model, tokens, with_entropy=True, entropy_grad=entropy_grad)
    chunked = measure(sequence_logprobs, model, tokens, with_entropy=True, entropy_grad=entropy_grad)
    shares = 2 if entropy_grad else 1
    # Bytes, not rounding: equal to the byte today (torch 2.13); rel leaves a margin for a small tensor another
    # torch or transformers version may keep beside them, far below the K x V x 4 bytes at stake.
    assert plain.kept - chunked.kept == pytest.approx(shares * lm_head_bytes, rel=0.02)
    # What is left (the decoder layers' activations, the outputs) does not grow with the vocabulary (bytes, as above).
    monkeypatch.setattr(lm_head, "HEAD_KEEP_BYTES", 0)  # recomputed there too
    small_vocab = measure(sequence_logprobs, _model(320), tokens, with_entropy=True, entropy_grad=entropy_grad)
    assert chunked.kept == pytest.approx(small_vocab.kept, rel=0.01)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunks_within_the_budget_are_kept_as_the_plain_graph_keeps_them(monkeypatch, entropy_grad):
    """At or under ``HEAD_KEEP_BYTES`` the forward keeps what the plain graph keeps (the log-softmax, and the
    exponential with an entropy gradient), to the byte: nothing is recomputed in backward (bench/learner_update.py
    measures the time that saves)."""
    vocab = 8192
    model = _model(vocab)
    tokens = build_tokens(PROMPTS * 4, [r * 6 for r in RESPONSES] * 4, pad_id=0)
    kept_bytes = (2 if entropy_grad else 1) * int(tokens.response_mask.sum()) * vocab * 4
    monkeypatch.setattr(lm_head, "HEAD_KEEP_BYTES", kept_bytes)  # exactly at the budget: kept
    plain = measure(plain_sequence_logprobs, model, tokens, with_entropy=True, entropy_grad=entropy_grad)
    kept = measure(sequence_logprobs, model, tokens, with_entropy=True, entropy_grad=entropy_grad)
    assert kept.kept == plain.kept


def test_the_keep_rule_counts_the_log_softmax_and_with_an_entropy_gradient_its_exponential():
    """By hand: the CPU demo's largest micro-batch (32 rows x 64 tokens, SmolLM2's 49,152 words) keeps 0.40 GB, under
    the 1 GiB budget; Qwen2.5's 151,936 words at 8 x 1,024 tokens would keep 4.98 GB, so a GPU recipe recomputes."""
    assert lm_head.HEAD_KEEP_BYTES == 2**30
    assert lm_head.head_kept_bytes(2048, 49_152, entropy_grad=False) == 2048 * 49_152 * 4 == 402_653_184
    assert lm_head.head_kept_bytes(2048, 49_152, entropy_grad=True) == 2 * 402_653_184
    assert not lm_head.head_recompute(2048, 49_152, entropy_grad=True)
    assert lm_head.head_recompute(8 * 1024, 151_936, entropy_grad=False)
    # The boundary: equal to the budget is kept, a byte over is recomputed.
    assert not lm_head.head_recompute(1, 1000, entropy_grad=False, keep_bytes=4000)
    assert lm_head.head_recompute(1, 1000, entropy_grad=True, keep_bytes=7999)
