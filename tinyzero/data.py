"""Seeded train/test problem sets and their parquet files (the columns verl reads, plus the raw problem).

Splits: the test split is drawn first from its own seeded stream (duplicates dropped), then the train split
from another stream, skipping any problem whose key (e.g. countdown's sorted numbers and target) is in the
test split — so the two never share a problem, and the same seed always gives identical files.
Simplification: the train split may repeat a problem, as uniform sampling would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from tinyzero.envs import Environment, render_prompt
from tinyzero.errors import TinyZeroError

PROGRESS_MIN = 20_000  # show a progress bar from this many problems on


def split_rng(seed: int, split: str) -> random.Random:
    """An independent, reproducible stream per split (string seeds hash deterministically)."""
    return random.Random(f"tinyzero/{seed}/{split}")


def sample_test(env: Environment, size: int, seed: int, max_tries_factor: int = 50) -> list[dict]:
    """``size`` distinct problems for held-out evaluation.

    A task with fewer distinct problems than ``size`` is told apart from a slow one by a run of draws that bring
    nothing new: ``20 × found + 1,000`` in a row (after finding n of n + 1 problems, that many misses happen by
    chance with probability e^-20), so asking too much fails in milliseconds with the count, rather than after
    ``size × 50`` draws."""
    rng = split_rng(seed, "test")
    problems: list[dict] = []
    seen: set = set()
    misses = 0
    for _ in range(max(size * max_tries_factor, 1000)):
        if len(problems) >= size or misses > 20 * len(problems) + 1000:
            break
        problem = env.sample(rng)
        key = env.key(problem)
        if key in seen:
            misses += 1
            continue
        misses = 0
        seen.add(key)
        problems.append(problem)
    if len(problems) < size:
        raise TinyZeroError(
            f"{env.name} has only {len(problems):,} distinct problems with these options (no new one in the last "
            f"{misses:,} draws), fewer than the {size:,} asked for: ask for at most {len(problems):,} "
            "(eval.size, --size, --test-size) or widen the options"
        )
    return problems


def iter_train(env: Environment, seed: int, exclude: set, max_skips: int = 1_000_000,
               split: str = "train") -> Iterator[dict]:
    """An endless, reproducible stream of training problems, none of whose keys is in ``exclude``; ``split`` names
    the random stream (a curriculum's lower levels each have their own)."""
    rng = split_rng(seed, split)
    skips = 0
    while True:
        problem = env.sample(rng)
        if env.key(problem) in exclude:
            skips += 1
            if skips > max_skips:
                raise TinyZeroError(f"{env.name}: almost every problem is in the test split; widen the options")
            continue
        yield problem


def make_splits(env: Environment, train_size: int, test_size: int, seed: int, progress: bool = False):
    """(train, test) problem lists: disjoint by key, deterministic for a seed."""
    test = sample_test(env, test_size, seed)
    exclude = {env.key(p) for p in test}
    stream = iter_train(env, seed, exclude)
    iterator = range(train_size)
    if progress and train_size >= PROGRESS_MIN:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"{env.name} train", unit=" problems", mininterval=1.0)
    train = [next(stream) for _ in iterator]
    return train, test


def to_columns(env: Environment, problems: list[dict], split: str, template: str) -> dict[str, list]:
    """Columns verl reads (data_source, prompt as a chat list, ability, reward_model, extra_info) + problem."""
    prompts = []
    for problem in problems:
        rendered = render_prompt(env, problem, template)
        prompts.append(rendered if isinstance(rendered, list) else [{"role": "user", "content": rendered}])
    return {
        "data_source": [env.name] * len(problems),
        "prompt": prompts,
        "ability": [env.ability] * len(problems),
        "reward_model": [{"style": "rule", "ground_truth": env.ground_truth(p)} for p in problems],
        "extra_info": [{"split": split, "index": i, "template": template} for i in range(len(problems))],
        "problem": problems,
    }


def write_split(env: Environment, problems: list[dict], split: str, template: str, out: Path) -> Path:
    return write_columns(to_columns(env, problems, split, template), split, out)


def write_columns(columns: dict[str, list], split: str, out: Path) -> Path:
    """``to_columns``'s output as ``out/split.parquet``."""
    import datasets

    datasets.disable_progress_bars()
    path = out / f"{split}.parquet"
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return path
