"""The rollout/learner mismatch on this machine: the engine's log-probs of its own samples against the learner's.

Run: .venv/bin/python bench/mismatch.py [--prompts 16] [--samples 8] [--max-new-tokens 64]

For each (engine, compute dtype) pair — vLLM and HF, float32 and bfloat16 — a fresh process loads the bundled
SmolLM2-135M into the engine and into a learner (fp32 master weights, the dtype as its autocast compute dtype, as
`model.compute_dtype` sets both in a run), samples the demo's batch (held-out arithmetic prompts, temperature 1),
and compares the log-probs the engine reported for its sampled tokens with the learner's for the same tokens:
the metrics the trainer logs as rollout/mismatch_* (docs/metrics.md). One process per pair, because vLLM holds
process-wide state; all pairs in one sitting, side by side, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = [("vllm", "float32"), ("vllm", "bfloat16"), ("hf", "float32"), ("hf", "bfloat16")]


def measure(backend: str, dtype: str, args) -> dict:
    """One pair, in this process: the mismatch metrics over every sampled token, and the seconds each side took."""
    import torch

    from tinyzero import algos
    from tinyzero.config import AlgoConfig, OptimConfig, load_config
    from tinyzero.data import sample_test
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.messages import build_tokens, pad_logprobs
    from tinyzero.engine.models import load_tokenizer, resolve_model
    from tinyzero.engine.rollout import RolloutWorker
    from tinyzero.envs import make_env, render_prompt

    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU worker makes this a no-op afterwards
    config = load_config("recipes/demo-cpu.yaml")
    env = make_env(config.env.name, config.env.options)
    model_path = resolve_model(config.model.name)
    tok = load_tokenizer(model_path)
    prompts = []
    for problem in sample_test(env, args.prompts, seed=123):
        text = tok.apply_chat_template(render_prompt(env, problem, "chat"), add_generation_prompt=True, tokenize=False)
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
    cache = Path(tempfile.mkdtemp(prefix="tinyzero-mismatch-"))
    worker = RolloutWorker(model_path, backend=backend, dtype=dtype, seed=0, max_model_len=1024, kv_cache_gib=1,
                           cache_dir=cache)
    worker.reseed(0)
    start = time.perf_counter()
    groups = worker.generate(prompts, n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0)
    rollout_s = time.perf_counter() - start
    worker.close()
    rows = [(prompt, c) for prompt, group in zip(prompts, groups, strict=True) for c in group]
    tokens = build_tokens([p for p, _ in rows], [c.token_ids for _, c in rows], tok.pad_token_id or 0)
    learner = Learner(model_path, AlgoConfig(), OptimConfig(micro_batch_size=32), compute_dtype=dtype)
    start = time.perf_counter()
    learner_lp = learner.logprobs(tokens)  # [N, T]
    learner_s = time.perf_counter() - start
    rollout_lp = pad_logprobs([c.logprobs for _, c in rows], tokens.response_mask.shape[1])
    stats = algos.rollout_mismatch(learner_lp, rollout_lp, tokens.response_mask)
    out = {key: float(value) for key, value in stats.items()}
    gap = (learner_lp - rollout_lp).abs() * tokens.response_mask
    out.update(backend=backend, dtype=dtype, tokens=int(tokens.response_mask.sum()), max_abs_log_ratio=float(gap.max()),
               rollout_s=rollout_s, learner_s=learner_s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(*args.one, args)), flush=True)
        return
    rows = []
    for backend, dtype in PAIRS:
        command = [sys.executable, __file__, "--one", backend, dtype, "--prompts", str(args.prompts), "--samples",
                   str(args.samples), "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]))
    print(f"\nrollout vs learner log-probs of the sampled tokens ({args.prompts} prompts x {args.samples} samples x "
          f"<= {args.max_new_tokens} tokens, SmolLM2-135M, temperature 1):")
    print(f"  {'engine':<6} {'dtype':<9} {'tokens':>6} {'mean k3 KL':>11} {'ratio min':>10} {'ratio max':>10} "
          f"{'|r-1|>0.1':>9} {'max |log r|':>11}")
    for r in rows:
        print(f"  {r['backend']:<6} {r['dtype']:<9} {r['tokens']:>6} {r['kl']:>11.2e} {r['ratio_min']:>10.4f} "
              f"{r['ratio_max']:>10.4f} {r['out_of_band_frac']:>9.2%} {r['max_abs_log_ratio']:>11.2e}")


if __name__ == "__main__":
    main()
