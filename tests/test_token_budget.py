"""Token-budget micro-batches (``optim.max_tokens_per_micro_batch``): the packing itself, and gradients equal to
fixed micro-batches' for every loss aggregation, with the KL and entropy terms, skipped rows and PPO's critic."""

from __future__ import annotations

import pytest
import torch
from tolerance import TINY_VOCAB, assert_close

from tinyzero import algos
from tinyzero.algo_names import AGG_MODES
from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import TrainBatch, build_tokens

# Groups of two (one prompt each), prompts of 2..6 tokens and responses of 1..9: a spread of lengths.
PROMPTS = [[1, 2], [1, 2], [3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8], [9, 10, 11], [9, 10, 11], [12, 13, 14, 15],
           [12, 13, 14, 15]]
RESPONSES = [[20], [21, 22, 23, 24, 25, 26, 27, 28, 29], [30, 31], [32, 33, 34], [40, 41, 42, 43, 44, 45],
             [46], [50, 51, 52, 53], [54, 55, 56, 57, 58, 59, 60]]
BUDGET = 24  # 8 rows of 3..11 tokens: micro-batches of different row counts


@pytest.fixture()
def tokens():
    return build_tokens(PROMPTS, RESPONSES, pad_id=0)


def _batch(tokens, scores, **extra) -> TrainBatch:
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    return TrainBatch(tokens=tokens, advantages=adv, **extra)


def _all_grads(learner: Learner, batch: TrainBatch) -> list[dict[str, torch.Tensor]]:
    """Gradients of every optimizer step of one update (policy and critic), taken in place of the step."""
    captured = []

    def capture(module, optimizer, losses):  # stands in for Learner._clip_and_step
        captured.append({name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None})
        return 0.0

    learner._clip_and_step = capture
    learner.update(batch)
    del learner._clip_and_step
    return captured


def _assert_same(packed: list[dict], fixed: list[dict]) -> None:
    assert len(packed) == len(fixed) and all(fixed)
    for mine, theirs in zip(packed, fixed, strict=True):
        assert mine.keys() == theirs.keys()
        # Equal up to summation order: eps x the step's whole gradient scale (one parameter's can cancel to ~0)
        # x the longest reduction (the vocabulary), tests/tolerance.py.
        scale = max(float(g.abs().max()) for g in theirs.values())
        for name in theirs:
            assert_close(mine[name], theirs[name], magnitude=scale, terms=TINY_VOCAB, msg=name)


def test_rows_are_sorted_by_length_and_packed_within_the_budget(tiny_model_dir, tokens, capsys):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(max_tokens_per_micro_batch=BUDGET))
    batch = _batch(tokens, torch.tensor([1.0, 0.0] * 4))
    parts = learner._my_micro_batches(batch, torch.arange(8))
    lengths = [len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert sorted(int(i) for part in parts for i in part) == list(range(8))  # every row once
    flat = [lengths[int(i)] for part in parts for i in part]
    assert flat == sorted(flat, reverse=True)  # longest first
    sizes = [len(part) for part in parts]
    assert len(set(sizes)) > 1  # not a fixed row count
    for part in parts:
        width = max(len(PROMPTS[i]) for i in part.tolist()) + max(len(RESPONSES[i]) for i in part.tolist())
        assert len(part) * width <= BUDGET
        trimmed = batch.select(part, trim=True, trim_prompt=True).tokens
        assert trimmed.input_ids.shape[1] == width  # trimmed to its own longest prompt and response
    for part, following in zip(parts, parts[1:], strict=False):  # packed greedily: the next row did not fit
        grown = [*part.tolist(), int(following[0])]
        width = max(len(PROMPTS[i]) for i in grown) + max(len(RESPONSES[i]) for i in grown)
        assert len(grown) * width > BUDGET
    assert "longer than" not in capsys.readouterr().out
    small = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(max_tokens_per_micro_batch=10))
    parts = small._my_micro_batches(batch, torch.arange(8))
    assert [len(part) for part in parts][:2] == [1, 1]  # the two 11-token rows, each alone
    assert "a row of 11 tokens is longer than optim.max_tokens_per_micro_batch=10" in capsys.readouterr().out


@pytest.mark.parametrize("agg", AGG_MODES)
def test_packed_gradients_equal_fixed_micro_batches_with_kl_and_entropy(tiny_model_dir, tokens, agg):
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    ref = torch.randn(tokens.response_mask.shape, generator=torch.Generator().manual_seed(1)) * 0.1 - 5
    batch = _batch(tokens, scores, ref_logprobs=ref * tokens.response_mask)
    algo = AlgoConfig(loss_agg=agg, kl_coef=0.1, entropy_coef=0.01)
    fixed = _all_grads(Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=3)), batch)
    packed = _all_grads(Learner(tiny_model_dir, algo, OptimConfig(max_tokens_per_micro_batch=BUDGET)), batch)
    _assert_same(packed, fixed)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_packed_gradients_equal_fixed_with_zero_advantage_rows_skipped(tiny_model_dir, tokens, agg):
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # two uniform groups: skipped rows
    batch = _batch(tokens, scores)
    learner = Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(max_tokens_per_micro_batch=BUDGET))
    assert learner._can_skip_zero_rows(batch)
    packed = _all_grads(learner, batch)
    fixed = _all_grads(Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(micro_batch_size=8)), batch)
    _assert_same(packed, fixed)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_packed_ppo_policy_and_critic_gradients_equal_fixed(tiny_model_dir, tokens, agg):
    algo = AlgoConfig(name="ppo", loss_agg=agg, mini_batches=2)
    fixed_learner = Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=2))
    packed_learner = Learner(tiny_model_dir, algo, OptimConfig(max_tokens_per_micro_batch=BUDGET))
    mask = tokens.response_mask
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    values = fixed_learner.values(tokens) + 0.3 * mask  # a critic that is off, so the value loss has a gradient
    rewards = algos.kl_penalised_rewards(scores, torch.zeros_like(mask), mask, 0.0)
    adv, returns = algos.gae_advantages(rewards, values, mask, 1.0, 1.0)
    batch = TrainBatch(tokens=tokens, advantages=algos.masked_whiten(adv, mask),
                       old_logprobs=fixed_learner.logprobs(tokens) + 0.05 * mask, returns=returns, old_values=values)
    fixed = _all_grads(fixed_learner, batch)
    packed = _all_grads(packed_learner, batch)
    assert len(fixed) == 4  # two mini-batches, each a policy and a critic step
    assert any(name.startswith("head.") for grads in fixed for name in grads)  # the critic's steps are compared too
    _assert_same(packed, fixed)
