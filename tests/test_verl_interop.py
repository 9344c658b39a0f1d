"""verl itself reads an export (CPU): its Hydra config and validation, its dataset class, its reward loader.

Each test exports a recipe here, scores cases with ``tinyzero reward``, then runs tests/verl_check.py in verl's
own venv (``make verl-setup``; ``make test`` and ``make verl-check`` pass it as $TINYZERO_VERL_PYTHON) and
compares. Without that variable the tests are skipped, except under CI, where a skip would hide a check that
never ran: there they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny_models import build_tiny_tokenizer
from verl_cases import cases

from tinyzero.envs import make_env, render_prompt
from tinyzero.interop.export_verl import export

ROOT = Path(__file__).resolve().parent.parent
VERL_PYTHON = os.environ.get("TINYZERO_VERL_PYTHON", "")
# Absolute but not resolved: the venv's python is a symlink, and following it would leave the venv.
VERL_PYTHON = os.path.abspath(VERL_PYTHON) if VERL_PYTHON else ""

if not VERL_PYTHON and os.environ.get("CI"):
    pytest.fail("CI is set but TINYZERO_VERL_PYTHON is not: run the suite with `make test`", pytrace=False)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VERL_PYTHON, reason="needs verl's venv: run `make verl-check` (or `make test`)"),
]

# name: (recipe, its overrides, the env options `tinyzero reward` gets for the same task)
RECIPES = {
    "countdown-3b": ("countdown-3b", ["env.options.format_score=0.25"], ["format_score=0.25"]),
    # the chat template; and RLOO, exported as verl's own rloo estimator
    "demo-cpu": ("demo-cpu", ["model.name=HuggingFaceTB/SmolLM2-135M-Instruct", "algo.name=rloo"],
                 ["digits=2", "ops=+", "answer_format=last_integer"]),
    # PPO: the critic's config and validation, KL in the reward, Dr. GRPO's aggregation, warm-up
    "countdown-3b-ppo": ("countdown-3b", ["algo.name=ppo", "algo.kl_applied_as=reward", "optim.warmup_steps=8",
                                          "algo.loss_agg=seq-mean-token-sum-norm"], []),
}


def tinyzero_reward(env_name: str, options: list[str], rows: list[dict], todo: list[dict]) -> list[dict]:
    stdin = "".join(json.dumps({"completion": c["completion"], "problem": rows[c["index"]]["problem"]}) + "\n"
                    for c in todo)
    args = [sys.executable, "-m", "tinyzero.cli", "reward", env_name]
    for option in options:
        args += ["-o", option]
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module", params=sorted(RECIPES))
def checked(request, tmp_path_factory):
    """(recipe name, manifest, test rows, cases, tinyzero's verdicts, what verl_check.py saw)."""
    name = request.param
    recipe, recipe_overrides, reward_options = RECIPES[name]
    work = tmp_path_factory.mktemp(name)
    manifest = export(str(ROOT / "recipes" / f"{recipe}.yaml"), recipe_overrides, work / "export",
                      train_size=128, test_size=8)
    rows = pq.read_table(work / "export" / "test.parquet").to_pylist()
    env_name = rows[0]["data_source"]
    todo = cases(env_name, [row["problem"] for row in rows])
    (work / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in todo))
    want = tinyzero_reward(env_name, reward_options, rows, todo)
    result = subprocess.run(
        [VERL_PYTHON, str(ROOT / "tests" / "verl_check.py"), str(work / "export"), str(work / "cases.jsonl"),
         str(work / "result.json")], capture_output=True, text=True, timeout=600, cwd=work,
        # verl caches datasets under ~/.cache: keep them in tmp; and never wait on a hub this machine cannot reach
        env={**os.environ, "HOME": str(work), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads((work / "result.json").read_text())
    return name, manifest, rows, todo, want, seen


def test_verl_composes_and_validates_the_exported_config(checked):
    name, manifest, _, _, _, seen = checked
    assert seen["ran"][:2] == ["hydra compose ppo_trainer", "verl.utils.config.validate_config"]
    assert seen["use_critic"] is name.endswith("-ppo")  # verl's own need_critic on the exported estimator
    assert seen["use_reference_policy"] is (name != "demo-cpu")  # demo-cpu has no KL term
    config = seen["config"]
    for key, value in manifest["verl_overrides"].items():
        node = config
        for part in key.split("."):
            node = node[part]
        if key in ("actor_rollout_ref.model.path", "critic.model.path"):
            continue  # the check appends a tiny local model after the script's own arguments
        assert node == value, key
    assert Path(config["actor_rollout_ref"]["model"]["path"]).name == "tiny-model"


def test_verl_loads_the_parquet_with_its_dataset_class(checked):
    name, manifest, rows, _, _, seen = checked
    assert "create_rl_dataset (train, val)" in seen["ran"]
    assert (seen["train_rows"], seen["test_rows"]) == (128, 8)
    env = make_env(rows[0]["data_source"], manifest["tasks"][rows[0]["data_source"]]["options"])
    template = "base" if name.startswith("countdown") else "chat"
    for row, rendered in zip(rows, seen["rendered"], strict=False):
        prompt = render_prompt(env, row["problem"], template)
        if template == "base":
            assert rendered == prompt  # custom_chat_template: the base prompt verbatim, prefill included
        else:
            tokenizer = build_tiny_tokenizer()  # the check's model has this tokenizer and its ChatML template
            assert rendered == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert len(seen["rendered"]) == 3


def test_verl_reward_loader_scores_exactly_as_tinyzero_reward(checked):
    _, _, _, todo, want, seen = checked
    got = seen["scores"]
    assert len(got) == len(want) == len(todo)
    assert [g["reward_score"] for g in got] == [w["score"] for w in want]
    assert [g["reward_extra_info"]["acc"] for g in got] == [1.0 if w["correct"] else 0.0 for w in want]
    for g, w in zip(got, want, strict=True):
        components = {k: v for k, v in g["reward_extra_info"].items() if k not in ("score", "acc")}
        assert components == w["components"]
    assert {w["correct"] for w in want} == {True, False}
