"""Checkpoints that fail: a save that raises partway, a process killed mid-save, overwriting a step, pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinyzero.checkpoint import MARKER, checkpoint_dir, latest_checkpoint, read_state, save_checkpoint


def write_weights(folder: Path) -> None:
    (folder / "learner.pt").write_text("weights")


def save(run_dir: Path, step: int, keep_last: int = 3, write=write_weights) -> Path:
    return save_checkpoint(run_dir, step, {"step": step}, write, keep_last)


def names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint_dir(run_dir).iterdir())


def test_a_save_that_raises_leaves_the_previous_checkpoint_in_charge(tmp_path):
    save(tmp_path, 1)

    def fails_halfway(folder: Path) -> None:
        (folder / "policy.safetensors").write_text("half of the weights")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, write=fails_halfway)
    assert names(tmp_path) == ["step_000001"]  # no step folder, and no temporary one left behind
    assert latest_checkpoint(tmp_path).name == "step_000001"  # what resume would use
    assert read_state(latest_checkpoint(tmp_path)) == {"step": 1}
    save(tmp_path, 2)
    assert names(tmp_path) == ["step_000001", "step_000002"]


def test_the_next_save_removes_folders_of_saves_killed_midway(tmp_path):
    save(tmp_path, 1)
    root = checkpoint_dir(tmp_path)
    # A process killed mid-save runs no clean-up: its temporary folder stays, marker and all when it died late.
    # Ours (this pid, e.g. a save interrupted in this process) and another process's (a crashed earlier run).
    for name in (f".tmp-step_000002-{os.getpid()}", ".tmp-step_000002-999999", ".tmp-step_000005-12"):
        (root / name).mkdir()
        (root / name / "learner.pt").write_text("half")
        (root / name / "state.json").write_text(json.dumps({"step": 5}))
        (root / name / MARKER).write_text("5")
    assert latest_checkpoint(tmp_path).name == "step_000001"  # never taken for a checkpoint
    save(tmp_path, 3)
    assert names(tmp_path) == ["step_000001", "step_000003"]


def test_saving_a_step_again_replaces_it(tmp_path):
    save(tmp_path, 1)
    save_checkpoint(tmp_path, 1, {"step": 1, "again": True}, lambda f: (f / "learner.pt").write_text("new"), 3)
    assert names(tmp_path) == ["step_000001"]
    folder = latest_checkpoint(tmp_path)
    assert read_state(folder) == {"step": 1, "again": True}
    assert (folder / "learner.pt").read_text() == "new"


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (1, 2, 3, 10):  # 10 after 3: steps sort as numbers, not as text
        save(tmp_path, step, keep_last=2)
    assert names(tmp_path) == ["step_000003", "step_000010"]


def test_only_complete_step_folders_count(tmp_path):
    save(tmp_path, 2)
    root = checkpoint_dir(tmp_path)
    no_marker = root / "step_000009"
    no_marker.mkdir()
    (no_marker / "state.json").write_text("{}")
    for name in ("step_000011 copy", "step_x"):  # what a person might leave there; must not break resume
        (root / name).mkdir()
        (root / name / "state.json").write_text("{}")
        (root / name / MARKER).write_text("")
    assert latest_checkpoint(tmp_path).name == "step_000002"
