"""The command line, exercised through a subprocess as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinyzero.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", [[], ["data"], ["reward"], ["envs"]])
def test_help_on_every_command(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: tinyzero" in result.stdout


def test_envs_lists_environments_and_options():
    result = run("envs")
    assert result.returncode == 0
    for fragment in ("countdown", "arithmetic", "max_count", "answer_format"):
        assert fragment in result.stdout


def test_reward_scores_jsonl_in_order():
    lines = [
        {"completion": "<answer>3 * 5 + 7</answer>", "problem": {"numbers": [3, 5, 7], "target": 22}},
        {"completion": "<answer>3 + 5 + 7</answer>", "problem": {"numbers": [3, 5, 7], "target": 22}},
        {"completion": "<answer>3.5 + 7</answer>", "problem": {"numbers": [3, 5, 7], "target": 22}},
        {"completion": "nothing", "problem": {"numbers": [3, 5, 7], "target": 22}},
    ]
    result = run("reward", "countdown", stdin="\n".join(json.dumps(x) for x in lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["score"], o["correct"], o["reason"]) for o in out] == [
        (1.0, True, "correct"),
        (0.1, False, "wrong_value"),
        (0.0, False, "bad_character"),
        (0.0, False, "no_answer"),
    ]
    assert set(out[0]) == {"score", "correct", "components", "reason"}


def test_reward_arithmetic_and_options():
    line = json.dumps({"completion": "<answer>46</answer>", "problem": {"answer": 47}})
    result = run("reward", "arithmetic", "-o", "format_score=0", stdin=line)
    assert json.loads(result.stdout)["score"] == 0.0


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected"),
        ('{"completion": "x", "problem": 3}', "line 2: 'problem' must be an object"),
        ('{"completion": "x", "problem": {"target": 1}}', "line 2: malformed problem"),
    ],
)
def test_reward_malformed_line_names_the_line(bad_line, fragment):
    good = json.dumps({"completion": "x", "problem": {"numbers": [1, 2], "target": 3}})
    result = run("reward", "countdown", stdin=f"{good}\n{bad_line}\n{good}\n")
    assert result.returncode != 0
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the line before the bad one was still scored


def test_unknown_env_is_one_clear_line():
    result = run("reward", "nonesuch", stdin="")
    assert result.returncode != 0 and "unknown environment 'nonesuch'" in result.stderr
    assert "Traceback" not in result.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_data_writes_verl_columns_deterministically(tmp_path):
    args = ["data", "countdown", "--train-size", "500", "--test-size", "50", "--seed", "3"]
    first = run(*args, "--out", str(tmp_path / "a"))
    second = run(*args, "--out", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    for split in ("train", "test"):
        assert _sha(tmp_path / "a" / f"{split}.parquet") == _sha(tmp_path / "b" / f"{split}.parquet")
    table = pq.read_table(tmp_path / "a" / "train.parquet")
    assert table.num_rows == 500
    assert {"data_source", "prompt", "ability", "reward_model", "extra_info", "problem"} <= set(
        table.column_names
    )
    row = table.slice(0, 1).to_pylist()[0]
    assert row["data_source"] == "countdown"
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("<think>")
    assert row["reward_model"]["style"] == "rule"
    truth = row["reward_model"]["ground_truth"]
    assert set(truth) == {"numbers", "target"}  # the reference solution is not handed to verl
    assert row["problem"]["solution"] not in row["prompt"][0]["content"]
    # the stored problem feeds `tinyzero reward` unchanged
    line = json.dumps({"completion": f"<answer>{row['problem']['solution']}</answer>", "problem": row["problem"]})
    assert json.loads(run("reward", "countdown", stdin=line).stdout)["correct"] is True
    test_keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in pq.read_table(
        tmp_path / "a" / "test.parquet").column("problem").to_pylist()}
    train_keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in table.column("problem").to_pylist()}
    assert not test_keys & train_keys


def test_data_chat_template_and_bad_option(tmp_path):
    ok = run("data", "arithmetic", "--out", str(tmp_path), "--train-size", "20", "--test-size", "5",
             "--template", "chat", "-o", "digits=3")
    assert ok.returncode == 0, ok.stderr
    row = pq.read_table(tmp_path / "test.parquet").slice(0, 1).to_pylist()[0]
    assert row["prompt"][0]["content"].startswith("What is ")
    bad = run("data", "arithmetic", "--out", str(tmp_path), "-o", "digits")
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
