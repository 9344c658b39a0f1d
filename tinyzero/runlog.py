"""Everything a run writes for people and for later analysis.

- TensorBoard scalars (namespaced ``rollout/``, ``reward/``, ``train/``, ``eval/``, ``time/``, ``cost/``, ``aha/``; each explained in
  docs/metrics.md), the resolved config and sample completions as text;
- ``metrics.jsonl``: the same scalars, one JSON object per step (for scripts and tests);
- ``rollouts.jsonl.gz``: every completion of every step (prompt, completion, reward, correct, step); gzip
  members are appended per step, which any gzip reader reads as one stream; ``evals.jsonl.gz``: the same for
  every held-out evaluation (step 0 included);
  a kill during an append leaves an unfinished last line or member, which the readers (``tinyzero/jsonl.py``)
  drop with a note;
- annotated transcripts (``aha/`` text: re-checking phrases and task-grounded checks marked);
- one progress line per step on stdout: step, reward, accuracy, seconds per step, ETA and, with a price, dollars;
- with a mirror (``log.wandb``: tinyzero/trackers.py), the scalars and sample tables go to Weights & Biases too.

The run folder itself is claimed first (``claim_run_dir``): the kit writes its own marker file into it, and it
only ever clears a folder that holds that marker, deleting only what it writes there (``KIT_ENTRIES``): a marked
folder with anything else in it, like any other existing folder with something in it, is refused.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

from tinyzero.errors import TinyZeroError

LOG_FILES = ("metrics.jsonl", "rollouts.jsonl.gz", "evals.jsonl.gz")  # the per-step records a resume truncates
RUN_MARKER = ".tinyzero-run"  # written by `tinyzero train` into each run folder it makes: only these are ever cleared


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RunLog:
    def __init__(self, run_dir: Path, total_steps: int, *, tensorboard: bool = True, samples: int = 2,
                 stream=None, mirror=None):
        self.run_dir = run_dir
        self.mirror = mirror  # e.g. a trackers.WandbMirror: receives scalars and sample tables as well
        self.total_steps = total_steps
        self.samples = samples
        self.stream = stream or sys.stdout
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.step_times: list[float] = []

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def config(self, yaml_text: str) -> None:
        if self.writer is not None:
            self.writer.add_text("config", "```\n" + yaml_text + "\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One step's metrics: to TensorBoard and as one line of ``metrics.jsonl``."""
        self.tensorboard_scalars(step, values)
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")

    def tensorboard_scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars to TensorBoard and the mirror only (evaluations: their file record is the run's history)."""
        if self.mirror is not None:
            self.mirror.scalars(step, values)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def text(self, tag: str, step: int, rows: list[dict]) -> None:
        if self.mirror is not None and rows:
            self.mirror.table(tag, step, rows)
        if self.writer is None or not rows:
            return
        blocks = []
        for row in rows:
            blocks.append(
                f"**score {row['score']:.2f}, correct {row['correct']}**\n\n"
                f"```\n{row['prompt'][-400:]}\n```\n\n```\n{row['completion']}\n```"
            )
        self.writer.add_text(tag, "\n\n---\n\n".join(blocks), step)

    def markdown(self, tag: str, step: int, blocks: list[str]) -> None:
        """Markdown blocks as one TensorBoard text, separated by rules."""
        if self.writer is not None and blocks:
            self.writer.add_text(tag, "\n\n---\n\n".join(blocks), step)

    def rollouts(self, step: int, rows: list[dict], name: str = "rollouts.jsonl.gz") -> None:
        with gzip.open(self.run_dir / name, "at", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps({"step": step, **row}) + "\n")

    def evals(self, step: int, rows: list[dict]) -> None:
        """Every evaluation completion (``evals.jsonl.gz``), for step-0 comparisons on the same problem."""
        self.rollouts(step, rows, "evals.jsonl.gz")

    def progress(self, step: int, values: dict[str, float], seconds: float, usd_per_s: float = 0.0) -> None:
        """One line: step, reward, accuracy, length, seconds per step and phase, ETA, and with a price the
        dollars spent so far and projected at the end."""
        self.step_times.append(seconds)
        recent = self.step_times[-5:]
        eta = (self.total_steps - step) * sum(recent) / len(recent)
        cost = ""
        if "cost/usd" in values:
            cost = f" | ${values['cost/usd']:.2f} spent, ~${values['cost/usd'] + eta * usd_per_s:.2f} at the end"
        self.say(
            f"step {step}/{self.total_steps} | reward {values.get('reward/mean', 0):.3f} "
            f"| acc {values.get('reward/accuracy', 0):.3f} | len {values.get('rollout/response_length_mean', 0):.0f} "
            f"| {seconds:.1f} s/step (rollout {values.get('time/rollout', 0):.1f}, "
            f"learner {values.get('time/learner', 0):.1f}) | ETA {_fmt_duration(eta)}{cost}"
        )

    def truncate_after(self, step: int) -> None:
        """Drop what was logged after ``step`` (metrics, completions): a run resumed from that step's checkpoint
        redoes the later steps, so its logs then read like an uninterrupted run's."""
        for name in LOG_FILES:
            truncate_jsonl(self.run_dir / name, step, note=self.say)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mirror is not None:
            self.mirror.close()


def truncate_jsonl(path: Path, step: int, note=None) -> None:
    """Keep only rows of ``step`` or earlier (a resumed run redoes the later ones) of a JSONL file, gzipped or
    not (by its suffix), streaming, replaced atomically. An unfinished last line or gzip member (a kill during an
    append) is dropped, and ``note`` told; a row that is not JSON with a step is one sentence naming the file."""
    if not path.exists():
        return
    from tinyzero.jsonl import read_lines

    opener = gzip.open if path.suffix == ".gz" else open
    tmp = path.with_name(path.name + ".truncating")
    with opener(tmp, "wt", encoding="utf-8") as dst:
        for number, line in read_lines(path, note):
            if line.strip() and _row_step(line, path, number) <= step:
                dst.write(line + "\n")  # a newline of its own: the line may have lost its own to a kill
    tmp.replace(path)


def last_logged_step(run_dir: Path) -> int | float | None:
    """The last step ``metrics.jsonl`` records (0 when it holds no row; None when the run has no such file), read
    as a resume reads it: an unfinished last line is left to ``truncate_after`` to drop and say; a row without a
    step is one sentence naming the file."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    if not path.is_file():
        raise TinyZeroError(f"{path} is not a file, so the run cannot be resumed with it: move it aside")
    from tinyzero.jsonl import read_lines

    last: int | float = 0
    for number, line in read_lines(path, note=lambda text: None):
        if line.strip():
            last = max(last, _row_step(line, path, number))
    return last


def _row_step(line: str, path: Path, number: int) -> int | float:
    try:
        value = json.loads(line).get("step")
    except (ValueError, RecursionError, AttributeError):
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TinyZeroError(f"{path} line {number} is not a JSON object with a step, so the run cannot be resumed "
                            "with it: move the file aside (the resumed run starts a new one)")
    return value


# What `tinyzero train` writes in a run folder before its first step is logged (``metrics.jsonl``, which makes the
# folder a run), by top-level name -> the names (glob patterns) it writes inside a folder of that name (None: a file).
# Only a marked folder holding nothing else is cleared, and only these are deleted. wandb/ is W&B's own layout.
KIT_ENTRIES: dict[str, tuple[str, ...] | None] = {
    RUN_MARKER: None, "config.yaml": None, "evals.jsonl.gz": None, "rollouts.jsonl.gz": None, "wandb_run_id": None,
    "metrics.jsonl.truncating": None, "rollouts.jsonl.gz.truncating": None, "evals.jsonl.gz.truncating": None,
    "tensorboard": ("events.out.tfevents.*",), "checkpoints": ("step_*", ".tmp-step_*"),
    "cache": ("vllm", "inductor", "wandb"), "wandb": ("*",),
}


def claim_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` a new run's folder, marked as the kit's own; refuse a folder the kit did not make.

    A folder that holds a run (metrics or a complete checkpoint) is refused whoever made it: it is resumed, not
    restarted. A marked folder with neither is what a run that never finished a step left: what the kit wrote there
    (``KIT_ENTRIES``) is cleared, unless anything else is inside, which refuses the folder with nothing touched. An
    empty folder is claimed as it is. Anything else is someone's folder, and nothing in it is touched."""
    from tinyzero.checkpoint import latest_checkpoint

    if run_dir.exists() and not run_dir.is_dir():
        raise TinyZeroError(f"{run_dir} is a file, not a run folder: pick another run.name (run.name=NEW)")
    if run_dir.is_dir():
        if latest_checkpoint(run_dir) is not None or (run_dir / "metrics.jsonl").exists():
            raise TinyZeroError(f"{run_dir} already holds a run: continue it with `tinyzero resume {run_dir}` "
                                "or pick another run.name (run.name=NEW)")
        if (run_dir / RUN_MARKER).is_file():
            _clear_unfinished(run_dir)  # the kit's own folder, from a run that never finished a step
        elif any(run_dir.iterdir()):
            raise TinyZeroError(f"{run_dir} exists and was not made by `tinyzero train`, so nothing in it is touched: "
                                f"pick another run.name (run.name=NEW), or continue a run there with "
                                f"`tinyzero resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("a tinyzero run folder: `tinyzero train` may clear what it wrote here if no "
                                      "step finished\n")


def _clear_unfinished(run_dir: Path) -> None:
    """Delete what the kit wrote in a marked folder whose run never finished a step, after checking that nothing else
    is there (one sentence naming the first thing that is not the kit's, and nothing deleted)."""
    entries = sorted(run_dir.iterdir())
    foreign = foreign_entry(run_dir)
    if foreign is not None:
        raise TinyZeroError(f"{run_dir} is a run folder that never finished a step, but it also holds "
                            f"{foreign.relative_to(run_dir)}, which `tinyzero train` does not write, so nothing in it "
                            "is touched: move that out (the rest is cleared on the next start), or pick another "
                            "run.name (run.name=NEW)")
    for path in entries:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def foreign_entry(run_dir: Path, also: tuple[str, ...] = ()) -> Path | None:
    """The first top-level entry of ``run_dir`` that the kit did not write (``KIT_ENTRIES``, and the plain files
    named in ``also``), or None: what must stop a command from clearing the folder."""
    for path in sorted(run_dir.iterdir()):
        if not (_kit_wrote(path) or (path.name in also and path.is_file() and not path.is_symlink())):
            return path
    return None


def _kit_wrote(path: Path) -> bool:
    """Whether ``path``, a top-level entry of a run folder, is one ``KIT_ENTRIES`` names, of the kind it names, holding
    only names the kit writes. A link there is never the kit's (the kit makes none; W&B's links inside wandb/ are
    removed as links by ``shutil.rmtree``, which follows none)."""
    if path.name not in KIT_ENTRIES or path.is_symlink():
        return False
    inside = KIT_ENTRIES[path.name]
    if inside is None:
        return path.is_file()
    return path.is_dir() and all(any(fnmatch.fnmatchcase(child.name, pattern) for pattern in inside)
                                 for child in path.iterdir())


class Timer:
    """``with timer("rollout"): ...`` accumulates seconds per phase."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timer.seconds[self.name] = self.timer.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
        return False
