"""rollout.overlong (tinyzero/step/overlong.py): the penalty on the score, the mask on the learner's batch, the check, and
a real step where every response is cut at the limit (mask: no loss at all; penalty: every score charged -1)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import one_tiny_step

from tinyzero.config import load_config
from tinyzero.engine.messages import RolloutBatch, ScoredBatch, build_tokens
from tinyzero.errors import TinyZeroError
from tinyzero.step.overlong import check_overlong, mask_truncated, metrics, shape_scores


def settings(*overrides: str):
    return load_config(None, ["rollout.max_new_tokens=8", *overrides]).rollout


def scored(lengths: list[int], finished: list[bool]) -> ScoredBatch:
    n = len(lengths)
    batch = RolloutBatch(prompt_ids=[[1, 2]] * n, response_ids=[[5] * k for k in lengths], texts=["x"] * n,
                         finished=finished, problems=[{}] * n, prompts=["p"] * n, group_size=n)
    return ScoredBatch(rollout=batch, scores=torch.tensor([1.0, 0.0, 0.5, 1.0][:n]), correct=torch.tensor(
        [True, False, False, True][:n]), reasons=["r"] * n, components={"format": torch.ones(n)})


def test_the_penalty_is_added_to_the_score_and_kept_as_a_component():
    batch = scored([3, 6, 7, 8], [True, True, False, False])
    # Limit 8, buffer 4: 3 -> 0, 6 -> -2/4, 7 -> -3/4, 8 -> -1.
    shaped = shape_scores(batch, settings("rollout.overlong=penalty", "rollout.overlong_buffer=4"))
    assert shaped.scores.tolist() == [1.0, -0.5, -0.25, 0.0]
    assert shaped.components["overlong"].tolist() == [0.0, -0.5, -0.75, -1.0]
    assert shaped.correct.tolist() == batch.correct.tolist() and "format" in shaped.components
    assert metrics(shaped) == {"reward/overlong_penalty": pytest.approx(-2.25 / 4)}
    for mode in ("keep", "mask"):
        assert shape_scores(batch, settings(f"rollout.overlong={mode}")) is batch
    assert metrics(batch) == {}


def test_mask_zeroes_exactly_the_truncated_rows():
    tokens = build_tokens([[1, 2]] * 3, [[5, 6], [5, 6, 7], [5]], pad_id=0)
    finished = [True, False, True]
    masked = mask_truncated(tokens, finished, settings("rollout.overlong=mask"))
    assert masked.response_mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert masked.input_ids.equal(tokens.input_ids)
    assert mask_truncated(tokens, finished, settings("rollout.overlong=keep")) is tokens
    assert mask_truncated(tokens, finished, settings("rollout.overlong=penalty")) is tokens


def test_a_buffer_longer_than_the_limit_is_one_sentence():
    check_overlong(load_config(None, ["rollout.overlong=penalty", "rollout.overlong_buffer=64"]))
    check_overlong(load_config(None, ["rollout.overlong=keep", "rollout.overlong_buffer=100"]))  # unused: fine
    with pytest.raises(TinyZeroError, match="overlong_buffer=100 is longer than rollout.max_new_tokens=64") as err:
        check_overlong(load_config(None, ["rollout.overlong=penalty", "rollout.overlong_buffer=100"]))
    assert "\n" not in str(err.value)


def one_step(model_dir, tmp_path, name: str, *extra: str) -> dict:
    # A tiny random model almost never emits its end token: at 6 new tokens every response is cut at the limit.
    return one_tiny_step(model_dir, tmp_path, name, *extra, prompts=2, new_tokens=6, eval_new_tokens=2)


def test_truncated_responses_in_a_real_step(tiny_model_dir, tmp_path):
    keep = one_step(tiny_model_dir, tmp_path, "keep")
    assert keep["rollout/truncated_frac"] == 1.0 and keep["train/grad_norm"] > 0
    masked = one_step(tiny_model_dir, tmp_path, "mask", "rollout.overlong=mask")
    assert masked["train/grad_norm"] == 0.0  # every row truncated: no loss, no gradient
    assert masked["reward/mean"] == keep["reward/mean"]  # scores untouched
    penalty = one_step(tiny_model_dir, tmp_path, "penalty", "rollout.overlong=penalty", "rollout.overlong_buffer=3")
    assert penalty["reward/overlong_penalty"] == -1.0  # all at the limit
    assert penalty["reward/mean"] == pytest.approx(keep["reward/mean"] - 1.0)
