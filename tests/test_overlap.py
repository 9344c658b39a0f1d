"""run.off_policy_steps=1: the refusals, the schedule, the order of generate / update / push, the staleness, the
behaviour policy in the ratio, learning with overlap, and exact resume under Ray.

Most tests run the real driver on real tiny roles built in this process, handed to a Trainer whose recipe says
run.mode=ray (the overlap's thread and order do not depend on the backend); one test starts Ray for the real thing.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_train import LEARNABLE, check_resume, overrides, read_metrics
from tolerance import tiny_logprob_atol

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.step.overlap import Overlap, check_overlap, overlaps
from tinyzero.trainer import Trainer, train

OVERLAP = ("run.off_policy_steps=1", "algo.rollout_correction=tis")


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("extra", "fragment"), [
    (("run.mode=local",), "run.mode=local runs every role in one process"),
    (("run.mode=ray", "placement.num_gpus=2", "placement.strategy=colocate"), "placement.strategy=colocate"),
    (("run.mode=ray", "algo.rollout_correction=none"), "algo.rollout_correction=none would treat"),
])
def test_overlap_is_refused_where_it_cannot_be_right(extra, fragment):
    config = load_config(None, ["run.off_policy_steps=1", "algo.rollout_correction=tis", *extra])
    with pytest.raises(TinyZeroError, match=fragment) as err:
        check_overlap(config)
    assert str(err.value).count(". ") == 0 and ": set " in str(err.value)  # one sentence, with the fix


@pytest.mark.parametrize("extra", [
    ("run.mode=ray",),  # CPU: the roles are separate processes
    ("run.mode=ray", "placement.num_gpus=2", "placement.strategy=split", "placement.rollout_gpus=1",
     "rollout.gpu_memory_utilization=0.7"),
])
def test_overlap_is_accepted_in_separate_processes(extra):
    check_overlap(load_config(None, [*OVERLAP, *extra]))


def test_off_policy_steps_range_is_checked():
    with pytest.raises(TinyZeroError, match="run.off_policy_steps"):
        load_config(None, ["run.off_policy_steps=2"])


def test_schedule_goes_on_policy_at_checkpoints_and_the_last_step():
    config = load_config(None, ["run.steps=6", "checkpoint.every=3", *OVERLAP, "run.mode=ray"])
    assert [overlaps(config, step) for step in range(1, 7)] == [True, True, False, True, True, False]
    off = load_config(None, ["run.steps=6", "checkpoint.every=3"])
    assert not any(overlaps(off, step) for step in range(1, 7))
    never = load_config(None, ["run.steps=4", "checkpoint.every=0", *OVERLAP, "run.mode=ray"])
    assert [overlaps(never, step) for step in range(1, 5)] == [True, True, True, False]


# ------------------------------------------------------------------------------------- Overlap.step
def test_overlap_step_runs_update_beside_generate_and_pushes_after_both():
    events, generating = [], threading.Event()

    def update():
        events.append("update start")
        seen = generating.wait(10)  # a sequential schedule never gets here while generating
        events.append(f"update end (generation seen: {seen})")
        return "stats"

    def generate():
        events.append("generate start")
        generating.set()
        time.sleep(0.05)
        events.append("generate end")
        return "batch"

    overlap = Overlap()
    try:
        assert overlap.step(update, generate, lambda: events.append("push")) == ("stats", "batch")
        assert events[-1] == "push" and "update end (generation seen: True)" in events
        events.clear()
        assert overlap.step(lambda: "only", None, lambda: events.append("push")) == ("only", None)
        assert events == ["push"]
    finally:
        overlap.close()


def test_an_error_on_either_side_pushes_nothing_and_waits_for_the_other():
    overlap, events = Overlap(), []

    def failing_update():
        time.sleep(0.05)
        raise ValueError("update broke")

    def slow_generate():
        time.sleep(0.1)
        events.append("generated")

    try:
        with pytest.raises(ValueError, match="update broke"):
            overlap.step(failing_update, slow_generate, lambda: events.append("push"))
        assert events == ["generated"]

        def failing_generate():
            raise KeyError("generation broke")

        with pytest.raises(KeyError, match="generation broke"):
            overlap.step(lambda: events.append("updated"), failing_generate, lambda: events.append("push"))
        assert events == ["generated", "updated"]
    finally:
        overlap.close()


# ------------------------------------------------------------------------ the driver, with recorded roles
def local_roles(config, model_dir, cache):
    """Real tiny roles in this process, built as run.mode=local would build them."""
    import dataclasses

    from tinyzero.engine.roles import build_roles

    local = dataclasses.replace(config, run=dataclasses.replace(config.run, mode="local"))
    return build_roles(local, model_dir, cache)


def run_trainer(config, model_dir, tmp_path, *, roles=None) -> dict:
    """A Trainer on ``roles`` (default: real tiny roles built in this process), run to its end and closed."""
    trainer = Trainer(config, roles=roles or local_roles(config, model_dir, tmp_path / "cache"))
    try:
        return trainer.run()
    finally:
        trainer.close()


class Recorder:
    """Wraps the roles' generate, update and push: when each starts and ends, and the weights' version (pushes so
    far) every generation samples from. An update waits (up to 2 s) for a generation to run beside it, so an
    overlapped schedule shows as one, however the threads are scheduled."""

    def __init__(self, roles):
        self.events: list[tuple[str, int]] = []
        self.pushes = 0
        self.generation_versions: list[int] = []
        self.concurrent: list[bool] = []
        self._generating = threading.Event()
        generate, update, push = roles.rollout.generate, roles.learner.update, roles.sync_weights

        def recorded_generate(*args, **kwargs):
            self.generation_versions.append(self.pushes)
            self._generating.set()
            try:
                return generate(*args, **kwargs)
            finally:
                self._generating.clear()
                self.events.append(("generated", self.pushes))

        def recorded_update(batch):
            self.concurrent.append(self._generating.wait(2.0))
            stats = update(batch)
            self.events.append(("updated", self.pushes))
            return stats

        def recorded_push():
            sent = push()  # passed on: the driver may read what the push returns
            self.pushes += 1
            self.events.append(("pushed", self.pushes))
            return sent

        roles.rollout.generate, roles.learner.update, roles.sync_weights = (recorded_generate, recorded_update,
                                                                           recorded_push)


def recorded_run(model_dir, tmp_path, name, *extra):
    args = overrides(model_dir, tmp_path, name, "run.mode=ray", "rollout.backend=hf", *LEARNABLE, *OVERLAP,
                     "run.steps=5", "checkpoint.every=3", "eval.every=0", "optim.lr=1e-2", *extra)
    config = load_config(None, args)
    roles = local_roles(config, model_dir, tmp_path / "cache")
    recorder = Recorder(roles)
    run_trainer(config, model_dir, tmp_path, roles=roles)
    return recorder, read_metrics(tmp_path / name)


@pytest.fixture(scope="module")
def overlapped(tiny_model_dir, tmp_path_factory):
    return recorded_run(tiny_model_dir, tmp_path_factory.mktemp("overlap"), "overlap")


def test_next_batch_is_generated_beside_the_update_from_the_weights_before_it(overlapped):
    """5 steps, a checkpoint at 3: steps 1, 2 and 4 overlap; step 3 (checkpoint) and 5 (last) do not."""
    recorder, _ = overlapped
    assert recorder.concurrent == [True, True, False, True, False]
    # The weights each batch was sampled by (pushes before its generation): batch 2 by the initial weights, batch 3
    # by step 1's, batch 4 (after the checkpoint step) by step 3's, batch 5 by step 3's.
    assert recorder.generation_versions == [0, 0, 1, 3, 3]


def test_one_push_after_each_update_and_after_the_generation_beside_it(overlapped):
    recorder, _ = overlapped
    kinds = [kind for kind, _ in recorder.events]
    # Every update is followed by exactly one push before the next update; an overlapped step's generation ends
    # before that push (the push changes the weights it samples from).
    updates = [i for i, kind in enumerate(kinds) if kind == "updated"]
    assert len(updates) == 5
    for here, there in zip(updates, [*updates[1:], len(kinds)], strict=True):
        assert kinds[here + 1: there].count("pushed") == 1
    assert [(kind, version) for kind, version in recorder.events if kind != "updated"] == [
        ("generated", 0), ("generated", 0), ("pushed", 1), ("generated", 1), ("pushed", 2), ("pushed", 3),
        ("generated", 3), ("generated", 3), ("pushed", 4), ("pushed", 5)]


def test_staleness_is_logged_per_step(overlapped):
    _, metrics = overlapped
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0, 0.0, 1.0]
    # The data cursor reads as in an on-policy run: the prompts drawn for this step's batch, not the next one's.
    assert [m["data/cursor"] for m in metrics] == [4.0, 8.0, 12.0, 16.0, 20.0]


def test_a_step_that_trains_nothing_pushes_nothing_and_leaves_the_next_batch_fresh(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    """Staleness counts the updates the learner took, not steps or pushes. Four overlapped steps, the second trains
    nothing (as when dynamic sampling keeps no group): its weights did not change, so nothing is pushed after it, and
    step 3's batch, generated beside it from step 1's weights, is as fresh as the learner that trains on it. Counted
    in pushes (or steps), step 3 would read 1 and the engines would be pushed weights they already hold."""
    learn = Trainer._learn

    def second_trains_nothing(self, scored, timer):
        return {} if self.step == 1 else learn(self, scored, timer)

    monkeypatch.setattr(Trainer, "_learn", second_trains_nothing)
    recorder, metrics = recorded_run(tiny_model_dir, tmp_path, "idle", "run.steps=4", "checkpoint.every=0")
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 0.0, 1.0]
    assert [kind for kind, _ in recorder.events].count("updated") == 3  # steps 1, 3 and 4
    assert recorder.pushes == 3  # after each of them, none after step 2
    assert recorder.generation_versions == [0, 0, 1, 1]  # batches 3 and 4: both from step 1's weights


def test_the_ratio_corrects_from_the_behaviour_policy(overlapped):
    """The learner's proximal pass against the engine's own log-probs: equal (to float rounding, fp32 on both
    sides) for a batch the current weights sampled, one update apart for a stale one. A driver that took the
    learner's current weights as the sampler would see no gap on the stale steps either."""
    _, metrics = overlapped
    kl = [m["rollout/mismatch_kl"] for m in metrics]
    fresh = [k for k, m in zip(kl, metrics, strict=True) if m["rollout/staleness"] == 0]
    stale = [k for k, m in zip(kl, metrics, strict=True) if m["rollout/staleness"] == 1]
    # Fresh: log-probs equal to rounding (gap <= atol, tests/tolerance.py), so k3 ~ (log r)^2 / 2 <= atol^2 / 2;
    # stale: measured 0.09 and more.
    assert max(fresh) < tiny_logprob_atol() ** 2 / 2, kl
    assert min(stale) > 1e-5, kl


def test_the_run_still_learns_with_overlap(tiny_model_dir, tmp_path):
    """As test_train's learning test (toy_tasks:Letters, ten steps): the last three steps' mean reward beats the
    first three's by more than 0.3 with one-step-stale batches too."""
    args = overrides(tiny_model_dir, tmp_path, "learn", "run.mode=ray", "rollout.backend=hf", *LEARNABLE, *OVERLAP,
                     "run.steps=10", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=8", "eval.size=4",
                     "eval.every=0", "checkpoint.every=0")
    config = load_config(None, args)
    run_trainer(config, tiny_model_dir, tmp_path)
    metrics = read_metrics(tmp_path / "learn")
    assert [m["rollout/staleness"] for m in metrics] == [0.0] + [1.0] * 9
    rewards = [m["reward/mean"] for m in metrics]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, [round(r, 3) for r in rewards]


def test_a_budget_stop_drops_the_batch_in_flight_and_resume_draws_it_again(tiny_model_dir, tmp_path, capsys):
    """$1 a second against a $0.001 budget: the run stops after step 1, whose update ran beside step 2's generation.
    The checkpoint's cursor is step 1's (4 prompts), not 8: the resumed run draws step 2's prompts again (the same
    ones, in the same order), so no prompt is lost or trained on twice."""
    import json

    from test_train import read_rollouts

    args = overrides(tiny_model_dir, tmp_path, "budget", "run.mode=ray", "rollout.backend=hf", *LEARNABLE, *OVERLAP,
                     "eval.every=0", "checkpoint.every=0", "cost.usd_per_gpu_hour=3600", "run.budget_usd=0.001")
    config = load_config(None, args)
    summary = run_trainer(config, tiny_model_dir, tmp_path)
    assert summary["stopped"] == "budget" and summary["steps"] == 1
    assert "the batch generated ahead for step 2 is dropped" in capsys.readouterr().out
    run_dir = tmp_path / "budget"
    assert json.loads((run_dir / "checkpoints/step_000001/state.json").read_text())["cursor"] == 4
    resumed = load_config(run_dir / "config.yaml", ["run.budget_usd=1000000"])
    trainer = Trainer(resumed, resume=True, roles=local_roles(resumed, tiny_model_dir, tmp_path / "cache"))
    try:
        trainer.run()
    finally:
        trainer.close()  # its held-out keys are read below
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3] and [m["data/cursor"] for m in metrics] == [4.0, 8.0, 12.0]
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 0.0, 1.0]  # step 2's batch: from the checkpoint
    from tinyzero.data import iter_train
    from tinyzero.envs import make_env

    env = make_env(resumed.env.name, resumed.env.options)
    problems = [next(stream) for stream in [iter_train(env, resumed.run.seed, trainer._eval_keys)] for _ in range(12)]
    keys = [env.key(problem) for problem in problems]
    drawn = [env.key(row["problem"]) for row in read_rollouts(run_dir)][::4]  # one row per sample, 4 a prompt
    assert drawn == keys


def test_dynamic_sampling_and_overlong_penalty_with_overlap(tiny_model_dir, tmp_path):
    """The filter's rounds run inside the generation ahead, from one set of weights: every drawn prompt moves the
    cursor once (at its own step), only mixed groups are trained on; the overlong penalty shapes the scores."""
    from test_train import FILTERED, check_filtered_run

    args = overrides(tiny_model_dir, tmp_path, "filtered", "run.mode=ray", "rollout.backend=hf", *OVERLAP, *FILTERED, "env.options={}",
                     "run.steps=4", "checkpoint.every=0", "eval.every=0", "rollout.overlong=penalty",
                     "rollout.overlong_buffer=4")
    config = load_config(None, args)
    run_trainer(config, tiny_model_dir, tmp_path)
    check_filtered_run(tmp_path / "filtered", prompts=4)
    metrics = read_metrics(tmp_path / "filtered")
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0, 1.0]
    penalties = [m["reward/overlong_penalty"] for m in metrics]  # every step charged it (tinyzero/step/overlong.py)
    assert min(penalties) < 0, penalties


# ------------------------------------------------------------------------------------------- under Ray
@pytest.mark.slow
@pytest.mark.ray
def test_resume_under_ray_with_overlap_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Real Ray actors. Stopped after the checkpoint of step 2 and resumed, the run generates step 3's batch from
    the checkpoint's weights and seed, as the uninterrupted run did: same samples, rewards, cursor, staleness
    and final weights."""
    args = overrides(tiny_model_dir, tmp_path, "straight", "run.mode=ray", "rollout.backend=hf", *LEARNABLE,
                     *OVERLAP, "run.steps=4", "checkpoint.every=2", "eval.every=0")
    train(None, args)
    train(None, [arg.replace("run.name=straight", "run.name=resumed") for arg in args] + ["run.steps=2"])
    train(None, ["run.steps=4"], resume_dir=str(tmp_path / "resumed"))
    check_resume(tmp_path / "straight", tmp_path / "resumed", 4, tiny_model_dir)
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["rollout/staleness"] for m in straight] == [m["rollout/staleness"] for m in resumed] == [0, 1, 0, 1]
