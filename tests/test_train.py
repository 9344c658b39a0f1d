"""End-to-end training runs with a tiny random model: local and Ray modes, weight push, resume, and user errors.

Runs that must change the weights (weight push, resume parity) train on ``toy_tasks:Letters``: on the built-in
tasks a tiny random model scores 0 almost always, GRPO's advantages are then all zero, and nothing moves — so
a skipped push or a lost optimizer state would go unnoticed.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tolerance import tiny_logprob_atol

from tinyzero.config import load_config
from tinyzero.engine.messages import build_tokens
from tinyzero.trainer import Trainer, train

STEPS = 3
# A task whose reward a tiny model raises within a few steps (tests/toy_tasks.py), at a learning rate that moves it.
LEARNABLE = ("env.name=toy_tasks:Letters", "env.options={}", "optim.lr=1e-2")
# LoRA on every linear layer of the blocks, with a KL term so the reference (the adapters switched off) runs too;
# adapters start as a zero update, so their learning rate is raised (about tenfold, as LoRA RL reports do).
LORA = ("model.lora.rank=8", "model.lora.alpha=16", "algo.kl_coef=0.01", "optim.lr=5e-2")


def overrides(model: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"model.name={model}", f"run.out_dir={out}", f"run.name={name}", f"run.steps={STEPS}",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12",
        "eval.size=8", "eval.max_new_tokens=12", "eval.every=2", "checkpoint.every=2", "checkpoint.keep_last=2",
        "env.options={digits: 1, ops: '+', answer_format: last_integer}", "optim.lr=1e-3", *extra,
    ]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_rollouts(run_dir: Path) -> list[dict]:
    with gzip.open(run_dir / "rollouts.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def check_run_folder(run_dir: Path, steps: int = STEPS, lora: bool = False) -> None:
    assert (run_dir / "config.yaml").is_file()
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    for key in ("reward/mean", "reward/accuracy", "rollout/response_length_mean", "rollout/zero_variance_frac",
                "rollout/truncated_frac",
                "train/grad_norm", "train/entropy", "train/clip_frac", "time/rollout", "time/learner",
                "time/sync", "rollout/tokens_per_s"):
        assert key in metrics[0], key
    rows = read_rollouts(run_dir)
    assert len(rows) == steps * 16
    assert {"step", "prompt", "completion", "score", "correct"} <= set(rows[0])
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    held = "adapter/adapter_model.safetensors" if lora else "policy/model.safetensors"
    assert all((run_dir / "checkpoints" / name / held).is_file() for name in ckpts)


# Fixed token sequences (ids of the tiny models' 320-entry vocabulary), scored by the rollout engine and by the
# learner after training: the engine must hold the learner's current weights.
PUSH_PROMPTS = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12]]
PUSH_RESPONSES = [[70, 71, 72, 73, 74], [100, 101], [40, 200, 90, 91, 92, 93, 94, 300]]
# fp32 on both sides, different kernels: vLLM's CPU kernels and torch differ by about 1e-6 on these models
# (tests/test_rollout.py), the HF engine by float rounding only. The bound is tests/tolerance.py's for the tiny
# models' log-probs (1.5e-3), more than 100x below what two or three steps at lr 1e-2 move these log-probs
# (measured 1.6-1.9 with the push skipped), so an engine left on older weights cannot pass.
PUSH_ATOL = tiny_logprob_atol()


def learner_logprobs(trainer: Trainer) -> list[list[float]]:
    tokens = build_tokens(PUSH_PROMPTS, PUSH_RESPONSES, trainer._pad_id())
    values = trainer.roles.learner.logprobs(tokens)  # [N, T]
    return [values[i, : len(r)].tolist() for i, r in enumerate(PUSH_RESPONSES)]


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(row) for row in a] == [len(row) for row in b] == [len(r) for r in PUSH_RESPONSES]
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def run_checking_the_push(args: list[str]) -> tuple[dict, float, float]:
    """Train; returns (summary, how far training moved the learner's log-probs of the fixed sequences, how far
    the rollout engine's log-probs of them are from the learner's afterwards)."""
    trainer = Trainer(load_config(None, args))
    try:
        before = learner_logprobs(trainer)
        summary = trainer.run()
        after = learner_logprobs(trainer)
        engine = trainer.roles.rollout.logprobs(PUSH_PROMPTS, PUSH_RESPONSES)
    finally:
        trainer.close()
    return summary, max_gap(before, after), max_gap(engine, after)


def check_push(moved: float, gap: float) -> None:
    assert moved > 100 * PUSH_ATOL, f"training barely moved the weights ({moved:.2e}): the check would be blind"
    assert gap < PUSH_ATOL, f"the rollout engine is {gap:.2e} away from the learner's weights: a push was lost"


@pytest.fixture(scope="module")
def vllm_run(tiny_model_dir, tmp_path_factory):
    """One local-mode vLLM run, shared: its folder, its weight-push check, and the baseline for resume parity."""
    out = tmp_path_factory.mktemp("vllm-local")
    summary, moved, gap = run_checking_the_push(overrides(tiny_model_dir, out, "local", *LEARNABLE))
    return out, summary, moved, gap


@pytest.mark.slow
def test_local_mode_with_vllm(vllm_run):
    out, summary, _, _ = vllm_run
    assert summary["steps"] == STEPS and summary["n"] == 8
    check_run_folder(out / "local")


@pytest.mark.slow
def test_weight_push_reaches_vllm_in_local_mode(vllm_run):
    _, _, moved, gap = vllm_run
    check_push(moved, gap)


@pytest.mark.slow
def test_resume_with_vllm_matches_an_uninterrupted_run(vllm_run, tiny_model_dir):
    """The demo's backend: interrupted after step 2 and resumed, it repeats the uninterrupted run's samples."""
    out = vllm_run[0]
    train(None, overrides(tiny_model_dir, out, "interrupted", *LEARNABLE, "run.steps=2"))
    train(None, [f"run.steps={STEPS}"], resume_dir=str(out / "interrupted"))
    check_resume(out / "local", out / "interrupted", STEPS, tiny_model_dir)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_mode_with_vllm(tiny_tied_model_dir, tmp_path):
    """Roles as Ray actors; the tied model checks that the pushed weights carry the LM head through Ray."""
    summary, moved, gap = run_checking_the_push(
        overrides(tiny_tied_model_dir, tmp_path, "ray", "run.mode=ray", *LEARNABLE))
    assert summary["steps"] == STEPS
    check_run_folder(tmp_path / "ray")
    check_push(moved, gap)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "push"), [("local", "adapters"), pytest.param("ray", "adapters", marks=pytest.mark.ray),
                                            ("local", "merged")])
def test_lora_weight_push_reaches_vllm(tiny_tied_model_dir, tmp_path, mode, push):
    """LoRA: the adapters (vLLM's own LoRA) or the merged weights of the adapted layers reach vLLM, in this process
    and through Ray; the engine then scores like the learner, and a step's push moves the bytes it should."""
    summary, moved, gap = run_checking_the_push(overrides(
        tiny_tied_model_dir, tmp_path, mode, f"run.mode={mode}", *LEARNABLE, *LORA, f"model.lora.push={push}"))
    assert summary["steps"] == STEPS
    check_run_folder(tmp_path / mode, lora=True)
    metrics = read_metrics(tmp_path / mode)
    assert "train/kl" in metrics[-1]  # the reference ran, from the learner itself
    check_push(moved, gap)
    # The tiny model (hidden 64, MLP 128, 2 layers, rank 8, fp32): an adapter push is rank x (in + out) of its 14
    # projections; a merged one every adapted layer's weight (q/k/v/o/gate/up/down: fused siblings are adapted too).
    per_layer = 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64)) * 4
    full = (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3) * 4
    want = 2 * (per_layer if push == "adapters" else full)
    assert [m["rollout/push_bytes"] for m in metrics] == [want] * STEPS


def test_ppo_with_kl_runs(tiny_model_dir, tmp_path):
    summary = train(None, overrides(tiny_model_dir, tmp_path, "ppo", "rollout.backend=hf", "algo.name=ppo",
                                    "algo.kl_coef=0.05", "algo.kl_applied_as=reward", "algo.mini_batches=2"))
    assert summary["steps"] == STEPS
    metrics = read_metrics(tmp_path / "ppo")
    assert "train/vf_loss" in metrics[-1] and "time/reference" in metrics[-1]


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_gspo_and_cispo_train_beside_every_option_of_the_update(tiny_model_dir, tmp_path, loss):
    """algo.policy_loss=gspo|cispo in a real run, off-policy from the second epoch on (ratios other than 1), with a
    KL term, an entropy bonus, truncated importance sampling and token-budget micro-batches: the weights move and
    reach the engine, and the losses' stats are logged."""
    summary, moved, gap = run_checking_the_push(overrides(
        tiny_model_dir, tmp_path, loss, "rollout.backend=hf", *LEARNABLE, "run.steps=2", f"algo.policy_loss={loss}",
        "algo.epochs=2", "algo.mini_batches=2", "algo.kl_coef=0.01", "algo.entropy_coef=0.001",
        "algo.rollout_correction=tis", "optim.max_tokens_per_micro_batch=64", "algo.gspo_clip_low=0.01",
        "algo.gspo_clip_high=0.01"))
    assert summary["steps"] == 2
    check_push(moved, gap)
    metrics = read_metrics(tmp_path / loss)
    for key in ("train/pg_loss", "train/clip_frac", "train/ratio_mean", "train/approx_kl", "train/kl"):
        assert all(key in m and torch.isfinite(torch.tensor(m[key])) for m in metrics), key
    assert max(m["train/clip_frac"] for m in metrics) > 0  # the later mini-batches moved off the sampling policy


def test_a_registered_estimator_drives_training(tiny_model_dir, tmp_path, monkeypatch):
    """The driver branches on no algorithm name: an estimator registered in one place (here a wrapper around RLOO
    that records its calls) is what a run with algo.name=NAME uses, with the options it declares."""
    from tinyzero import algos

    monkeypatch.setattr(algos, "ADVANTAGE_ESTIMATORS", dict(algos.ADVANTAGE_ESTIMATORS))
    calls = []

    @algos.register_advantage("recorded_rloo", options=("lam",))
    def recorded_rloo(inputs, *, lam):
        """RLOO, recording what it was given."""
        calls.append((inputs.group_size, tuple(inputs.scores.shape), inputs.values, lam))
        return algos.rloo(inputs)

    train(None, overrides(tiny_model_dir, tmp_path, "custom", "rollout.backend=hf", *LEARNABLE, "run.steps=2",
                          "algo.name=recorded_rloo", "algo.lam=0.5", "eval.every=0", "checkpoint.every=0"))
    assert calls == [(4, (16,), None, 0.5)] * 2
    assert read_metrics(tmp_path / "custom")[-1]["train/grad_norm"] > 0  # RLOO's advantages reached the learner


def test_training_raises_the_reward_of_a_learnable_task(tiny_model_dir, tmp_path):
    """Learning, not just running: ten GRPO steps on toy_tasks:Letters (share of ASCII letters in the reply).

    Seeded (run.seed, the fixture's model), so a machine gives the same curve every time; two runs show it. The
    margin: across run seeds 0-9 on this machine the mean reward of the last three steps beat that of the first
    three by 0.45 to 0.75 (from about 0.23); one step's mean over 32 replies varies by about 0.03. A gain of 0.3 is
    far beyond noise, and a run that does not learn (no weight push, a sign error in the advantages, a learning
    rate that never reaches the optimiser) stays near its start."""
    args = overrides(tiny_model_dir, tmp_path, "learn", "rollout.backend=hf", *LEARNABLE, "run.steps=10",
                     "rollout.samples_per_prompt=8", "rollout.max_new_tokens=8", "eval.size=4", "eval.every=0",
                     "checkpoint.every=0")
    train(None, args)
    rewards = [m["reward/mean"] for m in read_metrics(tmp_path / "learn")]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, [round(r, 3) for r in rewards]
    train(None, [arg.replace("run.name=learn", "run.name=again") for arg in args])
    assert [m["reward/mean"] for m in read_metrics(tmp_path / "again")] == rewards  # deterministic


def check_resume(straight: Path, resumed: Path, steps: int, initial: Path, *, critic: bool = False,
                 lora: bool = False) -> None:
    """Same samples, rewards and data cursor every step, and the same weights at the end (policy, critic)."""
    a, b = read_rollouts(straight), read_rollouts(resumed)
    assert [(r["step"], r["prompt"], r["completion"]) for r in a] == [
        (r["step"], r["prompt"], r["completion"]) for r in b
    ]
    ma, mb = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in mb] == list(range(1, steps + 1))
    for x, y in zip(ma, mb, strict=True):
        assert x["reward/mean"] == y["reward/mean"] and x["data/cursor"] == y["data/cursor"]
        # The aha baselines and series come back with the checkpoint: deltas and the aha step match too.
        assert {k: v for k, v in x.items() if k.startswith("aha/")} == {k: v for k, v in y.items() if k.startswith("aha/")}
    last = f"checkpoints/step_{steps:06d}"
    files = ["adapter/adapter_model.safetensors" if lora else "policy/model.safetensors"]
    files += ["critic/model.safetensors"] if critic else []
    for file in files:
        wa, wb = load_file(str(straight / last / file)), load_file(str(resumed / last / file))
        assert wa.keys() == wb.keys()
        # The same steps from the same weights and optimizer state, as the samples above: bit-identical.
        assert all(torch.equal(wa[name], wb[name]) for name in wa), file
    if critic:
        ha = torch.load(straight / last / "critic/value_head.pt")
        hb = torch.load(resumed / last / "critic/value_head.pt")
        assert all(torch.equal(ha[name], hb[name]) for name in ha)
    # Training moved the policy, so equal weights at the end are the same training, not none.
    end = load_file(str(straight / last / files[0]))
    if lora:  # the adapters' B starts at zero
        assert max(float(v.abs().max()) for k, v in end.items() if "lora_B" in k) > 1e-3
        return
    start = load_file(str(initial / "model.safetensors"))
    assert max(float((end[k] - start[k]).abs().max()) for k in start) > 1e-3


# Dynamic sampling on a task a tiny model gets right about half the time, 2 samples a prompt: about half the groups
# have one verdict, so steps run extra rounds and the cursor runs ahead of prompts x steps (checked below).
FILTERED = ("env.name=toy_tasks:FirstByte", "rollout.samples_per_prompt=2", "rollout.filter_groups=correct",
            "rollout.max_generation_rounds=3")


@pytest.mark.parametrize("algo", [
    ("algo.kl_coef=0.01",),
    # PPO: the critic, both optimizers and the mini-batch shuffling generator must come back.
    ("algo.name=ppo", "algo.kl_coef=0.05", "algo.kl_applied_as=reward", "algo.mini_batches=2"),
    ("algo.kl_coef=0.01", *FILTERED),
    LORA,
], ids=["grpo", "ppo", "grpo-filter", "grpo-lora"])
def test_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, algo):
    extra = ("rollout.backend=hf", "checkpoint.every=1", "checkpoint.keep_last=4", "run.steps=4", *LEARNABLE, *algo)
    train(None, overrides(tiny_model_dir, tmp_path, "straight", *extra))
    # The same run, interrupted after step 2 (its recipe said 2 steps), then resumed to 4.
    train(None, overrides(tiny_model_dir, tmp_path, "interrupted", *extra, "run.steps=2"))
    train(None, ["run.steps=4"], resume_dir=str(tmp_path / "interrupted"))
    check_resume(tmp_path / "straight", tmp_path / "interrupted", 4, tiny_model_dir, critic="algo.name=ppo" in algo,
                 lora=LORA[0] in algo)
    if FILTERED[-1] in algo:
        check_filtered_run(tmp_path / "straight", prompts=4)


def check_filtered_run(run_dir: Path, prompts: int) -> None:
    """The filter ran extra rounds, every drawn prompt moved the cursor, and only mixed groups were trained on."""
    metrics = read_metrics(run_dir)
    assert max(m["rollout/generation_rounds"] for m in metrics) > 1
    drawn = [m["rollout/groups_generated"] for m in metrics]
    assert [m["data/cursor"] for m in metrics] == [sum(drawn[: i + 1]) for i in range(len(drawn))]
    assert metrics[-1]["data/cursor"] > prompts * len(metrics)
    rows = read_rollouts(run_dir)
    for step in {r["step"] for r in rows}:
        groups: dict = {}
        for r in (r for r in rows if r["step"] == step):
            groups.setdefault(r["prompt"], []).append(r)
        kept = [g for g in groups.values() if g[0]["kept"]]
        assert all(len({r["correct"] for r in g}) == 2 for g in kept)  # kept: the verdicts differ
        assert all(len({r["correct"] for r in g}) == 1 for g in groups.values() if not g[0]["kept"])
        m = metrics[step - 1]
        assert len(kept) == m["rollout/groups_kept"] <= prompts
        assert m["rollout/zero_variance_frac"] == pytest.approx(1 - len(kept) / len(groups))


def test_incomplete_checkpoint_is_ignored(tiny_model_dir, tmp_path):
    train(None, overrides(tiny_model_dir, tmp_path, "crash", "rollout.backend=hf", "run.steps=2",
                          "checkpoint.every=1"))
    run_dir = tmp_path / "crash"
    # A save killed after writing its marker but before the rename: everything a checkpoint has, under its
    # temporary name, and a later step. Its state is not a driver state, so resuming from it would fail loudly.
    half = run_dir / "checkpoints" / ".tmp-step_000003-999"
    half.mkdir()
    (half / "state.json").write_text("{}")
    (half / "COMPLETE").write_text("3")
    fake = run_dir / "checkpoints" / "step_000009"  # renamed into place, killed before the marker
    fake.mkdir()
    (fake / "state.json").write_text("{}")
    train(None, ["run.steps=3"], resume_dir=str(run_dir))
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]  # resumed from step 2
    assert not half.exists()  # the next save cleared the debris


def test_resume_after_a_lost_step_logs_each_step_once(tiny_model_dir, tmp_path):
    """A crash after step 3 was logged but before its checkpoint: resume redoes step 3 from step 2's checkpoint,
    and the completions logged by the lost step are dropped, so every step appears once. The crash came while a
    fourth append was under way, leaving an unfinished metrics line and gzip member (resume crashed on them)."""
    import shutil

    from transformers import AutoTokenizer

    train(None, overrides(tiny_model_dir, tmp_path, "lost", "rollout.backend=hf", "run.steps=3"))
    run_dir = tmp_path / "lost"
    shutil.rmtree(run_dir / "checkpoints" / "step_000003")
    member = gzip.compress("".join(json.dumps(r) + "\n" for r in read_rollouts(run_dir)[-16:]).encode())
    with open(run_dir / "rollouts.jsonl.gz", "ab") as fh:
        fh.write(member[: len(member) // 2])
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "reward/me')
    train(None, ["run.steps=3"], resume_dir=str(run_dir))
    steps = [r["step"] for r in read_rollouts(run_dir)]
    assert sorted(set(steps)) == [1, 2, 3] and all(steps.count(s) == 16 for s in (1, 2, 3))
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    # A checkpoint's policy folder is a complete HF model folder: the tokenizer is saved with it.
    policy = run_dir / "checkpoints" / "step_000003" / "policy"
    assert AutoTokenizer.from_pretrained(policy).encode("7 + 5") == AutoTokenizer.from_pretrained(
        tiny_model_dir).encode("7 + 5")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "recipes/demo-cpu.yaml", "rollout.samples_per_promt=4"], "unknown key rollout.samples_per_promt"),
        (["train", "recipes/demo-cpu.yaml", "algo.clip_low=wide"], "algo.clip_low must be float"),
        (["train", "recipes/nonexistent.yaml"], "does not exist"),
        (["train", "recipes/demo-cpu.yaml", "model.name=/nonexistent/model"], "neither a local folder"),
        (["train", "recipes/demo-cpu.yaml", "run.name=."], "run.name must be a folder name"),
        (["resume", "/nonexistent/run"], "no run to resume"),
    ],
)
def test_user_errors_are_one_sentence(args, fragment, tmp_path):
    result = cli(*args, f"run.out_dir={tmp_path}") if args[0] == "train" else cli(*args)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_gpu_layout_the_machine_cannot_serve(tiny_model_dir, tmp_path):
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine really has 8 GPUs")
    result = cli("train", "recipes/demo-cpu.yaml", f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}",
                 "placement.num_gpus=8", "run.mode=ray")
    assert result.returncode != 0
    have = torch.cuda.device_count()
    fragment = "has none" if have == 0 else f"asks for 8 GPU(s) but this machine has {have}"
    assert "8 GPU(s)" in result.stderr and fragment in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()  # stopped before the run folder or any model was made


def test_existing_run_is_not_overwritten(tiny_model_dir, tmp_path):
    args = overrides(tiny_model_dir, tmp_path, "twice", "rollout.backend=hf", "run.steps=1")
    train(None, args)
    result = cli("train", "recipes/demo-cpu.yaml", *args)
    assert result.returncode != 0 and "already holds a run" in result.stderr
    assert (tmp_path / "twice" / "metrics.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_mode_with_fsdp2_learners(tiny_model_dir, tmp_path):
    """Two learner actors shard the policy (FSDP2, gloo on CPU); weights reach the rollout worker; resume."""
    extra = ("run.mode=ray", "rollout.backend=hf", "placement.learner_workers=2", "run.steps=2", *LEARNABLE)
    summary, moved, gap = run_checking_the_push(overrides(tiny_model_dir, tmp_path, "fsdp", *extra))
    assert summary["steps"] == 2
    check_push(moved, gap)
    run_dir = tmp_path / "fsdp"
    assert (run_dir / "checkpoints/step_000002/policy/model.safetensors").is_file()
    train(None, ["run.steps=3"], resume_dir=str(run_dir))
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]


def test_trainer_logs_aha_metrics(tiny_model_dir, tmp_path):
    """aha/ scalars every step, equal to the same analysis of the logged rollouts; eval baselines; resumable state."""
    from tinyzero.analysis.aha import DEFAULT_LEXICON, Tracker
    from tinyzero.envs import make_env

    train(None, overrides(tiny_model_dir, tmp_path, "aha", "rollout.backend=hf", "aha.transcripts_every=1"))
    run_dir = tmp_path / "aha"
    metrics, rows = read_metrics(run_dir), read_rollouts(run_dir)
    env = make_env("arithmetic", {"digits": 1, "ops": "+", "answer_format": "last_integer"})
    tracker = Tracker(DEFAULT_LEXICON, env)
    for m in metrics:
        batch = [r for r in rows if r["step"] == m["step"]]
        analyses = tracker.analyse([r["completion"] for r in batch], [r["prompt"] for r in batch],
                                   [r["problem"] for r in batch])
        expected = tracker.rollout_metrics(m["step"], analyses, [r["correct"] for r in batch])
        assert {k: v for k, v in m.items() if k.startswith("aha/")} == expected
        assert "aha/verification_rate" in m and "aha/reflection/wait" in m and "time/aha" in m
    assert metrics[0]["aha/delta/reflection_rate"] == 0.0
    with gzip.open(run_dir / "evals.jsonl.gz", "rt") as fh:
        evals = [json.loads(line) for line in fh]
    assert sorted({r["step"] for r in evals}) == [0, 2, 3] and all("problem" in r for r in evals)
    state = json.loads((run_dir / "checkpoints/step_000003/state.json").read_text())
    assert state["aha"]["baseline"]["reflection_rate"] == metrics[0]["aha/reflection_rate"]
    assert [s for s, _ in state["aha"]["series"]] == [2, 3]
    assert state["history"][0]["aha/eval_delta/reflection_rate"] == 0.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert "aha/transcripts/text_summary" in events.Tags()["tensors"]
    assert "aha/eval/reflection_rate" in events.Tags()["scalars"]
    from tinyzero.analysis.report import write_report

    html = write_report(run_dir).read_text()  # the report of a real (tiny) run, eval curve from its checkpoint
    assert "held-out accuracy, first → last eval" in html and "<h3>Self-verification against the step-0 baseline" in html


def finite_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "policy" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values()), f"non-finite weights in {folder}"
    return weights


def test_an_update_gone_non_finite_stops_with_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    """With optim.lr=.inf the run trained on, wrote NaN into every weight and a COMPLETE checkpoint of them, and
    exited 0. Here the first step is good, then the learning rate turns infinite (as optim.lr=.inf would, had the
    recipe check missed it): the second update is refused and the run stops with step 1's weights saved."""
    import dataclasses
    import math

    from tinyzero.errors import TinyZeroError

    args = overrides(tiny_model_dir, tmp_path, "inf", "rollout.backend=hf", "checkpoint.every=0", "run.steps=3",
                     "log.tensorboard=false", *LEARNABLE)
    trainer = Trainer(load_config(None, args))
    learner = trainer.roles.learner.processes[0]  # local mode: the Learner itself
    first_step = trainer.train_step
    good: dict[str, torch.Tensor] = {}

    def then_infinite_lr():
        metrics = first_step()
        good.update({k: v.detach().clone() for k, v in learner.policy.state_dict().items()})
        learner.optim_cfg = dataclasses.replace(learner.optim_cfg, lr=math.inf)
        return metrics

    trainer.train_step = then_infinite_lr
    try:
        with pytest.raises(TinyZeroError) as err:
            trainer.run()
    finally:
        trainer.close()
    message = str(err.value)
    assert message.startswith("step 2: the learner refused update 2 because it was not finite (learning rate inf)")
    assert "checkpoint of step 1" in message and "tinyzero resume" in message and "\n" not in message
    run_dir = tmp_path / "inf"
    saved = finite_weights(run_dir / "checkpoints" / "step_000001")
    assert all(torch.equal(saved[k], good[k]) for k in saved)  # the state after step 1, not a later one
    assert [m["step"] for m in read_metrics(run_dir)] == [1]
    state = json.loads((run_dir / "checkpoints" / "step_000001" / "state.json").read_text())
    assert state["cursor"] == 4  # step 2's problems were given back: a resume draws them again


def test_a_nan_reward_stops_the_run_from_the_command_line(tiny_model_dir, tmp_path):
    """A plug-in whose reward is NaN: the first update is refused, the run exits non-zero with one sentence, and
    its checkpoint holds the initial, finite weights."""
    import os

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    args = overrides(tiny_model_dir, tmp_path, "nan", "rollout.backend=hf", "env.name=toy_tasks:NanScore",
                     "env.options={}", "log.tensorboard=false")
    result = subprocess.run([sys.executable, "-m", "tinyzero.cli", "train", "recipes/demo-cpu.yaml", *args],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("tinyzero: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "step 1: the learner refused update 1" in lines[0] and "checkpoint of step 0" in lines[0]
    saved = finite_weights(tmp_path / "nan" / "checkpoints" / "step_000000")
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(saved[k], initial[k]) for k in saved)


# ------------------------------------------------------------- hostile train inputs (issue 33), and their neighbours
TRAIN_REFUSED = {  # overrides -> what the one sentence says; each stops before the run folder or any model is made
    "name-300-bytes": (["run.name=" + "a" * 300], "run.name must be a folder name of at most 200 bytes"),
    "name-202-utf8-bytes": (["run.name=" + "é" * 101], "this one has 202"),
    "eval-k-million": (["eval.k=1000000"], "eval.k must be between 0 and 1024, got 1000000"),
    "eval-k-1025": (["eval.k=1025"], "eval.k must be between 0 and 1024"),
    "filter-one-sample": (["rollout.filter_groups=correct", "rollout.samples_per_prompt=1",
                           "rollout.max_generation_rounds=1000000"], "a group of one sample"),
    "filter-greedy": (["rollout.filter_groups=score", "rollout.temperature=0"], "greedy samples"),
    "lora-rank-4096": (["model.lora.rank=4096"], "model.lora.rank=4096 is more than"),
    "lora-rank-33": (["model.lora.rank=33"], "bound an adapter's rank to 32"),  # the tiny model's k_proj: 64 x 32
    "gspo-with-gae": (["algo.name=ppo", "algo.policy_loss=gspo"], "algo.policy_loss=gspo weighs whole sequences"),
}
TRAIN_ACCEPTED = {  # the neighbours: past every check, up to the first model load
    "name-200-bytes": ["run.name=" + "a" * 200],
    "eval-k-1024": ["eval.k=1024"],
    "filter-two-samples": ["rollout.filter_groups=correct", "rollout.samples_per_prompt=2"],
    "lora-rank-32": ["model.lora.rank=32"],
    "cispo-with-gae": ["algo.name=ppo", "algo.policy_loss=cispo"],
    "gspo-with-rloo": ["algo.name=rloo", "algo.policy_loss=gspo"],
}


class _ModelLoaded(Exception):
    pass


@pytest.fixture()
def no_model(monkeypatch):
    """The first loads a trainer makes (tokenizer, then roles) raise ``_ModelLoaded``."""
    from tinyzero.engine import models, roles

    def loaded(*args, **kwargs):
        raise _ModelLoaded()

    monkeypatch.setattr(models, "load_tokenizer", loaded)
    monkeypatch.setattr(roles, "build_roles", loaded)


@pytest.mark.parametrize("case", TRAIN_REFUSED)
def test_hostile_train_inputs_are_one_sentence_before_anything_is_made(case, tiny_model_dir, tmp_path, no_model):
    from tinyzero.errors import TinyZeroError

    extra, fragment = TRAIN_REFUSED[case]
    out = tmp_path / "runs"
    with pytest.raises(TinyZeroError) as err:
        train(None, overrides(tiny_model_dir, out, "hostile", "rollout.backend=hf", *extra))
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert not out.exists()  # nothing written where the input was refused


@pytest.mark.parametrize("case", TRAIN_ACCEPTED)
def test_the_neighbours_of_hostile_train_inputs_pass_every_check(case, tiny_model_dir, tmp_path, no_model):
    with pytest.raises(_ModelLoaded):
        train(None, overrides(tiny_model_dir, tmp_path / "runs", "neighbour", "rollout.backend=hf",
                              *TRAIN_ACCEPTED[case]))
