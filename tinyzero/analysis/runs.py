"""A finished (or running) run folder as the reports read it: its resolved config, its control, its logs.

Reads only: ``config.yaml`` (YAML, never executed), ``metrics.jsonl`` and the newest checkpoint's ``state.json``.
Rows without a step number are left out of both (a note says so for ``metrics.jsonl``); a held-out accuracy that is
not a share between 0 and 1 is refused in one sentence, since the claim's noise band is computed from it.
Simplification: a run folder without a ``config.yaml`` reads as the defaults would (no control, nothing differs).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from tinyzero.checkpoint import latest_checkpoint, read_state
from tinyzero.errors import TinyZeroError
from tinyzero.fields import short
from tinyzero.jsonl import read_rows

# Keys that differ between any two runs and say nothing about how they trained.
NOT_A_DIFFERENCE = ("run.name", "run.out_dir")


def read_config(run_dir: Path) -> dict:
    """The run's resolved config as a tree of plain values ({} when the folder has none)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise TinyZeroError(f"{path} is not a readable YAML config ({str(err).splitlines()[0]}): restore the run's "
                            "config.yaml or leave the run out") from None
    if not isinstance(tree, Mapping):
        raise TinyZeroError(f"{path} holds no mapping of sections: restore the run's config.yaml")
    return dict(tree)


def control_of(config: Mapping) -> str:
    """``reward.control`` of a config tree: ``none`` for runs made before control runs existed."""
    reward = config.get("reward")
    return str(reward.get("control", "none")) if isinstance(reward, Mapping) else "none"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Dotted keys to leaf values: ``{"env": {"options": {"digits": 2}}}`` -> ``{"env.options.digits": 2}``."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_differences(configs: list[Mapping]) -> list[tuple[str, list[object]]]:
    """The dotted keys whose values are not the same in every config (a key one lacks counts), sorted, each with
    its value per config (None where absent); ``run.name`` and ``run.out_dir`` are left out."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats) - set(NOT_A_DIFFERENCE)) if flats else []
    missing = object()
    out = []
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            out.append((key, [None if v is missing else v for v in values]))
    return out


def number(value) -> bool:
    """A finite int or float, not a bool: what a step or a metric value must be to be drawn or compared."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` that have a step number. A row without one (a script's, an edit's) is left out
    of every curve and count, and one note line says how many were, from which line on."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise TinyZeroError(f"{run_dir} has no metrics.jsonl: give a run folder such as runs/demo")
    rows, skipped = [], []
    for line, row in read_rows(path):
        (rows if number(row.get("step")) else skipped).append((line, row))
    if skipped:
        line, row = skipped[0]
        rows_were = "1 row without a step number was" if len(skipped) == 1 else \
            f"{len(skipped)} rows without a step number were"
        print(f"tinyzero: note: {path}: {rows_were} left out of the report (the first, line {line}: step "
              f"{short(row.get('step'))})", file=sys.stderr)
    return [row for _, row in rows]


def eval_history(run_dir: Path) -> list[dict]:
    """Every held-out evaluation so far, from the newest complete checkpoint ([] without one); rows without a step
    number are left out, and an accuracy that is not a share between 0 and 1 is one sentence naming the file."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / "state.json").is_file():
        return []
    history = read_state(ckpt).get("history", [])  # read_state names a damaged state.json in one sentence
    rows = [row for row in history if isinstance(row, dict) and number(row.get("step"))] \
        if isinstance(history, list) else []
    for row in rows:
        accuracy = row.get("eval/accuracy", 0.0)
        if not (number(accuracy) and 0 <= accuracy <= 1):
            raise TinyZeroError(f"{ckpt / 'state.json'} holds a held-out accuracy of {short(accuracy)} at step "
                                f"{row['step']}, not a share between 0 and 1: restore the file from a copy, or move "
                                f"{ckpt} aside to report from the checkpoint before it")
    return rows
