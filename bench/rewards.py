"""Reward throughput on ordinary completions and the time of hostile cases (medians of repeated runs).

Run: .venv/bin/python bench/rewards.py
"""

from __future__ import annotations

import random
import statistics
import time

from tinyzero.envs import make_env
from tinyzero.rewards import arithmetic_reward, countdown_reward

REPEATS = 5


def median_seconds(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ordinary_completions(n: int = 20_000) -> list[tuple[str, dict]]:
    env = make_env("countdown")
    rng = random.Random(0)
    items = []
    for i in range(n):
        p = env.sample(rng)
        body = p["solution"] if i % 2 else p["solution"].replace("+", "-", 1)
        thinking = "Let me try combining the numbers. " * 8
        items.append((f"{thinking}</think>\n<answer>{body}</answer>", p))
    return items


def main() -> None:
    items = ordinary_completions()
    t = median_seconds(lambda: [countdown_reward(c, p) for c, p in items])
    print(f"countdown, ordinary completions: {len(items) / t:,.0f} completions/s (median of {REPEATS})")
    P = {"numbers": [3, 5, 7], "target": 22}
    A = {"answer": 47}
    hostile = {
        "99**98**97": ("<answer>99**98**97</answer>", {"numbers": [99, 98, 97], "target": 1}),
        "1 MB of '<answer>'": ("<answer>" * 131_072 + "</answer>", P),
        "1 MB of '</answer>'": ("</answer>" * 116_508, P),
        "1 MB inside one tag pair": ("<answer>" + "(" * 1_000_000 + "</answer>", P),
        "1,000 chars: 300-deep parens": ("<answer>" + "(" * 300 + "3*5+7" + ")" * 300 + "</answer>", P),
        "1,000 chars: 499 numbers": ("<answer>" + "1+" * 499 + "1</answer>", {"numbers": [1] * 500, "target": 500}),
        "1,000 chars: products of 99": ("<answer>" + "99*" * 249 + "99</answer>", {"numbers": [99] * 250, "target": 1}),
        "60k answer pairs (1 MB)": (("<answer>3*5+7</answer>") * 45_000, P),
        "arithmetic: 1 MB digits": ("<answer>" + "9" * 1_000_000 + "</answer>", A),
    }
    slowest = ("", 0.0)
    for name, (completion, problem) in hostile.items():
        reward = arithmetic_reward if "answer" in problem else countdown_reward
        t = median_seconds(lambda c=completion, p=problem, r=reward: r(c, p))
        print(f"hostile {name:<32} {t * 1000:8.3f} ms  ({len(completion):,} chars)")
        slowest = max(slowest, (name, t), key=lambda x: x[1])
    print(f"slowest hostile case: {slowest[0]} at {slowest[1] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
