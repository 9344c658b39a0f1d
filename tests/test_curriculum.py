"""The curriculum (tinyzero/step/curriculum.py): the environments' declared levels, the ladder and the pass-rate
table by hand, its refusals, and real runs of a tiny model (resume parity, metrics, disjoint splits)."""

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


def test_gym_tasks_take_reasoning_gyms_own_curriculum_up_to_their_options():
    # chain_sum's curriculum: terms 2-12 and digits 1-10 by global level; the gym demo's options (2 terms, 1-2
    # digits) sit between its levels 0 and 1, so the ladder is level 0, then the demo's own options.
    demo = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
    assert levels(make_env("gym:chain_sum", demo)) == [
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, {}]
    wider = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 3}
    found = levels(make_env("gym:chain_sum", wider))
    assert found == [{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                     {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}, {}]
    for level in found:
        make_env("gym:chain_sum", {**wider, **level})  # each a valid generator config
    assert levels(make_env("gym:ab", {})) == [{}]  # no curriculum: the task's own options only


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


def test_refusals_are_one_sentence_naming_the_fix(tmp_path):
    from tinyzero.config import load_config
    from tinyzero.data import sample_test
    from tinyzero.step.curriculum import Curriculum

    base = ["env.name=arithmetic", "env.options={digits: 2}", "data.curriculum.levels=true"]
    overlap = Curriculum(load_config(None, [*base, "run.off_policy_steps=1"]))
    with pytest.raises(TinyZeroError, match="set run.off_policy_steps=0"):
        overlap.check()
    env = make_env("arithmetic", {"digits": 2})
    keys = {env.key(p) for p in sample_test(env, 10, 0)}
    with pytest.raises(TinyZeroError, match="declares 2 level"):
        Curriculum(load_config(None, [*base, "data.curriculum.start_level=2"])).attach(env, keys, 0)
    curriculum = Curriculum(load_config(None, base))
    curriculum.attach(env, keys, 0)
    for damaged in (None, {"ladder": {"level": 0, "streak": 0}, "table": [], "cursors": [0]},  # one level, not two
                    {"ladder": {"level": 5, "streak": 0}, "table": [], "cursors": [0, 0]}, {"ladder": "x"}):
        with pytest.raises(TinyZeroError, match="holds no curriculum state for these 2 level"):
            curriculum.load(damaged, tmp_path)
    curriculum.load({"ladder": {"level": 1, "streak": 1}, "table": [], "cursors": [3, 0]}, tmp_path)
    assert curriculum.ladder.level == 1 and curriculum.cursors == [3, 0]


def test_the_level_moves_on_its_fresh_problems_not_on_those_drawn_again():
    """Problems drawn again were chosen for a pass rate near the target; counted, they would pull the level's rate
    towards it. Here the fresh ones are all right and the two drawn again all wrong: the rate is 1.0, not 0.5."""
    from types import SimpleNamespace

    import torch

    from tinyzero.config import load_config
    from tinyzero.data import sample_test
    from tinyzero.step.curriculum import Curriculum

    config = load_config(None, ["env.name=arithmetic", "env.options={digits: 2}", "data.curriculum.levels=true",
                                "data.curriculum.pass_rate=true", "data.curriculum.patience=1"])
    env = make_env("arithmetic", {"digits": 2})
    curriculum = Curriculum(config)
    curriculum.attach(env, {env.key(p) for p in sample_test(env, 10, 0)}, 0)

    def step(correct_per_group: list[int]) -> dict:
        drawn = curriculum.draw(len(correct_per_group))
        assert len(drawn) == len(correct_per_group)
        correct = torch.tensor([[i < c for i in range(4)] for c in correct_per_group]).flatten()
        curriculum.on_scored(SimpleNamespace(correct=correct, rollout=SimpleNamespace(group_size=4)))
        curriculum.on_train(None, 0)
        return curriculum.metrics(None, None)

    first = step([2, 2, 1, 3])  # all fresh: 8 of 16
    assert first["curriculum/pass_rate"] == 0.5 and first["curriculum/revisited_frac"] == 0
    assert curriculum.ladder.level == 0
    second = step([0, 0, 4, 4])  # the first two are drawn again (nearest 0.5), the last two fresh
    assert second["curriculum/revisited_frac"] == 0.5 and second["curriculum/pass_rate"] == 1.0
    assert second["curriculum/groups_all_wrong"] == 0.5 and second["curriculum/groups_all_right"] == 0.5
    assert curriculum.ladder.level == 1  # 1.0 >= up (0.8), patience 1: up one level


# ------------------------------------------------------------------------------------------ in the driver
def curriculum_run(model: Path, out: Path, name: str, *extra: str) -> list[str]:
    """``toy_tasks:FirstByte``: a tiny random model is right about half the time, so groups split (the table has
    problems to draw again) and the pass rate (about 0.2 at 4 new tokens) clears ``up=0.2`` (the ladder moves up after one step)."""
    return [f"model.name={model}", f"run.out_dir={out}", f"run.name={name}", "run.steps=4", "env.name=toy_tasks:FirstByte",
            "env.options={}", "rollout.backend=hf", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=4", "eval.size=8", "eval.max_new_tokens=4", "eval.every=2", "checkpoint.every=2",
            "checkpoint.keep_last=4", "log.tensorboard=false", "data.curriculum.levels=true",
            "data.curriculum.pass_rate=true", "data.curriculum.up=0.2", "data.curriculum.down=0.01",
            "data.curriculum.patience=1", *extra]


def rollouts(run_dir: Path) -> list[dict]:
    import gzip

    with gzip.open(run_dir / "rollouts.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def test_a_curriculum_run_resumes_drawing_what_an_uninterrupted_one_draws(tiny_model_dir, tmp_path):
    from tinyzero.data import sample_test
    from tinyzero.trainer import train

    train(None, curriculum_run(tiny_model_dir, tmp_path, "whole"))
    train(None, curriculum_run(tiny_model_dir, tmp_path, "cut", "run.steps=2"))
    train(None, ["run.steps=4"], resume_dir=str(tmp_path / "cut"))
    whole, cut = rollouts(tmp_path / "whole"), rollouts(tmp_path / "cut")
    assert [(r["step"], r["problem"]) for r in whole] == [(r["step"], r["problem"]) for r in cut]
    metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    keys = sorted(k for k in metrics[0] if k.startswith("curriculum/"))
    assert keys == ["curriculum/groups_all_right", "curriculum/groups_all_wrong", "curriculum/groups_below_half",
                    "curriculum/groups_half_or_more", "curriculum/level", "curriculum/pass_rate",
                    "curriculum/revisited_frac"]
    assert [[m[k] for k in keys] for m in metrics] == [[m[k] for k in keys] for m in again]
    # The ladder moved up after step 1 (its pass rate, 0.25, cleared up=0.2) and down after step 3 (its fresh
    # problems' rate, 0, was at down=0.01; the half drawn again by pass rate does not count); problems were drawn again.
    assert [m["curriculum/level"] for m in metrics] == [0, 1, 1, 0]
    assert metrics[0]["curriculum/pass_rate"] == 0.25 and metrics[2]["curriculum/pass_rate"] == 0
    assert any(m["curriculum/revisited_frac"] > 0 for m in metrics)
    for m in metrics:
        assert sum(m[k] for k in keys if k.startswith("curriculum/groups_")) == pytest.approx(1.0, abs=1e-12)
    # No level drew a held-out problem.
    held_out = {p["id"] for p in sample_test(make_env("toy_tasks:FirstByte", {}), 8, 0)}
    assert not held_out & {r["problem"]["id"] for r in whole}


def test_the_report_draws_the_level_over_steps(tmp_path, monkeypatch):
    from test_compare import make_run

    from tinyzero.analysis import report

    run = make_run(tmp_path, "cur", control="none", accuracy={0: 0.1, 2: 0.2}, checks={1: 0, 2: 0}, eval_checks={0: 0})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, level in zip(rows, (0, 1), strict=True):
        row.update({"curriculum/level": level, "curriculum/pass_rate": 0.5, "curriculum/groups_all_wrong": 0.1,
                    "curriculum/groups_all_right": 0.2, "curriculum/revisited_frac": 0.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    monkeypatch.setattr(report, "_line_plot", lambda title, curves, ylabel, extra=None: drawn.append((title, curves)))
    report.write_report(run)
    curves = dict(drawn)["Curriculum: level and the groups it drew"]
    assert [(label, x, y) for label, x, y, _ in curves][0] == ("level (0: easiest)", [1, 2], [0, 1])
