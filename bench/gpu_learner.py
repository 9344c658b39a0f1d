"""GPU learner benchmark: the real update (fp32 masters, bf16 compute, gradient checkpointing) on random-weight
models with Qwen2.5-0.5B, -1.5B and -3B shapes, at the countdown recipes' micro-batch and lengths.

    python bench/gpu_learner.py OUT_DIR [--shapes 0.5b,1.5b,3b] [--seqs 32] [--prompt 150] [--response 1024]
                                [--micro 8] [--updates 3]

Needs only torch and transformers (no vLLM, no Ray, no hub): each model is built from its config on the device,
saved once in bf16, and loaded by ``tinyzero.engine.learner.Learner`` exactly as a run loads it. Prints one JSON line per
shape: seconds per update (median), tokens/s through the learner, peak GPU memory, and the share of weights that
one update at lr 1e-6 moved. ``--shapes tiny`` runs on CPU in seconds (the test suite uses it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

# Qwen2.5 base models' shapes (config.json of each): hidden, intermediate, layers, heads, KV heads.
SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2),
    "1.5b": (1536, 8960, 28, 12, 2),
    "3b": (2048, 11008, 36, 16, 2),
    "tiny": (64, 128, 2, 2, 1),
}
VOCAB = {"tiny": 320}  # real shapes use Qwen2.5's 151,936


def build(shape: str, out: Path, device: str) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = Qwen2Config(vocab_size=VOCAB.get(shape, 151936), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=4096, tie_word_embeddings=True, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes on the host CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    return out


def batch(n: int, prompt: int, response: int, vocab: int, group: int = 8):
    from tinyzero import algos
    from tinyzero.engine.messages import TrainBatch, build_tokens

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt,), generator=gen).tolist() for _ in range(max(n // group, 1))]
    prompt_ids = [prompts[i // group % len(prompts)] for i in range(n)]
    response_ids = [torch.randint(0, vocab, (response,), generator=gen).tolist() for _ in range(n)]
    tokens = build_tokens(prompt_ids, response_ids, pad_id=0)
    scores = torch.arange(n, dtype=torch.float32) % 2  # half right, half wrong: every group has advantages
    adv = algos.grpo_advantages(scores, min(group, n))
    return TrainBatch(tokens=tokens, advantages=algos.broadcast_sequence_advantages(adv, tokens.response_mask))


def run_shape(shape: str, out: Path, args, device: str) -> dict:
    from tinyzero.config import AlgoConfig, OptimConfig
    from tinyzero.engine.learner import Learner

    path = build(shape, out / shape, device)
    compute = "bfloat16" if device == "cuda" else "float32"
    learner = Learner(path, AlgoConfig(), OptimConfig(lr=1e-6, micro_batch_size=args.micro), compute_dtype=compute,
                      device=device, gradient_checkpointing=True)
    train = batch(args.seqs, args.prompt, args.response, learner.policy.config.vocab_size)
    before = {n: p.detach().to("cpu", copy=True) for n, p in learner.policy.named_parameters()}  # off the GPU
    resident = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.updates):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        learner.update(train)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0:
            moved = sum(int((p.detach().cpu() != before[n]).sum()) for n, p in learner.policy.named_parameters())
            total = sum(p.numel() for p in learner.policy.parameters())
    del before
    seconds = statistics.median(times)
    result = {
        "shape": shape, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "params_b": round(sum(p.numel() for p in learner.policy.parameters()) / 1e9, 3),
        "compute_dtype": compute, "master_dtype": str(next(learner.policy.parameters()).dtype),
        "seqs": args.seqs, "micro_batch": args.micro, "prompt": args.prompt, "response": args.response,
        "s_per_update_median": round(seconds, 2), "updates": args.updates,
        "tokens_per_s": round(args.seqs * (args.prompt + args.response) / seconds),
        "moved_frac_after_one_update": round(moved / total, 4),
        "resident_gpu_gib_after_load": round(resident, 2) if resident is not None else None,
        "peak_gpu_gib_during_updates": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }
    del learner
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shapes", default="0.5b,1.5b,3b")
    parser.add_argument("--seqs", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=150)
    parser.add_argument("--response", type=int, default=1024)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for shape in args.shapes.split(","):
        results.append(run_shape(shape, args.out, args, device))
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
