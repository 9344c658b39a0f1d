"""The learner's update at the demo's batch, LM-head chunks kept against recomputed, side by side in one run.

Run: .venv/bin/python bench/learner_update.py [--rows 64] [--repeats 4]

Two learners of the bundled SmolLM2-135M with the demo recipe's settings (GRPO, no KL, micro-batches of 32 rows)
start from the same weights and take the same updates, alternating: one with ``HEAD_KEEP_BYTES`` as shipped (the
demo's LM-head chunks fit it, so they are kept for backward), one with it at 0 (every chunk recomputed in backward,
as before issue 32). The batch: 16 of the demo's prompts x 8 samples, random response tokens of 20-64 tokens (the
demo's range: 64 is the cap, about 40-55 the mean), ``--rows`` of them in groups with mixed rewards (the learner
skips the rest exactly; the demo trains 16 at step 1 and about 100 at step 12). Prints the median seconds of an update
for each, their ratio, and whether the two learners' weights are still equal to the bit after every update (the
recompute runs the same operations on the same inputs, so they must be). Say the CPU (``lscpu``) with any figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows in groups with mixed rewards (multiple of 8)")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    import torch
    from step_time import demo_prompts

    from tinyzero import algos
    from tinyzero.config import load_config
    from tinyzero.engine import lm_head
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.messages import TrainBatch, build_tokens

    config = load_config("recipes/demo-cpu.yaml")
    torch.set_num_threads(config.run.threads)
    model_path, prompts = demo_prompts(16)
    groups, size = 16, 8
    mixed = max(1, min(groups, args.rows // size))
    gen = torch.Generator().manual_seed(0)
    prompt_ids, responses, scores = [], [], []
    for g in range(groups):
        for s in range(size):
            length = int(torch.randint(20, 65, (1,), generator=gen))
            prompt_ids.append(prompts[g])
            responses.append(torch.randint(100, 40_000, (length,), generator=gen).tolist())
            scores.append(float(g < mixed and s % 3 == 0))  # a mixed group: some right, some wrong
    tokens = build_tokens(prompt_ids, responses, pad_id=0)
    advantages = algos.broadcast_sequence_advantages(algos.grpo_advantages(torch.tensor(scores), size),
                                                     tokens.response_mask)
    batch = TrainBatch(tokens=tokens, advantages=advantages)

    def learner() -> Learner:
        return Learner(model_path, config.algo, config.optim, device="cpu", compute_dtype="float32", seed=0)

    runs = {"kept": learner(), "recomputed": learner()}
    budgets = {"kept": lm_head.HEAD_KEEP_BYTES, "recomputed": 0}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    equal = True
    for _ in range(args.repeats):
        for name, run in runs.items():
            lm_head.HEAD_KEEP_BYTES = budgets[name]
            start = time.perf_counter()
            run.update(batch)
            seconds[name].append(time.perf_counter() - start)
        lm_head.HEAD_KEEP_BYTES = budgets["kept"]
        equal = equal and all(torch.equal(a, b) for a, b in zip(runs["kept"].policy.parameters(),
                                                                 runs["recomputed"].policy.parameters(), strict=True))
    trained = int((advantages != 0).any(dim=1).sum())
    print(f"learner update, {trained} rows trained of {len(responses)}, micro-batches of "
          f"{config.optim.micro_batch_size}, {args.repeats} updates each, alternating:")
    for name, values in seconds.items():
        print(f"  LM-head chunks {name:<10}  median {statistics.median(values):6.2f} s   "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(seconds["recomputed"]) / statistics.median(seconds["kept"])
    print(f"  recomputed / kept: {ratio:.3f}x;  weights equal to the bit after every update: {equal}")
    if not equal:
        raise SystemExit("the two learners' weights differ: keeping the chunks changed the update")


if __name__ == "__main__":
    main()
