"""Per-phase seconds per training step, and vLLM vs HF rollout throughput, on the bundled SmolLM2-135M.

Run: make bench   (or .venv/bin/python bench/step_time.py [--steps 6] [--prompts 8] [--samples 8])

Part 1 trains the demo recipe for a few steps at the benchmark batch (8 prompts x 8 samples x <= 64 new
tokens by default) and reports the median seconds of each phase; the first step is excluded from the
medians (warm-up). Part 2 generates the same batch with the vLLM backend and the HF backend, alternating,
and reports tokens/s of each side by side (medians of the repeats) and their ratio.
Figures are medians, measured in one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def phase_medians(metrics: list[dict]) -> dict[str, float]:
    keys = sorted({k for m in metrics for k in m if k.startswith("time/")})
    return {k: statistics.median(m.get(k, 0.0) for m in metrics) for k in keys}


def bench_steps(args, out: Path) -> dict:
    from tinyzero.trainer import train

    overrides = [
        f"run.out_dir={out}", "run.name=bench", f"run.steps={args.steps}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "eval.every=0", "eval.size=8",
        "checkpoint.every=0", "log.tensorboard=false",
    ]
    train("recipes/demo-cpu.yaml", overrides)
    metrics = [json.loads(line) for line in (out / "bench" / "metrics.jsonl").read_text().splitlines()]
    return phase_medians(metrics[1:])  # step 1 warms up allocators and caches


def bench_backends(args, prompts: list[list[int]], model_path: Path, out: Path) -> dict:
    from tinyzero.engine.rollout import RolloutWorker

    results: dict[str, list[float]] = {"vllm": [], "hf": []}
    workers = {name: RolloutWorker(model_path, backend=name, dtype="float32", seed=0, max_model_len=2048,
                                   kv_cache_gib=2, cache_dir=out / "cache") for name in results}
    for _ in range(args.repeats):
        for name, worker in workers.items():
            worker.reseed(0)
            start = time.perf_counter()
            groups = worker.generate(prompts, n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for g in groups for c in g)
            results[name].append(tokens / seconds)
    for worker in workers.values():
        worker.close()
    return {name: statistics.median(values) for name, values in results.items()}


def demo_prompts(count: int) -> tuple[Path, list[list[int]]]:
    """The bundled model's folder, and the token ids of ``count`` of the demo's held-out prompts (seed 123) in its
    chat template: the benchmarks' batch (also bench/profile_rollout.py's)."""
    from tinyzero.config import load_config
    from tinyzero.data import sample_test
    from tinyzero.engine.models import load_tokenizer, resolve_model
    from tinyzero.envs import make_env, render_prompt

    config = load_config("recipes/demo-cpu.yaml")
    env = make_env(config.env.name, config.env.options)
    model_path = resolve_model(config.model.name)
    tok = load_tokenizer(model_path)
    prompts = []
    for problem in sample_test(env, count, seed=123):
        text = tok.apply_chat_template(render_prompt(env, problem, "chat"), add_generation_prompt=True, tokenize=False)
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
    return model_path, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true", help="only compare the rollout backends")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tinyzero-bench-"))
    if not args.skip_steps:
        phases = bench_steps(args, out)
        print(f"\nper-phase seconds per step (median of steps 2..{args.steps}; "
              f"{args.prompts} prompts x {args.samples} samples x <= {args.max_new_tokens} tokens):")
        for key, value in phases.items():
            print(f"  {key:<20} {value:7.2f}")
    model_path, prompts = demo_prompts(args.prompts)
    speeds = bench_backends(args, prompts, model_path, out)
    print(f"\nrollout tokens/s, same model and batch, median of {args.repeats} alternating runs:")
    print(f"  vllm {speeds['vllm']:8.0f}   hf {speeds['hf']:8.0f}   ratio {speeds['vllm'] / speeds['hf']:.2f}x")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of this process: {peak_gib:.1f} GiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
