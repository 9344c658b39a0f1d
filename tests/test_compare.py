"""``tinyzero report RUN RUN ...``: runs side by side, and the claim against a control, on crafted run folders.

The folders are written by hand with known counts, so every verdict and number the page states can be checked:
a run whose held-out accuracy and task-grounded checks rise, and a ``shuffled`` control whose stay flat.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinyzero.analysis import compare
from tinyzero.analysis.claim import Share, held_out, noise, training

P = {"numbers": [3, 5, 7], "target": 22}
CHECK = "Wait, 3 + 5 = 8, not 22. 3 * 5 + 7 = 22 ✓ <answer>3 * 5 + 7</answer>"  # a reflection and a check
PLAIN = "<answer>3 * 5 + 7</answer>"


def write_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def make_run(root: Path, name: str, *, control: str, accuracy: dict[int, float], checks: dict[int, int],
             eval_checks: dict[int, int], extra: dict | None = None) -> Path:
    """A countdown run: ``checks[step]`` of 20 completions hold a check; ``eval_checks[step]`` of 10 held-out."""
    run = root / name
    run.mkdir()
    config = {"run": {"name": name, "out_dir": str(root), "seed": 0}, "env": {"name": "countdown", "options": {}},
              "eval": {"size": 100}, "optim": {"lr": 1e-5}, "reward": {"control": control}}
    for dotted, value in (extra or {}).items():
        section, key = dotted.split(".")
        config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": s, "prompt": "q", "completion": CHECK if i < k else PLAIN, "score": 1.0, "correct": True,
             "problem": P} for s, k in checks.items() for i in range(20)]
    write_gz(run / "rollouts.jsonl.gz", rows)
    write_gz(run / "evals.jsonl.gz", [{"step": s, "prompt": "q", "completion": CHECK if i < k else PLAIN,
                                       "correct": True, "score": 1.0, "problem": P}
                                      for s, k in eval_checks.items() for i in range(10)])
    metrics = [{"step": s, "reward/mean": 0.2 + 0.01 * s, "reward/accuracy": 0.1, "rollout/response_length_mean": 40.0}
               for s in checks]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    ckpt = run / "checkpoints" / f"step_{max(checks):06d}"
    ckpt.mkdir(parents=True)
    history = [{"step": s, "eval/accuracy": a, "eval/response_length": 30.0, "n": 100} for s, a in accuracy.items()]
    (ckpt / "state.json").write_text(json.dumps({"step": max(checks), "history": history}))
    (ckpt / "COMPLETE").write_text(str(max(checks)))
    return run


STEPS = range(1, 7)


@pytest.fixture()
def pair(tmp_path) -> tuple[Path, Path]:
    real = make_run(tmp_path, "demo", control="none", accuracy={0: 0.14, 2: 0.35, 4: 0.59, 6: 0.61},
                    checks={s: 0 if s == 1 else 10 for s in STEPS}, eval_checks={0: 0, 6: 2})
    shuffled = make_run(tmp_path, "demo-shuffled", control="shuffled", accuracy={0: 0.14, 2: 0.15, 4: 0.16, 6: 0.14},
                        checks={s: 0 for s in STEPS}, eval_checks={0: 0, 6: 1})
    return real, shuffled


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], capture_output=True, text=True, timeout=120)


def test_held_out_verdicts():
    flat = {0: Share(0.14, 100), 4: Share(0.15, 100), 8: Share(0.16, 100), 12: Share(0.14, 100)}
    rising = {0: Share(0.14, 100), 4: Share(0.35, 100), 8: Share(0.20, 100), 12: Share(0.61, 100)}
    found = held_out("held-out accuracy", rising, flat)
    assert found.verdict == "above"
    # Step 8's gap (4 points) is within the noise, so the unbroken stretch is steps 12 to 12.
    assert "61.0% against 14.0% at step 12 (100 problems), +47.0 points" in found.text
    assert "from step 12 to step 12 (0 steps, 1 of 3 evaluations after step 0)" in found.text
    assert "At step 0: 14.0% and 14.0%." in found.text
    assert held_out("acc", flat, rising).verdict == "below"
    small = {0: Share(0.14, 100), 12: Share(0.20, 100)}
    within = held_out("held-out accuracy", small, {0: Share(0.14, 100), 12: Share(0.16, 100)})
    assert within.verdict == "none" and "within it" in within.text and "+4.0 points" in within.text
    few = held_out("held-out accuracy", rising, {0: Share(0.14, 100)})
    assert few.verdict == "none" and "too few evaluations" in few.text
    assert held_out("x", {}, flat).verdict == "none"


def test_noise_is_the_binomial_band():
    assert noise(Share(0.5, 100), Share(0.5, 100)) == pytest.approx(1.96 * (0.5 / 100) ** 0.5)
    assert noise(Share(0.0, 10), Share(0.0, 10)) == 0.0


def test_training_verdicts():
    flat = {s: Share(0.05, 128) for s in range(1, 13)}
    rising = {s: Share(0.05 if s < 4 else 0.3, 128) for s in range(1, 13)}
    found = training("verification rate (training batches)", rising, flat)
    assert found.verdict == "above"
    assert "over steps 9–12 30.0% against 5.0% of 512 and 512 completions, +25.0 points" in found.text
    assert "higher at 9 of the 11 steps after step 1" in found.text
    nearly = {s: Share(0.06, 128) for s in range(1, 13)}
    assert training("r", nearly, flat).verdict == "none"
    assert "too few training steps" in training("r", {1: Share(0.5, 9), 2: Share(0.9, 9)}, flat).text


def test_side_by_side_report(pair):
    real, shuffled = pair
    result = cli("report", str(real), str(shuffled))
    assert result.returncode == 0, result.stderr
    out = real / "compare.html"
    assert str(out) in result.stdout
    html = out.read_text()
    # Curves on shared axes, embedded; nothing fetched from elsewhere.
    titles = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html)
    assert {"Held-out greedy accuracy", "Training reward (the verifier's mean score)",
            "Verification rate, training batches", "Reflection rate, held-out"} <= set(t.replace("&#x27;", "'")
                                                                                     for t in titles)
    assert not re.search(r'src="(?!data:)', html)
    # The config differences: reward.control only (names and folders are not differences).
    diff = html[html.index("<h2>Config differences"):html.index("<h2>The claim")]
    assert "reward.control" in diff and "shuffled" in diff and "run.name" not in diff and "run.out_dir" not in diff
    claim = html[html.index("<h2>The claim"):html.index("<h2>Held-out accuracy at each")]
    assert "demo against demo-shuffled (control: shuffled)" in claim
    assert "held-out accuracy: rose above the control&#x27;s — 61.0% against 14.0% at step 6" in claim
    assert "from step 2 to step 6 (4 steps, 3 of 3 evaluations after step 0)" in claim
    # Training batches: 10 of 20 with a check at steps 5-6 against none.
    assert "verification rate (training batches): rose above the control&#x27;s — over steps 5–6 50.0% against 0.0%" in claim
    # Held-out checks: 2 of 10 against 1 of 10 is within the noise.
    assert "held-out verification rate: no verdict — 20.0% against 10.0% at step 6 (10 problems)" in claim
    assert "Not a clean control" not in claim
    table = html[html.index("<h2>Held-out accuracy at each"):html.index("<h2>Curves")]
    assert "<td>4</td><td>59.0%</td><td>16.0%</td>" in table


def test_control_is_dashed_and_labelled(pair, monkeypatch):
    drawn = []
    monkeypatch.setattr(compare, "_line_plot", lambda title, curves, ylabel, extra=None: drawn.append((title, curves)))
    compare.write_comparison(list(pair))
    assert len(drawn) == 9
    for title, curves in drawn:
        styles = {label: style for label, _, _, style in curves}
        assert styles["demo-shuffled (control: shuffled)"]["linestyle"] == "--", title
        assert "linestyle" not in styles["demo"], title


def test_config_differences_and_an_unclean_control(pair, tmp_path):
    real, _ = pair
    other = make_run(tmp_path, "fast", control="random", accuracy={0: 0.14, 6: 0.2}, checks={s: 0 for s in STEPS},
                     eval_checks={0: 0}, extra={"optim.lr": 1e-4, "eval.size": 50})
    out = compare.write_comparison([real, other], tmp_path / "c.html")
    html = out.read_text()
    assert "<td>optim.lr</td><td>1e-05</td><td>0.0001</td>" in html
    assert "Not a clean control: the runs also differ in eval.size, optim.lr" in html
    assert "held-out accuracy: no verdict — the runs were evaluated on different problems (eval.size differ)" in html


def test_no_control_and_user_errors(pair, tmp_path):
    real, _ = pair
    twin = make_run(tmp_path, "twin", control="none", accuracy={0: 0.14}, checks={1: 0}, eval_checks={0: 0})
    html = compare.write_comparison([real, twin]).read_text()
    assert "No control run among these" in html
    assert "The runs' configs are identical apart from their names." in html
    same = cli("report", str(real), str(real))
    assert same.returncode == 2 and "the same run folder is given twice" in same.stderr
    missing = cli("report", str(real), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no metrics.jsonl" in missing.stderr and "Traceback" not in missing.stderr


def test_the_claim_in_short(pair):
    html = compare.write_comparison(list(pair)).read_text()
    assert ("In short — held-out accuracy, reflection rate (training batches), verification rate (training batches):"
            " rose above the control&#x27;s; held-out reflection rate, held-out verification rate: no verdict") in html


def test_a_run_without_a_checkpoint_reads_its_evaluations(pair):
    """A run still going (no checkpoint yet): held-out accuracy comes from evals.jsonl.gz."""
    import shutil

    real, shuffled = pair
    shutil.rmtree(shuffled / "checkpoints")
    with gzip.open(shuffled / "evals.jsonl.gz", "at", encoding="utf-8") as fh:  # 3 of 10 right at step 2
        fh.writelines(json.dumps({"step": 2, "prompt": "q", "completion": PLAIN, "correct": i < 3, "score": 0.0,
                                  "problem": P}) + "\n" for i in range(10))
    run = compare.load_run(shuffled, "s")
    assert compare.accuracy_shares(run) == {0: Share(1.0, 10), 2: Share(0.3, 10), 6: Share(1.0, 10)}
    html = compare.write_comparison([real, shuffled]).read_text()
    assert "<td>2</td><td>35.0%</td><td>30.0%</td>" in html


def test_runs_that_differ_only_by_seed_are_arms(tmp_path, monkeypatch):
    """Four runs, two learning rates by two seeds: two arms, each drawn as its mean with its range, the second
    arm held against the first, and --baseline choosing the other way round."""
    runs = []
    for lr, accs in ((1e-5, (0.20, 0.24)), (1e-4, (0.60, 0.64))):
        for seed, acc in enumerate(accs):
            runs.append(make_run(tmp_path, f"lr{lr:g}-s{seed}", control="none", accuracy={0: 0.14, 6: acc},
                                 checks={s: 0 for s in STEPS}, eval_checks={0: 0},
                                 extra={"optim.lr": lr, "run.seed": seed}))
    drawn = []
    real_plot = compare._line_plot

    def spy(title, curves, ylabel, extra=None):
        drawn.append((title, curves))
        return real_plot(title, curves, ylabel, extra)

    monkeypatch.setattr(compare, "_line_plot", spy)
    html = compare.write_comparison(runs).read_text()
    arms = html[html.index("<h2>Arms"):html.index("<h2>Runs")]
    assert "<td>optim.lr=1e-05 (baseline)</td><td>2</td><td>0, 1</td>" in arms
    assert "<td>6</td><td>22.0% ± 2.8 (20%–24%)</td><td>62.0% ± 2.8 (60%–64%)</td>" in arms  # sd of 0.20, 0.24
    assert "Each arm against the baseline, optim.lr=1e-05 (2 seeds)" in arms
    # 40 points apart with an sd of 2.8 points in each arm: beyond Welch's band (4.303 x sqrt(2 x 0.0008 / 2) = 12.2
    # points, 2 degrees of freedom) and the noise.
    assert "held-out accuracy: higher than the baseline&#x27;s — at step 6: 62.0%" in arms
    assert "the seed-to-seed spread ±12.2 points (Welch&#x27;s t, 2.0 degrees of freedom)" in arms
    accuracy = next(curves for title, curves in drawn if title.startswith("Held-out greedy accuracy"))
    assert [(label, x, y) for label, x, y, _ in accuracy] == [
        ("optim.lr=1e-05 (2 seeds)", [0, 6], [pytest.approx(0.14), pytest.approx(0.22)]),
        ("optim.lr=0.0001 (2 seeds)", [0, 6], [pytest.approx(0.14), pytest.approx(0.62)])]

    result = cli("report", *map(str, runs), "--baseline", str(runs[3]), "--out", str(tmp_path / "b.html"))
    assert result.returncode == 0, result.stderr
    flipped = (tmp_path / "b.html").read_text()
    assert "Each arm against the baseline, optim.lr=0.0001 (2 seeds)" in flipped
    assert "held-out accuracy: lower than the baseline&#x27;s" in flipped
    alone = cli("report", str(runs[0]), "--baseline", str(runs[0]))
    assert alone.returncode == 2 and "give two run folders or more" in alone.stderr
    stranger = cli("report", str(runs[0]), str(runs[1]), "--baseline", str(runs[2]))
    assert stranger.returncode == 2 and "is not one of the run folders given" in stranger.stderr


def test_a_control_arm_is_the_default_baseline(tmp_path):
    runs = [make_run(tmp_path, f"{control}-s{seed}", control=control, accuracy={0: 0.14, 6: 0.5 if control == "none"
                                                                                      else 0.15},
                     checks={s: 0 for s in STEPS}, eval_checks={0: 0}, extra={"run.seed": seed})
            for control in ("none", "shuffled") for seed in (0, 1)]
    arms = compare.arms_of([compare.load_run(run, run.name) for run in runs])
    assert [arm.label for arm in arms] == ["reward.control=none", "reward.control=shuffled"]
    assert compare.default_baseline(arms) == 1 and arms[1].legend == "reward.control=shuffled (2 seeds, control: shuffled)"
    html = compare.write_comparison(runs).read_text()
    assert "Each arm against the baseline, reward.control=shuffled (2 seeds, control: shuffled)" in html
