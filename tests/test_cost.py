"""Cost meter, budget guard and the before-the-run estimate."""

from __future__ import annotations

import json

import pytest

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.sizing.cost import PRICE_ENV, CostMeter, check_budget, estimate_run, usd_per_gpu_hour
from tinyzero.trainer import train


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_meter_bills_wall_time_times_gpus_and_carries_earlier_sessions():
    clock = FakeClock()
    meter = CostMeter(price=2.0, units=4, spent_s=1800, clock=clock)  # half an hour in an earlier session
    clock.now += 1800
    assert meter.seconds == 3600 and meter.gpu_hours == 4 and meter.usd == 8
    assert meter.metrics() == {"cost/gpu_hours": 4, "cost/usd": 8}
    assert meter.next_step_fits(budget=9.0, step_seconds=450)  # +$1 -> exactly 9
    assert not meter.next_step_fits(budget=9.0, step_seconds=451)
    assert meter.next_step_fits(budget=0.0, step_seconds=10**9)  # no budget
    assert "cost/usd" not in CostMeter(price=0.0, units=1).metrics()


def test_price_from_recipe_or_environment(monkeypatch):
    monkeypatch.delenv(PRICE_ENV, raising=False)
    assert usd_per_gpu_hour(load_config(None, [])) == 0
    monkeypatch.setenv(PRICE_ENV, "2.5")
    assert usd_per_gpu_hour(load_config(None, [])) == 2.5
    assert usd_per_gpu_hour(load_config(None, ["cost.usd_per_gpu_hour=1.2"])) == 1.2
    monkeypatch.setenv(PRICE_ENV, "cheap")
    with pytest.raises(TinyZeroError, match=PRICE_ENV):
        usd_per_gpu_hour(load_config(None, []))
    monkeypatch.delenv(PRICE_ENV)
    with pytest.raises(TinyZeroError, match="cost.usd_per_gpu_hour"):
        check_budget(load_config(None, ["run.budget_usd=5"]))
    with pytest.raises(TinyZeroError, match="run.budget_usd must be 0 or more"):
        load_config(None, ["run.budget_usd=-1"])


def test_estimate_scales_with_model_card_and_recipe():
    config = load_config("recipes/countdown-3b.yaml", ["cost.usd_per_gpu_hour=2"])
    h100 = estimate_run(config, 3.09e9, "NVIDIA H100 80GB HBM3")
    a10 = estimate_run(config, 3.09e9, "NVIDIA A10G")
    small = estimate_run(config, 0.494e9, "NVIDIA H100 80GB HBM3")
    assert 0 < small.step_s < h100.step_s < a10.step_s
    assert h100.usd == pytest.approx(h100.total_s / 3600 * 2 * 2)  # 2 GPUs at $2
    assert "estimate" in h100.basis and "H100" in h100.basis
    assert "card unknown" in estimate_run(config, 3.09e9, "Mystery GPU").basis
    # CPU: the demo recipe, from throughput measured on it; the demo measured ~57 s a step (docs/demo.md).
    demo = estimate_run(load_config("recipes/demo-cpu.yaml"), 134.5e6, None)
    assert 30 < demo.step_s < 120 and demo.usd is None


def test_budget_stops_with_a_checkpoint_and_resume_continues(tiny_model_dir, tmp_path, capsys):
    args = [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=budget", "run.steps=3",
            "rollout.backend=hf", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=8", "eval.size=4", "eval.max_new_tokens=8", "checkpoint.every=0",
            "env.options={digits: 1, ops: '+', answer_format: last_integer}",
            # $3600 an hour is $1 a second: the set-up alone spends more than this budget, so the guard must stop
            # the run after its first step, whatever this machine's speed.
            "cost.usd_per_gpu_hour=3600", "run.budget_usd=0.001"]
    summary = train(None, args)
    out = capsys.readouterr().out
    run_dir = tmp_path / "budget"
    assert summary["stopped"] == "budget" and summary["steps"] == 1
    assert (run_dir / "checkpoints/step_000001/COMPLETE").is_file()  # checkpoint.every=0: saved for the stop
    assert "budget:" in out and f"tinyzero resume {run_dir} run.budget_usd=" in out
    first = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [1] and first[0]["cost/usd"] > 0.001
    summary = train(None, ["run.budget_usd=1000000"], resume_dir=str(run_dir))
    assert summary["stopped"] == "" and summary["steps"] == 3
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # The resumed session's meter starts from what the first session had spent at its checkpoint.
    assert metrics[1]["cost/usd"] > metrics[0]["cost/usd"]


def test_dynamic_sampling_multiplies_the_generation_estimate_by_its_expected_rounds():
    from tinyzero.sizing.cost import ASSUMED_MIXED_SHARE, generated_tokens, generation_factor

    assert ASSUMED_MIXED_SHARE == 0.5  # the hand values below assume it
    off = load_config("recipes/demo-cpu.yaml", ["rollout.filter_groups=none"])
    # Half the groups kept per round: round 1 generates P, round 2 P/2, round 3 P/4 -> 1.75 P in expectation.
    three = load_config("recipes/demo-cpu.yaml", ["rollout.filter_groups=correct", "rollout.max_generation_rounds=3"])
    one = load_config("recipes/demo-cpu.yaml", ["rollout.filter_groups=correct", "rollout.max_generation_rounds=1"])
    assert generation_factor(off) == 1.0 and generation_factor(one) == 1.0
    assert generation_factor(three) == pytest.approx(1.75)
    assert generated_tokens(three) == pytest.approx(1.75 * generated_tokens(off))
    base, filtered = estimate_run(off, 134.5e6, None), estimate_run(three, 134.5e6, None)
    assert "dynamic sampling: x1.75" in filtered.basis and "dynamic sampling" not in base.basis
    assert filtered.step_s > base.step_s


def test_a_curriculum_assumes_its_target_pass_rate_for_the_share_of_groups_that_teach():
    from tinyzero.sizing.cost import generation_factor, mixed_share

    # At t = 0.5 and G = 8 a group agrees with probability 2 / 2^8: p = 254/256 mixed, and three rounds generate
    # (1 - (2/256)^3) / (254/256) groups per prompt in expectation.
    at_half = load_config("recipes/demo-cpu.yaml", ["data.curriculum.pass_rate=true", "rollout.filter_groups=correct",
                                                    "rollout.max_generation_rounds=3"])
    p, why = mixed_share(at_half)
    assert p == pytest.approx(254 / 256, abs=1e-15) and "target pass rate 0.5" in why
    assert generation_factor(at_half) == pytest.approx((1 - (2 / 256) ** 3) / (254 / 256), abs=1e-12)
    basis = estimate_run(at_half, 134.5e6, None).basis
    assert "expected at 99% of groups with mixed verdicts (groups of 8 at the curriculum's target pass rate 0.5, an " \
           "assumption; at most x3)" in basis
    # A target of 0.9: 0.9^8 + 0.1^8 = 43% of groups agree.
    high = load_config("recipes/demo-cpu.yaml", ["data.curriculum.levels=true", "data.curriculum.target=0.9"])
    assert mixed_share(high)[0] == pytest.approx(1 - 0.9**8 - 0.1**8, abs=1e-15)


def test_overlap_costs_the_longer_phase_plus_the_push_on_separate_gpus():
    """countdown-3b (split: vLLM on GPU 0, learner on GPU 1): R + U + P a step without overlap; with
    run.off_policy_steps=1, max(R, U) + P, except the on-policy steps of the schedule (every checkpoint step and the
    last: U + P, and the batch after each is generated alone). 300 steps, a checkpoint every 50: 6 such steps."""
    from tinyzero.sizing.cost import PUSH_BYTES_S

    sync = estimate_run(load_config("recipes/countdown-3b.yaml"), 3.09e9, "NVIDIA H100 80GB HBM3")
    over = estimate_run(load_config("recipes/countdown-3b.yaml", ["run.off_policy_steps=1"]), 3.09e9,
                        "NVIDIA H100 80GB HBM3")
    r, u, p = sync.rollout_s, sync.update_s, sync.push_s
    assert p == pytest.approx(2 * 3.09e9 / PUSH_BYTES_S) and (over.rollout_s, over.update_s) == (r, u)
    assert sync.step_s == pytest.approx(r + u + p) and sync.total_s == pytest.approx(300 * (r + u + p))
    assert over.step_s == pytest.approx(max(r, u) + p)
    # 294 overlapped steps, 6 on-policy updates; batches generated alone: step 1 and the 5 after a checkpoint < 300
    assert over.total_s == pytest.approx(294 * max(r, u) + 6 * u + 6 * r + 300 * p)
    assert "off_policy_steps=1" in over.basis and "off_policy_steps" not in sync.basis


def test_on_cpu_and_in_one_process_the_phases_still_add_up():
    """The CPU roles share the cores: no max(); in one process the engine reads the weights in place: no push."""
    demo = load_config("recipes/demo-cpu.yaml")
    plain = estimate_run(demo, 134.5e6, None)
    ray = estimate_run(load_config("recipes/demo-cpu.yaml", ["run.mode=ray", "run.off_policy_steps=1",
                                                             "algo.rollout_correction=tis"]), 134.5e6, None)
    assert plain.push_s == ray.push_s == 0
    assert ray.step_s == pytest.approx(plain.step_s) == pytest.approx(plain.rollout_s + plain.update_s)
    one_gpu = estimate_run(load_config("recipes/countdown-1.5b.yaml"), 1.54e9, "NVIDIA H100 80GB HBM3")
    assert one_gpu.push_s == 0


def test_a_typical_response_length_scales_generation_and_training_tokens():
    from tinyzero.sizing.cost import PROMPT_TOKENS, generated_tokens, trained_tokens

    config = load_config("recipes/countdown-3b.yaml")
    assert generated_tokens(config, 256) == pytest.approx(generated_tokens(config) / 4)
    assert trained_tokens(config, 256) == pytest.approx(128 * 8 * (PROMPT_TOKENS + 256))
    assert generated_tokens(config, 5000) == generated_tokens(config)  # never past the bound
    bound = estimate_run(config, 3.09e9, "NVIDIA H100 80GB HBM3")
    typical = estimate_run(config, 3.09e9, "NVIDIA H100 80GB HBM3", response_tokens=256)
    assert typical.rollout_s == pytest.approx(bound.rollout_s / 4)
    assert "responses of 256 tokens" in typical.basis and "max_new_tokens" in bound.basis


def test_vllm_lora_generation_counts_only_where_the_engine_serves_adapters():
    """The CPU demo's LoRA merges into its float32 engine: plain generation; with model.lora.push=adapters the CPU's
    measured factor applies, and a bf16 engine (a GPU) takes the adapters and the assumed GPU factor."""
    from tinyzero.sizing.cost import LORA_GENERATION_CPU

    demo = estimate_run(load_config("recipes/demo-cpu.yaml"), 134.5e6, None)
    merged = estimate_run(load_config("recipes/demo-cpu-lora.yaml"), 134.5e6, None)
    adapters = estimate_run(load_config("recipes/demo-cpu-lora.yaml", ["model.lora.push=adapters"]), 134.5e6, None)
    assert merged.rollout_s == pytest.approx(demo.rollout_s) and "LoRA" not in merged.basis
    assert adapters.rollout_s == pytest.approx(demo.rollout_s * LORA_GENERATION_CPU)
    assert "generation x2.6 (measured on CPU)" in adapters.basis


@pytest.mark.parametrize("checkpointing,ratio", [("false", 4 / 6), ("true", 6 / 8)])
def test_lora_trains_at_4n_a_token(checkpointing, ratio):
    """A frozen weight takes no gradient of its own: 4·N a trained token instead of 6·N (checkpointing recomputes
    the forward's 2·N in both). No reference, old log-probs or LM-head term here, so the ratio is exact."""
    args = ["placement.num_gpus=1", "run.mode=ray", f"model.gradient_checkpointing={checkpointing}"]
    full = estimate_run(load_config(None, args), 3.09e9, "NVIDIA H100 80GB HBM3")
    lora = estimate_run(load_config(None, [*args, "model.lora.rank=8"]), 3.09e9, "NVIDIA H100 80GB HBM3")
    from tinyzero.sizing.cost import LORA_GENERATION_GPU, ROLLOUT_MFU, generated_tokens

    # generation (H100: 989 TFLOP/s) with vLLM's LoRA kernels on top (the GPU's assumed factor), the same push; the
    # update is the learner's
    gen = 2 * 3.09e9 * generated_tokens(load_config(None, args)) / (989e12 * ROLLOUT_MFU)
    assert full.rollout_s == pytest.approx(gen) and lora.rollout_s == pytest.approx(gen * LORA_GENERATION_GPU)
    assert "vLLM's LoRA: generation x1.25 (assumed)" in lora.basis
    assert lora.push_s == full.push_s
    assert lora.update_s / full.update_s == pytest.approx(ratio, rel=1e-9)
