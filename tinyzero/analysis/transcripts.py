"""Transcript files and annotated transcripts: reading JSONL(.gz), problem identity, marked-up text.

A run writes every training completion to ``rollouts.jsonl.gz`` and every evaluation completion to
``evals.jsonl.gz`` (one JSON object per line: step, prompt, completion, score, correct, problem). The trainer,
``tinyzero aha`` and ``tinyzero report`` read them through this module.

Simplification: two transcripts are "on the same problem" when their problems serialise to the same JSON (keys
sorted), or, without a problem, when their prompts are equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from tinyzero.analysis.aha import Analysis, annotate_plain, segments
from tinyzero.errors import TinyZeroError
from tinyzero.jsonl import read_rows


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSONL or JSONL.gz file (gzip is recognised by its magic bytes, not the name); an unfinished last
    line or gzip member, as a kill leaves it, is dropped with a note (``tinyzero/jsonl.py``)."""
    path = Path(path)
    if not path.is_file():
        raise TinyZeroError(f"{path} does not exist: give a JSONL or JSONL.gz transcript file")
    for _, row in read_rows(path):
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
            step = row.get("step", first_step)
            if not isinstance(step, int | float):
                continue  # not a run's own row; the report names such rows
            if step > first_step:
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


def pick_transcripts(tracker, settings, step: int, analyses: list[Analysis], rows: list[dict], kind: str,
                     run_dir: Path) -> list[tuple[str, list[str]]]:
    """The annotated transcripts a step logs, as (TensorBoard tag, markdown blocks).

    The first task-grounded check ever seen in ``kind`` ("rollout" or "eval"; an eval's counts from step 1),
    beside a step-0 transcript of the same problem when the run has one; it is recorded in ``tracker`` so it is
    picked once. And, every ``settings.transcripts_every`` rollout steps, ``settings.transcripts`` completions,
    checks first, then reflections (``settings``: the run's ``aha`` config)."""
    picked = []
    verified = [i for i, x in enumerate(analyses) if x.verified]
    if verified and tracker.first_verification.get(kind) is None and (kind == "rollout" or step > 0):
        tracker.first_verification[kind] = step
        i = verified[0]
        blocks = [transcript_markdown(f"step {step}, first {kind} check", analyses[i], rows[i])]
        before = same_problem_at_start(run_dir, rows[i].get("problem"), rows[i].get("prompt"))
        if before is not None and before.get("step") != step:
            old = tracker.analyse([before["completion"]], [before.get("prompt")], [before.get("problem")])[0]
            blocks.append(transcript_markdown(f"step {before.get('step', 0)}, same problem", old, before))
        picked.append((f"aha/first_verification_{kind}", [LEGEND, *blocks]))
    every, count = settings.transcripts_every, settings.transcripts
    if kind == "rollout" and every and step % every == 0 and count:
        order = sorted(range(len(analyses)), key=lambda j: (not analyses[j].verified, not analyses[j].reflections))
        picked.append(("aha/transcripts", [LEGEND, *(transcript_markdown(f"step {step}", analyses[j], rows[j])
                                                      for j in order[:count])]))
    return picked
