"""Scoring completions with an environment's pure reward: in this process, or across a pool of spawned workers.

Rewards are cheap string parsing, so a batch below ``PARALLEL_SCORING_MIN`` completions is scored in-process;
bigger ones (evaluations with many samples, large steps) go to at most ``SCORING_WORKERS`` processes. Either way
the results are the same, in order. Simplification: the pool is sized once, by the machine's cores.

Control runs (``reward.control``): ``control_scores`` replaces the verifier's scores of a training batch by scores
that carry no information about which completion was right, so a run can show what its reward did beyond what any
reward of the same size would do. ``correct`` (accuracy) and held-out evaluation always keep the verifier's verdict.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from tinyzero.rewards.result import RewardResult

PARALLEL_SCORING_MIN = 512  # below this many completions, scoring in-process beats a process pool
SCORING_WORKERS = 4  # at most this many reward processes: rewards are cheap string parsing
# What each reward.control gives the learner, in words for the run log and the docs.
CONTROLS = {
    "none": "the verifier's scores",
    "shuffled": "the batch's scores shuffled across its completions",
    "random": "score 1 with probability equal to the batch's success rate, else 0",
}


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


def control_scores(scores: Sequence[float], correct: Sequence[bool], control: str, seed: int, step: int
                   ) -> list[float]:
    """The scores a run's learner gets for one training batch under ``reward.control``.

    - ``none``: the verifier's ``scores`` unchanged.
    - ``shuffled``: the same scores in an order drawn from (``seed``, ``step``) alone. They are sorted before the
      shuffle, so the result depends on the batch's multiset of scores, never on which completion earned which.
    - ``random``: 1.0 with probability equal to the batch's success rate (its share of ``correct``), else 0.0,
      drawn from (``seed``, ``step``) alone: only that one number of the verdicts reaches the learner.

    Seeded by its own string, so the draws are the same in every process and on resume, and share no stream with
    sampling.
    """
    if control == "none":
        return [float(s) for s in scores]
    if len(scores) != len(correct):
        raise ValueError(f"{len(scores)} scores but {len(correct)} verdicts")
    rng = random.Random(f"tinyzero-control/{control}/{seed}/{step}")
    if control == "shuffled":
        given = sorted(float(s) for s in scores)
        rng.shuffle(given)
        return given
    if control == "random":
        rate = sum(map(bool, correct)) / len(correct) if correct else 0.0
        return [1.0 if rng.random() < rate else 0.0 for _ in scores]
    raise ValueError(f"unknown reward control {control!r}: use one of {', '.join(CONTROLS)}")
