"""Learner: log-prob layout, exact savings (skipped rows, micro-batching), PPO critic, save/load."""

from __future__ import annotations

import copy

import pytest
import torch

from tinyzero import algos
from tinyzero.batches import TrainBatch, build_tokens, sequence_logprobs
from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.learner import Learner

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]] * 2
RESPONSES = [[10, 11], [12, 13, 14], [15], [16, 17, 18, 19], [20], [21, 22]]


@pytest.fixture()
def tokens():
    return build_tokens(PROMPTS, RESPONSES, pad_id=0)


def test_logprobs_match_a_full_unpadded_forward(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(micro_batch_size=4))
    logprobs = learner.logprobs(tokens)
    assert logprobs.shape == tokens.response_mask.shape
    with torch.no_grad():
        for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            logits = learner.policy(torch.tensor([prompt + response])).logits[0].float()
            full = torch.log_softmax(logits, dim=-1)
            expected = torch.stack([full[len(prompt) - 1 + j, t] for j, t in enumerate(response)])
            torch.testing.assert_close(logprobs[i, : len(response)], expected, atol=1e-4, rtol=1e-4)
            assert torch.all(logprobs[i, len(response) :] * tokens.response_mask[i, len(response) :] == 0)


def _grads(learner: Learner, batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Gradients of one update (taken before the optimizer step by zero learning rate)."""
    captured = {}
    original = learner._clip_and_step

    def capture(module, optimizer):
        for name, p in module.named_parameters():
            if p.grad is not None:
                captured[name] = p.grad.detach().clone()
        return 0.0

    learner._clip_and_step = capture
    learner.update(batch)
    learner._clip_and_step = original
    return captured


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_skipping_zero_advantage_rows_and_micro_batching_are_exact(tiny_model_dir, tokens, agg):
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # the last group is uniform: zero advantage
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    batch = TrainBatch(tokens, adv)
    base = Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(micro_batch_size=6))
    skipped = _grads(base, batch)
    no_skip = copy.copy(base)
    no_skip._can_skip_zero_rows = lambda b: False
    full = _grads(no_skip, batch)
    micro = Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(micro_batch_size=1))
    one_by_one = _grads(micro, batch)
    assert full.keys() == skipped.keys() == one_by_one.keys() and full
    for name in full:
        torch.testing.assert_close(skipped[name], full[name], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(one_by_one[name], full[name], atol=1e-6, rtol=1e-4)


def test_update_moves_probability_towards_positive_advantage(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    before = learner.logprobs(tokens)
    for _ in range(3):
        stats = learner.update(TrainBatch(tokens, adv))
    after = learner.logprobs(tokens)
    gain = algos.masked_sum(after - before, tokens.response_mask, dim=1)  # [N]
    assert torch.all(gain[scores == 1] > 0) and torch.all(gain[scores == 0] < 0)
    assert stats["grad_norm"] > 0 and stats["lr"] == pytest.approx(1e-3)


def test_ppo_critic_learns_and_checkpoint_round_trips(tiny_model_dir, tokens, tmp_path):
    algo = AlgoConfig(name="ppo", epochs=2, mini_batches=2)
    learner = Learner(tiny_model_dir, algo, OptimConfig(lr=1e-3, critic_lr=1e-2, micro_batch_size=3))
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    mask = tokens.response_mask
    for _ in range(4):
        values = learner.values(tokens)
        rewards = algos.kl_penalised_rewards(scores, torch.zeros_like(mask), mask, 0.0)
        adv, returns = algos.gae_advantages(rewards, values, mask, 1.0, 1.0)
        batch = TrainBatch(tokens, algos.masked_whiten(adv, mask), learner.logprobs(tokens), None, returns, values)
        stats = learner.update(batch)
    assert "vf_loss" in stats
    err_after = algos.masked_mean((learner.values(tokens) - returns) ** 2, mask)
    err_start = algos.masked_mean(returns**2, mask)  # the critic head starts at zero
    assert err_after < err_start
    learner.save(tmp_path)
    restored = Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=3))
    restored.load(tmp_path)
    torch.testing.assert_close(restored.logprobs(tokens), learner.logprobs(tokens))
    torch.testing.assert_close(restored.values(tokens), learner.values(tokens))
    assert restored.updates == learner.updates


def test_sequence_logprobs_entropy_is_detached_unless_asked(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig())
    _, ent = sequence_logprobs(learner.policy, tokens, with_entropy=True)
    assert not ent.requires_grad
    _, ent = sequence_logprobs(learner.policy, tokens, with_entropy=True, entropy_grad=True)
    assert ent.requires_grad
