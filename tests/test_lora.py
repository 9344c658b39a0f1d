"""LoRA (model.lora): frozen base and fp32 adapters, the reference as the adapters switched off, the merged push,
adapter checkpoints, and the layouts it refuses."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close

from tinyzero.config import AlgoConfig, LoraConfig, OptimConfig, load_config
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import TrainBatch, build_tokens
from tinyzero.engine.models import load_causal_lm
from tinyzero.engine.placement import plan_layout
from tinyzero.engine.reference import ReferenceModel
from tinyzero.errors import TinyZeroError

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]] * 2
RESPONSES = [[10, 11], [12, 13, 14], [15], [16, 17, 18, 19], [20], [21, 22]]
LORA = LoraConfig(rank=4, alpha=8.0)


@pytest.fixture()
def tokens():
    return build_tokens(PROMPTS, RESPONSES, pad_id=0)


def lora_learner(model_dir, lora: LoraConfig = LORA, **kwargs) -> Learner:
    return Learner(model_dir, AlgoConfig(), OptimConfig(lr=1e-2, micro_batch_size=4), lora=lora, **kwargs)


def trained(learner: Learner, tokens, steps: int = 2) -> Learner:
    """A few updates with fixed advantages, so the adapters' B is no longer zero."""
    adv = torch.linspace(-1, 1, tokens.response_mask.numel()).reshape(tokens.response_mask.shape)
    for _ in range(steps):
        learner.update(TrainBatch(tokens=tokens, advantages=adv * tokens.response_mask))
    return learner


def test_base_is_frozen_in_the_compute_dtype_and_only_fp32_adapters_train(tiny_model_dir):
    learner = lora_learner(tiny_model_dir, compute_dtype="bfloat16")
    trained_params = {n: p for n, p in learner.policy.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in learner.policy.named_parameters() if not p.requires_grad}
    assert trained_params and all("lora_" in n for n in trained_params)
    assert all(p.dtype == torch.float32 for p in trained_params.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen.values())
    optimised = [p for group in learner.optimizer.param_groups for p in group["params"]]
    assert len(optimised) == len(trained_params)
    # all-linear: every projection of every block, never the LM head
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trained_params if ".lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_rank_zero_is_full_training(tiny_model_dir):
    learner = lora_learner(tiny_model_dir, lora=LoraConfig())
    assert learner.peft is None
    assert all(p.requires_grad and p.dtype == torch.float32 for p in learner.policy.parameters())


def test_reference_is_the_base_model_exactly(tiny_model_dir, tokens):
    """The adapters switched off give the base model's log-probs bit for bit, after training moved the policy."""
    learner = trained(lora_learner(tiny_model_dir), tokens)
    base = ReferenceModel(tiny_model_dir, dtype="float32", device="cpu", micro_batch_size=4).logprobs(tokens)
    assert torch.equal(learner.ref_logprobs(tokens), base)
    assert float((learner.logprobs(tokens) - base).abs().max()) > 1e-3  # the policy itself has moved


def test_the_push_is_the_merged_weights_of_the_adapted_layers(tiny_model_dir, tokens):
    """A plain HF model given the pushed weights scores like the LoRA learner; the push carries adapted layers."""
    learner = trained(lora_learner(tiny_model_dir, lora=LoraConfig(rank=4, alpha=8.0, target_modules="q_proj,v_proj")),
                      tokens)
    pushed = dict(learner.named_weights("bfloat16"))
    # q and v adapted; k is their fused sibling in vLLM and travels as the base's weight; nothing else does.
    assert {n.rsplit(".", 2)[-2] for n in pushed} == {"q_proj", "k_proj", "v_proj"}
    assert all(t.dtype == torch.bfloat16 for t in pushed.values())
    plain = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    base_k = dict(plain.named_parameters())["model.layers.0.self_attn.k_proj.weight"].detach().clone()
    full = dict(learner.named_weights())
    plain.load_state_dict(full, strict=False)
    assert torch.equal(full["model.layers.0.self_attn.k_proj.weight"], base_k)
    from tinyzero.engine.forward import sequence_logprobs

    with torch.no_grad():
        merged = sequence_logprobs(plain, tokens)[0]
    want = learner.logprobs(tokens)
    # W' x against W x + s B (A x): the projections sum over the hidden size apart (2.3e-4, tests/tolerance.py).
    assert_close(merged, want, terms=plain.config.hidden_size)
    assert float((merged - learner.ref_logprobs(tokens)).abs().max()) > 1e-3  # the merge carried the adapters


def test_the_adapter_push_is_the_adapters_and_the_hf_engine_scores_like_the_learner(tiny_model_dir, tokens):
    """The adapter push carries peft's adapter config and the A/B tensors only, in the engine's dtype; an HF engine
    given it runs the adapters as the learner does (float32 both: the same layers, the same arithmetic)."""
    import json

    from tinyzero.engine.rollout import RolloutWorker

    learner = trained(lora_learner(tiny_model_dir, lora=LoraConfig(rank=4, alpha=8.0, target_modules="q_proj,v_proj")),
                      tokens)
    push = learner.adapter_push("bfloat16")
    assert {name.rsplit(".", 3)[-3] for name in push.tensors} == {"q_proj", "v_proj"}  # no fused sibling travels
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in push.tensors.values())
    assert push.nbytes == sum(t.numel() * 2 for t in push.tensors.values())
    config = json.loads(push.config)
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8.0, "LORA")
    engine = RolloutWorker(tiny_model_dir, backend="hf", dtype="float32")
    before = engine.logprobs(PROMPTS, RESPONSES)
    assert engine.update_adapters(learner.adapter_push()) == learner.adapter_push().nbytes
    after = engine.logprobs(PROMPTS, RESPONSES)
    want = learner.logprobs(tokens)
    for row, new in enumerate(after):
        assert_close(torch.tensor(new), want[row, : len(new)], terms=64)  # 64: the hidden size's sums
    moved = max(abs(a - b) for old, new in zip(before, after, strict=True) for a, b in zip(old, new, strict=True))
    assert moved > 1e-2  # the adapters arrived: the base alone scores these tokens otherwise
    engine.update_adapters(learner.adapter_push())  # a second push reloads the tensors, it does not wrap again
    assert engine.logprobs(PROMPTS, RESPONSES) == after
    engine.close()


@pytest.mark.parametrize(("setting", "dtype", "want"), [
    ("auto", "float32", "merged"), ("auto", "bfloat16", "adapters"), ("auto", "float16", "adapters"),
    ("adapters", "float32", "adapters"), ("adapters", "bfloat16", "adapters"), ("merged", "float32", "merged"),
])
def test_push_mode_merges_only_into_float32_engines(setting, dtype, want):
    from tinyzero.engine.lora import push_mode

    assert push_mode(setting, dtype) == want


def test_a_merged_push_into_a_bf16_engine_is_refused_before_anything_loads():
    from tinyzero.engine.lora import push_mode
    from tinyzero.engine.roles import lora_push

    with pytest.raises(TinyZeroError, match="model.lora.push=auto or adapters") as err:
        push_mode("merged", "bfloat16")
    assert "\n" not in str(err.value)
    # on a GPU layout the engine computes in bf16 ("auto"): adapters, and a merged push is refused there
    gpu = ["model.lora.rank=8", "placement.num_gpus=1", "run.mode=ray"]
    assert lora_push(load_config(None, gpu)) == "adapters"
    assert lora_push(load_config(None, ["model.lora.rank=8"])) == "merged"  # the CPU demo: float32
    assert lora_push(load_config(None, [])) == "weights"
    with pytest.raises(TinyZeroError, match="model.lora.push=merged"):
        lora_push(load_config(None, [*gpu, "model.lora.push=merged"]))


def test_vllm_takes_ranks_it_offers_and_the_layers_named():
    from tinyzero.engine.lora import engine_rank, engine_targets

    assert [engine_rank(r) for r in (1, 2, 8, 9, 64, 65, 512)] == [1, 8, 8, 16, 64, 128, 512]
    with pytest.raises(TinyZeroError, match="model.lora.rank <= 512"):
        engine_rank(513)
    assert engine_targets(LoraConfig(rank=4, target_modules="q_proj, v_proj"), ".") == ["q_proj", "v_proj"]


def test_all_linear_names_every_linear_layer_but_the_head(tiny_tied_model_dir):
    from tinyzero.engine.lora import engine_targets

    assert engine_targets(LoraConfig(rank=4), tiny_tied_model_dir) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_checkpoint_holds_adapters_and_resumes_them(tiny_model_dir, tokens, tmp_path):
    learner = trained(lora_learner(tiny_model_dir), tokens)
    learner.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "policy").exists()
    sizes = sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*") if f.is_file())
    base = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert sizes < base / 2  # adapters + their AdamW moments, not the model
    again = lora_learner(tiny_model_dir)
    again.load(tmp_path / "ckpt")
    assert torch.equal(again.logprobs(tokens), learner.logprobs(tokens))
    assert again.updates == learner.updates
    # the same update from both: optimizer moments came back too
    trained(again, tokens, 1), trained(learner, tokens, 1)
    assert torch.equal(again.logprobs(tokens), learner.logprobs(tokens))


def test_resume_onto_another_base_is_refused(tiny_model_dir, tiny_tied_model_dir, tokens, tmp_path):
    lora_learner(tiny_model_dir).save(tmp_path / "ckpt")
    other = lora_learner(tiny_tied_model_dir)
    with pytest.raises(TinyZeroError, match="trained on base") as err:
        other.load(tmp_path / "ckpt")
    assert "\n" not in str(err.value)
    with pytest.raises(TinyZeroError, match="holds LoRA adapters, not a full policy"):
        lora_learner(tiny_model_dir, lora=LoraConfig()).load(tmp_path / "ckpt")
    lora_learner(tiny_model_dir, lora=LoraConfig()).save(tmp_path / "full")
    with pytest.raises(TinyZeroError, match="holds no LoRA adapters"):
        lora_learner(tiny_model_dir).load(tmp_path / "full")


def test_lora_layouts(tiny_model_dir):
    kl = ("algo.kl_coef=0.01", "model.lora.rank=8")
    assert plan_layout(load_config(None, kl)).reference is None  # the learner is the reference
    assert plan_layout(load_config(None, ["algo.kl_coef=0.01"])).reference is not None
    one_gpu = load_config(None, [*kl, "placement.num_gpus=1", "run.mode=ray"])
    assert plan_layout(one_gpu).reference is None and plan_layout(one_gpu).rollout_sleeps
    with pytest.raises(TinyZeroError, match="algo.name=grpo or algo.name=rloo"):
        plan_layout(load_config(None, ["model.lora.rank=8", "algo.name=ppo"]))
    with pytest.raises(TinyZeroError, match="one learner process"):
        plan_layout(load_config(None, ["model.lora.rank=8", "placement.num_gpus=2", "run.mode=ray"]))
    with pytest.raises(TinyZeroError, match="target_modules"):
        lora_learner(tiny_model_dir, lora=LoraConfig(rank=2, target_modules="nothing_here"))


# ------------------------------------------------------------------------------ a LoRA run, end to end (HF engine)
@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """Two LoRA steps on the toy task (a tiny random model is right about half the time there), with a KL term."""
    from tinyzero.trainer import train

    out = tmp_path_factory.mktemp("lora-run")
    train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={out}", "run.name=lora", "run.steps=2",
                 "env.name=toy_tasks:FirstByte", "env.options={}", "rollout.backend=hf", "rollout.prompts_per_step=4",
                 "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6", "eval.size=8", "eval.max_new_tokens=6",
                 "model.lora.rank=4", "model.lora.alpha=8", "optim.lr=5e-2", "algo.kl_coef=0.01",
                 "log.tensorboard=false"])
    return out / "lora"


def test_a_lora_run_has_a_kl_to_the_base(lora_run):
    """The reference is the base (adapters off), not the policy itself: once step 1 moved the adapters, step 2's
    KL is above zero (a reference that were the policy would give exactly 0)."""
    import json

    metrics = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["train/kl"] > 1e-6


def test_a_lora_checkpoint_is_adapters_and_their_state(lora_run, tiny_model_dir):
    ckpt = lora_run / "checkpoints" / "step_000002"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["adapter"]
    assert {"adapter_model.safetensors", "adapter_config.json", "base.json", "tokenizer_config.json"} <= {
        p.name for p in (ckpt / "adapter").iterdir()}
    weights = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert (ckpt / "adapter" / "adapter_model.safetensors").stat().st_size < weights / 4


def test_eval_merge_and_report_work_on_a_lora_run(lora_run, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`tinyzero eval` on the run reproduces the trainer's last evaluation (merged weights, same greedy replies);
    `tinyzero merge` writes a plain HF folder that scores the same; `tinyzero report` renders the run."""
    import json

    from tinyzero.cli import main

    monkeypatch.setattr("tinyzero.cli._vllm_quiet", lambda: None)
    flags = ["--backend", "hf", "--no-progress", "--max-new-tokens", "6", "--k", "1"]
    assert main(["eval", str(lora_run), *flags]) == 0, capsys.readouterr().err
    saved = json.loads((lora_run / "eval" / "step_000002.json").read_text())
    state = json.loads((lora_run / "checkpoints" / "step_000002" / "state.json").read_text())
    assert saved["metrics"]["accuracy"] == state["history"][-1]["eval/accuracy"]
    assert saved["metrics"]["response_length"] == state["history"][-1]["eval/response_length"]

    merged = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(merged), "--dtype", "float32"]) == 0, capsys.readouterr().err
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()
    assert not (merged / "adapter_config.json").exists()  # a plain model, no peft needed to load it
    capsys.readouterr()
    assert main(["eval", str(merged), *flags, "--env", "toy_tasks:FirstByte", "--size", "8", "--no-save"]) == 0
    # the same greedy accuracy as the run's own checkpoint, on the same problems
    assert f"{saved['metrics']['accuracy']:.1%}" in capsys.readouterr().out
    from safetensors.torch import load_file

    base, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    moved = {k for k in base if not torch.equal(base[k], after[k])}
    assert moved and all(k.rsplit(".", 2)[-2].endswith("_proj") for k in moved)  # only adapted layers changed

    assert main(["report", str(lora_run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1000


def test_merge_refuses_a_full_run_and_another_base(lora_run, tmp_path, capsys):
    import json
    import shutil

    from tinyzero.cli import main

    assert main(["merge", "smollm2-135m", "--out", str(tmp_path / "x")]) == 2
    assert "takes a LoRA run" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    shutil.copytree(lora_run / "checkpoints" / "step_000002", ckpt)
    (ckpt / "adapter" / "base.json").write_text(json.dumps({"name": "other", "digest": "0" * 64}))
    from tinyzero.engine.lora import write_merged
    from tinyzero.engine.models import resolve_model

    config_name = json.loads((ckpt / "state.json").read_text())["config"]["model"]["name"]
    with pytest.raises(TinyZeroError, match="trained on base 'other'"):
        write_merged(resolve_model(config_name), ckpt / "adapter", tmp_path / "y", config_name)


def test_a_merged_push_for_ray_copies_each_tensor_to_the_host_as_it_is_made(tiny_model_dir, tokens, monkeypatch):
    """Under Ray the merged push leaves the learner's device through host memory: each merged tensor is copied as
    soon as it exists, never all of them on the device first (for Qwen2.5-3B that was 5.5 GB beside a waking vLLM)."""
    from tinyzero.engine import learner as learner_module
    from tinyzero.engine import lora as lora_module

    events = []
    merged, to_host = lora_module.merged_weights, learner_module._to_host

    def made(*args, **kwargs):
        for name, tensor in merged(*args, **kwargs):
            events.append("made")
            yield name, tensor

    def copied(tensor):
        events.append("copied")
        return to_host(tensor)

    monkeypatch.setattr(lora_module, "merged_weights", made)
    monkeypatch.setattr(learner_module, "_to_host", copied)
    weights = trained(lora_learner(tiny_model_dir), tokens, 1).named_weights("bfloat16")
    assert len(weights) == 14 and events == ["made", "copied"] * 14  # 7 projections x 2 layers, one at a time
