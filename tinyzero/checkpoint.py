"""Checkpoints: atomic, resumable, the last K kept.

A checkpoint folder ``checkpoints/step_000010/`` holds the policy in HF format (``policy/``), the learner's
optimizer/critic/RNG state (``learner.pt``) and the driver's state (``state.json``: step, data cursor, eval
history). It is written under a temporary name and renamed into place only when complete, and a ``COMPLETE``
marker is written last, so a crash mid-write never leaves a folder that looks like a finished checkpoint.
A save that raises removes its temporary folder; one left by a killed process is removed by the next save.
Simplification: one writer per run folder (the trainer refuses to start a second run in it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

MARKER = "COMPLETE"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict, write_learner: Callable[[Path], None],
                    keep_last: int) -> Path:
    """Write step ``step`` atomically; ``write_learner(folder)`` saves the model side into ``folder``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_learner(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        (tmp / MARKER).write_text(str(step))
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # half a checkpoint is of no use; the error goes on up
        raise
    if final.exists():
        # Move the old one aside (a rename, instant) instead of deleting it first (slow for a big model): the
        # window in which this step has no folder shrinks to two renames; prune deletes it afterwards.
        os.replace(final, root / f".tmp-step_{step:06d}-old-{os.getpid()}")
    os.replace(tmp, final)
    _fsync_dir(root)
    prune(root, keep_last)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Folders named ``step_<digits>`` that hold the marker and ``state.json``, oldest first. Temporary folders
    (``.tmp-step_…``) never match, even when a crash left them with a marker."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if _step_of(p) is not None
             and (p / MARKER).is_file() and (p / "state.json").is_file()]
    return sorted(found, key=_step_of)


def _step_of(path: Path) -> int | None:
    digits = path.name.removeprefix("step_")
    return int(digits) if path.name.startswith("step_") and digits.isascii() and digits.isdigit() else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and every temporary folder.

    Called after a save has renamed its folder into place, so no temporary folder is in use: whatever is left,
    this process's included (a save killed mid-write), is debris."""
    run_dir = root.parent
    done = complete_checkpoints(run_dir)
    for old in done[: max(0, len(done) - max(keep_last, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def read_state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())
