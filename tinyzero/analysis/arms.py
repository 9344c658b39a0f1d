"""Arms: runs whose configs differ only by ``run.seed`` read as one arm, and an arm's verdict against a baseline arm.

An arm's curve is the mean over its seeds at each step every seed has, with its spread (sample standard deviation,
lowest and highest). An arm is held against the baseline on a share (held-out accuracy at the last evaluation all
runs of both arms made after step 0; training accuracy pooled over the last third of their common steps), and the
gap between the two means counts only where it exceeds both bands at 95%:

- the seed-to-seed spread: Welch's t band, ``t(df) * sqrt(s_a^2 / k_a + s_b^2 / k_b)`` over the seeds' values
  (k seeds, sample variance s^2; Welch-Satterthwaite degrees of freedom, rounded down);
- the measurement noise: the binomial band of the two means, ``1.96 * sqrt(sum p(1-p)/n / k^2)`` per arm, with
  each share's p and n taken as (x + 1) / (n + 2) and n + 2 (Agresti and Caffo, 2000), so that a seed at 0% or 100%
  does not claim a noise of zero.

The spread across seeds already holds the measurement noise of each seed's figure; the binomial band is kept beside
it because two seeds can agree by chance, and then the spread alone would claim too much. With one seed in either
arm there is no spread to hold a gap against, and the verdict says the data cannot say (and what the noise alone
shows).
Simplifications: the seeds of two arms are treated as independent draws, though arms given the same seeds share
their data order and held-out problems (a paired comparison would be sharper); a training batch's completions are
counted as independent draws, though a prompt's samples are not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tinyzero.analysis.claim import Z95, Share
from tinyzero.analysis.runs import NOT_A_DIFFERENCE, flatten

SEED_KEY = "run.seed"
# Two-sided 95% quantiles of Student's t by degrees of freedom; a df between two entries takes the lower entry's
# (wider) value. Reference values, e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t95(df: float) -> float:
    """The two-sided 95% quantile of Student's t at ``df`` degrees of freedom (at least 1), rounded to the safe side."""
    if not df >= 1:
        raise ValueError(f"t95 needs at least one degree of freedom, got {df}")
    if math.isinf(df) or df > max(_T95):
        return Z95 if math.isinf(df) else _T95[max(_T95)]
    return _T95[max(d for d in _T95 if d <= df + 1e-9)]  # Welch's df of equal spreads is 2 give or take an ulp


def arm_key(config: Mapping) -> tuple:
    """What makes runs one arm: every dotted key of the config but the seed, the run's name and its folder."""
    flat = flatten(config)
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in (SEED_KEY, *NOT_A_DIFFERENCE)))


def group_arms(configs: list[Mapping]) -> list[list[int]]:
    """Indices of the configs, grouped into arms in order of first appearance."""
    arms: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        arms.setdefault(arm_key(config), []).append(index)
    return list(arms.values())


@dataclass(frozen=True)
class Spread:
    """One step of an arm: the mean over its ``n`` seeds, their sample standard deviation (None for one seed), and
    the lowest and highest seed."""

    mean: float
    sd: float | None
    lo: float
    hi: float
    n: int


    def short(self) -> str:
        """``62.0% ± 2.8 (60%–64%)`` for shares (one seed: ``62.0%``), as the page's and the terminal's tables show it."""
        if self.sd is None:
            return f"{self.mean:.1%}"
        return f"{self.mean:.1%} ± {100 * self.sd:.1f} ({self.lo:.0%}–{self.hi:.0%})"


def spread(values: list[float]) -> Spread:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(mean, sd, min(values), max(values), n)


def per_step(series: list[Mapping[int, float]]) -> dict[int, Spread]:
    """An arm's curve: at each step that every seed's series has, the spread of their values."""
    if not series:
        return {}
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return {step: spread([s[step] for s in series]) for step in steps}


@dataclass(frozen=True)
class ArmVerdict:
    """One metric of an arm against the baseline arm: ``above``, ``below``, ``within`` (the gap is inside a band) or
    ``unknown`` (the data cannot say), the bands at 95% (``seed_band`` None with one seed in either arm), and the
    sentence that says it."""

    metric: str
    verdict: str
    gap: float | None
    seed_band: float | None
    noise_band: float | None
    text: str

    @property
    def word(self) -> str:
        """The verdict in a few words, for the terminal's table."""
        return {"above": "higher", "below": "lower", "within": "no difference shown",
                "unknown": "cannot say"}[self.verdict]


def _noise_band(shares: list[Share]) -> float:
    """The variance of the mean of independent binomial shares: the sum of their variances over k^2, each share
    counted with one success and one failure added (Agresti-Caffo)."""
    adjusted = [((s.value * s.n + 1) / (s.n + 2), s.n + 2) for s in shares]
    return sum(p * (1 - p) / n for p, n in adjusted) / len(shares) ** 2


def _seed_band(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's band (its half-width at 95%) and its degrees of freedom; both arms have at least two seeds."""
    va, vb = spread(a).sd ** 2 / len(a), spread(b).sd ** 2 / len(b)
    if va + vb == 0:  # every seed of both arms gave the same figure: no spread, the noise band decides
        return 0.0, math.inf
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t95(df) * math.sqrt(va + vb), df


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _describe(shares: list[Share]) -> str:
    s = spread([x.value for x in shares])
    if s.n == 1:
        return f"{_pct(s.mean)} (1 seed)"
    return f"{_pct(s.mean)} ± {100 * s.sd:.1f} (sd of {s.n} seeds, {_pct(s.lo)}–{_pct(s.hi)})"


def compare_shares(metric: str, where: str, arm: list[Share], base: list[Share]) -> ArmVerdict:
    """The arm's seeds against the baseline's on one share measured ``where`` (e.g. "at step 12")."""
    a, b = [s.value for s in arm], [s.value for s in base]
    gap = sum(a) / len(a) - sum(b) / len(b)
    noise = Z95 * math.sqrt(_noise_band(arm) + _noise_band(base))
    said = (f"{where}: {_describe(arm)} against {_describe(base)}, {100 * gap:+.1f} points; the measurement noise is "
            f"±{100 * noise:.1f} points at 95%")
    if len(a) < 2 or len(b) < 2:
        alone = "beyond" if abs(gap) > noise else "within"
        return ArmVerdict(metric, "unknown", gap, None, noise,
                          f"{metric}: the data cannot say — one seed in {'the arm' if len(a) < 2 else 'the baseline'}"
                          f" leaves no seed-to-seed spread to hold the gap against ({said}, and the gap is {alone} "
                          "it); run two seeds or more (--seeds).")
    band, df = _seed_band(a, b)
    said += (f", the seed-to-seed spread ±{100 * band:.1f} points (Welch's t, {df:.1f} degrees of freedom)"
             if math.isfinite(df) else ", and every seed of both arms gave the same figure (no seed-to-seed spread)")
    if abs(gap) <= max(band, noise):
        inside = "the seed-to-seed spread" if band >= noise else "the measurement noise"
        return ArmVerdict(metric, "within", gap, band, noise, f"{metric}: no difference shown — {said}; the gap is "
                                                              f"within {inside}.")
    verdict = "above" if gap > 0 else "below"
    word = "higher than" if gap > 0 else "lower than"
    return ArmVerdict(metric, verdict, gap, band, noise, f"{metric}: {word} the baseline's — {said}; the gap exceeds "
                                                         "both.")


def held_out_verdict(metric: str, arm: list[Mapping[int, Share]], base: list[Mapping[int, Share]]) -> ArmVerdict:
    """A held-out share at the last evaluation after step 0 that every run of both arms made."""
    runs = [*arm, *base]
    if not all(runs):
        return ArmVerdict(metric, "unknown", None, None, None, f"{metric}: the data cannot say — a run has no "
                                                               "held-out evaluation yet.")
    common = sorted(s for s in set.intersection(*(set(r) for r in runs)) if s > 0)
    if not common:
        return ArmVerdict(metric, "unknown", None, None, None, f"{metric}: the data cannot say — the runs share no "
                                                               "evaluation after step 0 (set eval.every, or train "
                                                               "longer).")
    last = common[-1]
    return compare_shares(metric, f"at step {last}", [r[last] for r in arm], [r[last] for r in base])


def pooled_last_third(series: Mapping[int, Share], steps: list[int]) -> Share:
    """A run's training share pooled over the last third of ``steps`` (at least one step)."""
    window = steps[-max(1, len(steps) // 3):]
    n = sum(series[s].n for s in window)
    return Share(sum(series[s].value * series[s].n for s in window) / n, n)


def training_verdict(metric: str, arm: list[Mapping[int, Share]], base: list[Mapping[int, Share]]) -> ArmVerdict:
    """A training-batch share, each run's pooled over the last third of the steps every run of both arms has."""
    runs = [*arm, *base]
    common = sorted(set.intersection(*(set(r) for r in runs))) if all(runs) else []
    if not common:
        return ArmVerdict(metric, "unknown", None, None, None, f"{metric}: the data cannot say — the runs share no "
                                                               "training step.")
    window = common[-max(1, len(common) // 3):]
    where = f"over steps {window[0]}–{window[-1]}" if len(window) > 1 else f"at step {window[0]}"
    return compare_shares(metric, where, [pooled_last_third(r, common) for r in arm],
                          [pooled_last_third(r, common) for r in base])
