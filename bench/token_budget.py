"""The learner's tokens/s with fixed micro-batches against token-budget micro-batches, on a countdown-like spread.

Run: .venv/bin/python bench/token_budget.py [--model smollm2-135m] [--repeats 3] [--scale 4]

One batch (8 prompts x 4 samples) of random token ids: prompts of 40..60 tokens, responses log-uniform in
20..1024 tokens divided by ``--scale`` (4 by default: 5..256, so a CPU update takes seconds, not minutes) —
countdown's answers range from a short equation to a long search. Advantages are non-zero everywhere (no row is
skipped). Two learners of the same model update on it one after the other, alternating, ``--repeats`` times each:
fixed ``optim.micro_batch_size`` rows, and ``optim.max_tokens_per_micro_batch`` set to the same worst case
(micro_batch_size x (longest prompt + longest possible response)), so both bound a micro-batch's memory alike.
tokens/s counts the prompt and response tokens the rows really hold (not padding), per second of
``Learner.update``; the medians of the repeats are printed, with the padded tokens each side computed.
Measured in one run: the machine is shared and noisy. Quote ``lscpu``'s model and flags beside the figures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from machine import cpu_line  # bench/machine.py: run as a script, bench/ is on sys.path


def countdown_like(scale: int, prompts: int = 8, samples: int = 4, seed: int = 0):
    from tinyzero import algos
    from tinyzero.engine.messages import TrainBatch, build_tokens

    rng = torch.Generator().manual_seed(seed)
    prompt_ids, response_ids = [], []
    low, high = 20 / scale, 1024 / scale
    for _ in range(prompts):
        prompt = torch.randint(100, 10_000, (int(torch.randint(40, 61, (1,), generator=rng)),), generator=rng)
        for _ in range(samples):
            length = round(math.exp(math.log(low) + (math.log(high) - math.log(low)) * float(torch.rand(1, generator=rng))))
            prompt_ids.append(prompt.tolist())
            response_ids.append(torch.randint(100, 10_000, (length,), generator=rng).tolist())
    tokens = build_tokens(prompt_ids, response_ids, pad_id=0, response_width=int(high))
    scores = torch.randn(len(prompt_ids), generator=rng)  # distinct scores: every group has non-zero advantages
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, samples), tokens.response_mask)
    return TrainBatch(tokens=tokens, advantages=adv), int(high)


def padded_tokens(learner, batch) -> int:
    """Tokens the micro-batches of one update compute, padding included (rows x trimmed width, summed)."""
    total = 0
    for part, _, _ in learner._weighted_parts(batch, torch.arange(len(batch.tokens)), 1.0):
        total += part.tokens.input_ids.numel()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=4, help="divide countdown's 20..1024 response lengths by this")
    parser.add_argument("--micro", type=int, default=8, help="fixed micro-batch rows")
    args = parser.parse_args()

    from tinyzero.config import AlgoConfig, OptimConfig
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.models import resolve_model

    batch, max_response = countdown_like(args.scale)
    prompt_width = batch.tokens.prompt_width
    budget = args.micro * (prompt_width + max_response)
    real = int(batch.tokens.attention_mask.sum())
    path = resolve_model(args.model)
    sides = {
        f"fixed {args.micro} rows": OptimConfig(lr=1e-7, micro_batch_size=args.micro),
        f"budget {budget} tokens": OptimConfig(lr=1e-7, micro_batch_size=args.micro, max_tokens_per_micro_batch=budget),
    }
    learners = {name: Learner(path, AlgoConfig(), optim, compute_dtype="float32", device="cpu", seed=0)
                for name, optim in sides.items()}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for learner in learners.values():  # warm-up: allocators and caches, not counted
        learner.update(batch)
    for _ in range(args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.update(batch)
            seconds[name].append(time.perf_counter() - start)
    lengths = batch.tokens.response_mask.sum(dim=1)
    print(f"CPU: {cpu_line()}; torch threads {torch.get_num_threads()}")
    print(f"model {args.model} fp32; {len(lengths)} rows, prompts {prompt_width} wide at most, responses "
          f"{int(lengths.min())}..{int(lengths.max())} tokens (mean {float(lengths.mean()):.0f}); "
          f"{real} real tokens")
    print(f"learner update, median of {args.repeats} alternating repeats:")
    medians = {}
    for name, learner in learners.items():
        medians[name] = statistics.median(seconds[name])
        parts = len(learner._my_micro_batches(batch, torch.arange(len(batch.tokens))))
        print(f"  {name:<22} {medians[name]:7.2f} s  {real / medians[name]:7.0f} tokens/s  {parts} micro-batches, "
              f"{padded_tokens(learner, batch)} padded tokens computed  (runs: "
              f"{', '.join(f'{s:.2f}' for s in seconds[name])})")
    fixed, packed = medians.values()
    print(f"  speed-up of the budget: {fixed / packed:.2f}x")


if __name__ == "__main__":
    main()
