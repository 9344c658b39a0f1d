"""Tests for tinyzero.algos: hand-computed cases (arithmetic in the comments) plus a loop reference for GAE; and
the fused log-prob/entropy of tinyzero.engine.forward against the plain reference implementations in reference_math."""

import math

import pytest
import reference_math
import torch
from tolerance import assert_close, atol_for

from tinyzero import algos
from tinyzero.engine import forward

F64 = torch.float64


def t64(data):
    return torch.tensor(data, dtype=F64)


def close(actual, expected, **tolerance):
    """Equal up to rounding (tests/tolerance.py: eps of the less precise dtype x the largest |expected| x ``terms``);
    hand values are written as exact expressions, so that rounding is all the tolerance allows."""
    assert_close(actual, expected if torch.is_tensor(expected) else t64(expected), **tolerance)


# ----------------------------------------------------------------------------------------- masks


def test_masked_sum_and_mean_ignore_padding_even_if_inf():
    x = t64([[1.0, 2.0, math.inf], [4.0, 5.0, math.nan]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    close(algos.masked_sum(x, mask), 3.0)  # 1 + 2
    close(algos.masked_mean(x, mask), 1.5)  # 3 / 2 tokens
    close(algos.masked_sum(x, mask, dim=1), [3.0, 0.0])
    close(algos.masked_mean(x, mask, dim=1), [1.5, 0.0])  # empty row -> 0, not NaN


def test_masked_whiten_hand_case():
    # masked entries [1, 2, 3]: mean 2, population var (1 + 0 + 1) / 3 = 2/3, std 0.8165
    # -> [-1/0.8165, 0, 1/0.8165] = [-1.2247, 0, 1.2247]; the masked-out 100 becomes 0. Exactly, with the
    # variance's eps 1e-8: 1 / sqrt(2/3 + 1e-8), and a mean square of (2/3) / (2/3 + 1e-8).
    x = t64([1.0, 2.0, 3.0, 100.0])
    mask = t64([1.0, 1.0, 1.0, 0.0])
    out = algos.masked_whiten(x, mask)
    scale = 1 / math.sqrt(2 / 3 + 1e-8)
    close(out, [-scale, 0.0, scale, 0.0], terms=3)
    close(algos.masked_mean(out, mask), 0.0, magnitude=scale, terms=3)  # a sum of +-1.22 that cancels
    close(algos.masked_mean(out**2, mask), (2 / 3) / (2 / 3 + 1e-8), terms=3)


# ---------------------------------------------------------------------------------------- logits


def test_logprobs_from_logits_matches_manual_gather():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=F64)
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    manual = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    out = reference_math.logprobs_from_logits(logits, labels)
    assert out.shape == (2, 3)
    close(out.double(), manual, dtype=torch.float32, terms=5)  # float32 output from float64 logits


def test_logprobs_from_logits_upcasts_bf16_to_float32():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 4), generator=gen)
    out = reference_math.logprobs_from_logits(logits, labels)
    assert out.dtype == torch.float32
    manual = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(out, manual, terms=7)  # float32 logsumexps over 7 logits


def test_entropy_of_uniform_logits_is_log_vocab():
    out = reference_math.entropy_from_logits(torch.zeros(2, 3, 7))
    assert_close(out, torch.full((2, 3), math.log(7)), terms=7)


def test_entropy_matches_manual_formula():
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    logp = torch.log_softmax(logits, dim=-1)
    manual = -(logp.exp() * logp).sum(-1)  # -sum p log p
    close(reference_math.entropy_from_logits(logits).double(), manual, dtype=torch.float32, terms=6)  # float32 out


# ------------------------------------------------------------------------------------ advantages


def test_grpo_advantages_unbiased_std():
    # group 0 = [1, 0, 0, 1]: mean 0.5, deviations +-0.5, unbiased var 4 * 0.25 / 3 = 1/3, std 0.57735
    #   -> +-0.5 / 0.57735 = +-0.8660 (a population std of 0.5 would give +-1.0 instead); exactly, with the
    #   std's eps 1e-6: 0.5 / (sqrt(1/3) + 1e-6)
    # group 1 = [1, 1, 1, 1]: deviations 0, std 0 -> 0 / (0 + eps) = 0
    scores = t64([1, 0, 0, 1, 1, 1, 1, 1])
    adv = algos.grpo_advantages(scores, group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(adv, [a, -a, -a, a, 0, 0, 0, 0], terms=4)


def test_dr_grpo_advantages_skip_std():
    # group 0 = [1, 0, 0, 1]: mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; group 1 = [2, 0, 0, 0]: mean 0.5
    #   -> [1.5, -0.5, -0.5, -0.5]; no division by the std
    scores = t64([1, 0, 0, 1, 2, 0, 0, 0])
    adv = algos.grpo_advantages(scores, group_size=4, normalize_std=False)
    close(adv, [0.5, -0.5, -0.5, 0.5, 1.5, -0.5, -0.5, -0.5])


def test_grpo_advantages_accepts_integer_scores_and_groups_of_one():
    adv = algos.grpo_advantages(torch.tensor([1, 0, 0, 1]), group_size=2)
    # groups [1, 0] and [0, 1]: mean 0.5, unbiased std sqrt(0.5) = 0.7071 -> +-0.7071 (+-0.5 / (sqrt(0.5) + 1e-6))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert_close(adv, torch.tensor([a, -a, -a, a]), terms=2)
    close(algos.grpo_advantages(t64([3.0, -1.0, 7.0]), group_size=1), [0.0, 0.0, 0.0])


def test_grpo_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        algos.grpo_advantages(t64([1, 0, 1, 0, 1]), group_size=2)
    with pytest.raises(ValueError, match="positive"):
        algos.grpo_advantages(t64([1, 0]), group_size=0)


def test_broadcast_sequence_advantages():
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out = algos.broadcast_sequence_advantages(t64([2.0, -1.0]), mask)
    close(out, [[0.0, 2.0, 2.0], [-1.0, 0.0, 0.0]])


def gae_reference(rewards, values, mask, gamma, lam):
    """Plain per-row loop: walk the response positions of each row backwards (index list based)."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        idx = [t for t in range(values.shape[1]) if mask[b, t]]
        running = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_value = values[b, idx[k + 1]].item() if k + 1 < len(idx) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, (adv + values) * mask


def test_gae_matches_python_loop_on_random_masked_batch():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(4, 7, generator=gen, dtype=F64)
    values = torch.randn(4, 7, generator=gen, dtype=F64)
    mask = t64(
        [
            [0, 0, 1, 1, 1, 1, 0],  # prompt, response, padding
            [1, 1, 1, 1, 1, 1, 1],  # full row
            [0, 1, 1, 0, 1, 1, 0],  # a gap (e.g. a tool-output span) inside the response
            [0, 0, 0, 0, 0, 0, 0],  # no response tokens
        ]
    )
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, ref_adv, terms=7)  # a recurrence over 7 positions, vectorised against the loop
    close(ret, ref_ret, terms=7)
    assert adv[3].abs().sum() == 0 and adv[0, [0, 1, 6]].abs().sum() == 0


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    # response tokens at t = 1, 2, 3; rewards there [0, 0, 1] -> reward-to-go [1, 1, 1]
    # values there [0.5, 0.2, 0.7] -> advantages [0.5, 0.8, 0.3], returns [1, 1, 1]
    # the prompt token (reward 5, value 9) and the padding token (reward 7, value 100) are ignored
    rewards = t64([[5.0, 0.0, 0.0, 1.0, 7.0]])
    values = t64([[9.0, 0.5, 0.2, 0.7, 100.0]])
    mask = t64([[0, 1, 1, 1, 0]])
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[0.0, 0.5, 0.8, 0.3, 0.0]], magnitude=1.0, terms=3)  # differences of 1 and the values
    close(ret, [[0.0, 1.0, 1.0, 1.0, 0.0]], terms=3)


# -------------------------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    # d = logprobs - ref = log 0.5 - log 0.25 = log 2 = 0.693147 (token 0), -log 2 (token 1)
    # k1 = d; k2 = d^2 / 2 = 0.240227; k3 = exp(-d) + d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    #                                   and for -d: 2 - 0.693147 - 1 = 0.306853
    logprobs = t64([[math.log(0.5), math.log(0.25)]])
    ref = t64([[math.log(0.25), math.log(0.5)]])
    d, size = math.log(2), math.log(4)  # the inputs are up to log 4 in size: their difference carries that rounding
    close(algos.kl_estimate(logprobs, ref, "k1"), [[d, -d]], magnitude=size)
    close(algos.kl_estimate(logprobs, ref, "k2"), [[d * d / 2, d * d / 2]], magnitude=size)
    close(algos.kl_estimate(logprobs, ref, "k3"), [[0.5 + d - 1, 2 - d - 1]], magnitude=2 * size, terms=3)


def test_k3_is_non_negative_and_finite_for_extreme_ratios():
    gen = torch.Generator().manual_seed(4)
    logprobs = torch.randn(8, 16, generator=gen, dtype=F64) * 10
    ref = torch.randn(8, 16, generator=gen, dtype=F64) * 10
    logprobs[0, 0], ref[0, 0] = 0.0, -500.0  # log-ratio 500 -> clamped to 20
    logprobs[0, 1], ref[0, 1] = -500.0, 0.0
    k3 = algos.kl_estimate(logprobs, ref, "k3")
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()
    close(k3[0, 1], math.exp(20) - 21)  # clamped: exp(20) - 20 - 1


def test_kl_estimate_rejects_unknown_name():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        algos.kl_estimate(t64([[0.0]]), t64([[0.0]]), "k4")


def test_kl_penalised_rewards():
    # coef 0.1: -0.1 * kl on response tokens, score added on the last response token
    # row 0: mask [0,1,1,0], kl [1,2,3,4], score 1 -> [0, -0.2, -0.3 + 1, 0] = [0, -0.2, 0.7, 0]
    # row 1: mask all ones, kl 1, score 2 -> [-0.1, -0.1, -0.1, -0.1 + 2] = [-0.1, -0.1, -0.1, 1.9]
    # row 2: no response tokens -> zeros (score 3 is dropped)
    kl = t64([[1, 2, 3, 4], [1, 1, 1, 1], [5, 5, 5, 5]])
    mask = t64([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    out = algos.kl_penalised_rewards(t64([1.0, 2.0, 3.0]), kl, mask, kl_coef=0.1)
    close(out, [[0.0, -0.2, 0.7, 0.0], [-0.1, -0.1, -0.1, 1.9], [0.0, 0.0, 0.0, 0.0]], terms=2)


# ----------------------------------------------------------------------------------- aggregation

AGG_LOSS = [[1.0, 2.0, 3.0, 99.0], [6.0, 99.0, 99.0, 99.0]]  # the 99s sit on masked-out positions
AGG_MASK = [[1, 1, 1, 0], [1, 0, 0, 0]]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 3.0),  # (1 + 2 + 3 + 6) / 4 tokens
        ("seq-mean-token-mean", 4.0),  # row means 6/3 = 2 and 6/1 = 6 -> (2 + 6) / 2
        ("seq-mean-token-sum-norm", 1.5),  # row sums 6 and 6, each / T=4 -> 1.5 and 1.5 -> 1.5
    ],
)
def test_aggregate_loss_modes_hand_case(mode, expected):
    close(algos.aggregate_loss(t64(AGG_LOSS), t64(AGG_MASK), mode), expected)


@pytest.mark.parametrize("mode", algos.AGG_MODES)
def test_aggregate_loss_ignores_empty_rows(mode):
    loss = t64(AGG_LOSS + [[math.nan] * 4])
    mask = t64(AGG_MASK + [[0, 0, 0, 0]])
    with_empty = algos.aggregate_loss(loss, mask, mode)
    assert torch.isfinite(with_empty)
    close(with_empty, algos.aggregate_loss(t64(AGG_LOSS), t64(AGG_MASK), mode))


@pytest.mark.parametrize("mode", algos.AGG_MODES)
def test_aggregate_loss_all_empty_batch_is_zero_with_grad(mode):
    loss = torch.full((2, 3), math.nan, dtype=F64, requires_grad=True)
    out = algos.aggregate_loss(loss, torch.zeros(2, 3), mode)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(loss.grad).all() and loss.grad.abs().sum() == 0


def test_aggregate_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="token-mean"):
        algos.aggregate_loss(t64(AGG_LOSS), t64(AGG_MASK), "sum")


# ---------------------------------------------------------------------------------------- losses


def test_clipped_policy_loss_hand_case():
    # clip 0.2 both ways; ratios r and advantages A per token:
    #   t0 r=1.0 A=+1: unclipped 1.0, clipped 1.0         -> min 1.0,  not clipped, loss -1.0
    #   t1 r=1.5 A=+1: unclipped 1.5, clipped 1.2         -> min 1.2,  clipped,     loss -1.2
    #   t2 r=0.5 A=-1: unclipped -0.5, clipped 0.8*-1=-0.8 -> min -0.8, clipped,     loss +0.8
    #   t3 r=1.1 A=-1: unclipped -1.1, clipped -1.1       -> min -1.1, not clipped, loss +1.1
    #   t4 r=0.5 A=+1: unclipped 0.5, clipped 0.8         -> min 0.5,  not clipped, loss -0.5
    #   t5 masked out, with old_logprobs = -inf (must not leak)
    # token-mean loss = (-1 - 1.2 + 0.8 + 1.1 - 0.5) / 5 = -0.16; clip_frac = 2/5 = 0.4
    # ratio_mean = (1 + 1.5 + 0.5 + 1.1 + 0.5) / 5 = 0.92
    # approx_kl = mean(r - 1 - log r) = (0 + 0.094535 + 0.193147 + 0.004690 + 0.193147) / 5 = 0.097104
    ratios = t64([[1.0, 1.5, 0.5, 1.1, 0.5, 1.0]])
    old = t64([[-1.0, -2.0, -0.5, -3.0, -1.5, -math.inf]])
    logprobs = (old.nan_to_num(neginf=0.0) + ratios.log()).requires_grad_()
    adv = t64([[1.0, 1.0, -1.0, -1.0, 1.0, 5.0]])
    mask = t64([[1, 1, 1, 1, 1, 0]])
    loss, stats = algos.clipped_policy_loss(logprobs, old, adv, mask, 0.2, 0.2, "token-mean")
    # Per-token terms of size ~1 (log-probs up to 3) averaged over 5 tokens, cancelling to -0.16.
    close(loss.detach(), -0.16, magnitude=3.0, terms=5)
    close(stats["clip_frac"], 0.4)
    close(stats["ratio_mean"], 0.92, magnitude=3.0, terms=5)
    close(stats["approx_kl"], sum(r - 1 - math.log(r) for r in (1.0, 1.5, 0.5, 1.1, 0.5)) / 5, terms=5)
    loss.backward()
    # d(-r*A)/d logprob = -r*A / 5 where unclipped is active, 0 where clipped is active or masked
    close(logprobs.grad, [[-0.2, 0.0, 0.0, 0.22, -0.1, 0.0]], magnitude=3.0)  # ratios exp(lp - old), |lp| <= 3


def test_clip_higher_is_asymmetric():
    # a positive-advantage token with ratio 1.25: clip_high 0.2 caps it at 1.2 (clipped, zero grad),
    # clip_high 0.28 allows up to 1.28 (unclipped, loss -1.25, grad -1.25)
    old = t64([[0.0]])
    mask = t64([[1.0]])
    adv = t64([[1.0]])
    for clip_high, expected_loss, expected_frac, expected_grad in [
        (0.2, -1.2, 1.0, 0.0),
        (0.28, -1.25, 0.0, -1.25),
    ]:
        logprobs = t64([[math.log(1.25)]]).requires_grad_()
        loss, stats = algos.clipped_policy_loss(logprobs, old, adv, mask, 0.2, clip_high, "token-mean")
        loss.backward()
        close(loss.detach(), expected_loss)
        close(stats["clip_frac"], expected_frac)
        close(logprobs.grad, [[expected_grad]])
    # the low side keeps clip_low = 0.2: a negative-advantage token with ratio 0.75 is clipped at 0.8
    _, stats = algos.clipped_policy_loss(t64([[math.log(0.75)]]), old, -adv, mask, 0.2, 0.28, "token-mean")
    close(stats["clip_frac"], 1.0)


def test_policy_loss_aggregation_is_passed_through():
    # ratios 1 everywhere, so per-token loss = -A; rows: A [1, 2, 3] (3 tokens) and [6] (1 token)
    adv = t64([[1.0, 2.0, 3.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
    mask = t64(AGG_MASK)
    lp = torch.zeros(2, 4, dtype=F64)
    got = {m: algos.clipped_policy_loss(lp, lp, adv, mask, 0.2, 0.2, m)[0].item() for m in algos.AGG_MODES}
    assert got == pytest.approx(  # advantages up to 6, summed over up to 4 tokens, in float64
        {"token-mean": -3.0, "seq-mean-token-mean": -4.0, "seq-mean-token-sum-norm": -1.5}, abs=atol_for(F64, 6, 4)
    )


def test_gspo_loss_hand_case():
    """One ratio per sequence, the geometric mean of its token ratios, clipped per sequence (clip range 0.05 here for
    round numbers; the default is the paper's 3e-4 / 4e-4):
      seq 0: ratios 4, 1/4, 1 -> s = 1;   A = mean(0.5, 1.5, 1) = 1 -> min(1, 1) = 1        loss -1,   not clipped
      seq 1: ratios 1.21, 1   -> s = 1.1; A = +1 -> min(1.1, 1.05) = 1.05                   loss -1.05, clipped
      seq 2: ratios 1.21, 1   -> s = 1.1; A = -2 -> min(-2.2, -2.1) = -2.2                  loss +2.2, not clipped
      seq 3: empty (old log-probs -inf, advantage 5: must not leak)
    seq-mean-token-mean = (-1 - 1.05 + 2.2) / 3 = 0.05; token-mean weighs them by length 3, 2, 2:
    (-3 - 2.1 + 4.4) / 7 = -0.1. Gradient (seq-mean): -A * s / |y| / 3 on each token of an unclipped sequence."""
    ratios = t64([[4.0, 0.25, 1.0], [1.21, 1.0, 1.0], [1.21, 1.0, 1.0], [1.0, 1.0, 1.0]])
    old = t64([[-1.0, -2.0, -0.5], [-3.0, -1.5, -math.inf], [-0.25, -2.5, -math.inf], [-math.inf] * 3])
    adv = t64([[0.5, 1.5, 1.0], [1.0, 1.0, 5.0], [-2.0, -2.0, 5.0], [5.0, 5.0, 5.0]])
    mask = t64([[1, 1, 1], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
    losses = {}
    for agg in ("seq-mean-token-mean", "token-mean"):
        logprobs = (old.nan_to_num(neginf=0.0) + ratios.log()).requires_grad_()
        loss, stats = algos.gspo_policy_loss(logprobs, old, adv, mask, 0.05, 0.05, agg)
        loss.backward()
        losses[agg] = (loss.detach(), logprobs.grad, stats)
    # Terms of size ~2 (advantages up to 2 times ratios up to 1.1), log-ratios up to log 4 summed over 3 tokens.
    loss, grad, stats = losses["seq-mean-token-mean"]
    close(loss, (-1 - 1.05 + 2.2) / 3, magnitude=2.2, terms=7)
    close(grad, [[-1 / 9, -1 / 9, -1 / 9], [0.0, 0.0, 0.0], [2 * 1.1 / 6, 2 * 1.1 / 6, 0.0], [0.0, 0.0, 0.0]],
          magnitude=2.2, terms=7)
    close(stats["clip_frac"], 1 / 3)
    close(stats["ratio_mean"], (1 + 1.1 + 1.1) / 3, magnitude=4.0, terms=7)
    tokens = (4.0, 0.25, 1.0, 1.21, 1.0, 1.21, 1.0)
    close(stats["approx_kl"], sum(r - 1 - math.log(r) for r in tokens) / 7, magnitude=4.0, terms=7)
    loss, grad, _ = losses["token-mean"]
    close(loss, (-3 - 2.1 + 4.4) / 7, magnitude=4.4, terms=7)
    close(grad, [[-1 / 7, -1 / 7, -1 / 7], [0.0, 0.0, 0.0], [2 * 1.1 / 7, 2 * 1.1 / 7, 0.0], [0.0, 0.0, 0.0]],
          magnitude=2.2, terms=7)


def test_cispo_loss_hand_case():
    """Each token's ratio capped at 1 + 0.28 and held constant, times its log-probability:
      t0 r=1.0 A=+1 lp=-1   -> w 1.0   loss -(1.0 * 1 * -1)    = 1       grad -1.0 / 4
      t1 r=1.5 A=+1 lp=-2   -> w 1.28  loss -(1.28 * 1 * -2)   = 2.56    grad -1.28 / 4  (capped, still learns)
      t2 r=0.5 A=-1 lp=-0.5 -> w 0.5   loss -(0.5 * -1 * -0.5) = -0.25   grad +0.5 / 4   (no lower bound)
      t3 r=1.1 A=-1 lp=-3   -> w 1.1   loss -(1.1 * -1 * -3)   = -3.3    grad +1.1 / 4
      t4 masked out (old -inf, advantage 5)
    token-mean = (1 + 2.56 - 0.25 - 3.3) / 4 = 0.0025; clip_frac 1/4; ratio_mean (1 + 1.5 + 0.5 + 1.1) / 4."""
    ratios = t64([[1.0, 1.5, 0.5, 1.1, 1.0]])
    logprobs = t64([[-1.0, -2.0, -0.5, -3.0, 0.0]]).requires_grad_()
    old = (logprobs.detach() - ratios.log()).clone()
    old[0, 4] = -math.inf
    adv = t64([[1.0, 1.0, -1.0, -1.0, 5.0]])
    mask = t64([[1, 1, 1, 1, 0]])
    loss, stats = algos.cispo_policy_loss(logprobs, old, adv, mask, 0.28, "token-mean")
    loss.backward()
    # Terms up to 3.3 summed over 4 tokens, cancelling to 0.0025.
    close(loss.detach(), (1 + 2.56 - 0.25 - 3.3) / 4, magnitude=3.3, terms=4)
    close(logprobs.grad, [[-1.0 / 4, -1.28 / 4, 0.5 / 4, 1.1 / 4, 0.0]], magnitude=3.0)
    close(stats["clip_frac"], 1 / 4)
    close(stats["ratio_mean"], (1 + 1.5 + 0.5 + 1.1) / 4, magnitude=3.0, terms=4)
    # clip zeroes the capped token's gradient where cispo keeps it (t1 above).
    lp = logprobs.detach().clone().requires_grad_()
    algos.clipped_policy_loss(lp, old, adv, mask, 0.2, 0.28, "token-mean")[0].backward()
    assert float(lp.grad[0, 1]) == 0.0 and float(logprobs.grad[0, 1]) < 0


@pytest.mark.parametrize("agg", algos.AGG_MODES)
def test_on_policy_the_three_losses_take_the_same_gradient(agg):
    """At ratio 1 (one on-policy update, as the CPU demo takes) with one advantage per sequence, clip, gspo and cispo
    are the same gradient in every aggregation: -A * grad log p per token, scaled alike. They differ only once the
    policy has moved from the one that sampled (epochs or mini_batches > 1, run.off_policy_steps)."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 5, 11, generator=gen, dtype=F64)
    labels = torch.randint(0, 11, (4, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    adv = algos.broadcast_sequence_advantages(
        algos.grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64), group_size=2), mask)
    grads = {}
    for name in ("clip", "gspo", "cispo"):
        leaf = logits.clone().requires_grad_()
        logprobs = reference_math.logprobs_from_logits(leaf, labels)
        loss_fn = algos.policy_loss(name)
        options = {"clip": (0.2, 0.28), "gspo": (3e-4, 4e-4), "cispo": (0.28,)}[name]
        loss, _ = loss_fn.fn(logprobs, logprobs.detach(), adv, mask, *options, agg)
        loss.backward()
        grads[name] = leaf.grad
    # Gradients of size ~1 (whitened advantages times softmax terms), summed over up to 5 tokens and 11 logits.
    close(grads["gspo"], grads["clip"], terms=5 * 11)
    close(grads["cispo"], grads["clip"], terms=5 * 11)
    assert grads["clip"].abs().sum() > 0


def test_a_per_sequence_loss_is_refused_with_a_critics_advantages():
    assert algos.check_pairing("grpo", "gspo") == algos.check_pairing("ppo", "cispo") == ""
    why = algos.check_pairing("ppo", "gspo")
    assert why.startswith("algo.policy_loss=gspo weighs whole sequences") and "algo.name=grpo or rloo" in why


def test_kl_loss_hand_case():
    # k3 values 0.193147 and 0.306853 (see test_kl_estimators_hand_values) -> token-mean 0.5 / 2 = 0.25
    logprobs = t64([[math.log(0.5), math.log(0.25), 0.0]])
    ref = t64([[math.log(0.25), math.log(0.5), -50.0]])
    mask = t64([[1, 1, 0]])
    close(algos.kl_loss(logprobs, ref, mask, "k3", "token-mean"), 0.25)
    close(algos.kl_loss(logprobs, ref, mask, "k1", "token-mean"), 0.0)  # +log 2 and -log 2 cancel


def test_entropy_bonus_hand_case():
    # row means (1 + 2) / 2 = 1.5 and 3 / 1 = 3 -> (1.5 + 3) / 2 = 2.25; token-mean (1 + 2 + 3) / 3 = 2
    entropy = t64([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = t64([[1, 1, 0], [1, 0, 0]])
    close(algos.entropy_bonus(entropy, mask, "seq-mean-token-mean"), 2.25)
    close(algos.entropy_bonus(entropy, mask, "token-mean"), 2.0)


def test_clipped_value_loss_hand_case():
    # clip 0.2, old values 0:
    #   t0 v=0.5 R=1: v_clip 0.2; (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.5 * 0.64 = 0.32, clipped branch
    #   t1 v=0.1 R=0: inside the band; both 0.01 -> 0.005
    #   t2 v=-0.5 R=0: v_clip -0.2; 0.25 vs 0.04 -> 0.5 * 0.25 = 0.125, plain branch
    # token-mean = (0.32 + 0.005 + 0.125) / 3 = 0.15; vf_clip_frac = 1/3
    values = t64([[0.5, 0.1, -0.5, 7.0]]).requires_grad_()
    old = torch.zeros(1, 4, dtype=F64)
    returns = t64([[1.0, 0.0, 0.0, -7.0]])
    mask = t64([[1, 1, 1, 0]])
    loss, stats = algos.clipped_value_loss(values, old, returns, mask, 0.2, "token-mean")
    close(loss.detach(), 0.15)
    close(stats["vf_clip_frac"], 1 / 3)
    loss.backward()
    # grads: t0 clipped -> 0; t1 (v - R) / 3 = 0.1/3; t2 (v - R) / 3 = -0.5/3; masked -> 0
    close(values.grad, [[0.0, 0.1 / 3, -0.5 / 3, 0.0]])


@pytest.mark.parametrize("mode", algos.AGG_MODES)
def test_gradients_flow_end_to_end(mode):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 5, 11, generator=gen, requires_grad=True)
    labels = torch.randint(0, 11, (4, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    logprobs = reference_math.logprobs_from_logits(logits, labels)
    old = (logprobs + 0.3 * torch.randn(4, 5, generator=gen)).detach()
    ref = (logprobs + 0.3 * torch.randn(4, 5, generator=gen)).detach()
    adv = algos.broadcast_sequence_advantages(
        algos.grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2), mask
    )
    pg, _ = algos.clipped_policy_loss(logprobs, old, adv, mask, 0.2, 0.28, mode)
    loss = pg + 0.1 * algos.kl_loss(logprobs, ref, mask, "k3", mode)
    loss = loss - 0.01 * algos.entropy_bonus(reference_math.entropy_from_logits(logits), mask, mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[:3].abs().sum() > 0
    assert logits.grad[3].abs().sum() == 0  # the empty row gets no gradient


def test_fused_token_logprobs_and_entropy_match_the_separate_functions():
    torch.manual_seed(0)
    logits = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)  # [K, V]
    labels = torch.randint(0, 11, (7,))
    lp, ent = forward.token_logprobs_and_entropy(logits, labels, with_entropy=True, entropy_grad=True)
    # The reference computes in float32; the fused path in the logits' dtype: float32's rounding over 11 logits.
    assert_close(lp, reference_math.logprobs_from_logits(logits[None], labels[None])[0].to(lp.dtype),
                 dtype=torch.float32, terms=11)
    assert_close(ent, reference_math.entropy_from_logits(logits[None])[0].to(ent.dtype), dtype=torch.float32, terms=11)
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    _, detached = forward.token_logprobs_and_entropy(logits, labels, entropy_grad=False)
    assert not detached.requires_grad
    lp_only, none = forward.token_logprobs_and_entropy(logits, labels, with_entropy=False)
    assert none is None and lp_only.shape == (7,)


# ------------------------------------------------------------------------- registered estimators


def inputs(scores, mask, group_size, **extra):
    return algos.AdvantageInputs(scores=t64(scores), response_mask=t64(mask), group_size=group_size, **extra)


def test_rloo_hand_case():
    # Group [1, 0, 0.5]: the other two average (0 + 0.5) / 2 = 0.25, (1 + 0.5) / 2 = 0.75, (1 + 0) / 2 = 0.5,
    # so advantages 0.75, -0.75, 0. Group [2, 2, 2]: every baseline is 2, advantages 0.
    mask = [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [0, 0]]
    out = algos.rloo(inputs([1, 0, 0.5, 2, 2, 2], mask, 3))
    close(out.advantages, [[0.75, 0.75], [-0.75, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    assert out.returns is None
    # Equal to G / (G - 1) times the group-centred score (GRPO without the std), token by token.
    grpo = algos.grpo(inputs([1, 0, 0.5, 2, 2, 2], mask, 3), normalize_std=False).advantages
    close(out.advantages, 1.5 * grpo)


def test_rloo_charges_the_kl_reward_penalty_and_handles_groups_of_one():
    # Scores [1, 1], per-token KL [[0.5, 0.5], [0, 0]] at coefficient 0.2: penalised scores 0.8 and 1.0,
    # so advantages -0.2 and 0.2 on each response token.
    mask = [[1, 1], [1, 1]]
    out = algos.rloo(inputs([1, 1], mask, 2, kl=t64([[0.5, 0.5], [0, 0]]), kl_coef=0.2))
    close(out.advantages, [[-0.2, -0.2], [0.2, 0.2]])
    close(algos.rloo(inputs([3, 5], mask, 1)).advantages, [[0, 0], [0, 0]])
    with pytest.raises(ValueError, match="groups of 3"):
        algos.rloo(inputs([1, 2], mask, 3))


def test_registered_estimators_match_their_building_blocks():
    torch.manual_seed(0)
    scores, mask = torch.rand(8, dtype=F64), (torch.rand(8, 5) > 0.3).double()
    seq = algos.grpo_advantages(scores, 4, True)
    close(algos.grpo(algos.AdvantageInputs(scores, mask, 4), normalize_std=True).advantages,
          algos.broadcast_sequence_advantages(seq, mask))
    values = torch.rand(8, 5, dtype=F64)
    out = algos.ppo(algos.AdvantageInputs(scores, mask, 4, values=values), gamma=1.0, lam=0.95)
    adv, returns = algos.gae_advantages(algos.kl_penalised_rewards(scores, torch.zeros_like(mask), mask, 0.0),
                                        values, mask, 1.0, 0.95)
    close(out.advantages, algos.masked_whiten(adv, mask))
    close(out.returns, returns)
    with pytest.raises(ValueError, match="critic's values"):
        algos.ppo(algos.AdvantageInputs(scores, mask, 4), gamma=1.0, lam=1.0)


def test_registry_names_options_and_needs():
    assert list(algos.ADVANTAGE_ESTIMATORS) == ["grpo", "rloo", "ppo"]
    assert algos.advantage_estimator("ppo").critic and not algos.advantage_estimator("rloo").critic
    assert algos.advantage_estimator("grpo").options == ("normalize_std",)
    assert algos.policy_loss("clip").fn is algos.clipped_policy_loss
    assert list(algos.POLICY_LOSSES) == ["clip", "gspo", "cispo"]
    assert algos.policy_loss("gspo").options == ("gspo_clip_low", "gspo_clip_high")
    assert algos.policy_loss("gspo").per_sequence and not algos.policy_loss("cispo").per_sequence
    assert algos.policy_loss("cispo").options == ("cispo_clip_high",)
    with pytest.raises(ValueError, match="choose one of grpo, rloo, ppo"):
        algos.advantage_estimator("dpo")

    def needs(name="grpo", kl_coef=0.0, kl_applied_as="loss", epochs=1, mini_batches=1):
        return algos.needs(name, kl_coef=kl_coef, kl_applied_as=kl_applied_as, epochs=epochs,
                           mini_batches=mini_batches)

    assert needs() == algos.Needs(critic=False, reference=False, several_updates=False, old_logprobs=False)
    assert needs("ppo").critic
    assert needs(kl_coef=0.1) == algos.Needs(False, True, False, False)  # KL loss: same forward pass
    assert needs(kl_coef=0.1, kl_applied_as="reward").old_logprobs  # the penalty is measured before the update
    assert needs(epochs=2) == algos.Needs(False, False, True, True)
    assert needs(mini_batches=2).old_logprobs


def test_registering_an_estimator_is_one_decorated_function(monkeypatch):
    monkeypatch.setattr(algos, "ADVANTAGE_ESTIMATORS", dict(algos.ADVANTAGE_ESTIMATORS))

    @algos.register_advantage("sign", options=("gamma",))
    def sign(inputs, *, gamma):
        """The sign of each score, times gamma."""
        seq = torch.sign(inputs.scores) * gamma
        return algos.AdvantageOutput(algos.broadcast_sequence_advantages(seq, inputs.response_mask))

    entry = algos.advantage_estimator("sign")
    assert (entry.options, entry.critic, entry.summary) == (("gamma",), False, "The sign of each score, times gamma.")
    from tinyzero.config import load_config

    assert load_config(None, ["algo.name=sign"]).algo.needs.critic is False  # the config accepts the new name
    with pytest.raises(ValueError, match="registered twice"):
        algos.register_advantage("sign")(sign)


# ----------------------------------------------------------------------------------- rollout mismatch

# Learner log-probs and the engine's for the same tokens. Ratios pi_learner / pi_rollout, by construction:
# row 0: 4, 0.25, 1.5; row 1: 1/1.05 (about 0.952), 1, and a padding position the mask drops.
LEARNER = [[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]]
ROLLOUT = [[-1.0 - math.log(4), -2.0 + math.log(4), -0.5 - math.log(1.5)], [-1.0 + math.log(1.05), -3.0, 7.0]]
MISMATCH_MASK = [[1, 1, 1], [1, 1, 0]]


def test_rollout_correction_weights_hand_case():
    weights = lambda mode, cap=2.0: algos.rollout_correction_weights(  # noqa: E731
        t64(LEARNER), t64(ROLLOUT), t64(MISMATCH_MASK), mode, cap)
    # none: 1 on every response token.
    close(weights("none"), [[1, 1, 1], [1, 1, 0]])
    # tis, cap 2: min(ratio, 2) -> 4 is truncated to 2, the rest pass unchanged.
    close(weights("tis"), [[2, 0.25, 1.5], [1 / 1.05, 1, 0]])
    # mis, cap 2: 1 inside [0.5, 2], 0 outside -> 4 and 0.25 are dropped.
    close(weights("mis"), [[0, 0, 1], [1, 1, 0]])
    # cap 5: 4 is below the cap and 0.25 inside [0.2, 5]: tis weights are the ratios, mis keeps every token.
    close(weights("tis", 5.0), [[4, 0.25, 1.5], [1 / 1.05, 1, 0]])
    close(weights("mis", 5.0), [[1, 1, 1], [1, 1, 0]])
    logprobs = t64(LEARNER).requires_grad_()
    assert not algos.rollout_correction_weights(logprobs, t64(ROLLOUT), t64(MISMATCH_MASK), "tis", 2).requires_grad
    with pytest.raises(ValueError, match="choose one of none, tis, mis"):
        weights("is")
    with pytest.raises(ValueError, match="at least 1"):
        weights("tis", 0.5)


def test_rollout_mismatch_hand_case():
    # k3 = r - 1 - ln r per token: r=4 -> 3 - 1.386294 = 1.613706; r=0.25 -> -0.75 + 1.386294 = 0.636294;
    # r=1.5 -> 0.5 - 0.405465 = 0.094535; r=1/1.05 -> -0.047619 + 0.048790 = 0.001171; r=1 -> 0.
    # Mean over the 5 response tokens: 2.345706 / 5 = 0.469141.
    stats = algos.rollout_mismatch(t64(LEARNER), t64(ROLLOUT), t64(MISMATCH_MASK), "tis", 2.0)
    k3 = sum(r - 1 - math.log(r) for r in (4, 0.25, 1.5, 1 / 1.05)) / 5  # the fifth token's k3 is 0
    # float64 log-ratios of log-probs up to 3 in size, through k3's slope (at most 3) and a mean over 5 tokens.
    assert float(stats["kl"]) == pytest.approx(k3, abs=atol_for(F64, 3 * 3, terms=5))
    ratio = atol_for(F64, 3)  # exp of a float64 difference of log-probs up to 3: relative rounding
    assert float(stats["ratio_max"]) == pytest.approx(4.0, rel=ratio)
    assert float(stats["ratio_min"]) == pytest.approx(0.25, rel=ratio)
    assert float(stats["out_of_band_frac"]) == pytest.approx(3 / 5)  # 4, 0.25, 1.5 are more than 0.1 from 1
    assert float(stats["correction_frac"]) == pytest.approx(1 / 5)  # tis truncates only the 4
    mis = algos.rollout_mismatch(t64(LEARNER), t64(ROLLOUT), t64(MISMATCH_MASK), "mis", 2.0)
    assert float(mis["correction_frac"]) == pytest.approx(2 / 5)  # mis drops 4 and 0.25
    assert "correction_frac" not in algos.rollout_mismatch(t64(LEARNER), t64(ROLLOUT), t64(MISMATCH_MASK))
    # Two fp32 engines a few 1e-7 apart: k3 about 1e-13 must come out positive, not rounding noise.
    base = torch.full((4,), -2.0)
    tiny = algos.rollout_mismatch(base, base + 4e-7, torch.ones(4))
    assert 0 < float(tiny["kl"]) < 1e-12 and float(tiny["out_of_band_frac"]) == 0.0
    empty = algos.rollout_mismatch(t64(LEARNER), t64(ROLLOUT), torch.zeros(2, 3))
    assert (float(empty["kl"]), float(empty["ratio_max"]), float(empty["out_of_band_frac"])) == (0.0, 1.0, 0.0)


def test_overlong_penalty_hand_case():
    # Limit 64, buffer 16: no penalty up to 48 tokens, then -1/16 per token: 52 -> -4/16, 60 -> -12/16, 64 -> -1.
    close(algos.overlong_penalty(torch.tensor([10, 48, 49, 52, 60, 64]), 64, 16).double(),
          [0, 0, -1 / 16, -0.25, -0.75, -1.0])
    # The buffer as long as the limit: the penalty grows from the first token.
    close(algos.overlong_penalty(torch.tensor([0, 2, 4]), 4, 4).double(), [0, -0.5, -1.0])
    for buffer in (0, 65):
        with pytest.raises(ValueError, match="buffer must be in"):
            algos.overlong_penalty(torch.tensor([1]), 64, buffer)
