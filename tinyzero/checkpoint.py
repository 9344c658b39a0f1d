"""Checkpoints: atomic, resumable, the last K kept.

A checkpoint folder ``checkpoints/step_000010/`` holds the policy in HF format (``policy/``), the learner's
optimizer/critic/RNG state (``learner.pt``) and the driver's state (``state.json``: step, data cursor, eval
history). It is written under a temporary name and renamed into place only when complete, and a ``COMPLETE``
marker is written last, so a crash mid-write never leaves a folder that looks like a finished checkpoint.
A save that raises removes its temporary folder; one left by a killed process is removed by the next save.
Before the marker, ``checksums.json`` records the SHA-256 of every file in the folder; ``verify_checkpoint`` checks
them (resume, eval) and names the first file that is missing, changed or unlisted. A checkpoint written before
checksums existed has no such file and is loaded unchecked (its files are still read without running code).
Simplification: one writer per run folder (the trainer refuses to start a second run in it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tinyzero.errors import TinyZeroError

MARKER = "COMPLETE"
CHECKSUMS = "checksums.json"  # {"sha256": {relative path: hex digest}}, written just before the marker
ADAPTER_DIR = "adapter"  # a LoRA run's checkpoint holds its adapters here, where a full run has policy/


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
        write_checksums(tmp)
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
    """The driver's state of a checkpoint; a damaged ``state.json`` is one sentence naming it."""
    path = folder / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bad UTF-8, an int too long
        raise TinyZeroError(f"{path} is damaged ({type(err).__name__}): {_fix(folder)}") from None
    if not isinstance(state, dict) or not _count(state.get("step")):
        raise TinyZeroError(f"{path} is damaged (it holds no step number): {_fix(folder)}")
    return state


def resume_point(run_dir: Path) -> tuple[Path, dict, bool]:
    """The latest complete checkpoint, its state and whether its checksums were checked (False: it predates
    them); every check a resume needs before any model loads, each failure one sentence naming the file."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise TinyZeroError(f"{run_dir} has no complete checkpoint to resume from: start a new run")
    checked = verify_checkpoint(ckpt)
    state = read_state(ckpt)
    history, aha, wall_s = state.get("history"), state.setdefault("aha", {}), state.setdefault("wall_s", 0.0)
    wrong = [name for name, bad in (
        ("cursor", not _count(state.get("cursor"))),
        ("eval history", not isinstance(history, list) or not all(
            isinstance(row, dict) and isinstance(row.get("eval/accuracy"), int | float) for row in history)),
        ("aha state", not _aha_state(aha)),
        ("wall_s", isinstance(wall_s, bool) or not isinstance(wall_s, int | float) or not 0 <= wall_s < 1e12),
    ) if bad]
    if wrong:
        raise TinyZeroError(f"{ckpt / 'state.json'} is damaged (its {', '.join(wrong)} is not what tinyzero "
                            f"writes): {_fix(ckpt)}")
    return ckpt, state, checked


def check_progress(run_dir: Path, ckpt: Path, state: dict, per_step: int) -> None:
    """A checkpoint's state against what its run can have done, before any model loads: its step against the run
    log's last step (``metrics.jsonl`` gets a row at every step, before the step's checkpoint is saved; a run log
    that is missing is not checked), and its data cursor against ``per_step`` training problems a step at most (a
    resume draws the cursor's problems again one by one: 10**12 of them hung it). Each failure one sentence."""
    from tinyzero.runlog import last_logged_step

    step, cursor, path = state["step"], state["cursor"], ckpt / "state.json"
    logged = last_logged_step(run_dir)
    if logged is not None and logged < step:
        raise TinyZeroError(f"{path} says the run finished step {step:,}, but its run log {run_dir / 'metrics.jsonl'} "
                            f"ends at step {logged:,}: {_fix(ckpt)}")
    if cursor > step * per_step:
        raise TinyZeroError(f"{path} says {cursor:,} training problems were drawn, more than {step:,} steps of at most "
                            f"{per_step:,} can draw (rollout.prompts_per_step x the generation rounds): {_fix(ckpt)}")


def most_drawn_per_step(*rollouts) -> int:
    """The most training problems one step can draw under any of ``rollouts`` (rollout sections, as dataclasses or
    the dicts a checkpoint's state holds): ``prompts_per_step``, times ``max_generation_rounds`` with dynamic
    sampling (every prompt drawn counts, kept or not). A section that is not one tinyzero writes counts 0."""
    most = 0
    for rollout in rollouts:
        read = rollout.get if isinstance(rollout, dict) else lambda key, r=rollout: getattr(r, key, None)
        prompts, rounds, mode = read("prompts_per_step"), read("max_generation_rounds"), read("filter_groups")
        if _count(prompts) and _count(rounds):
            most = max(most, prompts * (rounds if mode not in (None, "none") else 1))
    return most


def _aha_state(aha) -> bool:
    """The aha tracker's saved state (``Tracker.state``), in the shapes ``Tracker.load`` reads."""
    if not isinstance(aha, dict):
        return False
    series = aha.get("series", [])
    return (all(isinstance(aha.get(k, {}), dict) for k in ("baseline", "eval_baseline", "first_verification"))
            and isinstance(series, list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, int | float) for x in p) for p in series))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fix(folder: Path) -> str:
    return (f"move {folder} aside (it stays on disk) to resume from the checkpoint before it, or restore it from "
            "a copy")


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the checksums and the marker, as sorted POSIX paths relative to it."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(name for name in names if name not in (CHECKSUMS, MARKER))


def write_checksums(folder: Path) -> None:
    """Record the SHA-256 of every file of a checkpoint being written (SHA-256: about 1.4 GB/s with the CPU's
    SHA instructions, faster here than BLAKE2)."""
    sums = {name: _digest(folder / name) for name in _files(folder)}
    (folder / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1) + "\n")


def verify_checkpoint(folder: Path, only: tuple[str, ...] = ()) -> bool:
    """Check a checkpoint's files against its ``checksums.json`` (just the paths starting with one of ``only``,
    when given); one sentence naming the first file that is missing, changed or not recorded. False when the
    checkpoint predates checksums (nothing to check), True when every file checked out."""
    path = folder / CHECKSUMS
    if not path.exists():
        return False
    fix = _fix(folder)
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise ValueError("not a mapping of file names to digests")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise TinyZeroError(f"checkpoint {folder} has a damaged {CHECKSUMS} ({type(err).__name__}): {fix}") from None
    wanted = [name for name in sums if not only or name.startswith(only)]
    for name in wanted:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise TinyZeroError(f"checkpoint {folder} has a damaged {CHECKSUMS} (it names {name[:80]!r}): {fix}")
        file = folder / name
        if not file.is_file():
            raise TinyZeroError(f"checkpoint file {file} is missing: {fix}")
        if _digest(file) != sums[name]:
            raise TinyZeroError(f"checkpoint file {file} is damaged (its SHA-256 differs from the one recorded when "
                                f"it was saved): {fix}")
    extra = [name for name in _files(folder) if name not in sums and (not only or name.startswith(only))]
    if extra:
        raise TinyZeroError(f"checkpoint file {folder / extra[0]} was not part of the checkpoint when it was saved: "
                            f"remove it, or {fix}")
    return True
