"""LM-head memory and time, before and after chunks are recomputed in backward (tinyzero/engine/forward.py).

Measures, on CPU, for a Qwen2.5-sized vocabulary (151,936) on a small body, the bytes the forward pass keeps for
backward and the peak of forward + backward, for the plain graph (``tests/reference_math.plain_sequence_logprobs``,
the code before the change) and the recomputed one, with and without an entropy gradient; and the median seconds
of forward + backward side by side. Allocations are counted with ``tests/memory_probe.py``.

    .venv/bin/python bench/lm_head_memory.py [--rows 4] [--response 128] [--chunk 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main(argv: list[str]) -> list[dict]:
    import torch
    from memory_probe import measure
    from reference_math import plain_sequence_logprobs
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tinyzero.engine import forward, lm_head
    from tinyzero.engine.messages import build_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    forward.HEAD_CHUNK = args.chunk
    lm_head.HEAD_KEEP_BYTES = 0  # recompute whatever the size: this bench compares the recompute with the plain graph
    torch.manual_seed(0)
    vocab = 151_936
    config = Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config).train()
    tokens = build_tokens([[1 + i] * 16 for i in range(args.rows)],
                          [[(7 * i + j) % vocab for j in range(args.response)] for i in range(args.rows)], pad_id=0)
    k = int(tokens.response_mask.sum())

    def step(fn, entropy_grad):
        logprobs, entropy = fn(model, tokens, with_entropy=True, entropy_grad=entropy_grad)
        (logprobs.sum() + (entropy.sum() if entropy_grad else 0.0)).backward()
        model.zero_grad(set_to_none=True)

    results = []
    for entropy_grad in (False, True):
        for name, fn in (("plain", plain_sequence_logprobs), ("recomputed", forward.sequence_logprobs)):
            kept = measure(fn, model, tokens, with_entropy=True, entropy_grad=entropy_grad).kept
            peak = measure(step, fn, entropy_grad, existing=tuple(model.parameters())).peak
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step(fn, entropy_grad)
                seconds.append(time.perf_counter() - start)
            row = {"graph": name, "entropy_grad": entropy_grad, "response_tokens": k, "chunk": args.chunk,
                   "kept_MB": round(kept / 1e6, 1), "lm_head_KxVx4_MB": round(k * vocab * 4 / 1e6, 1),
                   "peak_MB": round(peak / 1e6, 1), "median_s": round(statistics.median(seconds), 3)}
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
