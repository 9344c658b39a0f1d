"""``tinyzero eval`` end to end on a tiny random model: a model folder, a run folder and a checkpoint folder as
inputs, side-by-side comparison, outputs written into the run, and the user errors.

The task is ``toy_tasks:FirstByte`` (right when the reply starts with an even code point): a tiny random model is
right about half the time, so the metrics below are neither all 0 nor all 1 and a wrong count shows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyzero.analysis.evaluation import chunk_seed, encode_prompt, pass_at_k
from tinyzero.cli import main
from tinyzero.engine.models import load_tokenizer
from tinyzero.engine.rollout import RolloutWorker
from tinyzero.envs import make_env
from tinyzero.trainer import train

TOY = "toy_tasks:FirstByte"
FLAGS = ["--backend", "hf", "--no-progress", "--max-new-tokens", "6"]


@pytest.fixture(autouse=True)
def _keep_vllm_logging(monkeypatch):
    """The command sets VLLM_LOGGING_LEVEL=ERROR for its own process; in-process here, that would silence vLLM's
    logger for every later test once vLLM is imported (tests/test_rollout.py checks a warning filter on it)."""
    monkeypatch.setattr("tinyzero.cli._vllm_quiet", lambda: None)


def eval_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A one-step run on the toy task whose periodic evaluation also samples (eval.k=2)."""
    out = tmp_path_factory.mktemp("eval-run")
    train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={out}", "run.name=toy", "run.steps=1",
                 f"env.name={TOY}", "env.options={}", "rollout.backend=hf", "rollout.prompts_per_step=2",
                 "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "eval.size=6",
                 "eval.max_new_tokens=6", "eval.k=2", "log.tensorboard=false"])
    return out / "toy"


def test_model_folder_matches_the_engine_and_the_estimator(tiny_model_dir, capsys):
    """The numbers are the rollout worker's own outputs scored by the reward, with the estimator on top."""
    code, out, err = eval_cli(capsys, str(tiny_model_dir), "--env", TOY, "--size", "5", "--k", "1,2,4", "--json",
                              *FLAGS)
    assert code == 0, err
    report = json.loads(out)
    m = report["results"][0]["metrics"]
    env, tokenizer = make_env(TOY), load_tokenizer(tiny_model_dir)
    from tinyzero.data import sample_test

    problems = sample_test(env, 5, 0)
    prompts = [encode_prompt(tokenizer, env, p, "chat")[1] for p in problems]
    worker = RolloutWorker(tiny_model_dir, backend="hf", device="cpu")
    try:
        greedy = worker.greedy(prompts, max_new_tokens=6)
        worker.reseed(chunk_seed(0, 0))  # the first chunk's seed: all five prompts are one chunk
        groups = worker.generate(prompts, n=4, max_new_tokens=6, temperature=1.0, seeds=None)
    finally:
        worker.close()
    right = [env.reward(o.text, p).correct for o, p in zip(greedy, problems, strict=True)]
    assert m["accuracy"] == sum(right) / 5
    counts = [sum(env.reward(c.text, p).correct for c in g) for g, p in zip(groups, problems, strict=True)]
    assert 0 < sum(counts) < 20, counts  # the toy task is neither always nor never right: the checks can fail
    for k in (1, 2, 4):
        assert m[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts) / 5)
    assert m["maj@1"] == pytest.approx(m["pass@1"])
    assert m["tokens"] == sum(len(o.token_ids) for o in greedy) + sum(len(c.token_ids) for g in groups for c in g)
    assert report["settings"]["samples"] == 4 and m["problems"] == 5


def test_run_folder_reproduces_the_trainers_last_evaluation(tiny_run, capsys):
    code, out, err = eval_cli(capsys, str(tiny_run), "--k", "1,2", *FLAGS)
    assert code == 0, err
    assert "| metric | toy step 1 |" in out and "| pass@2 |" in out and "| maj@2 |" in out
    saved = json.loads((tiny_run / "eval" / "step_000001.json").read_text())
    assert saved["settings"]["env"] == TOY and saved["settings"]["size"] == 6  # the run's env and eval.size
    # The trainer's evaluation after step 1 ran the same greedy decoding on the same held-out problems and weights.
    state = json.loads((tiny_run / "checkpoints" / "step_000001" / "state.json").read_text())
    last = state["history"][-1]
    assert saved["metrics"]["accuracy"] == last["eval/accuracy"]
    assert saved["metrics"]["response_length"] == last["eval/response_length"]
    assert {"eval/pass@2", "eval/maj@2"} <= set(last)  # eval.k in training
    assert list((tiny_run / "tensorboard" / "eval").glob("events.out.tfevents.*"))


def test_checkpoint_folder_compared_with_its_base_model(tiny_run, tiny_model_dir, capsys):
    ckpt = tiny_run / "checkpoints" / "step_000001"
    code, out, err = eval_cli(capsys, str(ckpt), "--compare", str(tiny_model_dir), str(ckpt), "--k", "2", "--csv",
                              "--no-save", *FLAGS)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["model"] for r in rows] == ["toy step 1", str(tiny_model_dir), "toy step 1"]
    assert rows[0]["step"] == "1" and rows[1]["step"] == ""
    assert all(r["problems"] == "6.0" for r in rows)  # the run's held-out problems for every column
    # The same model twice: same problems and sampling seeds give the same numbers.
    assert {k: v for k, v in rows[0].items() if k != "seconds"} == {k: v for k, v in rows[2].items() if k != "seconds"}


@pytest.mark.parametrize("args, fragment", [
    (["-o", "digitz=3"], "unknown option arithmetic.digitz"),
    (["--k", "1,8", "--samples", "4"], "k=8 is larger than the 4 samples"),
    (["--k", "1,x"], "not a comma-separated list"),
    (["--size", "0"], "--size must be at least 1"),
    (["--size", "1000000000"], "--size must be at most 100,000"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "-1"], "--temperature must be a finite number, 0 or more"),
    (["--seed", "-5"], "--seed must be between 0 and 2147483647"),
    (["--env", "arithmetic", "-o", "digits=1", "-o", "ops=+", "--size", "500"], "has only 100 distinct problems"),
])
def test_user_errors_are_one_sentence(tiny_model_dir, capsys, args, fragment):
    code, out, err = eval_cli(capsys, str(tiny_model_dir), *args, *FLAGS)
    assert code == 2 and fragment in err and "Traceback" not in err, err


def test_a_folder_that_does_not_load(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')  # a config, but no weights or tokenizer
    code, _, err = eval_cli(capsys, str(tmp_path), "--k", "0", *FLAGS)
    assert code == 2 and "does not load" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_vllm_backend_agrees_with_hf_greedy(tiny_model_dir, capsys):
    """The default backend: greedy decoding on vLLM gives the HF engine's answers (docs/engine.md). vLLM runs in a
    subprocess, as a user runs the command: its logging settings then stay out of this test process."""
    common = [str(tiny_model_dir), "--env", TOY, "--size", "4", "--k", "0", "--json", "--no-progress",
              "--max-new-tokens", "6"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tinyzero.cli", "eval", *common, "--backend", "vllm"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    vllm = json.loads(done.stdout)["results"][0]["metrics"]
    code, out, err = eval_cli(capsys, *common, "--backend", "hf")
    assert code == 0, err
    hf = json.loads(out)["results"][0]["metrics"]
    for key in ("accuracy", "response_length", "tokens"):
        assert vllm[key] == hf[key], key
    assert "pass@1" not in vllm  # --k 0: greedy only


def test_a_run_without_a_checkpoint_and_an_unfinished_checkpoint(tmp_path, capsys):
    run = tmp_path / "early"
    (run / "checkpoints" / "step_000004" / "policy").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  seed: 1\n")
    (run / "checkpoints" / "step_000004" / "state.json").write_text('{"step": 4}')  # no COMPLETE marker yet
    code, _, err = eval_cli(capsys, str(run), *FLAGS)
    assert code == 2 and "has no complete checkpoint yet" in err, err
    code, _, err = eval_cli(capsys, str(run / "checkpoints" / "step_000004"), *FLAGS)
    assert code == 2 and "is incomplete" in err, err


def test_train_split_is_what_training_drew_first():
    from tinyzero.commands.eval import Settings, problems_for
    from tinyzero.data import iter_train, sample_test

    env = make_env("arithmetic", {"digits": 1})
    train_split = problems_for(env, Settings(env="arithmetic", split="train", size=5, seed=3), eval_size=20)
    held_out = sample_test(env, 20, 3)
    stream = iter_train(env, 3, {env.key(p) for p in held_out})
    assert train_split == [next(stream) for _ in range(5)]
    assert not {env.key(p) for p in train_split} & {env.key(p) for p in held_out}
    assert problems_for(env, Settings(env="arithmetic", size=5, seed=3), eval_size=20) == held_out[:5]


def test_a_run_evaluated_on_another_task_says_so(tiny_run, capsys):
    code, out, err = eval_cli(capsys, str(tiny_run), "--env", "arithmetic", "--size", "2", "--k", "0", "--no-save",
                              *FLAGS)
    assert code == 0, err
    assert f"note: {tiny_run} trained on {TOY}" in err
    assert out.startswith("2 test problems of arithmetic()")
    code, out, err = eval_cli(capsys, str(tiny_run), "--size", "2", "--k", "0", "--no-save", *FLAGS)
    assert code == 0 and "note:" not in err, err


def _nan_weights(folder: Path) -> None:
    """Set one weight tensor of ``folder``'s model.safetensors to NaN (what a diverged run's checkpoint held)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_model_with_nan_weights_is_refused(tiny_model_dir, tmp_path, capsys):
    """eval of a run whose weights were all NaN exited 0 with no warning."""
    import shutil

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, model)
    _nan_weights(model)
    code, _, err = eval_cli(capsys, str(model), "--env", TOY, "--size", "2", "--k", "0", *FLAGS)
    assert code == 2 and "has NaN or infinite weights" in err and "so it was not evaluated" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _flip_a_byte(ckpt: Path) -> None:
    path = ckpt / "policy" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage_state_unchecked(ckpt: Path) -> None:
    (ckpt / "state.json").write_text("{\"step\": [garbage")
    (ckpt / "checksums.json").unlink()  # as a checkpoint from before checksums: only the parser stands guard


def _nan_weights_rechecksummed(ckpt: Path) -> None:
    from tinyzero.checkpoint import write_checksums

    _nan_weights(ckpt / "policy")
    write_checksums(ckpt)  # the checksums agree: the weights themselves are what is wrong


@pytest.mark.parametrize("damage, fragment", [
    (_flip_a_byte, "model.safetensors is damaged (its SHA-256 differs"),
    (_garbage_state_unchecked, "state.json is damaged (JSONDecodeError)"),
    (_nan_weights_rechecksummed, "has NaN or infinite weights"),
], ids=["flipped-byte", "garbage-state", "nan-weights"])
def test_a_damaged_checkpoint_is_one_sentence(tiny_run, tmp_path, capsys, damage, fragment):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    ckpt = next((run / "checkpoints").glob("step_*"))
    damage(ckpt)
    code, _, err = eval_cli(capsys, str(run), "--k", "0", "--no-save", *FLAGS)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2  # the sentence (and, unchecked, a note saying so)
