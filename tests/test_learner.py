"""Learner: log-prob layout, exact savings (skipped rows, micro-batching), PPO critic, save/load, and the guard
that refuses a non-finite update."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from tolerance import TINY_VOCAB, assert_close, close

from tinyzero import algos
from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.engine.forward import sequence_logprobs
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import TrainBatch, build_tokens
from tinyzero.errors import NonFiniteUpdate, TinyZeroError

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]] * 2
RESPONSES = [[10, 11], [12, 13, 14], [15], [16, 17, 18, 19], [20], [21, 22]]


@pytest.fixture()
def tokens():
    return build_tokens(PROMPTS, RESPONSES, pad_id=0)


def test_logprobs_match_a_full_unpadded_forward(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(micro_batch_size=4))
    logprobs = learner.logprobs(tokens)
    assert logprobs.shape == tokens.response_mask.shape
    with torch.no_grad():
        for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            logits = learner.policy(torch.tensor([prompt + response])).logits[0].float()
            full = torch.log_softmax(logits, dim=-1)
            expected = torch.stack([full[len(prompt) - 1 + j, t] for j, t in enumerate(response)])
            # Another batch shape, another kernel blocking: rounding over the vocabulary's logsumexp (1e-3 here).
            assert_close(logprobs[i, : len(response)], expected, terms=TINY_VOCAB)
            assert torch.all(logprobs[i, len(response) :] == 0)  # padding: exactly 0, so sums over rows are right


def _grads(learner: Learner, batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Gradients of one update (taken before the optimizer step by zero learning rate)."""
    captured = {}
    original = learner._clip_and_step

    def capture(module, optimizer, losses):  # stands in for Learner._clip_and_step
        for name, p in module.named_parameters():
            if p.grad is not None:
                captured[name] = p.grad.detach().clone()
        return 0.0

    learner._clip_and_step = capture
    learner.update(batch)
    learner._clip_and_step = original
    return captured


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_skipping_zero_advantage_rows_and_micro_batching_are_exact(tiny_model_dir, tokens, agg):
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # the last group is uniform: zero advantage
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    batch = TrainBatch(tokens=tokens, advantages=adv)
    base = Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(micro_batch_size=6))
    skipped = _grads(base, batch)
    no_skip = copy.copy(base)
    no_skip._can_skip_zero_rows = lambda b: False
    full = _grads(no_skip, batch)
    micro = Learner(tiny_model_dir, AlgoConfig(loss_agg=agg), OptimConfig(micro_batch_size=1))
    one_by_one = _grads(micro, batch)
    assert full.keys() == skipped.keys() == one_by_one.keys() and full
    # Exact up to summation order: eps x the whole gradient's scale (a parameter's own can be ~0 by cancellation,
    # k_proj's bias) x the longest reduction; 2e-4 of the scale, far below a mis-normalised skip or micro-batch.
    scale = max(float(g.abs().max()) for g in full.values())
    for name in full:
        assert_close(skipped[name], full[name], magnitude=scale, terms=TINY_VOCAB, msg=name)
        assert_close(one_by_one[name], full[name], magnitude=scale, terms=TINY_VOCAB, msg=name)


def test_update_moves_probability_towards_positive_advantage(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    before = learner.logprobs(tokens)
    for _ in range(3):
        stats = learner.update(TrainBatch(tokens=tokens, advantages=adv))
    after = learner.logprobs(tokens)
    gain = algos.masked_sum(after - before, tokens.response_mask, dim=1)  # [N]
    assert torch.all(gain[scores == 1] > 0) and torch.all(gain[scores == 0] < 0)
    assert stats["grad_norm"] > 0 and stats["lr"] == pytest.approx(1e-3)
    # Between updates only masters and AdamW's moments stay (what the preflight counts beside a waking vLLM).
    assert all(p.grad is None for p in learner.policy.parameters())


def test_ppo_critic_learns_and_checkpoint_round_trips(tiny_model_dir, tokens, tmp_path):
    algo = AlgoConfig(name="ppo", epochs=2, mini_batches=2)
    learner = Learner(tiny_model_dir, algo, OptimConfig(lr=1e-3, critic_lr=1e-2, micro_batch_size=3))
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    mask = tokens.response_mask
    for _ in range(4):
        values = learner.values(tokens)
        rewards = algos.kl_penalised_rewards(scores, torch.zeros_like(mask), mask, 0.0)
        adv, returns = algos.gae_advantages(rewards, values, mask, 1.0, 1.0)
        batch = TrainBatch(tokens=tokens, advantages=algos.masked_whiten(adv, mask), old_logprobs=learner.logprobs(tokens),
                           returns=returns, old_values=values)
        stats = learner.update(batch)
    assert "vf_loss" in stats
    err_after = algos.masked_mean((learner.values(tokens) - returns) ** 2, mask)
    err_start = algos.masked_mean(returns**2, mask)  # the critic head starts at zero
    assert err_after < err_start
    learner.save(tmp_path)
    restored = Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=3))
    restored.load(tmp_path)
    # The same weights through the same code: bit-identical.
    assert torch.equal(restored.logprobs(tokens), learner.logprobs(tokens))
    assert torch.equal(restored.values(tokens), learner.values(tokens))
    assert restored.updates == learner.updates


def test_sequence_logprobs_entropy_is_detached_unless_asked(tiny_model_dir, tokens):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig())
    _, ent = sequence_logprobs(learner.policy, tokens, with_entropy=True)
    assert not ent.requires_grad
    _, ent = sequence_logprobs(learner.policy, tokens, with_entropy=True, entropy_grad=True)
    assert ent.requires_grad


def _moved_by_update(learner: Learner, batch: TrainBatch) -> tuple[int, int]:
    """(elements that got a non-zero gradient, how many of them the update changed)."""
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    touched: dict[str, torch.Tensor] = {}
    step = learner.optimizer.step

    def recording_step(*args, **kwargs):  # the gradients are freed right after the step: read them before it
        touched.update({n: p.grad != 0 for n, p in learner.policy.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.optimizer.step = recording_step
    learner.update(batch)
    learner.optimizer.step = step
    params = dict(learner.policy.named_parameters())
    total = sum(int(mask.sum()) for mask in touched.values())
    moved = sum(int((params[n].detach() != before[n])[mask].sum()) for n, mask in touched.items())
    return total, moved


def test_bf16_compute_keeps_fp32_masters_so_a_tiny_lr_still_moves_weights(tiny_model_dir, tokens):
    """At lr 1e-6 an Adam step (about lr per element) is far below half a bf16 ulp (2.4e-4 at 0.1, this model's
    weight scale): masters held in bf16 would not move at all. The weights start bf16-exact (as a bf16 checkpoint
    loads): a first update from weights that are not would count the rounding to bf16 itself as movement. Both
    the first and the second update must move nearly every weight that got a gradient."""
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-6, micro_batch_size=6), compute_dtype="bfloat16")
    assert learner.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in learner.policy.parameters())
    with torch.no_grad():
        for p in learner.policy.parameters():
            p.copy_(p.to(torch.bfloat16))
    fp32 = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(), compute_dtype="float32")
    lp_bf16, lp_fp32 = learner.logprobs(tokens), fp32.logprobs(tokens)
    mask = tokens.response_mask > 0
    # The forward really ran in bf16 (different rounding), and stayed close to fp32.
    assert not torch.equal(lp_bf16[mask], lp_fp32[mask])
    # Autocast rounds each matmul's inputs to bf16 and sums in float32: bf16's eps relative to the log-probs' size,
    # not per summed term (0.24 here; 0.019 measured, against 0.45 that atol 0.1 + rtol 0.05 allowed).
    assert_close(lp_bf16[mask], lp_fp32[mask], dtype=torch.bfloat16)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    batch = TrainBatch(tokens=tokens, advantages=adv)
    for update in (1, 2):
        total, moved = _moved_by_update(learner, batch)
        assert total > 50_000 and moved / total > 0.99, (update, moved, total)
    states = [s for state in learner.optimizer.state.values() for s in state.values() if torch.is_tensor(s)]
    assert states and all(s.dtype == torch.float32 for s in states if s.dim() > 0)
    # The rollout engine gets the weights in its own dtype (half the bytes), rounded from the fp32 masters.
    pushed = dict(learner.named_weights("bfloat16"))
    assert all(t.dtype == torch.bfloat16 for t in pushed.values())
    name = next(iter(pushed))
    assert torch.equal(pushed[name], dict(learner.policy.named_parameters())[name].detach().to(torch.bfloat16))


def test_gpu_learner_benchmark_runs_on_cpu_with_a_tiny_shape(tmp_path):
    """The GPU benchmark (bench/gpu_learner.py) must not rot between GPU sessions: its tiny shape runs here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "gpu_learner.py"
    spec = importlib.util.spec_from_file_location("gpu_learner", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (result,) = bench.main([str(tmp_path), "--shapes", "tiny", "--seqs", "8", "--prompt", "6", "--response", "10",
                            "--micro", "4", "--updates", "1"])
    assert result["master_dtype"] == "torch.float32" and result["moved_frac_after_one_update"] > 0.5
    assert result["s_per_update_median"] > 0 and result["tokens_per_s"] > 0


def test_iter_weights_streams_what_named_weights_gathers(tiny_model_dir):
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig())
    streamed = list(learner.iter_weights("bfloat16"))
    gathered = learner.named_weights("bfloat16")
    assert [n for n, _ in streamed] == [n for n, _ in gathered]
    assert all(torch.equal(a, b) and a.dtype == torch.bfloat16 for (_, a), (_, b) in zip(streamed, gathered, strict=True))


def test_a_tied_head_travels_once(tiny_model_dir, tiny_tied_model_dir):
    """A tied model's lm_head.weight is its embedding: neither the Ray push (named_weights) nor the in-process one
    (iter_weights) sends it (the worker puts it back: tests/test_rollout.py); an untied model's head goes."""
    for path, tied in ((tiny_tied_model_dir, True), (tiny_model_dir, False)):
        learner = Learner(path, AlgoConfig(), OptimConfig())
        pushed = learner.named_weights("bfloat16")
        names = [name for name, _ in pushed]
        assert ("lm_head.weight" in names) is not tied and "model.embed_tokens.weight" in names
        assert [name for name, _ in learner.iter_weights("bfloat16")] == names
        # Every parameter's bytes travel once: what goes is exactly the model's distinct parameters.
        assert sum(t.numel() for _, t in pushed) == sum(p.numel() for p in learner.policy.parameters())


def test_host_copies_keep_a_tied_head_one_tensor(tiny_tied_model_dir, tmp_path, monkeypatch):
    """Moved to the host name by name, the tied head became a second tensor and every checkpoint saved it again;
    copied once per distinct tensor it stays an alias, which save_pretrained drops. A GPU's device-to-host copy is
    played here by ``Tensor.cpu`` returning a new tensor (on a CPU it returns the same one)."""
    from safetensors import safe_open

    from tinyzero.engine.learner import host_copies

    learner = Learner(tiny_tied_model_dir, AlgoConfig(), OptimConfig())
    state = learner.policy.state_dict()
    cast = host_copies(state, torch.bfloat16)
    assert cast["lm_head.weight"] is cast["model.embed_tokens.weight"] and len(cast) == len(state)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: self.clone())
    learner.save(tmp_path)
    with safe_open(str(tmp_path / "policy" / "model.safetensors"), "pt") as saved:
        names = set(saved.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    restored = Learner(tiny_tied_model_dir, AlgoConfig(), OptimConfig())
    restored.load(tmp_path)
    assert restored.policy.lm_head.weight.data_ptr() == restored.policy.model.embed_tokens.weight.data_ptr()
    assert torch.equal(restored.policy.lm_head.weight, learner.policy.lm_head.weight)  # saved float32, loaded


@pytest.mark.parametrize("term", ["kl_loss", "entropy_bonus"])
def test_zero_advantage_rows_are_kept_where_they_still_pull(tiny_model_dir, tokens, term):
    """A GRPO group whose samples all scored the same has zero advantage, but under a KL loss its rows still pull
    the policy towards the reference, and under an entropy bonus they still push entropy up: skipping them would
    change the gradient. The learner keeps them (its gradient equals the no-skip one) and a forced skip differs."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # the last group is uniform: zero advantage
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(scores, 2), tokens.response_mask)
    algo = AlgoConfig(kl_coef=0.5) if term == "kl_loss" else AlgoConfig(entropy_coef=0.1)
    learner = Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=6))
    # A reference that differs from the policy, so the KL term has a gradient on every row.
    ref = learner.logprobs(tokens) - 0.3 * tokens.response_mask if term == "kl_loss" else None
    batch = TrainBatch(tokens=tokens, advantages=adv, ref_logprobs=ref)
    kept = _grads(learner, batch)
    forced = copy.copy(learner)
    forced._can_skip_zero_rows = lambda b: True
    skipped = _grads(forced, batch)
    full = copy.copy(learner)
    full._can_skip_zero_rows = lambda b: False
    everything = _grads(full, batch)
    assert kept.keys() == everything.keys() == skipped.keys() and kept
    assert all(torch.equal(kept[name], everything[name]) for name in kept)
    scale = max(float(g.abs().max()) for g in kept.values())  # a real difference, not rounding (as above)
    assert any(not close(kept[name], skipped[name], magnitude=scale, terms=TINY_VOCAB) for name in kept)


def test_zero_advantage_rows_still_train_the_critic(tiny_model_dir, tokens):
    """With PPO's critic every row's return is a target for the value head, zero policy advantage or not: the
    learner keeps every row (skipped_frac 0), and the critic's gradient changes when a zero-advantage row is
    dropped. (The policy's own gradient from an all-zero-advantage row is exactly zero under the clipped loss
    alone; the rule keeps such rows with a critic anyway, a saving left unused since whitened PPO advantages are
    almost never exactly zero.)"""
    algo = AlgoConfig(name="ppo")
    learner = Learner(tiny_model_dir, algo, OptimConfig(micro_batch_size=6))
    mask = tokens.response_mask
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask
    adv[-1] = 0.0  # one row with no advantage
    values = learner.values(tokens)
    returns = values + 1.0 * mask  # every row, the zero-advantage one too, has a return to fit
    batch = TrainBatch(tokens=tokens, advantages=adv, old_logprobs=learner.logprobs(tokens), returns=returns,
                       old_values=values)
    assert not learner._can_skip_zero_rows(batch)
    grads = _grads(learner, batch)
    fewer = _grads(learner, batch.select(torch.arange(len(tokens) - 1)))
    critic = [name for name in grads if name.startswith(("body.", "head."))]
    assert critic
    scale = max(float(grads[n].abs().max()) for n in critic)  # a real difference, not rounding
    assert any(not close(grads[n], fewer[n], magnitude=scale, terms=TINY_VOCAB) for n in critic)


def _snapshot(learner: Learner) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in learner.policy.state_dict().items()}
    return weights, copy.deepcopy(learner.optimizer.state_dict())


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("broken", ["nan_advantages", "inf_lr"])
def test_a_non_finite_update_is_refused_and_changes_nothing(tiny_model_dir, tokens, broken):
    """optim.lr=.inf (or NaN advantages from a NaN reward) stepped and wrote NaN into every weight."""
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])[:, None] * tokens.response_mask
    learner.update(TrainBatch(tokens=tokens, advantages=advantages))  # one good step: AdamW has moments now
    before = _snapshot(learner)
    if broken == "inf_lr":
        learner.optim_cfg = dataclasses.replace(learner.optim_cfg, lr=math.inf)
    else:
        advantages = torch.full_like(advantages, math.nan)
    with pytest.raises(NonFiniteUpdate, match="refused update 2 because it was not finite") as err:
        learner.update(TrainBatch(tokens=tokens, advantages=advantages))
    assert ("learning rate inf" if broken == "inf_lr" else "gradient norm nan") in str(err.value)
    after = _snapshot(learner)
    assert _same(before[0], after[0]) and _same(before[1]["state"], after[1]["state"])  # weights, AdamW moments
    assert learner.updates == 1
    assert all(bool(torch.isfinite(v).all()) for v in after[0].values())


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_finite_loss_with_a_non_finite_gradient_is_refused(tiny_model_dir, tokens, bad):
    """The guard's own case (issue 33): the loss is finite and only the gradient is not (here one weight's gradient,
    made so by a hook). NaN advantages make the loss NaN too, so a guard that let a non-finite gradient norm through
    was caught by that test's message text alone; here it would step, and the norm's clipping would write NaN."""
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])[:, None] * tokens.response_mask
    learner.update(TrainBatch(tokens=tokens, advantages=advantages))  # one good step: AdamW has moments now
    before = _snapshot(learner)
    weight = next(p for name, p in learner.policy.named_parameters() if name.endswith("mlp.down_proj.weight"))
    hook = weight.register_hook(lambda grad: torch.full_like(grad, bad))
    losses = []
    original = learner._clip_and_step

    def record(module, optimizer, sums):  # the loss terms the guard is given, then the guard itself
        losses.append(dict(sums))
        return original(module, optimizer, sums)

    learner._clip_and_step = record
    try:
        with pytest.raises(NonFiniteUpdate, match="refused update 2 because it was not finite") as err:
            learner.update(TrainBatch(tokens=tokens, advantages=advantages))
    finally:
        hook.remove()
    assert losses and all(math.isfinite(value) for value in losses[0].values()), losses  # the loss was finite
    assert f"gradient norm {bad}" in str(err.value) and "pg_loss" not in str(err.value)
    after = _snapshot(learner)
    assert _same(before[0], after[0]) and _same(before[1]["state"], after[1]["state"])  # weights, AdamW moments
    assert learner.updates == 1 and all(p.grad is None for p in learner.policy.parameters())


def test_a_checkpoint_with_nan_moments_is_refused(tiny_model_dir, tokens, tmp_path):
    """NaN AdamW moments in a checkpoint resumed silently and turned every weight into NaN on the next step."""
    learner = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    learner.update(TrainBatch(tokens=tokens, advantages=tokens.response_mask.float()))
    learner.save(tmp_path)
    state = torch.load(tmp_path / "learner.pt", weights_only=True)
    name = next(iter(state["optimizer"]["state"]))
    state["optimizer"]["state"][name]["exp_avg"].fill_(math.nan)
    torch.save(state, tmp_path / "learner.pt")
    fresh = Learner(tiny_model_dir, AlgoConfig(), OptimConfig(lr=1e-3, micro_batch_size=6))
    with pytest.raises(TinyZeroError, match=r"learner.pt holds NaN or infinite values \(optimizer.state.*exp_avg\)"):
        fresh.load(tmp_path)
    learner.policy.state_dict()[name].fill_(math.inf)
    with pytest.raises(TinyZeroError, match="holds NaN or infinite values, so this checkpoint was not written"):
        learner.save(tmp_path / "again")
    assert not (tmp_path / "again" / "learner.pt").exists()
