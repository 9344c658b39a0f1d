"""A finished (or running) run folder as the reports read it: its resolved config, its control, its logs.

Reads only: ``config.yaml`` (YAML, never executed), ``metrics.jsonl`` and the newest checkpoint's ``state.json``.
Simplification: a run folder without a ``config.yaml`` reads as the defaults would (no control, nothing differs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from tinyzero.analysis.transcripts import read_jsonl
from tinyzero.checkpoint import latest_checkpoint, read_state
from tinyzero.errors import TinyZeroError

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


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise TinyZeroError(f"{run_dir} has no metrics.jsonl: give a run folder such as runs/demo")
    return list(read_jsonl(path))


def eval_history(run_dir: Path) -> list[dict]:
    """Every held-out evaluation so far, from the newest complete checkpoint ([] without one)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / "state.json").is_file():
        return []
    history = read_state(ckpt).get("history", [])  # read_state names a damaged state.json in one sentence
    return [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []
