"""The RL math of tinyzero: advantages, KL estimators, surrogate losses and loss aggregation.

Everything here is pure tensor code: tensors in, tensors out, no I/O, no model code, no config
objects. The trainer feeds it per-token log-probabilities and masks and gets back losses and stats.

An algorithm is one pluggable unit: an advantage estimator is a pure function registered by name with
``@register_advantage`` (and a policy loss with ``@register_policy_loss``), declaring which ``algo.*``
settings it reads and whether it needs a critic. ``algo.name`` / ``algo.policy_loss`` pick them; the driver
asks ``needs(...)`` what a configuration requires (critic, reference, old log-probs) instead of branching on
names. docs/engine.md, "Add an algorithm", walks through adding one.

Conventions
    B rows (one per completion), T token positions, V vocabulary entries, G samples per prompt.
    ``response_mask`` is float or bool ``[B, T]``, 1 on completion tokens and 0 on prompt and padding.
    Values at masked-out positions are never read for the result, so padding may hold anything
    (even ``inf``) without leaking NaN into a loss.

Simplifications
    * One scalar score per completion (outcome reward); per-step process rewards are not modelled.
    * GRPO treats a completion as a single action: its advantage is copied onto every token.
    * GAE runs one backwards loop over T, vectorised over B; it is meant for detached inputs.
    * ``masked_whiten`` uses the population (biased) variance over the masked entries.
    * The Dr. GRPO "constant length" is the padded width T of the batch; pad responses to the
      generation limit to make it a true constant across steps.
    * No dual-clip PPO and no value-function bootstrapping past the end of a response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# The allowed values, declared once in a module without torch (config fields are typed with them).
from tinyzero.algo_names import (
    AGG_MODES,
    KL_ESTIMATORS,
    ROLLOUT_CORRECTIONS,
    KlEstimator,
    LossAgg,
    RolloutCorrection,
)

_K3_LOG_RATIO_LIMIT = 20.0
# The band of the mismatch metric: a token's learner/rollout probability ratio is "out of band" when it is more than
# 10% away from 1 (the band of the AReaL and TRL reports on the vLLM/trainer mismatch).
MISMATCH_BAND = 0.1

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "KL_ESTIMATORS",
    "KlEstimator",
    "LossAgg",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "RolloutCorrection",
    "AdvantageInputs",
    "AdvantageOutput",
    "Needs",
    "Registered",
    "advantage_estimator",
    "needs",
    "policy_loss",
    "register_advantage",
    "register_policy_loss",
    "aggregate_loss",
    "broadcast_sequence_advantages",
    "check_pairing",
    "cispo_policy_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "gspo_policy_loss",
    "entropy_bonus",
    "gae_advantages",
    "grpo_advantages",
    "kl_estimate",
    "kl_loss",
    "kl_penalised_rewards",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "mixed_groups",
    "overlong_penalty",
    "rollout_correction_weights",
    "rollout_mismatch",
]


# -------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Registered:
    """A registered advantage estimator or policy loss."""

    name: str
    fn: Callable
    options: tuple[str, ...]  # the ``algo.*`` settings passed to ``fn`` as keyword arguments
    critic: bool  # it reads a value model's ``values`` (advantage estimators only)
    summary: str  # the first line of ``fn``'s docstring
    grouped: bool = False  # its advantages compare the G samples of a prompt (dynamic sampling applies)
    per_sequence: bool = False  # a policy loss that reads one advantage per sequence (not GAE's per-token ones)


ADVANTAGE_ESTIMATORS: dict[str, Registered] = {}
POLICY_LOSSES: dict[str, Registered] = {}


def _register(table: dict[str, Registered], kind: str, name: str, options, critic: bool, grouped: bool = False,
              per_sequence: bool = False):
    def decorate(fn: Callable) -> Callable:
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice; pick another name")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        table[name] = Registered(name, fn, tuple(options), critic, summary, grouped, per_sequence)
        return fn

    return decorate


def register_advantage(name: str, *, options: tuple[str, ...] = (), critic: bool = False, grouped: bool = False):
    """Register ``fn(inputs: AdvantageInputs, **options) -> AdvantageOutput`` as ``algo.name=name``.

    ``options`` names the ``algo.*`` settings it takes as keyword arguments; ``critic=True`` makes the learner
    train a value model and fill ``inputs.values``; ``grouped=True`` says its advantages compare the G samples of
    each prompt, so a group whose samples all got the same verdict teaches nothing and ``rollout.filter_groups``
    (dynamic sampling) may replace it."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name, options, critic, grouped)


def register_policy_loss(name: str, *, options: tuple[str, ...] = (), per_sequence: bool = False):
    """Register ``fn(logprobs, old_logprobs, advantages, response_mask, *, agg, **options) -> (loss, stats)`` as
    ``algo.policy_loss=name``; ``stats`` is a dict of detached scalars logged under ``train/``. ``per_sequence=True``
    says it reads one advantage per sequence (the mean over its tokens), so an estimator whose advantages differ
    from token to token (a critic's GAE) is refused with it (``check_pairing``)."""
    return _register(POLICY_LOSSES, "policy loss", name, options, False, per_sequence=per_sequence)


def _lookup(table: dict[str, Registered], kind: str, name: str) -> Registered:
    if name not in table:
        raise ValueError(f"Unknown {kind} {name!r}; choose one of {', '.join(table)}.")
    return table[name]


def advantage_estimator(name: str) -> Registered:
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def policy_loss(name: str) -> Registered:
    return _lookup(POLICY_LOSSES, "policy loss", name)


def check_pairing(estimator: str, loss: str) -> str:
    """Why ``algo.name=estimator`` cannot train with ``algo.policy_loss=loss`` ("" when it can): a per-sequence
    loss averages a sequence's advantages, which would erase a critic's per-token credit (GAE)."""
    if policy_loss(loss).per_sequence and advantage_estimator(estimator).critic:
        sequence = " or ".join(k for k, est in ADVANTAGE_ESTIMATORS.items() if not est.critic)
        token = " or ".join(k for k, lo in POLICY_LOSSES.items() if not lo.per_sequence)
        return (f"algo.policy_loss={loss} weighs whole sequences by one advantage each, and algo.name={estimator} "
                f"gives one per token (a critic's GAE): use algo.name={sequence} with {loss}, or "
                f"algo.policy_loss={token} with {estimator}")
    return ""


@dataclass(frozen=True)
class Needs:
    """What one configuration of an algorithm requires from the roles."""

    critic: bool  # a value model, trained beside the policy
    reference: bool  # a frozen reference model for the KL term
    several_updates: bool  # more than one optimizer step per rollout batch: rows are shuffled into mini-batches
    old_logprobs: bool  # the sampling policy's log-probs, from a separate pass before the update


def needs(name: str, *, kl_coef: float, kl_applied_as: str, epochs: int, mini_batches: int) -> Needs:
    """The one place that decides what an algorithm needs.

    Old log-probs: with one epoch and one mini-batch the update is on-policy, and the learner takes them from
    the same forward pass (ratio exactly 1); otherwise they must be recorded first. A KL reward penalty also
    needs them, to measure the sampling policy's KL before the update."""
    several = epochs * mini_batches > 1
    reference = kl_coef > 0
    return Needs(critic=advantage_estimator(name).critic, reference=reference, several_updates=several,
                 old_logprobs=several or (reference and kl_applied_as == "reward"))


# ----------------------------------------------------------------------------------------- masks


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x * mask where mask is non-zero, exactly 0 elsewhere (so inf/NaN padding cannot leak)."""
    return torch.where(mask != 0, x * mask.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over entries where mask is set; over everything when dim is None."""
    picked = _masked(x, mask)  # same shape as x
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over entries where mask is set; 0 (not NaN) where the mask is empty."""
    total = masked_sum(x, mask, dim)
    count = masked_sum(torch.ones_like(x), mask, dim)
    return total / count.clamp_min(1e-8)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Shift and scale x to mean 0 and std 1 over the masked entries; masked-out entries become 0.

    The std is the population one (divide by N, not N - 1).
    """
    mean = masked_mean(x, mask)  # []
    var = masked_mean((x - mean) ** 2, mask)  # []
    return _masked((x - mean) * torch.rsqrt(var + eps), mask)  # same shape as x


# ------------------------------------------------------------------------------------ advantages


def grpo_advantages(scores: Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages (GRPO; Shao et al. 2024, DeepSeekMath, arXiv:2402.03300).

    scores [B*G] are laid out group-contiguous: prompt 0's G samples first, then prompt 1's, ...
    advantage = score - group mean, divided by (group std + eps) when normalize_std. The std is the
    unbiased sample std (divide by G - 1), the torch.std default. normalize_std=False is Dr. GRPO
    (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783), which drops the std
    division. A group of size 1 has nothing to compare against, so its advantage is 0.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}.")
    if scores.numel() % group_size != 0:
        raise ValueError(
            f"grpo_advantages: {scores.numel()} scores cannot be split into groups of {group_size}; "
            "the number of scores must be a multiple of group_size (prompts x samples per prompt)."
        )
    scores = scores if scores.is_floating_point() else scores.float()
    groups = scores.reshape(-1, group_size)  # [B, G]
    if group_size == 1:
        return torch.zeros_like(scores)  # [B*G]
    centred = groups - groups.mean(dim=1, keepdim=True)  # [B, G]
    if normalize_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)  # [B, G]
    return centred.reshape(scores.shape)  # [B*G]


def broadcast_sequence_advantages(adv: Tensor, response_mask: Tensor) -> Tensor:
    """Copy one advantage per sequence onto each of its response tokens: [B], [B, T] -> [B, T]."""
    per_token = adv.unsqueeze(-1).expand(response_mask.shape)  # [B, T]
    return _masked(per_token, response_mask)  # [B, T]


def gae_advantages(
    token_rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv:1506.02438).

    delta_t = r_t + gamma * V_next - V_t and A_t = delta_t + gamma * lam * A_next, run backwards over
    response tokens only: masked-out tokens are skipped (neither their reward nor their value is
    read, and the recursion carries straight across them), and the value after the last response
    token is 0 (the episode ends there). Returns (advantages [B, T], returns [B, T]) with
    returns = advantages + values on response tokens; both are 0 where the mask is 0. Advantages are
    not whitened here; call masked_whiten if wanted. Pass detached tensors.
    """
    keep = response_mask != 0  # [B, T]
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_adv = torch.zeros_like(values[:, 0])  # [B]
    backwards = []  # T tensors of [B], last position first
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        adv_t = delta + gamma * lam * next_adv  # [B]
        next_value = torch.where(keep[:, t], values[:, t], next_value)  # [B]
        next_adv = torch.where(keep[:, t], adv_t, next_adv)  # [B]
        backwards.append(torch.where(keep[:, t], adv_t, torch.zeros_like(adv_t)))
    advantages = torch.stack(backwards[::-1], dim=1)  # [B, T]
    returns = _masked(advantages + values, response_mask)  # [B, T]
    return advantages, returns


# -------------------------------------------------------------------------------------------- KL


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(policy || reference) from policy samples: [B, T] -> [B, T].

    Estimators from Schulman 2020, "Approximating KL divergence" (joschu.net/blog/kl-approx.html),
    with d = logprobs - ref_logprobs:
      k1 = d                          unbiased, high variance, can be negative
      k2 = d^2 / 2                    biased, low variance, non-negative
      k3 = exp(-d) + d - 1            unbiased, low variance, non-negative; -d clamped to [-20, 20]
    """
    log_ratio = logprobs - ref_logprobs  # [B, T]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        ref_over_pol = (-log_ratio).clamp(-_K3_LOG_RATIO_LIMIT, _K3_LOG_RATIO_LIMIT)  # [B, T]
        return torch.exp(ref_over_pol) - ref_over_pol - 1.0
    raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}.")


def kl_penalised_rewards(scores: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> Tensor:
    """Token rewards with KL as a reward penalty (InstructGPT; Ouyang et al. 2022, arXiv:2203.02155).

    reward_t = -kl_coef * kl_t on every response token, plus the sequence score on the last response
    token of each row: [B], [B, T], [B, T] -> [B, T]. Rows without response tokens get all zeros.
    """
    keep = response_mask != 0  # [B, T]
    rewards = _masked(-kl_coef * kl, response_mask)  # [B, T]
    positions = torch.arange(1, keep.shape[1] + 1, device=keep.device)  # [T]
    last = (keep * positions).argmax(dim=1)  # [B] index of the last response token
    has_tokens = keep.any(dim=1)  # [B]
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype))
    return rewards.scatter_add(1, last.unsqueeze(1), bonus.unsqueeze(1))  # [B, T]


# ------------------------------------------------------------ groups, length shaping, rollout mismatch


def mixed_groups(signal: Tensor, group_size: int) -> Tensor:
    """Which groups hold samples with different values of ``signal``: [B*G] -> [B] bool.

    ``signal`` is the verdict (``correct``) or the score, group-contiguous. A group whose G values are all equal
    gets zero advantage from a group estimator (GRPO, RLOO) and so teaches nothing; DAPO's dynamic sampling (Yu et
    al. 2025, arXiv:2503.14476, section 3.3) drops such groups and samples more. Values are compared exactly.
    """
    if group_size < 1 or signal.numel() % group_size:
        raise ValueError(f"mixed_groups: {signal.numel()} values cannot be split into groups of {group_size}.")
    groups = signal.reshape(-1, group_size)  # [B, G]
    return (groups != groups[:, :1]).any(dim=1)  # [B]


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, section 3.4): [B] -> [B], in [-1, 0].

    0 for a response of at most ``max_len - buffer`` tokens, then falling linearly to -1 at ``max_len``:
    penalty = min(0, ((max_len - buffer) - length) / buffer). Responses cannot pass ``max_len`` here (generation
    stops there), so -1 is the floor, reached by every response cut at the limit.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong_penalty: buffer must be in [1, max_len={max_len}], got {buffer}.")
    lengths = lengths.to(torch.float32)
    return (((max_len - buffer) - lengths) / buffer).clamp(-1.0, 0.0)  # [B]


def _rollout_ratio(logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """pi_learner / pi_rollout per token, [B, T]; 1 off the mask; the log-ratio is clamped to [-20, 20] so a wild
    engine cannot overflow it."""
    log_ratio = (logprobs - rollout_logprobs).clamp(-_K3_LOG_RATIO_LIMIT, _K3_LOG_RATIO_LIMIT)  # [B, T]
    return torch.exp(torch.where(response_mask != 0, log_ratio, torch.zeros_like(log_ratio)))  # [B, T]


def rollout_correction_weights(
    logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, mode: str, cap: float
) -> Tensor:
    """Per-token weights of the policy-gradient term that correct for the rollout engine's numerics, [B, T].

    ``logprobs`` are the learner's at the weights that generated the batch (its ``old_logprobs``) and
    ``rollout_logprobs`` the engine's for the same sampled tokens; ratio = pi_learner / pi_rollout. Detached.
      none  1 everywhere
      tis   min(ratio, cap): truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly
            Brings You Off-Policy RL Training"; the default of TRL's vLLM correction)
      mis   1 inside [1/cap, cap], 0 outside: masked importance sampling, which drops the tokens the two engines
            disagree on instead of reweighting them (Liu et al. 2025, "When Speed Kills Stability"; token-level,
            two-sided, as IcePop, Ling Team 2025, arXiv:2510.18855)
    Weights are 0 off the mask.
    """
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"Unknown rollout correction {mode!r}; choose one of {', '.join(ROLLOUT_CORRECTIONS)}.")
    if cap < 1:
        raise ValueError(f"rollout correction cap must be at least 1, got {cap}.")
    with torch.no_grad():
        ratio = _rollout_ratio(logprobs.detach(), rollout_logprobs.detach(), response_mask)  # [B, T]
        if mode == "tis":
            weights = ratio.clamp(max=cap)
        elif mode == "mis":
            weights = ((ratio >= 1.0 / cap) & (ratio <= cap)).to(ratio.dtype)
        else:
            weights = torch.ones_like(ratio)
        return _masked(weights, response_mask)  # [B, T]


def rollout_mismatch(
    logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, mode: str = "none", cap: float = 2.0
) -> dict[str, Tensor]:
    """How far the rollout engine's log-probs of the sampled tokens are from the learner's (detached scalars).

      kl                 mean over tokens of k3 = ratio - 1 - log(ratio), ratio = pi_learner / pi_rollout: an
                         estimate of KL(pi_rollout || pi_learner) from the rollout's own samples (Schulman 2020)
      ratio_max, _min    the largest and smallest per-token ratio
      out_of_band_frac   share of tokens with |ratio - 1| > MISMATCH_BAND (0.1)
      correction_frac    with ``mode`` tis: share of tokens whose weight the cap truncated (ratio > cap); with mis:
                         share masked out (ratio outside [1/cap, cap]); absent for none
    An empty mask gives kl 0, ratios 1 and fractions 0. Computed in float64 with expm1: between two fp32 engines the
    log-ratios are about 1e-6 and k3 about 1e-12, which exp(x) - x - 1 in float32 rounds to noise.
    """
    with torch.no_grad():
        logprobs, rollout_logprobs = logprobs.detach().double(), rollout_logprobs.detach().double()
        ratio = _rollout_ratio(logprobs, rollout_logprobs, response_mask)  # [B, T]
        keep = response_mask != 0  # [B, T]
        picked = ratio[keep]  # [K]
        log_ratio = (logprobs - rollout_logprobs).clamp(-_K3_LOG_RATIO_LIMIT, _K3_LOG_RATIO_LIMIT)  # [B, T]
        stats = {
            "kl": masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask),
            "ratio_max": picked.max() if picked.numel() else torch.ones(()),
            "ratio_min": picked.min() if picked.numel() else torch.ones(()),
            "out_of_band_frac": masked_mean(((ratio - 1).abs() > MISMATCH_BAND).to(ratio.dtype), response_mask),
        }
        if mode == "tis":
            stats["correction_frac"] = masked_mean((ratio > cap).to(ratio.dtype), response_mask)
        elif mode == "mis":
            outside = (ratio < 1.0 / cap) | (ratio > cap)
            stats["correction_frac"] = masked_mean(outside.to(ratio.dtype), response_mask)
        return stats


# ----------------------------------------------------------------------------------- aggregation


def aggregate_loss(loss: Tensor, response_mask: Tensor, mode: str) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token-mean               sum over all response tokens / their count in the batch (DAPO; Yu et al.
                             2025, arXiv:2503.14476).
    seq-mean-token-mean      mean over each sequence's tokens, then mean over sequences (original GRPO;
                             Shao et al. 2024, arXiv:2402.03300).
    seq-mean-token-sum-norm  sum over each sequence's tokens / T (the padded width, a constant), then
                             mean over sequences (Dr. GRPO; Liu et al. 2025, arXiv:2503.20783).
    Rows without response tokens are left out of the sequence means; an all-empty batch gives 0
    (still attached to the graph, so backward() works).
    """
    if mode == "token-mean":
        return masked_mean(loss, response_mask)
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss, response_mask, dim=-1)  # [B]
    elif mode == "seq-mean-token-sum-norm":
        per_seq = masked_sum(loss, response_mask, dim=-1) / loss.shape[-1]  # [B]
    else:
        raise ValueError(f"Unknown loss aggregation {mode!r}; choose one of {', '.join(AGG_MODES)}.")
    non_empty = (response_mask != 0).any(dim=-1)  # [B]
    return masked_mean(per_seq, non_empty)


# ---------------------------------------------------------------------------------------- losses


@register_policy_loss("clip", options=("clip_low", "clip_high"))
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_low: float,
    clip_high: float,
    agg: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) with separate clip bounds.

    ratio = exp(logprobs - old_logprobs); per-token loss = -min(ratio * A, clip(ratio, 1 - clip_low,
    1 + clip_high) * A), reduced by aggregate_loss(agg). clip_high > clip_low is DAPO's clip-higher
    (Yu et al. 2025, arXiv:2503.14476). Stats (detached scalars):
      clip_frac   fraction of response tokens where the clipped term is strictly smaller, i.e. active
      approx_kl   masked mean of k3 estimating KL(old || new) from the old policy's samples:
                  ratio - 1 - log(ratio)
      ratio_mean  masked mean of the ratio
    """
    log_ratio = torch.where(response_mask != 0, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = ratio * advantages  # [B, T]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages  # [B, T]
    loss = aggregate_loss(-torch.minimum(unclipped, clipped), response_mask, agg)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped < unclipped).to(ratio.dtype), response_mask),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, stats


@register_policy_loss("gspo", options=("gspo_clip_low", "gspo_clip_high"), per_sequence=True)
def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    gspo_clip_low: float,
    gspo_clip_high: float,
    agg: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: one importance ratio per sequence, clipped per sequence (Zheng et al. 2025, arXiv:2507.18071).

    s_i = exp(mean over sequence i's response tokens of (logprobs - old_logprobs)), the geometric mean of its token
    ratios; A_i = the mean of its tokens' advantages (GRPO's and RLOO's are one per sequence already; a rollout
    correction's token weights are averaged in). Per-sequence loss = -min(s_i * A_i, clip(s_i, 1 - gspo_clip_low,
    1 + gspo_clip_high) * A_i), set on each of the sequence's tokens and reduced by aggregate_loss(agg):
    seq-mean-token-mean is the paper's mean over sequences, token-mean weighs each sequence by its length. The
    gradient of s_i reaches every token of the sequence, scaled by 1/|y_i|. The paper's ranges are 3e-4 and 4e-4:
    a mean of log-ratios moves far less than one token's. Stats (detached): clip_frac (the share of non-empty
    sequences whose clipped term is the smaller one), approx_kl (token k3, as for clip), ratio_mean (mean s_i).
    """
    log_ratio = torch.where(response_mask != 0, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    seq_log_ratio = masked_mean(log_ratio, response_mask, dim=-1)  # [B]
    ratio = torch.exp(seq_log_ratio)  # [B]
    seq_adv = masked_mean(advantages, response_mask, dim=-1)  # [B]
    unclipped = ratio * seq_adv  # [B]
    clipped = ratio.clamp(1.0 - gspo_clip_low, 1.0 + gspo_clip_high) * seq_adv  # [B]
    per_seq = -torch.minimum(unclipped, clipped)  # [B]
    loss = aggregate_loss(per_seq[:, None].expand_as(logprobs), response_mask, agg)
    with torch.no_grad():
        non_empty = (response_mask != 0).any(dim=-1)  # [B]
        stats = {
            "clip_frac": masked_mean((clipped < unclipped).to(ratio.dtype), non_empty),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), response_mask),
            "ratio_mean": masked_mean(ratio, non_empty),
        }
    return loss, stats


@register_policy_loss("cispo", options=("cispo_clip_high",))
def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    cispo_clip_high: float,
    agg: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: the token's importance weight clipped and held constant, times its log-probability (MiniMax 2025,
    arXiv:2506.13585).

    ratio = exp(logprobs - old_logprobs); per-token loss = -sg(min(ratio, 1 + cispo_clip_high)) * A * logprobs,
    reduced by aggregate_loss(agg) (the paper: token-mean). No token's gradient is dropped: a clipped ratio caps the
    token's weight instead of zeroing its gradient as clip does, and there is no lower bound (the paper sets
    eps_low^IS large and tunes only eps_high^IS). At ratio 1 the gradient equals clip's. Stats (detached):
    clip_frac (the share of response tokens whose weight was capped), approx_kl (k3, as for clip), ratio_mean.
    """
    keep = response_mask != 0
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    weight = ratio.detach().clamp(max=1.0 + cispo_clip_high)  # [B, T], a constant of the graph
    picked = torch.where(keep, logprobs, torch.zeros_like(logprobs))  # [B, T]: padding's log-probs never reach it
    loss = aggregate_loss(-weight * advantages * picked, response_mask, agg)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((ratio > 1.0 + cispo_clip_high).to(ratio.dtype), response_mask),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, stats


def kl_loss(
    logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, estimator: str, agg: str
) -> Tensor:
    """KL(policy || reference) as a loss term (as in GRPO; Shao et al. 2024, arXiv:2402.03300), reduced
    by aggregate_loss(agg). Pair it with k3 (or k2) for a low-variance, non-negative penalty."""
    return aggregate_loss(kl_estimate(logprobs, ref_logprobs, estimator), response_mask, agg)


def entropy_bonus(entropy: Tensor, response_mask: Tensor, agg: str) -> Tensor:
    """Aggregated per-token entropy [B, T] -> scalar; the caller subtracts coef * this from the loss
    (entropy regularisation as in PPO; Schulman et al. 2017, arXiv:1707.06347)."""
    return aggregate_loss(entropy, response_mask, agg)


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, clip: float, agg: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO (Schulman et al. 2017, arXiv:1707.06347), as in its reference code.

    per-token loss = 0.5 * max((v - R)^2, (clip(v, old - clip, old + clip) - R)^2), reduced by
    aggregate_loss(agg). Stats: vf_clip_frac, the fraction of response tokens where the clipped
    error is strictly larger (the clipped branch is the one in use).
    """
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    err_plain = (values - returns) ** 2  # [B, T]
    err_clipped = (v_clipped - returns) ** 2  # [B, T]
    loss = aggregate_loss(0.5 * torch.maximum(err_plain, err_clipped), response_mask, agg)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((err_clipped > err_plain).to(values.dtype), response_mask)}
    return loss, stats


# ----------------------------------------------------------------------- registered advantage estimators


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator may read. Rows are group-contiguous: prompt i's G samples are rows iG..iG+G-1."""

    scores: Tensor  # [B] one outcome score per completion
    response_mask: Tensor  # [B, T]
    group_size: int  # G
    values: Tensor | None = None  # [B, T] the critic's values at rollout time (estimators with critic=True)
    kl: Tensor | None = None  # [B, T] per-token KL(policy || reference) to charge as a reward penalty; None: none
    kl_coef: float = 0.0  # the penalty's weight


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: Tensor  # [B, T], 0 off the response mask
    returns: Tensor | None = None  # [B, T] the critic's regression targets (estimators with critic=True)


def _penalised_scores(inputs: AdvantageInputs) -> Tensor:
    """Sequence scores less the KL reward penalty summed over each response, [B]."""
    if inputs.kl is None or not inputs.kl_coef:
        return inputs.scores
    return inputs.scores - inputs.kl_coef * masked_sum(inputs.kl, inputs.response_mask, dim=1)  # [B]


@register_advantage("grpo", options=("normalize_std",), grouped=True)
def grpo(inputs: AdvantageInputs, *, normalize_std: bool) -> AdvantageOutput:
    """GRPO: each completion's score against its group's mean (and std; without it, Dr. GRPO), on every token."""
    seq = grpo_advantages(_penalised_scores(inputs), inputs.group_size, normalize_std)  # [B]
    return AdvantageOutput(broadcast_sequence_advantages(seq, inputs.response_mask))


@register_advantage("rloo", grouped=True)
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    """RLOO: each completion's score minus the mean score of the other G - 1 samples of its prompt.

    REINFORCE with a leave-one-out baseline (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!"; Ahmadian et al. 2024, arXiv:2402.14740). The baseline excludes the sample itself, so it is unbiased;
    equal to G / (G - 1) times the group-centred score. A group of one sample has no baseline: advantage 0.
    """
    g = inputs.group_size
    scores = _penalised_scores(inputs)
    if g < 1 or scores.numel() % g:
        raise ValueError(f"rloo: {scores.numel()} scores cannot be split into groups of {g}.")
    scores = scores if scores.is_floating_point() else scores.float()
    if g == 1:
        return AdvantageOutput(torch.zeros_like(inputs.response_mask, dtype=scores.dtype))
    groups = scores.reshape(-1, g)  # [B/G, G]
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (g - 1)  # [B/G, G]
    seq = (groups - others_mean).reshape(scores.shape)  # [B]
    return AdvantageOutput(broadcast_sequence_advantages(seq, inputs.response_mask))


@register_advantage("ppo", options=("gamma", "lam"), critic=True)
def ppo(inputs: AdvantageInputs, *, gamma: float, lam: float) -> AdvantageOutput:
    """PPO: GAE over token rewards (the score on the last token, a KL penalty on every token) against a critic."""
    if inputs.values is None:
        raise ValueError("ppo advantages need the critic's values (inputs.values)")
    mask = inputs.response_mask
    kl = inputs.kl if inputs.kl is not None else torch.zeros_like(mask)
    penalty = inputs.kl_coef if inputs.kl is not None else 0.0
    token_rewards = kl_penalised_rewards(inputs.scores, kl, mask, penalty)  # [B, T]
    adv, returns = gae_advantages(token_rewards, inputs.values, mask, gamma, lam)
    return AdvantageOutput(masked_whiten(adv, mask), returns)
