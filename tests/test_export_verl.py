"""``tinyzero export verl``: the translation key by key, the files it writes, its errors, and its reward module
scoring exactly as ``tinyzero reward`` does (here, in the kit's venv; tests/test_verl_interop.py repeats the
comparison through verl's own loaders in verl's venv)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from verl_cases import cases

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.interop.export_verl import (
    BASE_CHAT_TEMPLATE,
    NO_CLIP,
    VERL_VERSION,
    epochs_needed,
    export,
    hydra_value,
    prompt_length_bound,
    split_sizes,
    translate,
)

ROOT = Path(__file__).resolve().parent.parent
PATHS = {"train": "/d/train.parquet", "test": "/d/test.parquet", "reward": "/d/reward.py"}


def overrides(recipe: str, *extra: str) -> dict:
    return dict(translate(load_config(ROOT / "recipes" / recipe, list(extra)), PATHS, 512).overrides)


def run_cli(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=ROOT)


def test_countdown_3b_translates_key_by_key():
    o = overrides("countdown-3b.yaml")
    expected = {
        "algorithm.adv_estimator": "grpo",
        "data.train_batch_size": 128,
        "actor_rollout_ref.rollout.n": 8,
        "data.max_response_length": 1024,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 32,  # 128 prompts in 4 mini-batches
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,
        "actor_rollout_ref.actor.optim.lr": 1e-6,
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": 0.001,
        "actor_rollout_ref.actor.kl_loss_type": "k3",
        "actor_rollout_ref.actor.entropy_coeff": 0.001,
        "algorithm.use_kl_in_reward": False,
        "actor_rollout_ref.model.path": "Qwen/Qwen2.5-3B",
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.model.custom_chat_template": BASE_CHAT_TEMPLATE,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.7,
        "trainer.n_gpus_per_node": 2,
        "trainer.total_training_steps": 300,
        "trainer.test_freq": 20,
        "trainer.save_freq": 50,
        "trainer.logger": ["console", "tensorboard"],
        "reward.custom_reward_function.path": "/d/reward.py",
        "reward.custom_reward_function.name": "compute_score",
    }
    assert {key: o.get(key) for key in expected} == expected
    assert not any(key.startswith("critic.") for key in o)
    assert not any(key.startswith("custom_reward_function") for key in o)  # verl 0.9.1 ignores the old keys


def test_ppo_with_kl_in_reward_adds_the_critic_and_the_reward_penalty():
    o = overrides("countdown-3b.yaml", "algo.name=ppo", "algo.kl_applied_as=reward", "algo.kl_estimator=k1",
                  "optim.critic_lr=2e-5", "algo.vf_clip=0.3")
    assert o["algorithm.adv_estimator"] == "gae"
    assert o["algorithm.use_kl_in_reward"] is True and o["actor_rollout_ref.actor.use_kl_loss"] is False
    assert (o["algorithm.kl_penalty"], o["algorithm.kl_ctrl.kl_coef"]) == ("k1", 0.001)
    assert (o["critic.optim.lr"], o["critic.cliprange_value"]) == (2e-5, 0.3)
    assert o["critic.model.path"] == "Qwen/Qwen2.5-3B"


def test_rloo_maps_to_verls_rloo_and_an_estimator_verl_lacks_is_refused(monkeypatch):
    o = overrides("countdown-3b.yaml", "algo.name=rloo")
    assert o["algorithm.adv_estimator"] == "rloo"  # verl's rloo: the same G / (G - 1) * (score - group mean)
    assert not any(key.startswith("critic.") for key in o)
    from tinyzero import algos

    monkeypatch.setattr(algos, "ADVANTAGE_ESTIMATORS", dict(algos.ADVANTAGE_ESTIMATORS))
    algos.register_advantage("mine")(lambda inputs: None)
    with pytest.raises(TinyZeroError, match="algo.name=mine has no verl counterpart"):
        translate(load_config(ROOT / "recipes/countdown-3b.yaml", ["algo.name=mine"]), PATHS, 512)
    for loss in ("gspo", "cispo"):  # verl names these too, with its own clip settings: not mapped (docs/engine.md)
        with pytest.raises(TinyZeroError, match=f"algo.policy_loss={loss} has no verl counterpart"):
            translate(load_config(ROOT / "recipes/countdown-3b.yaml", [f"algo.policy_loss={loss}"]), PATHS, 512)


def test_lora_maps_to_verls_lora_keys():
    o = overrides("countdown-3b-lora.yaml")
    assert (o["actor_rollout_ref.model.lora_rank"], o["actor_rollout_ref.model.lora_alpha"]) == (64, 32.0)
    assert o["actor_rollout_ref.model.target_modules"] == "all-linear"
    assert o["actor_rollout_ref.actor.optim.lr"] == 1e-5
    listed = overrides("countdown-3b-lora.yaml", "model.lora.target_modules=q_proj,v_proj")
    assert listed["actor_rollout_ref.model.target_modules"] == ["q_proj", "v_proj"]
    assert "actor_rollout_ref.model.lora_rank" not in overrides("countdown-3b.yaml")  # full training stays full


def test_chat_template_recipes_keep_the_model_template_and_no_kl_means_no_reference():
    o = overrides("demo-cpu.yaml", "model.name=HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "actor_rollout_ref.model.custom_chat_template" not in o
    assert o["actor_rollout_ref.actor.use_kl_loss"] is False and o["algorithm.use_kl_in_reward"] is False
    assert o["trainer.n_gpus_per_node"] == 1  # a CPU recipe still needs one GPU under verl


def test_sum_norm_warmup_and_no_clipping_have_their_verl_forms():
    translation = translate(load_config(ROOT / "recipes/countdown-3b.yaml", [
        "algo.loss_agg=seq-mean-token-sum-norm", "optim.warmup_steps=10", "optim.grad_clip=0"]), PATHS, 512)
    o = dict(translation.overrides)
    assert o["actor_rollout_ref.actor.loss_scale_factor"] == 1024
    assert o["actor_rollout_ref.actor.optim.lr_warmup_steps"] == 3  # 10 optimizer steps / 4 per training step
    assert o["actor_rollout_ref.actor.grad_clip"] == NO_CLIP
    assert any(line.startswith("optim.grad_clip=0") for line in translation.warnings)


def test_only_non_default_options_without_equivalent_warn_one_line_each():
    assert translate(load_config(ROOT / "recipes/countdown-3b.yaml"), PATHS, 512).warnings == [
        "rollout.overlong=penalty has no verl equivalent and is not exported: the exported reward module returns "
        "tinyzero's score without the overlong penalty or mask (verl's DAPO reward manager has an overlong buffer of "
        "its own)",
        "rollout.overlong_buffer=256 has no verl equivalent and is not exported: the overlong penalty is not exported",
        "placement.strategy=split has no verl equivalent and is not exported: verl's hybrid engine time-shares "
        "every GPU between generation and training (our colocate); a split layout has no counterpart in its "
        "synchronous trainer"]
    config = load_config(ROOT / "recipes/countdown-3b.yaml", [
        "run.budget_usd=30", "eval.k=8", "aha.margin=0.1", "rollout.backend=hf", "eval.max_new_tokens=64"])
    keys = [line.split("=")[0] for line in translate(config, PATHS, 512).warnings]
    assert keys == ["run.budget_usd", "rollout.backend", "rollout.overlong", "rollout.overlong_buffer",
                    "placement.strategy", "eval.max_new_tokens", "eval.k", "aha.margin"]
    budget = load_config(ROOT / "recipes/countdown-3b.yaml", ["optim.max_tokens_per_micro_batch=16384"])
    (line,) = [w for w in translate(budget, PATHS, 512).warnings if w.startswith("optim.")]
    assert "optim.max_tokens_per_micro_batch=16384 is not exported" in line and "use_dynamic_bsz" in line


def test_a_control_run_is_refused_and_wandb_is_a_warning():
    with pytest.raises(TinyZeroError, match="reward.control=shuffled has no verl counterpart"):
        translate(load_config(ROOT / "recipes/countdown-3b.yaml", ["reward.control=shuffled"]), PATHS, 512)
    config = load_config(ROOT / "recipes/countdown-3b.yaml", ["log.wandb=true"])
    assert [line.split("=")[0] for line in translate(config, PATHS, 512).warnings] == [
        "rollout.overlong", "rollout.overlong_buffer", "placement.strategy", "log.wandb"]


def test_mini_batches_must_divide_the_prompts():
    with pytest.raises(TinyZeroError, match="not a multiple of algo.mini_batches"):
        translate(load_config(ROOT / "recipes/countdown-3b.yaml", ["algo.mini_batches=3"]), PATHS, 512)


@pytest.mark.parametrize("value, text", [
    (True, "true"), (None, "null"), (3, "3"), (1e-6, "1e-06"), ("Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-3B"),
    ("/a b/c", "'/a b/c'"), ("null", "'null'"), ("it's", "'it\\'s'"), (["console", "x y"], "[console,'x y']"),
    (BASE_CHAT_TEMPLATE, "'" + BASE_CHAT_TEMPLATE + "'"),
])
def test_hydra_values(value, text):
    assert hydra_value(value) == text


def test_interpolation_syntax_is_refused():
    with pytest.raises(TinyZeroError, match="interpolation"):
        hydra_value("${oc.env:HOME}")


def test_sizes_default_to_one_pass_over_the_run():
    config = load_config(ROOT / "recipes/countdown-3b.yaml")
    assert split_sizes(config, None, None) == (300 * 128, 512)
    assert split_sizes(config, 128, 5) == (128, 5)
    with pytest.raises(TinyZeroError, match="--train-size must be at least rollout.prompts_per_step=128, got 127"):
        split_sizes(config, 127, 5)
    with pytest.raises(TinyZeroError, match="--test-size must be at least 1"):
        split_sizes(config, 128, 0)
    assert epochs_needed(config, 300 * 128) == 1
    assert epochs_needed(config, 300) == 150  # 2 whole batches of 128 a pass; the last 44 problems are dropped


def test_prompt_length_bound_counts_bytes_plus_headroom():
    assert prompt_length_bound([[{"role": "user", "content": "x" * 100}]]) == 256  # 100 + 128 -> 256
    assert prompt_length_bound([[{"role": "user", "content": "\u00e9" * 100}]]) == 384  # 200 bytes + 128


def test_versions_agree_across_pyproject_makefile_and_exporter():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["verl"]
    assert extra == [f"verl=={VERL_VERSION}"]
    assert re.search(r"^VERL_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1) == VERL_VERSION


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "countdown"
    manifest = export(str(ROOT / "recipes/countdown-3b.yaml"), ["env.options.format_score=0.25"], out,
                      train_size=256, test_size=6)
    return out, manifest


def test_export_writes_the_files_and_the_manifest(exported):
    out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.parquet", "test.parquet", "reward.py", "run_verl.sh", "export.json"])
    assert json.loads((out / "export.json").read_text()) == manifest
    assert (manifest["train_size"], manifest["test_size"]) == (256, 6)
    assert manifest["verl_overrides"]["trainer.total_epochs"] == 150  # 300 steps, 2 batches of 128 a pass
    assert manifest["tasks"] == {"countdown": {"env": "countdown", "options": {"format_score": 0.25}}}
    train = pq.read_table(out / "train.parquet")
    assert train.num_rows == 256
    assert {"data_source", "prompt", "ability", "reward_model", "extra_info"} <= set(train.column_names)
    assert manifest["verl_overrides"]["data.train_files"] == str(out / "train.parquet")
    assert os.access(out / "run_verl.sh", os.X_OK)


def test_reward_module_scores_exactly_as_tinyzero_reward(exported):
    out, _ = exported
    spec = importlib.util.spec_from_file_location("exported_reward", out / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = pq.read_table(out / "test.parquet").to_pylist()
    todo = cases("countdown", [row["problem"] for row in rows])
    stdin = "".join(json.dumps({"completion": c["completion"], "problem": rows[c["index"]]["problem"]}) + "\n"
                    for c in todo)
    result = run_cli("reward", "countdown", "-o", "format_score=0.25", stdin=stdin)
    assert result.returncode == 0, result.stderr
    want = [json.loads(line) for line in result.stdout.splitlines()]
    got = [module.compute_score(rows[c["index"]]["data_source"], c["completion"],
                                rows[c["index"]]["reward_model"]["ground_truth"], rows[c["index"]]["extra_info"])
           for c in todo]
    assert len(got) == len(want) == len(todo)
    assert [g["score"] for g in got] == [w["score"] for w in want]
    assert [g["acc"] for g in got] == [1.0 if w["correct"] else 0.0 for w in want]
    assert [{k: v for k, v in g.items() if k not in ("score", "acc")} for g in got] == [w["components"] for w in want]
    assert {w["score"] for w in want} == {0.0, 0.25, 1.0}  # right, wrong-but-well-formed and unscored all occur


def test_reward_module_names_an_unknown_data_source(exported):
    out, _ = exported
    spec = importlib.util.spec_from_file_location("exported_reward2", out / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="data_source 'gsm8k' is not in this export"):
        module.compute_score("gsm8k", "x", {"answer": 1})


def test_reexport_into_the_same_folder_is_allowed(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "again"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    result = run_cli("export", "verl", str(ROOT / "recipes/demo-cpu.yaml"), "--out", str(copy),
                     "--train-size", "16", "--test-size", "4")
    assert result.returncode == 0, result.stderr
    assert json.loads((copy / "export.json").read_text())["tasks"]["arithmetic"]["env"] == "arithmetic"
    assert "next, on the GPU box" in result.stdout


def test_launch_script_says_when_verl_is_missing(exported):
    out, _ = exported
    result = subprocess.run(["bash", str(out / "run_verl.sh")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable})  # the kit's venv has no verl
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"run_verl.sh: verl is not installed in {sys.executable}: pip install 'verl[vllm]=={VERL_VERSION}' "
        "(or set PYTHON to the interpreter that has it)"]


@pytest.mark.parametrize("args, message", [
    (["recipes/nope.yaml"], "recipe recipes/nope.yaml does not exist"),
    (["recipes/countdown-3b.yaml", "algo.mini_batches=3"], "not a multiple of algo.mini_batches"),
    (["recipes/countdown-3b.yaml", "--train-size", "0"], "--train-size must be at least rollout.prompts_per_step"),
])
def test_bad_input_stops_with_one_sentence(tmp_path, args, message):
    result = run_cli("export", "verl", *args, "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert not (tmp_path / "x").exists()  # stopped before writing anything
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("tinyzero: error:")


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("export", "verl", "recipes/countdown-3b.yaml", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "already holds other files (notes.txt)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_launch_script_says_when_tinyzero_is_missing(exported, tmp_path):
    out, _ = exported
    fake = tmp_path / "python"  # verl imports, tinyzero does not
    fake.write_text('#!/bin/bash\ncase "$*" in *"import verl"*) exit 0;; esac\nexit 1\n')
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(out / "run_verl.sh")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": str(fake)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"run_verl.sh: tinyzero is not installed in {fake}: pip install --no-deps")


def test_bundled_model_points_verl_at_the_converted_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYZERO_CACHE", str(tmp_path))
    translation = translate(load_config(ROOT / "recipes/demo-cpu.yaml"), PATHS, 512)
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert dict(translation.overrides)["actor_rollout_ref.model.path"] == str(folder)
    assert [w for w in translation.warnings if w.startswith("model.name=smollm2-135m")] == [
        f"model.name=smollm2-135m: verl reads the converted folder {folder}, which `tinyzero train` (or "
        "`tinyzero eval smollm2-135m`) writes on first use; it does not exist yet"]
    folder.mkdir(parents=True)
    again = translate(load_config(ROOT / "recipes/demo-cpu.yaml"), PATHS, 512)
    assert not any(w.startswith("model.name") for w in again.warnings)


def test_numpy_ground_truth_scores_as_python_lists_and_malformed_ones_are_named():
    import numpy as np

    from tinyzero.interop.verl_reward import score

    tasks = {"countdown": {"env": "countdown", "options": {}}}
    completion = "<answer>(3 * 5) + 7</answer>"
    as_python = score(tasks, "countdown", completion, {"numbers": [3, 5, 7], "target": 22})
    as_numpy = score(tasks, np.str_("countdown"), completion, {"numbers": np.array([3, 5, 7]), "target": np.int64(22)})
    assert as_python == as_numpy == {"format": 1.0, "answer": 1.0, "score": 1.0, "acc": 1.0}
    with pytest.raises(ValueError, match="malformed ground_truth for 'countdown'"):
        score(tasks, "countdown", completion, {"target": 22})
    with pytest.raises(ValueError, match="ground_truth for 'countdown' must be an object"):
        score(tasks, "countdown", completion, [3, 5, 7])


def test_rollout_correction_and_dynamic_sampling_export_or_warn():
    o = overrides("countdown-3b.yaml", "algo.rollout_correction=tis", "algo.rollout_is_cap=3")
    # verl's token-level truncated importance weight: min(pi_old / pi_rollout, threshold), ours with the same cap.
    assert (o["algorithm.rollout_correction.rollout_is"], o["algorithm.rollout_correction.rollout_is_threshold"]) == (
        "token", 3.0)
    assert not any(k.startswith("algorithm.rollout_correction") for k in overrides("countdown-3b.yaml",
                                                                                    "algo.rollout_correction=none"))
    translation = translate(load_config(ROOT / "recipes/countdown-3b.yaml", [
        "algo.rollout_correction=mis", "rollout.filter_groups=correct", "rollout.max_generation_rounds=5"]), PATHS, 512)
    assert not any(k.startswith("algorithm.rollout_correction") for k, _ in translation.overrides)
    keys = [line.split("=")[0] for line in translation.warnings]
    assert keys[:3] == ["algo.rollout_correction", "rollout.filter_groups", "rollout.max_generation_rounds"]
