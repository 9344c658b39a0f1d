"""Checkpoints that fail: a save that raises partway, a process killed mid-save, overwriting a step, pruning; checksums
that name a damaged file; and a crafted file that would run code when loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinyzero.checkpoint import (
    CHECKSUMS,
    MARKER,
    checkpoint_dir,
    latest_checkpoint,
    read_state,
    save_checkpoint,
    verify_checkpoint,
    write_checksums,
)
from tinyzero.errors import TinyZeroError


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


def write_model_files(folder: Path) -> None:
    (folder / "policy").mkdir()
    (folder / "policy" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "learner.pt").write_bytes(b"moments" * 100)


def test_checksums_name_the_file_that_changed_went_missing_or_appeared(tmp_path):
    folder = save(tmp_path, 1, write=write_model_files)
    sums = json.loads((folder / CHECKSUMS).read_text())["sha256"]
    assert sorted(sums) == ["learner.pt", "policy/model.safetensors", "state.json"]
    assert verify_checkpoint(folder) is True
    weights = folder / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 1  # one flipped bit: a disk or a copy that went wrong
    weights.write_bytes(bytes(data))
    with pytest.raises(TinyZeroError, match=r"model.safetensors is damaged \(its SHA-256 differs") as err:
        verify_checkpoint(folder)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    assert verify_checkpoint(folder, only=("state.json",)) is True  # eval checks only what it reads
    weights.unlink()
    with pytest.raises(TinyZeroError, match="model.safetensors is missing"):
        verify_checkpoint(folder)


def test_a_file_nobody_recorded_and_a_damaged_manifest_are_refused(tmp_path):
    folder = save(tmp_path, 1, write=write_model_files)
    (folder / "policy" / "pytorch_model.bin").write_bytes(b"a pickle someone dropped in")
    with pytest.raises(TinyZeroError, match="pytorch_model.bin was not part of the checkpoint"):
        verify_checkpoint(folder, only=("policy/",))
    (folder / "policy" / "pytorch_model.bin").unlink()
    for damaged in ("{not json", json.dumps({"sha256": {"../../etc/passwd": "00"}}), "[]", "\xff\xfe"):
        (folder / CHECKSUMS).write_text(damaged, encoding="latin-1")
        with pytest.raises(TinyZeroError, match=f"has a damaged {CHECKSUMS}"):
            verify_checkpoint(folder)


def test_a_checkpoint_without_checksums_is_reported_unchecked(tmp_path):
    folder = save(tmp_path, 1, write=write_model_files)
    (folder / CHECKSUMS).unlink()  # written before checksums existed
    assert verify_checkpoint(folder) is False
    write_checksums(folder)
    assert verify_checkpoint(folder) is True


class _CreatesAFile:
    """What a crafted checkpoint holds: unpickling it calls ``open(path, "w")``, creating the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_learner_pt_runs_nothing_when_loaded(tiny_model_dir, tmp_path):
    """learner.pt was read with weights_only=False: a crafted one ran code on load (it created a file)."""
    import torch

    from tinyzero.config import AlgoConfig, OptimConfig
    from tinyzero.engine.learner import Learner

    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig())
    learner.save(tmp_path)
    learner.load(tmp_path)  # a genuine learner.pt loads with weights_only=True
    state = torch.load(tmp_path / "learner.pt", weights_only=True)
    proof = tmp_path / "code-ran-here"
    state["updates"] = _CreatesAFile(str(proof))
    torch.save(state, tmp_path / "learner.pt")
    with pytest.raises(TinyZeroError, match=r"learner.pt asks to run code when loaded \(.*open\), so it was not loaded"):
        learner.load(tmp_path)
    assert not proof.exists()
    (tmp_path / "learner.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(TinyZeroError, match=r"learner.pt is damaged"):
        learner.load(tmp_path)


# ------------------------------------------------------------------ a state that its run cannot have written (issue 33)
def _logged_run(run_dir: Path, steps: int, *, torn: bool = False) -> None:
    rows = "".join(json.dumps({"step": s, "data/cursor": 8.0 * s}) + "\n" for s in range(1, steps + 1))
    (run_dir / "metrics.jsonl").write_text(rows + ('{"step": 9' if torn else ""))


def test_a_state_ahead_of_its_run_log_is_refused(tmp_path):
    """state.json edited to step 999 (checksums recomputed) resumed and said "after 999 steps" for a run of 8."""
    from tinyzero.checkpoint import check_progress

    run = tmp_path / "run"
    ckpt = checkpoint_dir(run) / "step_000008"
    ckpt.mkdir(parents=True)
    _logged_run(run, 8, torn=True)  # a kill during step 9's append: its torn line is not a step
    check_progress(run, ckpt, {"step": 8, "cursor": 64}, per_step=8)
    _logged_run(run, 10)  # logged past the checkpoint (a kill after step 10 before its save): resumable
    check_progress(run, ckpt, {"step": 8, "cursor": 64}, per_step=8)
    _logged_run(run, 8)
    with pytest.raises(TinyZeroError) as err:
        check_progress(run, ckpt, {"step": 999, "cursor": 64}, per_step=8)
    message = str(err.value)
    assert "says the run finished step 999" in message and "ends at step 8" in message and "\n" not in message
    assert str(ckpt / "state.json") in message and f"move {ckpt} aside" in message
    (run / "metrics.jsonl").write_text("")  # a log with no step yet: only a step-0 checkpoint fits it
    check_progress(run, ckpt, {"step": 0, "cursor": 0}, per_step=8)
    with pytest.raises(TinyZeroError, match="ends at step 0"):
        check_progress(run, ckpt, {"step": 1, "cursor": 0}, per_step=8)
    (run / "metrics.jsonl").unlink()  # no run log: nothing to check the step against
    check_progress(run, ckpt, {"step": 999, "cursor": 64}, per_step=8)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(TinyZeroError, match="line 1 is not a JSON object with a step"):
        check_progress(run, ckpt, {"step": 1, "cursor": 0}, per_step=8)


def test_a_cursor_past_what_the_steps_can_draw_is_refused(tmp_path):
    """A cursor of 10**12 printed "resumed" and hung, drawing 10**12 problems one by one to fast-forward."""
    from tinyzero.checkpoint import check_progress

    run = tmp_path / "run"
    ckpt = checkpoint_dir(run) / "step_000008"
    ckpt.mkdir(parents=True)
    _logged_run(run, 8)
    check_progress(run, ckpt, {"step": 8, "cursor": 64}, per_step=8)  # exactly 8 steps of 8
    for cursor in (65, 10**12):
        with pytest.raises(TinyZeroError) as err:
            check_progress(run, ckpt, {"step": 8, "cursor": cursor}, per_step=8)
        message = str(err.value)
        assert f"says {cursor:,} training problems were drawn, more than 8 steps of at most 8" in message
        assert f"move {ckpt} aside" in message and "\n" not in message


def test_the_most_a_step_draws_counts_every_round_and_every_config_given():
    from tinyzero.checkpoint import most_drawn_per_step
    from tinyzero.config import load_config

    plain = load_config(None, ["rollout.prompts_per_step=8", "rollout.max_generation_rounds=5"]).rollout
    assert most_drawn_per_step(plain) == 8  # no dynamic sampling: one round
    filtered = load_config(None, ["rollout.prompts_per_step=8", "rollout.filter_groups=correct",
                                  "rollout.max_generation_rounds=5"]).rollout
    assert most_drawn_per_step(filtered) == 40  # a round of 8, then the missing groups, 5 rounds at most
    # An earlier session's config, as a checkpoint's state holds it, may have drawn more; a damaged one counts 0.
    assert most_drawn_per_step(plain, {"prompts_per_step": 64, "max_generation_rounds": 3, "filter_groups": "none"}) == 64
    assert most_drawn_per_step(plain, {"prompts_per_step": 16, "max_generation_rounds": 3, "filter_groups": "score"}) == 48
    assert most_drawn_per_step(plain, {"prompts_per_step": "many"}, None, {}) == 8
