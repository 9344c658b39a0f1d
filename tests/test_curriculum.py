"""The curriculum's pure parts (tinyzero/step/curriculum.py) and the environments' declared levels (issue 29, in
progress: the driver does not use them yet)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tinyzero.envs import make_env
from tinyzero.envs.base import levels
from tinyzero.errors import TinyZeroError
from tinyzero.step.curriculum import Ladder, PassRates, revisits, zero_variance_share

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("arithmetic", {"digits": 3}, [{"digits": 1}, {"digits": 2}, {"digits": 3}]),
    ("arithmetic", {"digits": 1}, [{"digits": 1}]),
    ("countdown", {}, [{"min_count": 2, "max_count": 2}, {"min_count": 3, "max_count": 3},
                       {"min_count": 3, "max_count": 4}]),
    ("countdown", {"min_count": 5, "max_count": 6}, [{"min_count": 4, "max_count": 4},
                                                     {"min_count": 5, "max_count": 5},
                                                     {"min_count": 5, "max_count": 6}]),
    ("sort_numbers:SortNumbers", {"count": 4}, [{"count": 2}, {"count": 3}, {"count": 4}]),
])
def test_declared_levels_end_at_the_tasks_own_options(name, options, expected):
    env = make_env(name, options)
    assert levels(env) == expected
    for level in expected:  # every level is a valid set of options for the same task
        make_env(name, {**options, **level})


def test_a_task_without_levels_has_one_and_a_wrong_declaration_is_one_sentence():
    env = make_env("arithmetic", {"digits": 2})
    assert levels(type("Plain", (), {"name": "plain", "options": None})()) == [{}]

    class Wrong:
        name, options = "wrong", env.options

        def levels(self):
            return [{"digits": 1}]

    with pytest.raises(TinyZeroError, match="must end at the task's own options"):
        levels(Wrong())
    Wrong.levels = lambda self: []
    with pytest.raises(TinyZeroError, match="non-empty list"):
        levels(Wrong())


def test_the_ladder_moves_after_a_streak_and_not_between_thresholds():
    ladder = Ladder(levels=3, up=0.8, down=0.2, patience=2)
    assert [ladder.record(r) for r in (0.9, 0.5, 0.9, 0.85)] == [0, 0, 0, 1]  # the 0.5 broke the first streak
    assert ladder.level == 1 and ladder.streak == 0
    assert [ladder.record(r) for r in (0.9, 0.9)] == [0, 1] and ladder.level == 2
    assert [ladder.record(r) for r in (0.95, 0.95, 0.95)] == [0, 0, 0] and ladder.level == 2  # the top holds
    assert [ladder.record(r) for r in (0.1, 0.2)] == [0, -1] and ladder.level == 1  # at the threshold counts
    restored = Ladder(levels=3)
    restored.load(json.loads(json.dumps(ladder.state())))
    assert restored.state() == ladder.state()
    with pytest.raises(ValueError, match="down < up"):
        Ladder(levels=2, up=0.3, down=0.3)


def test_pass_rates_pick_the_problems_nearest_the_target_and_forget_the_oldest():
    table = PassRates(size=4)
    for key, trials, correct in (("a", 8, 0), ("b", 8, 4), ("c", 8, 7), ("d", 8, 2), ("e", 8, 8)):
        table.record(key, {"k": key}, 0, trials, correct)
    assert list(table.rows) == ["b", "c", "d", "e"]  # "a" seen longest ago: forgotten
    # Estimates (correct + 1) / (trials + 2): b 0.5, c 0.8, d 0.3, e 0.9 (all agreed: never drawn again).
    assert [key for key, _ in table.pick(0, 3, 0.5)] == ["b", "d", "c"]
    assert [key for key, _ in table.pick(0, 3, 0.75)] == ["c", "b", "d"]
    assert table.pick(1, 3, 0.5) == [] and [k for k, _ in table.pick(0, 1, 0.5, exclude={"b"})] == ["d"]
    table.record("b", {"k": "b"}, 0, 8, 8)  # b again: now 12 of 16, and the most recent
    assert table.rows["b"][2:] == [16, 12] and list(table.rows)[-1] == "b"
    restored = PassRates(size=4)
    restored.load(json.loads(json.dumps(table.state())))
    assert restored.rows == table.rows and restored.pick(0, 3, 0.5) == table.pick(0, 3, 0.5)


def test_fresh_problems_keep_coming_and_the_cost_assumption():
    assert revisits(16, 0.5) == 8 and revisits(5, 0.5) == 2 and revisits(16, 1.0) == 0
    # At a pass rate of one half, 2 of 2^8 groups of 8 agree; at 0.9, 0.9^8 + 0.1^8 = 0.430.
    assert zero_variance_share(0.5, 8) == pytest.approx(2 / 256, abs=1e-15)
    assert zero_variance_share(0.9, 8) == pytest.approx(0.9**8 + 0.1**8, abs=1e-15)
