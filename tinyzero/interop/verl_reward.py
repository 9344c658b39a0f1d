"""The reward side of ``tinyzero export verl``: one verl completion scored by tinyzero's own reward.

The module that ``tinyzero export verl`` writes (``reward.py``) holds only its task table and calls :func:`score`;
verl loads that module through ``reward.custom_reward_function.path/.name``. This file imports nothing beyond the
standard library and ``tinyzero.envs`` / ``tinyzero.rewards`` (themselves stdlib-only), so tinyzero installs into
verl's own environment with ``pip install --no-deps`` and pulls in none of the kit's pinned dependencies.

Simplifications: the problem handed to the reward is the row's ``reward_model.ground_truth`` (an environment's
``ground_truth`` holds everything its reward reads, as the Environment protocol requires); verl passes no other
column to a reward. Environments are built once per process and data source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinyzero.envs import make_env
from tinyzero.errors import TinyZeroError
from tinyzero.rewards.result import RewardResult

_ENVS: dict[tuple[str, str], Any] = {}


def plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars (which a dataset loader may hand back) turned into Python ones."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return plain(value.tolist())
    return value


def verdict(result: RewardResult) -> dict[str, float]:
    """What verl's reward managers expect: ``score`` (the reward), then numbers they log per key.

    ``acc`` is our ``correct`` as 0.0/1.0 (verl's validation reports the mean of ``acc`` as its core metric); the
    components keep their names. Every value is a float, so verl can average each key over a batch."""
    out = {name: float(value) for name, value in result.components.items()}
    out["score"] = float(result.score)
    out["acc"] = 1.0 if result.correct else 0.0
    return out


def _env(tasks: Mapping[str, Mapping], data_source: str):
    task = tasks.get(data_source)
    if task is None:
        raise ValueError(f"tinyzero reward: data_source {data_source!r} is not in this export (it has "
                         f"{', '.join(map(repr, tasks)) or 'none'}): export the recipe whose data this is")
    key = (data_source, repr(sorted(task.get("options", {}).items())))
    if key not in _ENVS:
        try:
            _ENVS[key] = make_env(task["env"], task.get("options", {}))
        except TinyZeroError as err:
            raise ValueError(f"tinyzero reward: {err}") from None
    return _ENVS[key]


def score(tasks: Mapping[str, Mapping], data_source: Any, solution_str: str, ground_truth: Any) -> dict[str, float]:
    """Score ``solution_str`` for the task named ``data_source`` with the export's options (see :func:`verdict`)."""
    env = _env(tasks, str(data_source))
    problem = plain(ground_truth)
    if not isinstance(problem, dict):
        raise ValueError(f"tinyzero reward: ground_truth for {data_source!r} must be an object, got {problem!r}")
    try:
        return verdict(env.reward(solution_str, problem))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"tinyzero reward: malformed ground_truth for {data_source!r} ({err})") from None
