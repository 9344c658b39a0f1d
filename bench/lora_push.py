"""LoRA's two pushes on this CPU, side by side (issue 28): what vLLM's own LoRA costs and what it keeps.

``--part speed`` (float32, SmolLM2-135M, the demo's batch: 16 arithmetic prompts x 8 samples x <= 64 tokens): the
engine started without LoRA and given merged weights, against the engine started with ``enable_lora`` and given the
adapters (rank 16 on every linear layer, as recipes/demo-cpu-lora.yaml) — seconds to generate a batch and to push,
bytes a push, medians of ``--repeats`` (the two engines run one after the other in this process, same seed).

``--part bf16`` (needs AVX-512-BF16 or AMX): the learner and vLLM both in bf16, the mean |engine - learner| log-prob
gap of fixed sequences before and after ``--updates`` updates at ``--lr`` (default the GPU recipes' 1e-5, LoRA
rank 64 with alpha 32 as countdown-3b-lora), for full weights, the adapter push and the merged push
(tests/test_bf16_push.py's measure, on a real model).

    .venv/bin/python bench/lora_push.py --part speed        # about 3 minutes on 2 cores
    .venv/bin/python bench/lora_push.py --part bf16         # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the bf16 measure of test_bf16_push

from machine import cpu_line  # noqa: E402

from tinyzero.config import AlgoConfig, LoraConfig, OptimConfig  # noqa: E402
from tinyzero.engine.learner import Learner  # noqa: E402
from tinyzero.engine.lora import engine_targets  # noqa: E402
from tinyzero.engine.models import load_tokenizer, resolve_model  # noqa: E402

DEMO_LORA = LoraConfig(rank=16, alpha=32.0)  # recipes/demo-cpu-lora.yaml


def demo_prompts(path: Path, count: int) -> list[list[int]]:
    """The CPU demo's first training prompts (2-digit addition, chat template), as token ids."""
    from tinyzero.analysis.evaluation import encode_prompt
    from tinyzero.data import iter_train
    from tinyzero.envs import make_env

    env = make_env("arithmetic", {"digits": 2, "ops": "+", "answer_format": "last_integer"})
    tokenizer, stream = load_tokenizer(path), iter_train(env, 0, set())
    return [encode_prompt(tokenizer, env, next(stream), "chat")[1] for _ in range(count)]


def speed(path: Path, push: str, prompts: list[list[int]], repeats: int) -> dict:
    """Median seconds to generate the batch and to push, and the bytes a push moves, for one push path."""
    from tinyzero.engine.rollout import RolloutWorker

    learner = Learner(path, AlgoConfig(), OptimConfig(), compute_dtype="float32", lora=DEMO_LORA, model_name="bench")
    with torch.no_grad():  # adapters as after training: B is zero at the start, and a zero update is free to merge
        for name, param in learner.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)
    adapters = push == "adapters"
    start = time.perf_counter()
    engine = RolloutWorker(path, backend="vllm", dtype="float32", max_model_len=2048, kv_cache_gib=1,
                           lora_rank=DEMO_LORA.rank if adapters else 0,
                           lora_targets=engine_targets(DEMO_LORA, path) if adapters else None)
    started = time.perf_counter() - start
    generate, sync, nbytes, tokens = [], [], 0, 0
    try:
        for i in range(repeats):
            start = time.perf_counter()
            nbytes = (engine.update_adapters(learner.adapter_push("float32")) if adapters
                      else engine.update_weights(learner.named_weights("float32")))
            sync.append(time.perf_counter() - start)
            engine.reseed(i)
            start = time.perf_counter()
            groups = engine.generate(prompts, n=8, max_new_tokens=64, temperature=1.0)
            generate.append(time.perf_counter() - start)
            tokens = sum(len(c.token_ids) for group in groups for c in group)
    finally:
        engine.close()
    return {"start_s": started, "generate_s": statistics.median(generate), "sync_s": statistics.median(sync),
            "bytes": nbytes, "tokens": tokens, "runs": generate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "bf16"], required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--updates", type=int, default=8)
    args = parser.parse_args()
    path = resolve_model(args.model)
    print(f"machine: {cpu_line()}; torch {torch.__version__} on {torch.get_num_threads()} threads, "
          f"kernels {torch.backends.cpu.get_cpu_capability()}")
    if args.part == "speed":
        prompts = demo_prompts(path, 16)
        rows = {push: speed(path, push, prompts, args.repeats) for push in ("merged", "adapters")}
        for push, row in rows.items():
            print(f"{push:9s} start {row['start_s']:6.1f} s | generate {row['generate_s']:6.2f} s (runs "
                  f"{', '.join(f'{s:.2f}' for s in row['runs'])}; {row['tokens']} tokens last) | push "
                  f"{row['sync_s']:.3f} s, {row['bytes'] / 1e6:.1f} MB")
        ratio = rows["adapters"]["generate_s"] / rows["merged"]["generate_s"]
        print(f"generation with vLLM's LoRA / without: {ratio:.2f}x")
        return
    from test_bf16_push import SKIP, gaps

    if SKIP:
        print(f"not measured: {SKIP}")
        return
    lora = LoraConfig(rank=64, alpha=32.0)  # recipes/countdown-3b-lora.yaml
    print(f"bf16, lr {args.lr:g}, {args.updates} updates, LoRA rank {lora.rank} alpha {lora.alpha:g}; 16 rows x 24 "
          "response tokens; mean |engine - learner| log-prob per token")
    for push in ("weights", "adapters", "merged"):
        start = time.perf_counter()
        before, after, moved = gaps(path, push, lr=args.lr, updates=args.updates, lora=lora, vocab=49_000)
        print(f"{push:9s} gap before {before:.2e} after {after:.2e} (grew {after - before:+.2e}); learner moved "
              f"{moved:.2e}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
