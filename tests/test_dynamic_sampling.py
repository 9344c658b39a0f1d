"""Dynamic sampling (tinyzero/step/dynamic_sampling.py): rounds, what is kept, the cursor, the metrics, PPO's refusal.

The rounds run on scripted verdicts (no model): each drawn problem names the verdicts its group gets, so every count
below is worked out by hand. The end-to-end check (a real run, interrupted and resumed with the filter on) is in
tests/test_train.py.
"""

from __future__ import annotations

import pytest
import torch

from tinyzero import algos
from tinyzero.config import load_config
from tinyzero.engine.messages import RolloutBatch, ScoredBatch, join_rows, take_rows
from tinyzero.errors import TinyZeroError
from tinyzero.step.dynamic_sampling import check_filter, collect

G = 2
MIXED, WRONG, RIGHT = (True, False), (False, False), (True, True)


def scored_groups(problems: list[dict]) -> ScoredBatch:
    """A scored batch whose group i has problem i's scripted verdicts (score = verdict, plus 0.1 format credit
    on the first sample when the problem says so)."""
    rows = [(p, v) for p in problems for v in p["verdicts"]]
    batch = RolloutBatch(prompt_ids=[[1]] * len(rows), response_ids=[[2, 3]] * len(rows),
                         texts=[f"{p['id']}:{i % G}" for i, (p, _) in enumerate(rows)], finished=[True] * len(rows),
                         problems=[p for p, _ in rows], prompts=[str(p["id"]) for p, _ in rows], group_size=G)
    scores = [float(v) + (0.1 if p.get("format") and i % G == 0 else 0.0) for i, (p, v) in enumerate(rows)]
    return ScoredBatch(rollout=batch, scores=torch.tensor(scores), correct=torch.tensor([v for _, v in rows]),
                       reasons=["x"] * len(rows), components={"format": torch.ones(len(rows))})


class Script:
    """Draws problems from a fixed list (counting them, as the trainer's cursor does) and generates their groups."""

    def __init__(self, verdicts: list[tuple], formats: tuple[int, ...] = ()):
        self.problems = [{"id": i, "verdicts": v, "format": i in formats} for i, v in enumerate(verdicts)]
        self.cursor = 0
        self.calls: list[tuple[int, int]] = []  # (problems drawn, offset) per round

    def draw(self, n: int) -> list[dict]:
        out = self.problems[self.cursor : self.cursor + n]
        self.cursor += n
        return out

    def generate(self, problems: list[dict], offset: int) -> ScoredBatch:
        self.calls.append((len(problems), offset))
        return scored_groups(problems)


def run(script: Script, mode: str, prompts: int = 3, rounds: int = 3):
    return collect(script.draw, script.generate, prompts=prompts, mode=mode, max_rounds=rounds)


def test_filter_off_is_one_round_that_keeps_everything():
    script = Script([MIXED, WRONG, RIGHT, MIXED])
    out = run(script, "none")
    assert script.calls == [(3, 0)] and script.cursor == 3
    assert out.kept.tolist() == [True, True, True] and out.rounds == 1
    assert out.train_batch() is out.scored  # the very batch: nothing re-indexed
    # Two of three groups have one verdict; with the filter off only the share is logged.
    assert out.metrics(filtering=False) == {"rollout/zero_variance_frac": pytest.approx(2 / 3)}


def test_rounds_draw_the_missing_groups_until_enough_teach():
    # Round 1 draws 3: problems 0 (mixed), 1, 2 (one verdict) -> 1 kept, 2 missing. Round 2 draws 2: problem 3
    # (mixed), 4 (wrong) -> 2 kept, 1 missing. Round 3 draws 1: problem 5 (mixed) -> 3 kept.
    script = Script([MIXED, WRONG, RIGHT, MIXED, WRONG, MIXED, MIXED])
    out = run(script, "correct")
    assert script.calls == [(3, 0), (2, 3), (1, 5)]  # offsets: prompts drawn earlier this step (request seeds)
    assert script.cursor == 6  # every prompt drawn counts, kept or not
    assert out.kept.tolist() == [True, False, False, True, False, True]
    train = out.train_batch()
    assert [p["id"] for p in train.rollout.problems] == [0, 0, 3, 3, 5, 5]  # whole groups, in draw order
    assert train.correct.tolist() == [True, False] * 3
    assert out.row_kept() == [True, True, False, False, False, False, True, True, False, False, True, True]
    assert out.metrics(filtering=True) == {
        "rollout/zero_variance_frac": pytest.approx(3 / 6), "rollout/groups_generated": 6.0,
        "rollout/groups_kept": 3.0, "rollout/groups_missing": 0.0, "rollout/generation_rounds": 3.0}


def test_out_of_rounds_trains_on_what_it_kept_and_says_so():
    script = Script([WRONG, MIXED, RIGHT, WRONG, RIGHT, WRONG, WRONG])
    out = run(script, "correct", prompts=3, rounds=2)
    assert script.calls == [(3, 0), (2, 3)] and script.cursor == 5
    assert out.kept.tolist() == [False, True, False, False, False]
    assert len(out.train_batch().scores) == G
    metrics = out.metrics(filtering=True)
    assert (metrics["rollout/groups_kept"], metrics["rollout/groups_missing"]) == (1.0, 2.0)
    assert metrics["rollout/generation_rounds"] == 2.0


def test_no_group_teaches_gives_an_empty_training_batch():
    out = run(Script([WRONG] * 9), "correct", prompts=3, rounds=2)
    assert len(out.train_batch().scores) == 0 and out.metrics(True)["rollout/groups_missing"] == 3.0


def test_the_shaped_score_is_an_explicit_choice():
    # Problem 0's group is all wrong, but its first sample got format credit: its scores differ (0.1 vs 0), its
    # verdicts do not. Filtering on correct drops it; filtering on the score keeps it.
    verdicts, formats = [WRONG, MIXED, MIXED, MIXED], (0,)
    on_correct = run(Script(verdicts, formats), "correct", prompts=2)
    on_score = run(Script(verdicts, formats), "score", prompts=2)
    assert on_correct.kept.tolist() == [False, True, True]
    assert on_score.kept.tolist() == [True, True]


def test_mixed_groups_hand_case():
    # Groups of 3: [1, 1, 1] one value; [0, 1, 0] mixed; [0.5, 0.5, 0.5] one value; [2, 2, 3] mixed.
    signal = torch.tensor([1, 1, 1, 0, 1, 0, 0.5, 0.5, 0.5, 2, 2, 3])
    assert algos.mixed_groups(signal, 3).tolist() == [False, True, False, True]
    assert algos.mixed_groups(torch.tensor([True, True, False, False]), 2).tolist() == [False, False]
    assert algos.mixed_groups(torch.tensor([4.0, 5.0]), 1).tolist() == [False, False]  # one sample: nothing to compare
    with pytest.raises(ValueError, match="groups of 3"):
        algos.mixed_groups(torch.zeros(4), 3)


def test_take_and_join_rows_keep_every_field_in_step():
    a, b = scored_groups([{"id": 0, "verdicts": MIXED}]), scored_groups([{"id": 1, "verdicts": RIGHT}])
    del b.components["format"]
    b.components["length"] = torch.tensor([3.0, 4.0])
    both = join_rows([a, b])
    assert both.rollout.texts == ["0:0", "0:1", "1:0", "1:1"] and both.rollout.group_size == G
    assert both.correct.tolist() == [True, False, True, True]
    # A component one batch lacks is 0 in its rows.
    assert both.components["format"].tolist() == [1, 1, 0, 0] and both.components["length"].tolist() == [0, 0, 3, 4]
    picked = take_rows(both, [3, 0])
    assert picked.rollout.texts == ["1:1", "0:0"] and picked.scores.tolist() == [1.0, 1.0]
    assert picked.components["length"].tolist() == [4, 0] and picked.rollout.problems[0]["id"] == 1


def test_only_group_estimators_take_the_filter():
    check_filter(load_config(None, ["rollout.filter_groups=correct"]))  # grpo
    check_filter(load_config(None, ["rollout.filter_groups=score", "algo.name=rloo"]))
    check_filter(load_config(None, ["algo.name=ppo"]))  # filter off: nothing to check
    with pytest.raises(TinyZeroError) as err:
        check_filter(load_config(None, ["rollout.filter_groups=correct", "algo.name=ppo"]))
    message = str(err.value)
    assert "rollout.filter_groups=none" in message and "grpo, rloo" in message and "\n" not in message
    with pytest.raises(TinyZeroError, match="rollout.filter_groups must be one of none, correct, score"):
        load_config(None, ["rollout.filter_groups=on"])


@pytest.mark.parametrize("override, fix", [("rollout.samples_per_prompt=1", "set rollout.samples_per_prompt=2 or more"),
                                           ("rollout.temperature=0", "set rollout.temperature above 0")])
def test_groups_that_can_never_disagree_are_refused_with_the_filter(override, fix):
    """filter_groups=correct with one sample a prompt never finished step 1 (issue 33): a group of one, or of greedy
    samples, always agrees with itself, so every round is spent and no group is kept."""
    for mode in ("correct", "score"):
        with pytest.raises(TinyZeroError) as err:
            check_filter(load_config(None, [f"rollout.filter_groups={mode}", override,
                                            "rollout.max_generation_rounds=1000000"]))
        message = str(err.value)
        assert f"rollout.filter_groups={mode} keeps only groups whose samples disagree" in message
        assert fix in message and "rollout.filter_groups=none" in message and "\n" not in message
    check_filter(load_config(None, [override]))  # without the filter, a group of one or greedy samples is fine
    check_filter(load_config(None, ["rollout.filter_groups=correct", "rollout.samples_per_prompt=2",
                                    "rollout.temperature=0.1"]))


def test_the_filter_follows_the_registry_flag_not_names(monkeypatch):
    monkeypatch.setattr(algos, "ADVANTAGE_ESTIMATORS", dict(algos.ADVANTAGE_ESTIMATORS))
    assert [name for name, est in algos.ADVANTAGE_ESTIMATORS.items() if est.grouped] == ["grpo", "rloo"]

    @algos.register_advantage("median_baseline", grouped=True)
    def median_baseline(inputs):
        """Each score minus its group's median."""
        groups = inputs.scores.reshape(-1, inputs.group_size)
        seq = (groups - groups.median(dim=1, keepdim=True).values).reshape(-1)
        return algos.AdvantageOutput(algos.broadcast_sequence_advantages(seq, inputs.response_mask))

    check_filter(load_config(None, ["rollout.filter_groups=correct", "algo.name=median_baseline"]))


def test_later_rounds_continue_the_steps_request_seeds():
    """On GPUs every request carries a seed: a second round's prompts must not reuse the first round's streams."""
    from types import SimpleNamespace

    from tinyzero.engine.messages import Completion
    from tinyzero.trainer import Trainer, request_seeds

    seen = []

    class Engine:
        def reseed(self, seed):
            pass

        def generate(self, prompts, *, n, seeds, **_):
            seen.append(seeds)
            return [[Completion(token_ids=[1], text="a", finished=True)] * n for _ in prompts]

    fake = SimpleNamespace(config=load_config(None, ["rollout.samples_per_prompt=2"]), step=5,
                           encode=lambda problem: ("text", [1]), roles=SimpleNamespace(rollout=Engine()))
    Trainer.rollout(fake, [{}] * 3, 0)
    Trainer.rollout(fake, [{}] * 2, 3)
    assert seen[0] + seen[1] == request_seeds(0, 5, 5, 2)  # one numbering for the whole step


def test_a_step_with_no_group_that_teaches_makes_no_update(tiny_model_dir, tmp_path):
    """toy_tasks:Letters is never `correct` for a tiny random model: with the filter on the verdict no group is kept,
    the rounds run out, and the step trains on nothing, says so, and leaves the weights alone."""
    from tinyzero.trainer import Trainer

    args = [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=none-kept", "run.steps=1",
            "rollout.backend=hf", "rollout.prompts_per_step=3", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=6", "eval.size=2", "eval.max_new_tokens=2", "eval.every=0",
            "checkpoint.every=0", "env.name=toy_tasks:Letters", "env.options={}", "optim.lr=1e-2",
            "rollout.filter_groups=correct", "rollout.max_generation_rounds=2"]
    trainer = Trainer(load_config(None, args))
    try:
        from tinyzero.engine.messages import build_tokens

        probe = build_tokens([[1, 2, 3], [4, 5]], [[70, 71, 72], [100, 101]], pad_id=0)
        before = trainer.roles.learner.logprobs(probe)
        metrics = trainer.train_step()
        assert trainer.roles.learner.logprobs(probe).equal(before)  # no optimizer step
        assert trainer.cursor == 6  # two rounds of 3 prompts, none kept, all counted
    finally:
        trainer.close()
    assert (metrics["rollout/groups_kept"], metrics["rollout/groups_missing"]) == (0.0, 3.0)
    assert metrics["rollout/generation_rounds"] == 2.0 and metrics["rollout/zero_variance_frac"] == 1.0
    assert not any(key.startswith("train/") for key in metrics)
