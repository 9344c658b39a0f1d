"""The run folder and its logs: `tinyzero train` clears only folders it marked as its own, and never a user's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.runlog import RUN_MARKER, claim_run_dir
from tinyzero.trainer import train


def finished_run(run_dir: Path) -> Path:
    """A run folder as a finished run leaves it: metrics, and a complete checkpoint."""
    ckpt = run_dir / "checkpoints" / "step_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    (ckpt / "COMPLETE").write_text("1")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    (run_dir / RUN_MARKER).write_text("")
    return run_dir


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["", ".", "..", " ", "a/b", "../elsewhere", "a\\b"])
def test_run_name_must_be_one_plain_folder_name(name):
    with pytest.raises(TinyZeroError, match="run.name must be"):
        load_config(None, [f"run.name={name}"])


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_train_with_a_name_that_is_no_folder_leaves_out_dir_alone(name, tiny_model_dir, tmp_path):
    """`run.name=` or `run.name=.` made the run folder out_dir itself, and train emptied it: a finished run inside
    was deleted before the model loaded."""
    out = tmp_path / "runs"
    finished_run(out / "done")
    (tmp_path / "keep.txt").write_text("the user's")  # what `..` would reach
    before, beside = tree(out), tree(tmp_path)
    with pytest.raises(TinyZeroError, match="run.name must be"):
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={out}", f"run.name={name}",
                     "rollout.backend=hf", "run.steps=1"])
    assert tree(out) == before and tree(tmp_path) == beside


def test_train_refuses_a_users_folder_and_touches_nothing(tiny_model_dir, tmp_path):
    mine = tmp_path / "runs" / "notes"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("three years of work")
    (mine / "sub" / "data.csv").write_text("1,2,3")
    before = tree(mine)
    with pytest.raises(TinyZeroError) as err:
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path / 'runs'}", "run.name=notes",
                     "rollout.backend=hf", "run.steps=1"])
    message = str(err.value)
    assert str(mine) in message and "run.name=" in message and "tinyzero resume" in message
    assert "\n" not in message
    assert tree(mine) == before


def test_claim_refuses_a_finished_run_and_a_file(tmp_path):
    run = finished_run(tmp_path / "done")
    before = tree(run)
    with pytest.raises(TinyZeroError, match="already holds a run: continue it with `tinyzero resume"):
        claim_run_dir(run)
    assert tree(run) == before
    older = tmp_path / "older"  # a run made before the marker existed: still a run
    older.mkdir()
    (older / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(TinyZeroError, match="already holds a run"):
        claim_run_dir(older)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(TinyZeroError, match="is a file"):
        claim_run_dir(tmp_path / "plain")
    assert (tmp_path / "plain").read_text() == "x"


def test_claim_marks_new_and_empty_folders_and_clears_only_its_own(tmp_path):
    new = tmp_path / "a" / "new"
    claim_run_dir(new)
    assert (new / RUN_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_run_dir(empty)
    assert (empty / RUN_MARKER).is_file()
    # A run that stopped before its first step: the kit's marker, a config and a step-0 eval log. Cleared.
    (new / "config.yaml").write_text("run: {}\n")
    (new / "evals.jsonl.gz").write_bytes(b"")
    claim_run_dir(new)
    assert sorted(p.name for p in new.iterdir()) == [RUN_MARKER]
    # The same files without the marker: not the kit's, refused.
    (empty / RUN_MARKER).unlink()
    (empty / "config.yaml").write_text("run: {}\n")
    with pytest.raises(TinyZeroError, match="was not made by `tinyzero train`"):
        claim_run_dir(empty)
    assert (empty / "config.yaml").is_file()
