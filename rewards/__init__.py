"""Pure, deterministic reward functions for verifiable tasks (installed as ``tinyzero.rewards``).

A reward is a pure function of ``(completion, problem)`` returning a :class:`RewardResult`:
``score`` (what the learner optimises), ``correct`` (what accuracy and pass@k count), ``components``
(logged) and ``reason`` (a machine-readable word saying why). Rewards never print, never use
randomness or I/O, never evaluate model output as code, and never raise on any string.
"""

from tinyzero.rewards.answer import extract_answer, strip_ascii_ws
from tinyzero.rewards.arithmetic import (
    arithmetic_reward,
    last_integer_answer,
    last_integer_reward,
    tagged_integer_answer,
)
from tinyzero.rewards.countdown import countdown_answer, countdown_reward
from tinyzero.rewards.result import RewardResult

__all__ = [
    "RewardResult",
    "arithmetic_reward",
    "countdown_answer",
    "countdown_reward",
    "extract_answer",
    "last_integer_answer",
    "last_integer_reward",
    "strip_ascii_ws",
    "tagged_integer_answer",
]
