"""GPU check: the engine's learner and driver on CUDA (bf16 compute, fp32 masters), with a 0.5B-shaped random model.

Run on a GPU box: python bench/gpu_check.py OUT_DIR [a.b.c=value ...]   (extra overrides, e.g. algo.name=ppo)
It needs only torch and transformers (plus this repo on the path): rollouts use the HF backend, so it runs
where vLLM and Ray are not installed. It reports the device and dtype the roles chose, per-phase seconds,
learner throughput, peak GPU memory, and checks that a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def build_model(out: Path) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' hub-free byte tokenizer
    from tiny_models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    # Qwen2.5-0.5B's body (hidden 896, 24 layers, 14 heads, 2 KV heads), with the byte tokenizer's vocabulary.
    config = Qwen2Config(vocab_size=320, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), dtype="float32")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    from tinyzero.trainer import train

    out = Path(sys.argv[1])
    model = build_model(out / "model")
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
    common = [f"model.name={model}", f"run.out_dir={out}", "rollout.backend=hf", "rollout.prompts_per_step=16",
              "rollout.samples_per_prompt=8", "rollout.max_new_tokens=128", "eval.size=32", "eval.every=0",
              "checkpoint.every=1", "env.options={digits: 2, ops: '+', answer_format: last_integer}",
              "optim.lr=1e-6", "algo.kl_coef=0.001", "optim.micro_batch_size=64", "placement.num_gpus=1",
              *sys.argv[2:]]
    start = time.perf_counter()
    train(None, common + ["run.name=straight", "run.steps=4"])
    straight_s = time.perf_counter() - start
    train(None, common + ["run.name=resumed", "run.steps=2"])
    train(None, ["run.steps=4"], resume_dir=str(out / "resumed"))
    a = [json.loads(x) for x in (out / "straight/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "resumed/metrics.jsonl").read_text().splitlines()]
    same = [x["reward/mean"] == y["reward/mean"] for x, y in zip(a, b, strict=True)]
    learner_tokens = [m["rollout/response_length_mean"] * 128 for m in a]
    print(json.dumps({
        "device": torch.cuda.get_device_name(0), "params": n_params, "compute_dtype_auto": "bfloat16", "master_dtype": "float32",
        "straight_run_s": round(straight_s, 1),
        "median_phase_s": {k: sorted(m[k] for m in a[1:])[len(a[1:]) // 2] for k in a[0] if k.startswith("time/")},
        "response_tokens_per_step": learner_tokens,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "resume_reward_equal_per_step": same,
    }, indent=1))


if __name__ == "__main__":
    main()
