"""Transcript files and annotated transcripts: reading JSONL(.gz), problem identity, marked-up text.

A run writes every training completion to ``rollouts.jsonl.gz`` and every evaluation completion to
``evals.jsonl.gz`` (one JSON object per line: step, prompt, completion, score, correct, problem). The trainer,
``tinyzero aha`` and ``tinyzero report`` read them through this module.

Simplification: two transcripts are "on the same problem" when their problems serialise to the same JSON (keys
sorted), or, without a problem, when their prompts are equal.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from tinyzero.aha import Analysis, annotate_plain, segments
from tinyzero.errors import TinyZeroError


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSONL or JSONL.gz file (gzip is recognised by its magic bytes, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise TinyZeroError(f"{path} does not exist: give a JSONL or JSONL.gz transcript file")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TinyZeroError(f"{path} line {number} is not JSON ({err.msg}): give one object per line") from None
            if not isinstance(row, dict):
                raise TinyZeroError(f"{path} line {number} is not a JSON object: give one object per line")
            yield row


def problem_id(problem: object, prompt: object = None) -> str | None:
    """Identity of a problem for "same problem" comparisons (see the module docstring)."""
    if isinstance(problem, Mapping):
        return json.dumps(problem, sort_keys=True, default=str)
    return f"prompt:{prompt}" if isinstance(prompt, str) else None


def same_problem_at_start(run_dir: Path, problem: object, prompt: object = None) -> dict | None:
    """A step-0 transcript of this problem: the step-0 evaluation first, else the first rollout batch."""
    want = problem_id(problem, prompt)
    if want is None:
        return None
    for name, first_step in (("evals.jsonl.gz", 0), ("rollouts.jsonl.gz", 1)):
        path = run_dir / name
        if not path.is_file():
            continue
        for row in read_jsonl(path):
            if row.get("step", first_step) > first_step:
                break  # rows are written step by step
            if problem_id(row.get("problem"), row.get("prompt")) == want:
                return row
    return None


def transcript_markdown(title: str, analysis: Analysis, row: Mapping) -> str:
    """One annotated transcript for TensorBoard: a header line, then the text with [[…]] / {{…}} marks."""
    families = sorted(analysis.families)
    checks = len(analysis.checks.spans) if analysis.checks is not None else "n/a"
    score = row.get("score")
    head = (f"**{title}** — score {score:.2f}, " if isinstance(score, int | float) else f"**{title}** — ")
    head += (f"correct {row.get('correct')}; reflection: {', '.join(families) or 'none'}; checks: {checks}")
    # Four backticks: a completion holding a three-backtick fence cannot close this block.
    return f"{head}\n\n````\n{annotate_plain(analysis)}\n````"


def transcript_html(analysis: Analysis) -> str:
    """The examined text as HTML, reflection phrases and checks in <mark> elements (escaped)."""
    from html import escape

    parts = []
    for kind, piece in segments(analysis):
        parts.append(f'<mark class="{kind}">{escape(piece)}</mark>' if kind else escape(piece))
    return "".join(parts)


LEGEND = "marks: [[re-checking phrase]], {{task-grounded check}}"
