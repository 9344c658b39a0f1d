"""FSDP2: two learner processes (gloo on CPU) compute the same gradients as one unsharded learner (fp32, bf16),
and their checkpoints restore the AdamW moments (on two processes, and on one)."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tolerance import TINY_VOCAB, atol_for

from tinyzero import algos
from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import TrainBatch, build_tokens

PROMPTS = [[1, 2, 3]] * 4 + [[4, 5]] * 4 + [[6, 7, 8, 9]] * 4
RESPONSES = [[10 + i, 11 + i, 12][: 1 + i % 3] for i in range(12)]
SCORES = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def batch() -> TrainBatch:
    tokens = build_tokens(PROMPTS, RESPONSES, pad_id=0)
    adv = algos.grpo_advantages(torch.tensor(SCORES), 4)
    return TrainBatch(tokens=tokens, advantages=algos.broadcast_sequence_advantages(adv, tokens.response_mask))


def batch_for(learner: Learner, algo_name: str) -> TrainBatch:
    b = batch()
    if algo_name == "ppo":  # critic targets and old values/log-probs, computed the same way everywhere
        values = learner.values(b.tokens)
        b = TrainBatch(tokens=b.tokens, advantages=b.advantages, old_logprobs=learner.logprobs(b.tokens),
                       returns=torch.ones_like(values), old_values=values)
    return b


def capture_grads(learner: Learner) -> dict[str, torch.Tensor]:
    """Make ``learner`` record its full gradients (gathered when sharded) instead of stepping; policy and critic
    keys are prefixed ``policy.`` / ``critic.``."""
    captured: dict[str, torch.Tensor] = {}

    def capture(module, optimizer, losses):  # stands in for Learner._clip_and_step
        prefix = "critic." if module is learner.critic else "policy."
        for name, p in module.named_parameters():
            if p.grad is not None:
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad  # a collective
                captured[prefix + name] = grad.detach().float().clone()
        return 0.0

    learner._clip_and_step = capture
    return captured


def _worker(rank: int, model_dir: str, init: str, out: str, algo_name: str, compute: str, budget: int = 0) -> None:
    torch.set_num_threads(1)
    optim = OptimConfig(lr=1e-2, micro_batch_size=2, max_tokens_per_micro_batch=budget)
    learner = Learner(model_dir, AlgoConfig(name=algo_name), optim,
                      compute_dtype=compute, rank=rank, world_size=2, init_method=init)
    grads = capture_grads(learner)
    learner.update(batch_for(learner, algo_name))
    if rank == 0:
        torch.save(grads, out)
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Relative to a tensor's norm (tests/tolerance.py with magnitude 1). float32: the same terms summed in another
# order, the vocabulary's reduction the longest (1.5e-4; measured 1e-6). bf16: FSDP2 gathers bf16 parameters and
# runs every op in bf16, where autocast rounds only the matmuls' inputs: a bf16 rounding per layer forward and
# back, 2 x 2 layers (0.125; measured 0.024, which the former 3e-2 barely held). A missing 1/world_size is 1.0.
TOLERANCE = {"float32": atol_for(torch.float32, 1.0, terms=TINY_VOCAB),
             "bfloat16": atol_for(torch.bfloat16, 1.0, terms=4)}


# budget 9: token-budget micro-batches, packed per process; here the second process gets one micro-batch fewer
# and pads it with an empty slot (tests/test_token_budget.py compares packing with fixed rows in one process).
@pytest.mark.slow
@pytest.mark.parametrize("algo_name,compute,budget", [("grpo", "float32", 0), ("ppo", "float32", 0),
                                                      ("grpo", "bfloat16", 0), ("ppo", "float32", 9)])
def test_two_sharded_learners_take_the_same_gradient_as_one(tiny_model_dir, tmp_path, algo_name, compute, budget):
    out = tmp_path / "sharded.pt"
    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_worker, args=(str(tiny_model_dir), init, str(out), algo_name, compute, budget), nprocs=2,
                       start_method="spawn", join=True)
    sharded = torch.load(out)
    single = Learner(tiny_model_dir, AlgoConfig(name=algo_name), OptimConfig(lr=1e-2, micro_batch_size=2),
                     compute_dtype=compute)
    expected = capture_grads(single)
    single.update(batch_for(single, algo_name))
    assert expected and set(sharded) == set(expected)
    assert any(k.startswith("critic.") for k in expected) == (algo_name == "ppo")
    for name, grad in expected.items():
        # Relative to the whole tensor's norm: a sum of per-process shares must equal the one-process sum,
        # so a gradient scaled by any factor (e.g. a missing 1/world_size) fails here.
        err = (sharded[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert err < TOLERANCE[compute], (name, float(err))
    total = lambda g: torch.sqrt(sum((v**2).sum() for v in g.values()))  # noqa: E731
    assert float(total(expected)) > 0
    assert abs(float(total(sharded)) / float(total(expected)) - 1) < TOLERANCE[compute]


def _make(model_dir: str, rank: int = 0, world_size: int = 1, init: str | None = None) -> Learner:
    return Learner(model_dir, AlgoConfig(name="ppo"), OptimConfig(lr=1e-2, critic_lr=1e-2, micro_batch_size=2),
                   rank=rank, world_size=world_size, init_method=init)


def _resume_worker(rank: int, model_dir: str, init: str, folder: str, out: str) -> None:
    """Train one PPO step, save, load into a fresh sharded learner, then take one more step with both."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    trained = _make(model_dir, rank, 2, init)
    trained.update(batch_for(trained, "ppo"))
    trained.save(folder)
    dist.barrier()  # the first process has written the checkpoint
    resumed = _make(model_dir, rank, 2, init)
    resumed.load(folder)
    # Copied: on CPU the returned states share storage with the live ones, which the next step changes.
    states = copy.deepcopy({"trained": trained._optimizer_states(), "resumed": resumed._optimizer_states()})
    weights = {}
    for name, learner in (("trained", trained), ("resumed", resumed)):
        learner.update(batch_for(learner, "ppo"))
        weights[name] = {**learner._full_state(learner.policy),
                         **{f"critic.{k}": v for k, v in learner._full_state(learner.critic).items()}}
    if rank == 0:
        torch.save({"states": states, "weights": weights}, out)
    dist.barrier()
    dist.destroy_process_group()


def _assert_same_states(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for name, per_param in a["state"].items():
        assert per_param.keys() == b["state"][name].keys() >= {"exp_avg", "exp_avg_sq", "step"}
        for key, value in per_param.items():
            assert torch.equal(value, b["state"][name][key]), (name, key)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


@pytest.mark.slow
def test_sharded_checkpoint_restores_the_adamw_moments(tiny_model_dir, tmp_path):
    folder, out = tmp_path / "ckpt", tmp_path / "result.pt"
    folder.mkdir()
    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_resume_worker, args=(str(tiny_model_dir), init, str(folder), str(out)), nprocs=2,
                       start_method="spawn", join=True)
    result = torch.load(out, weights_only=False)
    trained, resumed = result["states"]["trained"], result["states"]["resumed"]
    for key in ("optimizer", "critic_optimizer"):  # policy and PPO critic
        _assert_same_states(trained[key], resumed[key])
        assert any(bool(s["exp_avg"].abs().sum() > 0) for s in trained[key]["state"].values())
    # The next step from the restored state is the step the uninterrupted learner takes.
    a, b = result["weights"]["trained"], result["weights"]["resumed"]
    assert a.keys() == b.keys() and any(k.startswith("critic.") for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    # States are full tensors keyed by parameter name: one unsharded learner resumes the same checkpoint.
    single = _make(str(tiny_model_dir))
    single.load(folder)
    restored = single._optimizer_states()
    for key in ("optimizer", "critic_optimizer"):
        _assert_same_states(trained[key], restored[key])
