"""Cost of the aha analysis per rollout batch, against a CPU demo step (about 55 s for 128 responses).

Run: .venv/bin/python bench/aha.py [ROLLOUTS.jsonl.gz]
Without a file it times synthetic batches: the demo's shape (128 arithmetic replies of about 250 characters, with
their chat prompts) and a countdown shape (512 replies of 4,000 characters, about 1,024 tokens, full of
re-checking phrases and checks). With a run's rollouts file it times each recorded step's batch as the trainer
analyses it (prompt blanking included). Medians of 5 runs.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import defaultdict

from tinyzero.analysis.aha import DEFAULT_LEXICON, Tracker
from tinyzero.envs import make_env

DEMO_STEP_S = 55.0
REPEATS = 5


def median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_batch(env, texts, prompts, problems, correct) -> float:
    def run():
        tracker = Tracker(DEFAULT_LEXICON, env)
        tracker.rollout_metrics(1, tracker.analyse(texts, prompts, problems), correct)

    return median_seconds(run)


def synthetic(rng: random.Random) -> None:
    env = make_env("arithmetic", {"digits": 2, "ops": "+", "answer_format": "last_integer"})
    problems = [env.sample(rng) for _ in range(128)]
    prompts = [f"<|im_start|>user\n{env.task_text(p)}<|im_end|>\n<|im_start|>assistant\n" for p in problems]
    texts = [f"To find {p['a']} + {p['b']}, add the tens and the ones. {p['a']} + {p['b']} = {p['answer']}. "
             f"Wait, let me check: {p['answer']} - {p['b']} = {p['a']}. So the answer is {p['answer']}. " * 2
             for p in problems]
    report("demo shape: 128 x ~250 chars, arithmetic", time_batch(env, texts, prompts, problems, [True] * 128))
    env = make_env("countdown")
    problems = [env.sample(rng) for _ in range(512)]
    texts = []
    for p in problems:
        a, b = p["numbers"][:2]
        piece = f"Let me try {a} + {b} = {a + b}, not {p['target']}. Wait, alternatively {a} * {b} = {a * b}, too big. "
        texts.append((piece * (4000 // len(piece) + 1))[:4000])
    report("countdown shape: 512 x 4,000 chars", time_batch(env, texts, [env.task_text(p) for p in problems],
                                                            problems, [False] * 512))


def from_file(path: str) -> None:
    from pathlib import Path

    from tinyzero.analysis.aha_file import settings_for
    from tinyzero.analysis.transcripts import read_jsonl

    env = settings_for(Path(path)).env
    steps = defaultdict(list)
    for row in read_jsonl(path):
        steps[row.get("step")].append(row)
    costs = []
    for _, rows in sorted(steps.items()):
        costs.append(time_batch(env, [r["completion"] for r in rows], [r.get("prompt") for r in rows],
                                [r.get("problem") for r in rows], [bool(r.get("correct")) for r in rows]))
    report(f"{path}: {len(steps)} steps of {len(rows)} (median step)", statistics.median(costs))
    report(f"{path}: slowest step", max(costs))


def report(label: str, seconds: float) -> None:
    print(f"{label}: {1000 * seconds:.1f} ms a batch = {100 * seconds / DEMO_STEP_S:.3f}% of a {DEMO_STEP_S:.0f} s "
          "demo step")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        from_file(sys.argv[1])
    else:
        synthetic(random.Random(0))
