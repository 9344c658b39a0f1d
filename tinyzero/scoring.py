"""Scoring completions with an environment's pure reward: in this process, or across a pool of spawned workers.

Rewards are cheap string parsing, so a batch below ``PARALLEL_SCORING_MIN`` completions is scored in-process;
bigger ones (evaluations with many samples, large steps) go to at most ``SCORING_WORKERS`` processes. Either way
the results are the same, in order. Simplification: the pool is sized once, by the machine's cores.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from tinyzero.rewards.result import RewardResult

PARALLEL_SCORING_MIN = 512  # below this many completions, scoring in-process beats a process pool
SCORING_WORKERS = 4  # at most this many reward processes: rewards are cheap string parsing


def scoring_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool for rewards whose workers are spawned, never forked.

    By the time a batch is big enough for the pool, the trainer holds Ray/gRPC and vLLM threads. fork copies
    the process with whatever locks those threads held at that instant, and a child can deadlock on one; a
    spawned worker starts a fresh interpreter and imports only what the pickled work needs: the env's module,
    not the trainer (which would pull in torch). A worker that dies (crash, OOM kill) breaks the pool: the
    pending `map` raises BrokenProcessPool instead of waiting forever.
    """
    workers = max_workers or max(1, min(SCORING_WORKERS, os.cpu_count() or 1))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def score_many(
    env, texts: list[str], problems: list[dict], pool: ProcessPoolExecutor | None = None
) -> list[RewardResult]:
    """Score completions in order: in this process, or across `pool`'s workers; the results are the same.

    The env's bound `reward` method is what travels (pickled with the env, once per chunk of 64), so an
    out-of-tree environment only needs to be importable by its module name. Worker errors are re-raised here.
    """
    if len(texts) != len(problems):
        raise ValueError(f"{len(texts)} completions but {len(problems)} problems")
    if pool is None:
        return [env.reward(t, p) for t, p in zip(texts, problems, strict=True)]
    return list(pool.map(env.reward, texts, problems, chunksize=64))


class Scorer:
    """An environment's reward over batches, with a pool started the first time a batch is big enough."""

    def __init__(self, env):
        self.env = env
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, texts: list[str], problems: list[dict]) -> list[RewardResult]:
        if len(texts) < PARALLEL_SCORING_MIN:
            return score_many(self.env, texts, problems)
        if self._pool is None:
            self._pool = scoring_pool()
        return score_many(self.env, texts, problems, self._pool)

    def close(self) -> None:
        if self._pool is not None:
            # After an error or Ctrl-C mid-scoring, drop the queued chunks rather than score them all first.
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
