"""The rollout log-probs end to end: the learner's correction of the policy gradient, and a run whose engine reports
log-probs perturbed on purpose (the mismatch metrics rise by the amount worked out by hand; the correction changes
the gradient by the factor worked out by hand; with no correction nothing changes).

The pure functions (weights, metrics) have their hand cases in tests/test_algos.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import one_tiny_step
from tolerance import TINY_VOCAB, assert_close, tiny_logprob_atol

from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.engine import rollout as rollout_module
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import TrainBatch, build_tokens

PROMPTS = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
RESPONSES = [[70, 71, 72], [100, 101], [40, 200, 90, 91], [7]]
ADVANTAGE = [1.0, -1.0, 0.5, -0.5]  # one per row, on every response token


def gradient(model_dir, mode: str, advantage: list[float], shift: list[float]) -> torch.Tensor:
    """The policy gradient of one update (lr 0, no clipping) with the engine's log-probs ``shift[row]`` below the
    learner's on every token of a row, i.e. pi_learner / pi_rollout = exp(shift[row])."""
    learner = Learner(model_dir, AlgoConfig(rollout_correction=mode, rollout_is_cap=2.0),
                      OptimConfig(lr=0.0, grad_clip=0.0, micro_batch_size=2), compute_dtype="float32", seed=0)
    tokens = build_tokens(PROMPTS, RESPONSES, pad_id=0)
    mask = tokens.response_mask
    own = learner.logprobs(tokens)  # [N, T]: what the learner's forward will compute
    rollout = (own - torch.tensor(shift).unsqueeze(1)) * mask
    batch = TrainBatch(tokens=tokens, advantages=torch.tensor(advantage).unsqueeze(1) * mask, rollout_logprobs=rollout)
    grads = []  # read at the optimizer step: the learner frees its gradients right after it
    step = learner.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append(torch.cat([p.grad.flatten() for p in learner.policy.parameters() if p.grad is not None]))
        return step(*args, **kwargs)

    learner.optimizer.step = recording_step
    stats = learner.update(batch)
    # The ratio is exp of the difference of two forwards' log-probs: its relative rounding is their rounding gap.
    assert stats["rollout/mismatch_ratio_max"] == pytest.approx(math.exp(max(shift)), rel=tiny_logprob_atol())
    assert len(grads) == 1  # one mini-batch: one optimizer step
    return grads[0]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to rounding: backward passes that weight the same per-token terms apart round apart, by eps x the
    gradient's largest element x the longest reduction (the vocabulary): 1.2e-4 here, against the 0.29 that
    doubling row 0's advantage changes (an element of 2.6e-4 was 2.1e-7 off under AVX2: rtol 1e-4 failed it)."""
    assert_close(a, b, terms=TINY_VOCAB)


def test_the_correction_weights_the_policy_gradient_as_computed_by_hand(tiny_model_dir):
    # Row 0's engine says its tokens are 4x less likely than the learner does (ratio 4); the others agree (ratio 1).
    shift = [math.log(4), 0.0, 0.0, 0.0]
    plain = gradient(tiny_model_dir, "none", ADVANTAGE, [0.0] * 4)
    assert gradient(tiny_model_dir, "none", ADVANTAGE, shift).equal(plain)  # no correction: the log-probs are unused
    # tis, cap 2: row 0's weight is min(4, 2) = 2, the same gradient as doubling its advantage.
    close(gradient(tiny_model_dir, "tis", ADVANTAGE, shift), gradient(tiny_model_dir, "none", [2.0, -1.0, 0.5, -0.5],
                                                                       [0.0] * 4))
    # mis, cap 2: 4 is outside [0.5, 2], row 0 drops out: the gradient of a zero advantage there.
    close(gradient(tiny_model_dir, "mis", ADVANTAGE, shift), gradient(tiny_model_dir, "none", [0.0, -1.0, 0.5, -0.5],
                                                                       [0.0] * 4))
    # Every row at ratio 1.5 (inside the cap): tis scales the whole gradient by 1.5; mis keeps it.
    close(gradient(tiny_model_dir, "tis", ADVANTAGE, [math.log(1.5)] * 4), 1.5 * plain)
    close(gradient(tiny_model_dir, "mis", ADVANTAGE, [math.log(1.5)] * 4), plain)


def one_step(model_dir, tmp_path, name: str, *extra: str) -> dict:
    return one_tiny_step(model_dir, tmp_path, name, *extra, prompts=4, new_tokens=8, eval_new_tokens=4)


def test_an_engine_with_perturbed_log_probs_shows_in_the_metrics_and_the_correction(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    honest = one_step(tiny_model_dir, tmp_path, "honest")
    # The HF engine and the learner run the same fp32 model: their log-probs agree to rounding (gap <= atol), so
    # every ratio is within atol of 1 and k3 = r - 1 - ln r, about (ln r)^2 / 2, below atol^2 / 2 (1.1e-6).
    atol = tiny_logprob_atol()
    assert honest["rollout/mismatch_kl"] < atol**2 / 2 and honest["rollout/mismatch_out_of_band_frac"] == 0.0
    assert abs(honest["rollout/mismatch_ratio_max"] - 1) < atol and abs(honest["rollout/mismatch_ratio_min"] - 1) < atol

    generate = rollout_module._HfEngine.generate

    def understated(self, *args, **kwargs):  # every sampled token reported 4x less likely than it is
        groups = generate(self, *args, **kwargs)
        for completion in (c for group in groups for c in group):
            completion.logprobs = [lp - math.log(4) for lp in completion.logprobs]
        return groups

    monkeypatch.setattr(rollout_module._HfEngine, "generate", understated)
    plain = one_step(tiny_model_dir, tmp_path, "plain")
    # Ratio 4 on every token: k3 = 4 - 1 - ln 4 = 1.613706, every token out of band. Up to rounding: r = 4 (1 + d)
    # with |d| <= atol, and dk3/dr = 1 - 1/r = 3/4, so k3 moves by at most 3 atol.
    assert plain["rollout/mismatch_kl"] == pytest.approx(4 - 1 - math.log(4), abs=3 * atol)
    assert plain["rollout/mismatch_ratio_min"] == pytest.approx(4, rel=atol)
    assert plain["rollout/mismatch_out_of_band_frac"] == 1.0
    # Same samples (the perturbation touches only the reported numbers) and, uncorrected, the same update.
    assert plain["reward/mean"] == honest["reward/mean"] and plain["train/grad_norm"] == honest["train/grad_norm"]
    tis = one_step(tiny_model_dir, tmp_path, "tis", "algo.rollout_correction=tis", "algo.rollout_is_cap=2")
    # Every weight is min(4, 2) = 2: the gradient doubles (grad_norm is measured before clipping). A weight of
    # exactly 2 scales every float exactly (equal under AVX-512, AVX2 and default); rel allows the log-probs'
    # rounding in case a kernel weights the terms in another order, far below the factor 2 checked.
    assert tis["train/grad_norm"] == pytest.approx(2 * plain["train/grad_norm"], rel=atol)
    assert tis["rollout/correction_frac"] == 1.0
    mis = one_step(tiny_model_dir, tmp_path, "mis", "algo.rollout_correction=mis", "algo.rollout_is_cap=2")
    assert mis["train/grad_norm"] == 0.0 and mis["rollout/correction_frac"] == 1.0  # every token dropped
