"""Verifiable task environments and their registry (installed as ``tinyzero.envs``).

The registry is an explicit dict of built-in environments. An out-of-tree task is named as
``package.module:ClassName`` and imported on demand — no discovery magic, no entry-point scanning.
``gym:TASK`` names a reasoning-gym task (the optional extra; ``tinyzero.envs.gym``), checked before that.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tinyzero.envs.arithmetic import Arithmetic
from tinyzero.envs.base import Environment, parse_options, render_prompt
from tinyzero.envs.countdown import Countdown
from tinyzero.errors import TinyZeroError

REGISTRY: dict[str, type] = {
    Countdown.name: Countdown,
    Arithmetic.name: Arithmetic,
}


def env_class(name: str) -> type:
    """The environment class for a registered name or a ``module:attr`` path."""
    if name.startswith("gym:"):
        from tinyzero.envs.gym import GymTask, check_task

        check_task(name[len("gym:"):])
        return GymTask
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise TinyZeroError(
            f"unknown environment {name!r}: use one of {', '.join(REGISTRY)}, gym:TASK or a 'module:Class' path"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TinyZeroError(f"cannot import {module_name!r} for environment {name!r} ({err}): "
                            "check the module is on PYTHONPATH") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise TinyZeroError(f"module {module_name!r} has no {attr!r}: check the name after ':' in {name!r}")
    return cls


def make_env(name: str, options: Mapping[str, Any] | None = None) -> Environment:
    """Build an environment by name with options checked against its Options dataclass."""
    if name.startswith("gym:"):
        from tinyzero.envs.gym import make_gym_env

        return make_gym_env(name, options)
    cls = env_class(name)
    missing = [a for a in ("name", "Options", "sample", "key", "task_text", "reward", "ground_truth")
               if not hasattr(cls, a)]
    if missing:
        raise TinyZeroError(f"environment {name!r} lacks {', '.join(missing)}: see 'Add a task in one file'")
    return cls(parse_options(cls.Options, options, cls.name))


__all__ = ["REGISTRY", "Environment", "env_class", "make_env", "render_prompt"]
