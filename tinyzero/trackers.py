"""Weights & Biases as a mirror of the run log (``log.wandb``): beside TensorBoard and the files, never instead.

What is mirrored: every scalar TensorBoard gets (the ``metrics.jsonl`` columns each step, and every evaluation's),
the sample completions as a table per step (``samples/train``, ``samples/eval``: prompt, completion, score,
correct, reason), and the resolved config. Annotated transcripts stay in TensorBoard and the report.

The W&B run id is kept in the run folder (``wandb_run_id``), so ``tinyzero resume`` continues the same W&B run.
W&B's files go into the run folder too (``RUN/wandb/``; its artifact staging and cache into ``RUN/cache/wandb``
unless ``WANDB_DATA_DIR`` / ``WANDB_CACHE_DIR`` say otherwise): an offline run is uploaded later with
``wandb sync RUN/wandb/offline-run-*``.
Simplification: steps a resumed run redoes (logged once before a crash, then again) keep their first values in W&B,
which takes each step once; the files and TensorBoard are truncated and hold the redone ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinyzero.errors import TinyZeroError

WANDB_VERSION = "0.31.0"  # pyproject.toml's `wandb` extra
INSTALL = ("log.wandb=true needs the wandb extra, which is not installed: pip install -e '.[wandb]' "
           f"(or pip install wandb=={WANDB_VERSION}), or set log.wandb=false")
ID_FILE = "wandb_run_id"
TABLE_COLUMNS = ("prompt", "completion", "score", "correct", "reason")


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise TinyZeroError(INSTALL) from None
    return wandb


def stored_id(run_dir: Path) -> str | None:
    """The W&B run id a run folder holds (a resumed run), or None (W&B picks one; it is stored at once)."""
    path = run_dir / ID_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


class WandbMirror:
    """One W&B run that receives what the run log writes (``RunLog(..., mirror=...)``)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, mode: str, config: dict):
        wandb = _import_wandb()
        self._wandb = wandb
        cache = run_dir / "cache" / "wandb"
        os.environ.setdefault("WANDB_DATA_DIR", str(cache / "data"))  # artifact staging: the tables
        os.environ.setdefault("WANDB_CACHE_DIR", str(cache))
        ident = stored_id(run_dir)
        try:
            # console="off": the kit's stdout is its progress log, already mirrored as scalars; W&B's capture
            # would wrap the stream the run log prints to.
            self.run = wandb.init(project=project, name=name, id=ident, resume="allow", mode=mode, dir=str(run_dir),
                                  config=config, settings=wandb.Settings(silent=True, console="off"))
        except wandb.errors.Error as err:
            raise TinyZeroError(f"W&B could not start the run ({err}): for log.wandb_mode=online log in with "
                                "`wandb login` or set WANDB_API_KEY; or use log.wandb_mode=offline") from None
        if ident is None:
            (run_dir / ID_FILE).write_text(self.run.id + "\n", encoding="utf-8")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def table(self, tag: str, step: int, rows: list[dict]) -> None:
        data = [[row.get(column) for column in TABLE_COLUMNS] for row in rows]
        self.run.log({tag: self._wandb.Table(columns=list(TABLE_COLUMNS), data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_wandb(config, run_dir: Path) -> WandbMirror | None:
    """The W&B mirror a config asks for (``log.wandb``), or None."""
    log = config.log
    if not log.wandb:
        return None
    from tinyzero.config import to_dict

    return WandbMirror(run_dir, project=log.wandb_project, name=log.wandb_name or config.run.name,
                       mode=log.wandb_mode, config=to_dict(config))
