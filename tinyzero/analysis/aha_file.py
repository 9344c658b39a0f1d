"""The aha analysis of a transcript file after the fact: ``tinyzero aha FILE`` and ``tinyzero report``.

Any JSONL or JSONL.gz file of completions works; the field names are configurable. With a ``problem`` field and
an environment (``--env``, or the ``config.yaml`` of the run folder the file sits in) the task-grounded
verification metrics are computed too; without them only the lexical ones, and ``verification_rate`` is null.
Steps, when present, give one row of metrics per step; the first step is the baseline and the aha step follows
the trainer's rule (``tinyzero.analysis.aha.aha_step``).

Simplification: every examined completion (at most ``max_chars`` characters each) is held in memory until the
file is read; a run of 200 steps × 512 completions × 8,000 characters is about 800 MB at worst.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tinyzero.analysis.aha import (
    DEFAULT_LEXICON,
    DEFAULT_MAX_CHARS,
    Analysis,
    Tracker,
    aha_step,
    batch_metrics,
    signal_name,
)
from tinyzero.analysis.transcripts import read_jsonl
from tinyzero.errors import TinyZeroError
from tinyzero.fields import short


@dataclass(frozen=True)
class Fields:
    """Field names in the transcript file: completion text (required), the rest optional."""

    completion: str = "completion"
    problem: str = "problem"
    step: str = "step"
    correct: str = "correct"
    prompt: str = "prompt"


@dataclass(frozen=True)
class Settings:
    """What the analysis needs besides the file: the environment (or None), lexicon and aha rule."""

    env: object | None = None
    lexicon: Mapping | None = None
    margin: float = 0.05
    patience: int = 3
    max_chars: int = DEFAULT_MAX_CHARS


def settings_for(path: Path, env_name: str | None = None, env_options: Mapping | None = None) -> Settings:
    """An explicit ``--env`` wins; else the run folder's config.yaml (its env and its aha section); else none."""
    from tinyzero.envs import make_env

    config_file = path.parent / "config.yaml"
    if env_name is not None:
        return Settings(env=make_env(env_name, env_options or {}))
    if config_file.is_file():
        from tinyzero.config import load_config

        config = load_config(config_file)
        aha = config.aha
        return Settings(make_env(config.env.name, config.env.options), aha.lexicon, aha.margin, aha.patience,
                        aha.max_chars)
    return Settings()


def _row_text(row: dict, fields: Fields, number: int, path: Path) -> str:
    text = row.get(fields.completion)
    if not isinstance(text, str):
        raise TinyZeroError(f"{path} row {number} has no text field {fields.completion!r}: name the completion field "
                            "with --completion-field")
    return text


def _row_step(row: dict, fields: Fields, number: int, path: Path):
    """The row's step: a finite number, a text label, or None; a list, an object or NaN is one sentence."""
    import math

    step = row.get(fields.step)
    if step is None or isinstance(step, str) or (isinstance(step, int | float) and math.isfinite(step)):
        return step
    raise TinyZeroError(f"{path} row {number} has a {type(step).__name__} {short(step)} as its step "
                        f"{fields.step!r}: name the step field with --step-field, or give a file whose steps are "
                        "numbers")


def analyse_file(path: str | Path, settings: Settings, fields: Fields = Fields()) -> dict:
    """The summary ``tinyzero aha --json`` prints (keys documented in docs/metrics.md)."""
    path = Path(path)
    tracker = Tracker(settings.lexicon or DEFAULT_LEXICON, settings.env, margin=settings.margin,
                      patience=settings.patience, max_chars=settings.max_chars)
    by_step: dict[object, tuple[list[Analysis], list]] = {}
    has_correct = True
    for number, row in enumerate(read_jsonl(path), start=1):
        text = _row_text(row, fields, number, path)
        problem = row.get(fields.problem)
        prompt = row.get(fields.prompt)
        analysis = tracker.analyse([text], [prompt if isinstance(prompt, str) else None],
                                   [problem if isinstance(problem, Mapping) else None])[0]
        correct = row.get(fields.correct)
        has_correct = has_correct and isinstance(correct, bool)
        group = by_step.setdefault(_row_step(row, fields, number, path), ([], []))
        group[0].append(analysis)
        group[1].append(correct)
    if not by_step:
        raise TinyZeroError(f"{path} holds no transcripts: give a file with one JSON object per completion")
    families = list(tracker.lexicon)
    everything = [a for analyses, _ in by_step.values() for a in analyses]
    all_correct = [c for _, cs in by_step.values() for c in cs] if has_correct else None
    overall = batch_metrics(everything, families, all_correct)
    summary = {
        "file": str(path),
        "env": getattr(settings.env, "name", None),
        "responses": len(everything),
        "reflection_rate": overall["reflection_rate"],
        "verification_rate": overall.get("verification_rate"),
        "metrics": overall,
        "by_step": [],
        "aha_step": None,
        "aha_signal": None,
    }
    steps = sorted(s for s in by_step if isinstance(s, int | float))
    if len(steps) != len(by_step):
        return summary  # no (or not only numeric) steps: the whole file is one batch
    baseline: dict[str, float] = {}
    series = []
    for step in steps:
        analyses, correct = by_step[step]
        values = batch_metrics(analyses, families, correct if has_correct else None)
        baseline = baseline or values
        name = signal_name(baseline)
        if values is not baseline and name in values:
            series.append((step, values[name]))
        summary["by_step"].append({"step": step, "responses": len(analyses),
                                   "reflection_rate": values["reflection_rate"],
                                   "verification_rate": values.get("verification_rate"),
                                   "accuracy": sum(map(bool, correct)) / len(correct) if has_correct else None,
                                   "metrics": values})
    name = signal_name(baseline)
    summary["aha_signal"] = name
    summary["aha_step"] = aha_step(series, baseline[name], settings.margin, settings.patience)
    return summary


def table(summary: dict) -> str:
    """The summary as a plain-text table, one line per step."""
    def pct(x):
        return "     -" if x is None else f"{100 * x:5.1f}%"

    lines = [f"{summary['file']}: {summary['responses']} responses, env {summary['env'] or 'none (lexical only)'}",
             f"{'step':>6} {'n':>5} {'reflect':>7} {'verify':>7} {'cands':>6} {'acc':>7} {'chars':>7}"]
    rows = summary["by_step"] or [{"step": "all", "responses": summary["responses"], "metrics": summary["metrics"],
                                   "accuracy": None}]
    for row in rows:
        m = row["metrics"]
        cands = f"{m['candidates_mean']:6.2f}" if "candidates_mean" in m else "     -"
        lines.append(f"{row['step']!s:>6} {row['responses']:>5} {pct(m['reflection_rate']):>7} "
                     f"{pct(m.get('verification_rate')):>7} {cands} {pct(row.get('accuracy')):>7} "
                     f"{m['chars_mean']:7.0f}")
    lines.append(f"{'all':>6} {summary['responses']:>5} {pct(summary['reflection_rate']):>7} "
                 f"{pct(summary['verification_rate']):>7}")
    top = sorted(((k.split("/", 1)[1], v) for k, v in summary["metrics"].items() if k.startswith("reflection/")),
                 key=lambda kv: -kv[1])
    lines.append("families: " + (", ".join(f"{k} {100 * v:.1f}%" for k, v in top if v > 0) or "none found"))
    if summary["by_step"]:
        found = summary["aha_step"]
        lines.append(f"aha step ({summary['aha_signal']} vs step {summary['by_step'][0]['step']}): "
                     + (str(found) if found is not None else "none"))
    return "\n".join(lines)
