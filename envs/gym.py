"""reasoning-gym's procedural tasks as environments: ``env.name=gym:TASK`` (docs/gym.md).

Needs the optional extra (``pip install -e '.[gym]'``). A problem is drawn by taking a seed from our seeded
``random.Random`` and asking the task's generator for its item 0 at that seed, so splits are reproducible and
disjoint by question text like our own tasks. The stored problem is JSON: the seed, the question, the oracle
answer and the generator's metadata as JSON text. Metadata that JSON cannot carry exactly (tuples, sets, objects)
is marked ``exact: false`` and the entry is rebuilt from the seed before scoring, never guessed.

The prompt is the task's own question followed by our ``<answer>`` instruction; the reward reads the last
complete ``<answer>`` pair with our own parser, caps its length, and hands the stripped text to the task's
verifier — in this process when ``gym_safety`` lists it as safe, else in the resource-limited worker
(``gym_worker``) — unless the kit's own checks (``gym_checks``: non-finite numbers, and the tasks whose verifiers
hand out farmable reward) refuse it first. The verifier's score (partial credit included) is the reward; one that
is not a finite number in [0, 1] is ``verifier_error``; ``correct`` means 1.0.
Options: the generator's own config fields, plus ``answer_format``, ``timeout_s``, ``max_answer_chars`` and
``memory_mb``. Simplification: drawing a problem builds the generator for its seed, so tasks that load word lists or
data files in their constructor (word_ladder, group_anagrams, arc_agi, ...) take tens of milliseconds a problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import random
import typing
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Literal

from tinyzero.envs import gym_checks
from tinyzero.envs.gym_safety import PARSES_MATH, math_answer_ok, placement  # noqa: F401 - placement: re-exported
from tinyzero.errors import TinyZeroError
from tinyzero.fields import coerce
from tinyzero.rewards.answer import extract_answer, strip_ascii_ws
from tinyzero.rewards.arithmetic import last_integer_answer
from tinyzero.rewards.result import NO_ANSWER, RewardResult, malformed

PREFIX = "gym:"
INSTALL = "the gym: tasks need reasoning-gym: run `pip install -e '.[gym]'` (or `make setup`) in the kit's folder"
SEED_SPACE = 2**31  # seeds drawn for the generator
OURS = ("answer_format", "timeout_s", "max_answer_chars", "memory_mb")  # options the kit reads; the rest: generator
AnswerFormat = Literal["tags", "last_line", "last_integer"]
RESERVED = ("seed", "size")  # the kit draws seeds itself; one item per seed


@dataclasses.dataclass(frozen=True)
class GymOptions:
    """reasoning-gym task options (any other key goes to the task's generator config; `tinyzero envs` lists them).

    task: the reasoning-gym task name (set from gym:TASK)
    generator: the generator's config values, as JSON text
    answer_format: tags (the answer goes in <answer> tags), last_line (the reply's last non-blank line is its answer) or last_integer (the integer the reply ends with, as the arithmetic demo reads it; for tasks whose answer is one integer); the last two are for small models that never write tags
    timeout_s: wall-clock seconds one answer may take in the verifier worker before it scores 0 (verifier_timeout)
    max_answer_chars: longest answer handed to a verifier; longer ones score 0 (too_long)
    memory_mb: address-space limit of the verifier worker in MiB
    """

    task: str = ""
    generator: str = "{}"  # JSON text with sorted keys: hashable, picklable, and what the worker is sent
    answer_format: AnswerFormat = "tags"
    timeout_s: float = 2.0
    max_answer_chars: int = 2000
    memory_mb: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 600:
            raise ValueError("timeout_s must be in (0, 600]")
        if self.max_answer_chars < 1:
            raise ValueError("max_answer_chars must be at least 1")
        if self.memory_mb < 256:
            raise ValueError("memory_mb must be at least 256")


def _registry() -> dict:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise TinyZeroError(INSTALL) from None
    return DATASETS


def available() -> bool:
    """Whether reasoning-gym is installed."""
    try:
        _registry()
    except TinyZeroError:
        return False
    return True


def task_names() -> list[str]:
    return sorted(_registry())


def check_task(task: str) -> tuple[type, type]:
    datasets = _registry()
    if task not in datasets:
        close = difflib.get_close_matches(task, list(datasets), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else "`tinyzero envs` lists them"
        raise TinyZeroError(f"unknown reasoning-gym task {task!r}: {hint}")
    return datasets[task]


def generator_fields(task: str) -> dict[str, Any]:
    """The generator config's fields a user may set, with their type hints."""
    _, config_cls = check_task(task)
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls) if f.name not in RESERVED}


def curriculum_levels(task: str, generator: str) -> list[dict]:
    """reasoning-gym's own curriculum for ``task`` (reasoning_gym.coaching) as levels, easiest first: its global
    levels from 0 up, each the generator fields the curriculum sets, while every one of them asks no more than the
    task's options (the generator config over its defaults); then ``{}``, the task's own options. One level, the task's
    own, for a task without a curriculum."""
    import reasoning_gym  # noqa: F401 - registers the tasks and their curricula
    from reasoning_gym.factory import create_curriculum, has_curriculum

    if not has_curriculum(task):
        return [{}]
    curriculum = create_curriculum(task)
    _, config_cls = check_task(task)
    target = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    target.update(json.loads(generator))
    out: list[dict] = []
    for level in range(max(len(a.levels) for a in curriculum.attributes.values())):
        curriculum.set_global_level(level)
        made = dataclasses.asdict(curriculum.generate_configuration())
        values = {k: made[k] for k in made if k not in RESERVED and k in _curriculum_fields(curriculum)}
        asks_no_more = all(isinstance(v, int | float) and isinstance(target.get(k), int | float) and v <= target[k]
                           for k, v in values.items())
        if not asks_no_more or all(v == target[k] for k, v in values.items()):
            break
        if not out or out[-1] != values:
            out.append(values)
    return [*out, {}]


def _curriculum_fields(curriculum) -> set[str]:
    """The generator fields a reasoning-gym curriculum sets (a range sets two, a scalar one)."""
    names = set()
    for attr in curriculum.attributes.values():
        names.update(getattr(attr, key) for key in ("lower_field_name", "upper_field_name", "field_name")
                     if hasattr(attr, key))
    return names


def _coerce_generator(task: str, key: str, value: Any, hint: Any) -> Any:
    if hint in (int, float, bool, str):
        return coerce(value, hint, f"{PREFIX}{task}.{key}")
    if isinstance(value, str):  # from the command line: a list or number written as JSON, else the text itself
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_gym_options(task: str, values: Mapping[str, Any] | None) -> GymOptions:
    """Split options into ours and the generator's, checking the generator's against its config class."""
    fields = generator_fields(task)
    ours, generator = {}, {}
    for key, value in dict(values or {}).items():
        if key in OURS:
            hint = typing.get_type_hints(GymOptions)[key]
            ours[key] = coerce(value, hint, f"{PREFIX}{task}.{key}")
        elif key in RESERVED:
            raise TinyZeroError(f"option {PREFIX}{task}.{key} is set by the kit (one item per drawn seed): "
                                "use run.seed / --seed to change the problems")
        elif key in fields:
            generator[key] = _coerce_generator(task, key, value, fields[key])
        else:
            raise TinyZeroError(f"unknown option {PREFIX}{task}.{key}: it accepts "
                                f"{', '.join([*fields, *OURS]) or 'no options'}")
    try:
        options = GymOptions(task=task, generator=json.dumps(generator, sort_keys=True), **ours)
        build_dataset(task, options.generator)
    except (ValueError, AssertionError, TypeError) as err:
        raise TinyZeroError(f"bad options for {PREFIX}{task}: {err or type(err).__name__}") from None
    return options


def _one_item_dataset(task: str, generator: str, seed: int):
    """The task's dataset object with one item, at ``seed``; ``generator`` is its config values as JSON text."""
    import reasoning_gym

    return reasoning_gym.create_dataset(task, seed=seed, size=1, **json.loads(generator))


@functools.lru_cache(maxsize=64)
def build_dataset(task: str, generator: str):
    """The task's dataset object whose ``score_answer`` the verifiers call (kept: some load word lists)."""
    return _one_item_dataset(task, generator, 0)


def generate(task: str, generator: str, seed: int) -> dict:
    """The generator's item at ``seed`` (question, answer, metadata); not cached: every draw is a new seed."""
    return _one_item_dataset(task, generator, seed)[0]


def _exact_json(metadata: Any) -> tuple[str, bool]:
    """Metadata as JSON text, and whether it reads back equal (tuples, sets and objects do not)."""
    try:
        text = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError):
        return json.dumps(metadata, sort_keys=True, default=repr), False
    try:
        return text, json.loads(text) == metadata
    except RecursionError:
        return text, False


def entry_of(problem: Mapping, task: str, generator: str) -> dict:
    """The verifier's entry for a stored problem: read back from JSON, or regenerated when that is not exact."""
    stored = {"question": problem["question"], "answer": problem["answer"], "metadata": json.loads(problem["metadata"])}
    if problem.get("exact", True):
        return stored
    entry = _regenerated(task, generator, int(problem["seed"]))
    # A generator whose output depends on more than its seed (e.g. set order under hash randomisation) could give
    # another problem in this process: then the stored copy, JSON and all, is the better entry.
    return entry if entry["question"] == problem["question"] else stored


@functools.lru_cache(maxsize=256)
def _regenerated(task: str, generator: str, seed: int) -> dict:
    return generate(task, generator, seed)


class GymTask:
    """A reasoning-gym task (gym:TASK): its generator's problems, its own verifier, our <answer> format."""

    ability: ClassVar[str] = "reasoning"
    Options: ClassVar[type] = GymOptions

    def __init__(self, options: GymOptions):
        self.options = options
        self.name = PREFIX + options.task
        self.placement = placement(options.task)
        self._verifier = None

    # --- problems
    def sample(self, rng: random.Random) -> dict:
        seed = rng.randrange(SEED_SPACE)
        entry = generate(self.options.task, self.options.generator, seed)
        metadata, exact = _exact_json(entry.get("metadata", {}))
        answer = entry.get("answer")
        return {"task": self.options.task, "seed": seed, "question": str(entry["question"]),
                "answer": answer if answer is None or isinstance(answer, str) else str(answer),
                "metadata": metadata, "exact": exact}

    def key(self, problem: Mapping) -> Hashable:
        return problem["question"]

    def levels(self) -> list[dict]:
        """Optional hook (a curriculum): reasoning-gym's own levels for the task, up to its options here."""
        return curriculum_levels(self.options.task, self.options.generator)

    def task_text(self, problem: Mapping) -> str:
        question = str(problem["question"]).rstrip()
        if self.options.answer_format == "last_line":
            return f"{question}\n\nWrite the final answer alone on the last line."
        if self.options.answer_format == "last_integer":
            return question
        return (f"{question}\n\nReason step by step inside <think> </think>, then write only the final answer "
                "inside <answer> </answer>.")

    def ground_truth(self, problem: Mapping) -> dict:
        return {"answer": problem["answer"], "metadata": problem["metadata"], "seed": problem["seed"]}

    # --- scoring
    def answer(self, completion: str, problem: Mapping) -> str | None:
        """What the verifier is given: the stripped content of the last complete <answer> pair (``tags``) or the
        last non-blank line (``last_line``), or the integer it ends with (``last_integer``: the arithmetic demo's
        parser, so a trailing operand such as the 12 of ``34 - 12`` is no answer); None when there is none."""
        if self.options.answer_format == "last_line":
            return last_line(completion)
        if self.options.answer_format == "last_integer":
            return last_integer_answer(completion)
        content = extract_answer(completion)
        return None if content is None else strip_ascii_ws(content)

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        answer = self.answer(completion, problem)
        if answer is None:
            return NO_ANSWER
        if not answer:
            return malformed("empty")
        if len(answer) > self.options.max_answer_chars:
            return malformed("too_long")
        refused = gym_checks.check(self.options.task, answer, problem)  # farmable verifiers (docs/gym.md)
        if refused is not None:
            return refused
        if self.options.task in PARSES_MATH and not math_answer_ok(answer):
            return malformed("not_math")
        try:
            if self.placement == "in-process":
                score = self._score_here(answer, problem)
            else:
                score = self._worker().score(answer, dict(problem))
        except Exception as err:  # noqa: BLE001 - any failure to score one answer scores 0 with its reason
            from tinyzero.envs.gym_worker import VerifierTimeout, VerifierUnavailable

            if isinstance(err, VerifierUnavailable):
                raise  # no answer can be scored at all: the run stops with a checkpoint (gym_worker.py)
            return malformed("verifier_timeout" if isinstance(err, VerifierTimeout) else "verifier_error")
        return _verdict(score)

    def _score_here(self, answer: str, problem: Mapping) -> float:
        dataset = build_dataset(self.options.task, self.options.generator)
        return dataset.score_answer(answer, entry_of(problem, self.options.task, self.options.generator))

    def _worker(self):
        if self._verifier is None:
            self._verifier = _verifier_for(self.options)
        return self._verifier

    def __getstate__(self):  # travels to the reward pool without its worker; the copy finds or starts its own
        return {"options": self.options}

    def __setstate__(self, state):
        self.__init__(state["options"])


def last_line(completion: str) -> str | None:
    """The last line of ``completion`` with anything but ASCII whitespace on it, stripped; None if there is none."""
    if not isinstance(completion, str):
        return None
    text = strip_ascii_ws(completion)
    return strip_ascii_ws(text[text.rfind("\n") + 1:]) or None if text else None


@functools.lru_cache(maxsize=16)
def _verifier_for(options: GymOptions):
    """One worker per (task, options) per process: the reward pool unpickles the env once per chunk."""
    from tinyzero.envs.gym_worker import Verifier

    return Verifier(options.task, options.generator, timeout_s=options.timeout_s, memory_mb=options.memory_mb)


def _verdict(score: Any) -> RewardResult:
    """A verifier's score as our verdict. Anything but a finite number in [0, 1] (NaN, an infinity, 1.5, -0.1, a
    bool, text) is an error, never a reward: a verifier that strays out of its range is not to be trusted."""
    if isinstance(score, bool) or not isinstance(score, int | float):
        return malformed("verifier_error")
    try:
        score = float(score)
    except OverflowError:  # an int past float's range
        return malformed("verifier_error")
    if not 0.0 <= score <= 1.0:  # NaN fails both comparisons
        return malformed("verifier_error")
    if score == 1.0:
        return RewardResult(1.0, True, "correct", {"format": 1.0, "answer": 1.0})
    return RewardResult(score, False, "partial" if score > 0 else "wrong_value", {"format": 1.0, "answer": score})


def make_gym_env(name: str, options: Mapping[str, Any] | None) -> GymTask:
    """The environment for ``gym:TASK``."""
    task = name[len(PREFIX):]
    return GymTask(parse_gym_options(task, options))
