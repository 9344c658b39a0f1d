"""The environment Protocol, shared prompt templates and option handling.

An environment is a small object that samples a problem from a seeded ``random.Random``, writes the task
as text, names its ability, and scores a completion with a pure reward function. Problems are plain
JSON-able dicts so they can be stored in parquet/JSONL and handed back to the reward unchanged.

Optional: ``answer(completion, problem) -> str | None``, the final answer the reward reads, normalised so that
equal answers are equal strings (None when the reward finds none). ``tinyzero eval`` votes over it (maj@k); an
environment without it gets every other metric. It must use the reward's own parser, never a second one.

Templates:
- ``base``: plain text for base models — a User/Assistant preamble, the task, and an assistant prefill
  that opens ``<think>`` so the model continues the reasoning;
- ``chat``: a list of chat messages; the tokenizer's own chat template renders it.
"""

from __future__ import annotations

import dataclasses
import random
import typing
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from tinyzero.errors import TinyZeroError
from tinyzero.fields import build, field_helps, short, type_name
from tinyzero.rewards.result import RewardResult

TEMPLATES = ("base", "chat")

BASE_PREAMBLE = (
    "A conversation between User and Assistant. The User gives a task; the Assistant first reasons "
    "about it step by step inside <think> </think> and then states the final result."
)
BASE_PREFILL = "Assistant: Let me work through this step by step.\n<think>"


@runtime_checkable
class Environment(Protocol):
    """What the engine needs from a verifiable task."""

    name: ClassVar[str]
    ability: ClassVar[str]
    Options: ClassVar[type]  # a frozen dataclass; one docstring line per field in its class docstring

    options: Any

    def sample(self, rng: random.Random) -> dict:
        """One problem (a JSON-able dict) drawn from ``rng``; deterministic given the rng state."""
        ...

    def key(self, problem: Mapping) -> Hashable:
        """Identity of a problem: train and test splits share no key."""
        ...

    def task_text(self, problem: Mapping) -> str:
        """The user's message: the task and the answer format, never the solution."""
        ...

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        """Score a completion (pure; never raises on any completion string)."""
        ...

    def ground_truth(self, problem: Mapping) -> dict:
        """What a reward needs to score (stored in the dataset's ``reward_model.ground_truth``)."""
        ...


def has_answer(env: Environment) -> bool:
    """Whether the environment exposes the optional ``answer`` method that majority voting needs."""
    return callable(getattr(env, "answer", None))


# Optional hook, not part of the Protocol (an environment without it is still an Environment):
#
#     def verification_checks(self, text: str, problem: Mapping) -> tinyzero.rewards.checks.Checks
#
# Task-grounded self-verification in a completion: the spans where the text checks a candidate answer against
# the task, and how many distinct candidates it tried. The ``aha/verification_*`` metrics use it
# (docs/metrics.md); without it only the lexical ``aha/reflection_*`` metrics are computed. Same rules as a
# reward: pure, bounded, never evaluates the text as code.


# Optional hook, not part of the Protocol:
#
#     def levels(self) -> list[dict]
#
# The task's difficulty levels for a curriculum (``data.curriculum``), easiest first: each a mapping of option
# overrides, the last one the environment's own options (the target, where held-out evaluation stays). A task without
# it trains at its own options only; the pass-rate selection of a curriculum works either way.


def levels(env: Environment) -> list[dict]:
    """The environment's difficulty levels (option overrides, easiest first; the last is its own difficulty), or
    ``[{}]`` for a task that declares none; a malformed declaration is one sentence naming the task."""
    declared = getattr(env, "levels", None)
    if not callable(declared):
        return [{}]
    found = declared()
    if not isinstance(found, list) or not found or not all(isinstance(level, Mapping) for level in found):
        raise TinyZeroError(f"{env.name}.levels() must return a non-empty list of option mappings, easiest first")
    own = dataclasses.asdict(env.options) if dataclasses.is_dataclass(env.options) else {}
    last = dict(found[-1])
    if any(own.get(key) != value for key, value in last.items()):
        raise TinyZeroError(f"{env.name}.levels() must end at the task's own options (the held-out difficulty); its "
                            f"last level sets {short(last)}")
    return [dict(level) for level in found]


def render_prompt(env: Environment, problem: Mapping, template: str) -> str | list[dict[str, str]]:
    """The prompt for ``template``: a string for ``base``, chat messages for ``chat``."""
    text = env.task_text(problem)
    if template == "base":
        return f"{BASE_PREAMBLE}\nUser: {text}\n{BASE_PREFILL}"
    if template == "chat":
        return [{"role": "user", "content": text}]
    raise TinyZeroError(f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)}")


def parse_options(options_cls: type, values: Mapping[str, Any] | None, env_name: str) -> Any:
    """Build an options dataclass from a mapping, rejecting unknown keys and wrong types by name (the coercer and
    field constraints config sections use: tinyzero/fields.py)."""

    def unknown(dotted: str, valid: list[str]) -> str:
        return f"unknown option {dotted}: {env_name} accepts {', '.join(valid) or 'no options'}"

    try:
        return build(options_cls, dict(values or {}), f"{env_name}.", unknown=unknown)
    except ValueError as err:  # the dataclass's own range checks
        raise TinyZeroError(f"bad options for {env_name}: {err}") from None


def describe_options(options_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) per option, help read from the ``name: help`` lines of the docstring."""
    helps = field_helps(options_cls)
    hints = typing.get_type_hints(options_cls)
    return [
        (f.name, type_name(hints[f.name]), f.default, helps.get(f.name, ""))
        for f in dataclasses.fields(options_cls)
    ]
