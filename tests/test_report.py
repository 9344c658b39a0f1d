"""``tinyzero aha`` and ``tinyzero report`` on a crafted run folder whose counts are known.

The folder is written by hand, as a run made before the ``aha/`` metrics existed would look (metrics.jsonl has no
``aha/`` columns): both commands must compute everything from the transcripts.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

P = {"numbers": [3, 5, 7], "target": 22}
Q = {"numbers": [2, 4, 9], "target": 17}
CHECK = "Wait, 3 + 5 = 8, not 22. 3 * 5 + 7 = 22 ✓ <answer>3 * 5 + 7</answer>"
WRONG_TARGET = "Let me verify: 3 * 5 = 15, not 16. <answer>3 + 5 + 7</answer>"  # a check against a non-target
PLAIN = "<answer>3 * 5 + 7</answer>"
PROMPT = "Use the numbers [3, 5, 7] to write an equation that equals 22. Verify it and double-check it."
# "wait" inside a word, and the prompt quoted: neither counts.
WAITRESS = f"The waitress said: {PROMPT} <answer>3 + 5 * 7</answer>"
# Four completions a step: step 1 (the baseline) has no check; from step 3 on, half hold one.
STEPS = {1: [PLAIN, WRONG_TARGET, WAITRESS, PLAIN], 2: [PLAIN, PLAIN, WRONG_TARGET, PLAIN],
         3: [CHECK, CHECK, PLAIN, WAITRESS], 4: [CHECK, PLAIN, CHECK, PLAIN], 5: [CHECK, WAITRESS, CHECK, PLAIN]}


def write_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text("env:\n  name: countdown\n  options: {}\nrun:\n  name: old-run\n")
    rows = [{"step": s, "prompt": PROMPT, "completion": c, "score": 1.0 if c in (CHECK, PLAIN) else 0.1,
             "correct": c in (CHECK, PLAIN), "problem": P} for s, texts in STEPS.items() for c in texts]
    write_gz(run / "rollouts.jsonl.gz", rows)
    # Held-out: the same problem at step 0 (no check) and at step 4 (a check).
    write_gz(run / "evals.jsonl.gz", [
        {"step": 0, "prompt": "q", "completion": "2 + 4 + 9 = 15 <answer>2 + 4 + 9</answer>", "correct": False,
         "score": 0.1, "problem": Q},
        {"step": 4, "prompt": "q", "completion": "2 * 4 + 9 = 17 ✓ <answer>2 * 4 + 9</answer>", "correct": True,
         "score": 1.0, "problem": Q}])
    metrics = [{"step": s, "reward/mean": 0.5, "reward/accuracy": 0.5, "rollout/response_length_mean": 20.0,
                "time/step": 50.0, "time/rollout": 20.0, "time/learner": 25.0, "cost/gpu_hours": s / 60,
                "cost/usd": s / 30} for s in STEPS]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    ckpt = run / "checkpoints" / "step_000005"
    ckpt.mkdir(parents=True)
    history = [{"step": 0, "eval/accuracy": 0.1, "eval/response_length": 30.0},
               {"step": 4, "eval/accuracy": 0.4, "eval/response_length": 25.0}]
    (ckpt / "state.json").write_text(json.dumps({"step": 5, "history": history}))
    (ckpt / "COMPLETE").write_text("5")
    return run


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], capture_output=True, text=True, timeout=120)


def test_aha_json_on_a_run_folder(run_dir):
    result = cli("aha", str(run_dir / "rollouts.jsonl.gz"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["env"] == "countdown" and out["responses"] == 20
    # CHECK: wait + a check; WRONG_TARGET: verify + let_me_check, no check; WAITRESS: nothing; PLAIN: nothing.
    assert out["verification_rate"] == 6 / 20
    assert out["reflection_rate"] == 8 / 20
    assert [s["step"] for s in out["by_step"]] == [1, 2, 3, 4, 5]
    assert [s["verification_rate"] for s in out["by_step"]] == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert out["by_step"][0]["metrics"]["reflection/verify"] == 0.25  # the quoted prompt's "Verify it" never counts
    assert out["metrics"]["reflection/double_check"] == 0.0
    assert out["aha_step"] == 3 and out["aha_signal"] == "verification_rate"


def test_aha_table_and_lexical_only(run_dir, tmp_path):
    table = cli("aha", str(run_dir / "rollouts.jsonl.gz"))
    assert table.returncode == 0 and "aha step (verification_rate vs step 1): 3" in table.stdout, table.stdout
    alone = tmp_path / "alone.jsonl.gz"  # no config.yaml beside it: lexical metrics only
    shutil.copy(run_dir / "rollouts.jsonl.gz", alone)
    out = json.loads(cli("aha", str(alone), "--json").stdout)
    assert out["verification_rate"] is None and out["aha_signal"] == "reflection_rate"
    assert json.loads(cli("aha", str(alone), "--json", "--env", "countdown").stdout)["verification_rate"] == 6 / 20


def test_aha_user_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "wait"}\n')
    result = cli("aha", str(bad))
    assert result.returncode == 2 and "--completion-field" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(cli("aha", str(bad), "--json", "--completion-field", "text").stdout)["reflection_rate"] == 1.0
    missing = cli("report", str(tmp_path))
    assert missing.returncode == 2 and "no metrics.jsonl" in missing.stderr


def test_report_on_a_run_without_aha_columns(run_dir):
    result = cli("report", str(run_dir))
    assert result.returncode == 0, result.stderr
    html = (run_dir / "report.html").read_text()
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', html)) >= 7
    assert not re.search(r'src="(?!data:)', html)  # self-contained: nothing fetched from elsewhere
    assert "aha step (verification_rate)</td><td>3</td>" in html
    assert "Self-verification against the step-0 baseline" in html and "Cost so far" in html
    assert "0.100 (step 0) → " not in html and "10.0% (step 0) → 40.0% (step 4)" in html
    assert '<mark class="verification">3 + 5 = 8, not 22</mark>' in html
    assert '<mark class="reflection">Wait</mark>' in html
    # The first held-out check sits beside the step-0 transcript of the same problem.
    first_eval = html.index("First held-out check")
    assert "Same problem at the start" in html[first_eval:] and "2 + 4 + 9 = 15" in html[first_eval:]


def test_report_marks_a_control_run(run_dir):
    plain = cli("report", str(run_dir))
    assert plain.returncode == 0, plain.stderr
    assert "Control run" not in (run_dir / "report.html").read_text()
    (run_dir / "config.yaml").write_text("env:\n  name: countdown\n  options: {}\nreward:\n  control: shuffled\n")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({**json.loads(line), "reward/control_mean": 0.4}) + "\n"
                                                   for line in lines))
    assert cli("report", str(run_dir)).returncode == 0
    html = (run_dir / "report.html").read_text()
    assert "<b>Control run</b> (reward.control=shuffled): the learner got the batch&#x27;s scores shuffled" in html
    assert 'alt="Reward and accuracy"' in html
