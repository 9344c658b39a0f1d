"""The claim, stated with its control: did a run's held-out accuracy and aha rates rise above its control run's?

Each comparison ends in one verdict — rose above, fell below, or none — with the numbers behind it, in words:

- held-out shares (greedy accuracy, and the reflection and verification rates of the held-out completions) are
  compared at every evaluation both runs made after step 0, on the same problems; the verdict is that of the last
  one, and "over how many steps" is the stretch of evaluations, ending at the last, at which the run stayed beyond
  the noise;
- training-batch rates (reflection, verification) are pooled over the last third of the steps both runs have
  (at least one step), and the steps at which the run's rate was the higher one are counted.

A difference counts only beyond the binomial noise: 1.96 standard errors of a difference of two independent shares
(about 95%). No verdict is given with too few measurements (no common evaluation after step 0; fewer than three
common training steps) or when the held-out problems differ.
Simplification: completions are counted as independent draws. A prompt's G samples are not, so the training-batch
noise is understated; held-out problems are independent draws, and each has one greedy completion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Z95 = 1.96  # standard errors: a two-sided 95% band
MIN_TRAINING_STEPS = 3  # a baseline batch and at least two more before a training-rate verdict


@dataclass(frozen=True)
class Share:
    """A share measured on ``n`` items (completions or problems)."""

    value: float
    n: int


@dataclass(frozen=True)
class Finding:
    """One metric's verdict: ``above``, ``below`` or ``none`` (no verdict), and the sentence that says it."""

    metric: str
    verdict: str
    text: str


def noise(a: Share, b: Share) -> float:
    """Half-width of the 95% band of ``a.value - b.value`` for two independent binomial shares."""
    return Z95 * math.sqrt(a.value * (1 - a.value) / a.n + b.value * (1 - b.value) / b.n)


def _verdict(a: Share, b: Share) -> str:
    gap = a.value - b.value
    band = noise(a, b)
    return "above" if gap > band else "below" if gap < -band else "none"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f} points"


def _pooled(series: Mapping[int, Share], steps: list[int]) -> Share:
    n = sum(series[s].n for s in steps)
    return Share(sum(series[s].value * series[s].n for s in steps) / n, n)


def held_out(metric: str, run: Mapping[int, Share], control: Mapping[int, Share]) -> Finding:
    """Held-out share of the run against its control, evaluation by evaluation."""
    if not run or not control:
        return Finding(metric, "none", f"{metric}: not measured in {'the run' if not run else 'the control'}.")
    common = sorted(set(run) & set(control))
    after = [s for s in common if s > 0]
    if not after:
        return Finding(metric, "none", f"{metric}: no verdict — too few evaluations: the runs share no evaluation "
                                       "after step 0 (set eval.every, or train longer).")
    last = after[-1]
    a, b = run[last], control[last]
    said = (f"{_pct(a.value)} against {_pct(b.value)} at step {last} ({a.n} problems), "
            f"{_points(a.value - b.value)}; the binomial noise is ±{100 * noise(a, b):.1f} points at 95%")
    start = f" At step 0: {_pct(run[0].value)} and {_pct(control[0].value)}." if 0 in common else ""
    verdict = _verdict(a, b)
    if verdict == "none":
        return Finding(metric, "none", f"{metric}: no verdict — {said}, and the gap is within it.{start}")
    held = [s for s in after if _verdict(run[s], control[s]) == verdict]
    since = last
    for s in reversed(after):  # the unbroken stretch of evaluations beyond the noise that ends at the last one
        if s not in held:
            break
        since = s
    stretch = len([s for s in after if s >= since])
    word = "rose above" if verdict == "above" else "fell below"
    return Finding(metric, verdict, f"{metric}: {word} the control's — {said}. Beyond the noise at every evaluation "
                                    f"from step {since} to step {last} ({last - since} steps, {stretch} of "
                                    f"{len(after)} evaluations after step 0).{start}")


def training(metric: str, run: Mapping[int, Share], control: Mapping[int, Share]) -> Finding:
    """A training-batch rate of the run against its control: pooled over the last third of the common steps."""
    if not run or not control:
        return Finding(metric, "none", f"{metric}: not measured in {'the run' if not run else 'the control'}.")
    common = sorted(set(run) & set(control))
    if len(common) < MIN_TRAINING_STEPS:
        return Finding(metric, "none", f"{metric}: no verdict — too few training steps: the runs share "
                                       f"{len(common)}, and a verdict needs {MIN_TRAINING_STEPS}.")
    window = common[-max(1, len(common) // 3):]
    a, b = _pooled(run, window), _pooled(control, window)
    higher = sum(run[s].value > control[s].value for s in common[1:])
    said = (f"over steps {window[0]}–{window[-1]} {_pct(a.value)} against {_pct(b.value)} of {a.n} and {b.n} "
            f"completions, {_points(a.value - b.value)}; the binomial noise is ±{100 * noise(a, b):.1f} points at 95%")
    counted = f"The run's rate was the higher at {higher} of the {len(common) - 1} steps after step {common[0]}."
    verdict = _verdict(a, b)
    if verdict == "none":
        return Finding(metric, "none", f"{metric}: no verdict — {said}, and the gap is within it. {counted}")
    word = "rose above" if verdict == "above" else "fell below"
    return Finding(metric, verdict, f"{metric}: {word} the control's — {said}. {counted}")
