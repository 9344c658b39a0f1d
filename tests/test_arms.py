"""Arms over seeds (tinyzero/analysis/arms.py): grouping, the spread per step, and verdicts against a baseline arm,
each on hand-computed figures. Tolerances: the figures are a few float64 operations on numbers below 1, so they are
met to 1e-12 where computed exactly; the bands quoted in words are rounded to 0.1 point by the text itself."""

from __future__ import annotations

import math

import pytest

from tinyzero.analysis.arms import (
    compare_shares,
    group_arms,
    held_out_verdict,
    per_step,
    spread,
    t95,
    training_verdict,
)
from tinyzero.analysis.claim import Share


def config(seed: int, lr: float = 1e-5, name: str = "x") -> dict:
    return {"run": {"seed": seed, "name": name, "out_dir": "runs/sweep"}, "optim": {"lr": lr}}


def test_runs_that_differ_only_by_seed_name_or_folder_are_one_arm():
    configs = [config(0, name="a"), config(0, lr=1e-4), config(1, name="b"), config(2, lr=1e-4, name="c")]
    assert group_arms(configs) == [[0, 2], [1, 3]]  # in order of first appearance
    other = config(0)
    other["optim"]["epochs"] = 2  # a key one config lacks is a difference
    assert group_arms([config(0), other]) == [[0], [1]]


def test_t95_reads_the_table_to_the_safe_side():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(4) == 2.776
    assert t95(2.9) == 4.303  # between 2 and 3 degrees of freedom: the wider band of 2
    assert t95(2 - 4e-16) == 4.303  # Welch's formula gives 2 for equal spreads only to within rounding
    assert t95(45) == 2.042  # between the table's 30 and 60
    assert t95(1e6) == 1.980 and t95(math.inf) == 1.96
    with pytest.raises(ValueError):
        t95(0.5)


def test_spread_and_per_step():
    found = spread([0.5, 0.7])
    assert found.mean == pytest.approx(0.6, abs=1e-12) and found.sd == pytest.approx(math.sqrt(0.02), abs=1e-12)
    assert (found.lo, found.hi, found.n) == (0.5, 0.7, 2)
    assert spread([0.4]).sd is None
    curve = per_step([{0: 0.1, 4: 0.3, 8: 0.5}, {0: 0.2, 4: 0.5}])  # the second seed has not reached step 8 yet
    assert sorted(curve) == [0, 4]
    assert curve[4].mean == pytest.approx(0.4, abs=1e-12) and curve[4].lo == 0.3 and curve[4].hi == 0.5


def shares(*values: float, n: int = 100) -> list[Share]:
    return [Share(v, n) for v in values]


def test_two_seeds_each_a_30_point_gap_is_inside_welchs_band():
    # s^2 = 0.005 in each arm, so s^2/k = 0.0025 each, se = sqrt(0.005) = 0.0707; Welch's df = 0.005^2 /
    # (2 * 0.0025^2 / 1) = 2, t = 4.303: the band is 0.3043, just wider than the gap of 0.30.
    found = compare_shares("held-out accuracy", "at step 12", shares(0.6, 0.7), shares(0.3, 0.4))
    assert found.verdict == "within" and found.word == "no difference shown"
    assert found.gap == pytest.approx(0.3, abs=1e-12)
    assert found.seed_band == pytest.approx(4.303 * math.sqrt(0.005), abs=1e-12)
    assert "+30.0 points" in found.text and "±30.4 points (Welch's t, 2.0 degrees of freedom)" in found.text
    assert "within the seed-to-seed spread" in found.text


def test_three_seeds_each_the_same_gap_exceeds_both_bands():
    # s^2 = 0.0025 each, s^2/k = 0.000833, se = 0.0408, df = 4, t = 2.776: band 0.1133. The measurement noise, with
    # one success and one failure added to each share (61/102 ... for 0.6), is 1.96 * sqrt(sum var / 9) = 0.0755.
    found = compare_shares("held-out accuracy", "at step 12", shares(0.6, 0.65, 0.7), shares(0.3, 0.35, 0.4))
    assert found.verdict == "above" and found.word == "higher"
    assert found.seed_band == pytest.approx(2.776 * math.sqrt(2 * 0.0025 / 3), abs=1e-12)
    assert found.noise_band == pytest.approx(0.0754579, abs=1e-6)
    assert "65.0% ± 5.0 (sd of 3 seeds, 60.0%–70.0%) against 35.0% ± 5.0" in found.text
    assert compare_shares("a", "at step 12", shares(0.3, 0.35, 0.4), shares(0.6, 0.65, 0.7)).verdict == "below"


def test_seeds_that_agree_are_still_held_to_the_measurement_noise():
    # Every seed gave the same figure, so Welch's band is 0; the binomial band of the means still applies:
    # arm 0.5 -> 51/102 = 0.5, var 0.25/102; base 0.45 -> 46/102, var 0.45098 * 0.54902 / 102 = 0.0024274;
    # 1.96 * sqrt((2 * 0.0024510 + 2 * 0.0024274) / 4) = 0.0968, wider than the 5-point gap.
    found = compare_shares("held-out accuracy", "at step 12", shares(0.5, 0.5), shares(0.45, 0.45))
    assert found.verdict == "within" and found.seed_band == 0.0
    assert found.noise_band == pytest.approx(0.0968010, abs=1e-6)
    assert "within the measurement noise" in found.text and "no seed-to-seed spread" in found.text


def test_one_seed_cannot_say_but_says_what_the_noise_alone_shows():
    found = compare_shares("held-out accuracy", "at step 12", shares(0.9), shares(0.1, 0.12))
    assert found.verdict == "unknown" and found.seed_band is None and found.word == "cannot say"
    assert "one seed in the arm" in found.text and "the gap is beyond it" in found.text and "--seeds" in found.text
    assert "one seed in the baseline" in compare_shares("x", "here", shares(0.1, 0.2), shares(0.3)).text
    # A share of 0% is not a measurement without noise: 0 of 8 is counted as 1 of 10.
    zero = compare_shares("x", "here", [Share(0.0, 8)], [Share(0.0, 8)])
    assert zero.noise_band == pytest.approx(1.96 * math.sqrt(2 * 0.1 * 0.9 / 10), abs=1e-12)


def test_held_out_verdict_takes_the_last_evaluation_every_run_made():
    arm = [{0: Share(0.1, 100), 4: Share(0.5, 100), 8: Share(0.6, 100)},
           {0: Share(0.1, 100), 4: Share(0.55, 100), 8: Share(0.65, 100)}]
    base = [{0: Share(0.1, 100), 4: Share(0.2, 100)}, {0: Share(0.1, 100), 4: Share(0.25, 100)}]
    found = held_out_verdict("held-out accuracy", arm, base)
    assert "at step 4:" in found.text and found.gap == pytest.approx(0.3, abs=1e-12)
    only_start = held_out_verdict("held-out accuracy", [{0: Share(0.1, 100)}], base)
    assert only_start.verdict == "unknown" and "no evaluation after step 0" in only_start.text
    assert held_out_verdict("h", [{}], base).verdict == "unknown"


def test_training_verdict_pools_each_run_over_the_last_third_of_common_steps():
    def run(early: float, late: float) -> dict[int, Share]:
        return {s: Share(early if s <= 8 else late, 64) for s in range(1, 13)}

    found = training_verdict("training accuracy", [run(0.1, 0.5), run(0.1, 0.6)], [run(0.1, 0.2), run(0.1, 0.25)])
    assert "over steps 9–12" in found.text  # 12 common steps: the last 4
    assert found.gap == pytest.approx(0.55 - 0.225, abs=1e-12)
    assert training_verdict("t", [{}], [run(0.1, 0.2)]).verdict == "unknown"
