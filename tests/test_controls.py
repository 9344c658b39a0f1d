"""Control runs (``reward.control``): the learner's scores carry no information about which completion was right.

The pure function (tinyzero.scoring.control_scores) is checked on hand-made batches; then whole training runs with a
tiny model show it end to end: two runs whose verifier gives *different* completions the right verdict (the second
run's verdicts are the first's, moved to other completions) end with identical weights under ``shuffled`` and
``random``, and with different weights without a control — so the comparison can tell.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.scoring import control_scores
from tinyzero.trainer import Trainer

SCORES = [1.0, 0.1, 0.0, 1.0, 0.0, 0.1, 0.0, 0.0]
CORRECT = [s == 1.0 for s in SCORES]


def test_none_is_the_verifier():
    assert control_scores(SCORES, CORRECT, "none", 0, 1) == SCORES


def test_shuffled_keeps_the_batch_scores_and_is_seeded():
    given = control_scores(SCORES, CORRECT, "shuffled", 3, 5)
    assert sorted(given) == sorted(SCORES) and given != SCORES
    assert control_scores(SCORES, CORRECT, "shuffled", 3, 5) == given  # (seed, step) fixes the order
    orders = {tuple(control_scores(SCORES, CORRECT, "shuffled", 3, step)) for step in range(20)}
    assert len(orders) > 10  # a new order every step


def test_shuffled_ignores_which_completion_earned_which_score():
    """The same scores on other completions give the same result: the order comes from the seed alone."""
    moved = SCORES[3:] + SCORES[:3]
    for step in range(10):
        assert control_scores(moved, CORRECT, "shuffled", 0, step) == control_scores(SCORES, CORRECT, "shuffled", 0,
                                                                                     step)


def test_random_uses_only_the_success_rate():
    given = control_scores(SCORES, CORRECT, "random", 0, 1)
    assert set(given) <= {0.0, 1.0} and len(given) == len(SCORES)
    moved = CORRECT[::-1]  # the same share right, on other completions; the scores do not matter at all
    assert control_scores([0.5] * 8, moved, "random", 0, 1) == given
    assert control_scores(SCORES, [False] * 8, "random", 0, 1) == [0.0] * 8
    assert control_scores(SCORES, [True] * 8, "random", 0, 1) == [1.0] * 8
    # Over many steps the share of 1s is the success rate (1 in 4 here: 64 x 300 draws, sd about 0.003).
    quarter = [i % 4 == 0 for i in range(64)]
    drawn = [x for step in range(300) for x in control_scores([0.0] * 64, quarter, "random", 7, step)]
    assert abs(sum(drawn) / len(drawn) - 0.25) < 0.015


def test_unknown_control_is_one_sentence():
    with pytest.raises(ValueError, match="unknown reward control"):
        control_scores(SCORES, CORRECT, "inverted", 0, 1)
    with pytest.raises(TinyZeroError, match="reward.control must be one of none, shuffled, random"):
        load_config(None, ["reward.control=inverted"])


class MovedVerdicts:
    """Wraps a run's scorer: every completion gets the verdict of a completion one prompt group later. The batch's
    scores and success rate stay the same; which completion was right changes."""

    def __init__(self, scorer, group: int):
        self.scorer, self.group = scorer, group

    def __call__(self, texts, problems):
        results = self.scorer(texts, problems)
        return results[self.group:] + results[: self.group]

    def close(self):
        self.scorer.close()


def _train(model: Path, out: Path, name: str, control: str, moved: bool) -> Path:
    args = [f"model.name={model}", f"run.out_dir={out}", f"run.name={name}", "run.steps=3", "rollout.backend=hf",
            "env.name=toy_tasks:FirstByte", "env.options={}", "optim.lr=1e-2", "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6", "eval.size=4", "eval.max_new_tokens=4",
            "eval.every=0", "checkpoint.every=0", "aha.transcripts_every=0", f"reward.control={control}"]
    trainer = Trainer(load_config(None, args))
    if moved:
        trainer.scorer = MovedVerdicts(trainer.scorer, group=4)
    try:
        trainer.run()
    finally:
        trainer.close()
    return out / name


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints/step_000003/policy/model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("control", ["shuffled", "random"])
def test_a_control_run_update_uses_no_verdict(tiny_model_dir, tmp_path, control):
    real = _train(tiny_model_dir, tmp_path, "real", control, moved=False)
    other = _train(tiny_model_dir, tmp_path, "other", control, moved=True)
    assert _same(_weights(real), _weights(other))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not _same(_weights(real), start)  # the control's scores did train the policy
    # Marked as a control in its config and metrics; reward/ and the transcripts hold the verifier's scores.
    config = yaml.safe_load((real / "config.yaml").read_text())
    assert config["reward"]["control"] == control
    metrics = [json.loads(line) for line in (real / "metrics.jsonl").read_text().splitlines()]
    with gzip.open(real / "rollouts.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    for m in metrics:
        batch = [r for r in rows if r["step"] == m["step"]]
        assert m["reward/mean"] == pytest.approx(sum(r["score"] for r in batch) / len(batch))
        assert m["reward/accuracy"] == sum(r["correct"] for r in batch) / len(batch)
        assert m["reward/control_mean"] == pytest.approx(sum(r["control_score"] for r in batch) / len(batch))
        assert all(r["score"] == float(r["correct"]) for r in batch)  # FirstByte: the verifier's score is 0 or 1


@pytest.mark.slow
def test_without_a_control_moved_verdicts_change_the_weights(tiny_model_dir, tmp_path):
    """The check above can fail: with the verifier's scores, the same moved verdicts train another policy."""
    real = _train(tiny_model_dir, tmp_path, "real", "none", moved=False)
    other = _train(tiny_model_dir, tmp_path, "other", "none", moved=True)
    assert not _same(_weights(real), _weights(other))
    metrics = [json.loads(line) for line in (real / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/control_mean" not in m for m in metrics)
