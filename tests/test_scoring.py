"""Tests for reward scoring in-process and through a process pool (tinyzero.scoring: score_many, scoring_pool, Scorer).

The pool path runs for real: spawned workers score a batch of arithmetic completions, which must equal
in-process scoring element by element; a worker that dies must surface as BrokenProcessPool, not a hang.
"""

import os
import random
from concurrent.futures.process import BrokenProcessPool

import pytest

from tinyzero.envs import make_env
from tinyzero.scoring import PARALLEL_SCORING_MIN, score_many, scoring_pool


def _completions(env, n: int) -> tuple[list[str], list[dict]]:
    """n completions cycling through right, wrong, non-integer, unclosed and missing answers."""
    rng = random.Random(0)
    problems = [env.sample(rng) for _ in range(n)]
    forms = [
        lambda a: f"<think>easy</think> <answer>{a}</answer>",
        lambda a: f"<think>hmm</think> <answer>{a + 1}</answer>",
        lambda a: "<answer>twelve</answer>",
        lambda a: f"<answer>{a}",
        lambda a: f"The result is {a}.",
    ]
    texts = [forms[i % len(forms)](p["answer"]) for i, p in enumerate(problems)]
    return texts, problems


class _CrashingEnv:
    """Kills the worker process that scores it, as a segfaulting or OOM-killed reward would."""

    def reward(self, completion, problem):
        os._exit(3)


def test_pool_scoring_equals_in_process_and_does_not_fork():
    env = make_env("arithmetic")
    texts, problems = _completions(env, PARALLEL_SCORING_MIN + 37)  # not a multiple of the chunk size
    local = score_many(env, texts, problems)
    pool = scoring_pool()
    try:
        assert pool._mp_context.get_start_method() != "fork"
        pooled = score_many(env, texts, problems, pool)
    finally:
        pool.shutdown()
    assert len(pooled) == len(local) == len(texts)
    for i, (got, want) in enumerate(zip(pooled, local, strict=True)):
        assert got == want, f"completion {i}: pool {got} != in-process {want}"
    assert {r.reason for r in local} >= {"correct", "no_answer"} and len({r.score for r in local}) > 1


def test_dead_worker_raises_broken_pool():
    pool = scoring_pool(max_workers=1)
    try:
        with pytest.raises(BrokenProcessPool):
            score_many(_CrashingEnv(), ["x"] * 4, [{}] * 4, pool)
    finally:
        pool.shutdown()


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="3 completions but 2 problems"):
        score_many(make_env("arithmetic"), ["a", "b", "c"], [{}, {}])
