"""An example task in one file: sort a list of integers into ascending order.

It is the worked example of README's "Add a task in one file". Run it with the kit by naming it as
``sort_numbers:SortNumbers`` (with ``examples/`` on PYTHONPATH), e.g.
``PYTHONPATH=examples tinyzero data sort_numbers:SortNumbers --out data/sort``.

The reward follows the house rules: pure, no eval, bounded parsing of the model's text. The optional
``verification_checks`` hook shows how a task tells the ``aha/`` metrics what checking its answer looks like:
here, comparing two of the given numbers (``12 < 35``); without the hook only the lexical metrics are computed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from tinyzero.rewards import RewardResult, extract_answer, strip_ascii_ws
from tinyzero.rewards.checks import Checks

MAX_ANSWER_CHARS = 500  # a bound on what we parse; longer answers are wrong, not slow
# "12 < 35", "35 >= 12": two numbers and a comparison; fixed-width pieces, so matching is linear.
COMPARISON = re.compile(r"(?<![0-9])([0-9]{1,12})[ \t]*(<=|>=|<|>|≤|≥)[ \t]*([0-9]{1,12})(?![0-9])")
# A written ordering: three or more comma-separated integers.
ORDERING = re.compile(r"(?<![0-9])[0-9]{1,12}(?:[ \t]*,[ \t]*[0-9]{1,12}){2,50}(?![0-9])")


@dataclass(frozen=True)
class SortOptions:
    """Sort task options.

    count: how many numbers to sort
    high: largest number (numbers are drawn from 0..high)
    format_score: score for the given numbers in another wrong order (anything else that is not sorted: 0)
    """

    count: int = 5
    high: int = 99
    format_score: float = 0.1


class SortNumbers:
    """Write the given integers in ascending order."""

    name: ClassVar[str] = "sort_numbers"
    ability: ClassVar[str] = "algorithmic"
    Options: ClassVar[type] = SortOptions

    def __init__(self, options: SortOptions | None = None):
        self.options = options or SortOptions()

    def sample(self, rng: random.Random) -> dict:
        numbers = [rng.randint(0, self.options.high) for _ in range(self.options.count)]
        return {"numbers": numbers, "answer": sorted(numbers)}

    def key(self, problem: Mapping) -> Hashable:
        return tuple(problem["numbers"])

    def task_text(self, problem: Mapping) -> str:
        listed = ", ".join(str(n) for n in problem["numbers"])
        return (
            f"Sort these numbers from smallest to largest: {listed}. Think inside <think> </think>, then "
            "write the sorted numbers, separated by commas, inside <answer> </answer>."
        )

    def ground_truth(self, problem: Mapping) -> dict:
        return {"answer": list(problem["answer"])}

    def reward(self, completion: str, problem: Mapping) -> RewardResult:
        content = extract_answer(completion)
        if content is None:
            return RewardResult(0.0, False, "no_answer", {"format": 0.0})
        text = strip_ascii_ws(content)
        parts = [strip_ascii_ws(p) for p in text.split(",")] if len(text) <= MAX_ANSWER_CHARS else []
        expected = [str(n) for n in problem["answer"]]
        if parts == expected:
            return RewardResult(1.0, True, "correct", {"format": 1.0})
        # Format credit only for an attempt: the numbers rearranged. The prompt's own "<answer> </answer>" and
        # the list copied as it was given must earn nothing, or echoing the prompt pays.
        if sorted(parts) == sorted(expected) and parts != [str(n) for n in problem["numbers"]]:
            return RewardResult(self.options.format_score, False, "wrong_order", {"format": 1.0})
        return RewardResult(0.0, False, "wrong_numbers", {"format": 0.0})

    def levels(self) -> list[dict]:
        """Optional hook: the task's difficulty levels, easiest first, ending at its own options. A curriculum
        (``data.curriculum``) starts training on two numbers and moves to more as the model's pass rate allows."""
        return [{"count": count} for count in range(min(2, self.options.count), self.options.count + 1)]

    def verification_checks(self, text: str, problem: Mapping) -> Checks:
        """Optional hook for the aha metrics: comparisons between two of the given numbers are the task's own
        checks; candidates are the distinct orderings of exactly the given numbers the text writes out."""
        given = {str(n) for n in problem["numbers"]}
        spans = tuple(m.span() for m in COMPARISON.finditer(text)
                      if m.group(1) in given and m.group(3) in given)
        want = sorted(str(n) for n in problem["numbers"])
        orderings = {m.group() for m in ORDERING.finditer(text)
                     if sorted(p.strip() for p in m.group().split(",")) == want}
        return Checks(spans, len({"".join(o.split()) for o in orderings}))
