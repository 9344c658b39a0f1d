"""The GPU layout plan: 1, 2, 4 and 8 GPUs x colocate/split x tensor parallel 1/2, and every impossible layout."""

from __future__ import annotations

import pytest

from tinyzero.config import load_config
from tinyzero.engine.placement import plan_layout
from tinyzero.errors import TinyZeroError


def plan(*overrides: str):
    return plan_layout(load_config(None, ["run.mode=ray", *overrides]))


def possible(gpus: int, strategy: str, tp: int) -> bool:
    if strategy == "split":
        return gpus >= 2 and (gpus // 2) % tp == 0
    return gpus % tp == 0


MATRIX = [(g, s, tp, ref) for g in (1, 2, 4, 8) for s in ("colocate", "split") for tp in (1, 2) for ref in (0, 1)]


@pytest.mark.parametrize("gpus,strategy,tp,ref", MATRIX)
def test_every_layout_is_placeable_or_refused(gpus, strategy, tp, ref):
    args = (f"placement.num_gpus={gpus}", f"placement.strategy={strategy}", f"rollout.tensor_parallel_size={tp}",
            f"placement.rollout_gpus={max(gpus // 2, 1)}", f"algo.kl_coef={0.001 * ref}",
            "rollout.gpu_memory_utilization=0.7")
    if not possible(gpus, strategy, tp):
        with pytest.raises(TinyZeroError) as err:
            plan(*args)
        message = str(err.value)
        assert "placement." in message or "rollout.tensor_parallel_size" in message
        assert len(message.splitlines()) == 1
        return
    layout = plan(*args)
    # One GPU per bundle, every GPU used, nothing over-booked (vLLM's Ray executor rejects bigger bundles).
    assert len(layout.bundles) == gpus and all(b["GPU"] == 1.0 for b in layout.bundles)
    assert all(0 < use <= 1.0 for use in layout.gpu_use().values())
    # Tensor-parallel groups: tp distinct GPUs each, groups disjoint, and they cover the rollout GPUs.
    groups = [e.bundles for e in layout.engines]
    assert all(len(g) == tp == len(set(g)) for g in groups)
    flat = [b for g in groups for b in g]
    assert len(flat) == len(set(flat)) == (gpus // 2 if strategy == "split" else gpus)
    for engine in layout.engines:
        if tp > 1:  # the engine's actor holds no GPU; vLLM's workers are told exactly which bundles to use
            assert engine.actor.gpus == 0 and engine.worker_gpus > 0
            assert engine.env()["VLLM_RAY_BUNDLE_INDICES"] == ",".join(map(str, engine.bundles))
        else:
            assert engine.actor.gpus > 0 and engine.env() == {}
    learner_bundles = [s.bundle for s in layout.learners]
    assert len(set(learner_bundles)) == len(learner_bundles)  # one learner process per GPU
    if strategy == "split":
        assert set(learner_bundles).isdisjoint(flat) and all(s.gpus == 1.0 for s in layout.learners)
        assert len(layout.learners) == gpus - gpus // 2 and not layout.rollout_sleeps
    else:
        assert len(layout.learners) == gpus and layout.rollout_sleeps
    assert (layout.reference is not None) == bool(ref)
    if ref:  # the reference shares a vLLM GPU, so it must load after vLLM is ready
        assert layout.waits_for_rollout(layout.reference)


def test_split_start_order_lets_learners_load_beside_vllm():
    layout = plan("placement.num_gpus=2", "placement.strategy=split", "algo.kl_coef=0.001",
                  "rollout.gpu_memory_utilization=0.7")
    assert [s.bundle for s in layout.learners] == [1]
    assert not layout.waits_for_rollout(layout.learners[0])
    assert layout.reference.bundle == 0 and layout.engines[0].actor.gpus + layout.reference.gpus == 1.0
    assert layout.describe() == "GPU 0: rollout 0, reference; GPU 1: learner"


def test_vllm_beside_the_reference_is_capped_at_80_percent():
    """Pinned: the reference's GPU keeps at least a fifth of its memory from vLLM (docs/engine.md)."""
    split = ("placement.num_gpus=2", "placement.strategy=split", "algo.kl_coef=0.001")
    assert plan(*split, "rollout.gpu_memory_utilization=0.8").reference.bundle == 0
    with pytest.raises(TinyZeroError, match="rollout.gpu_memory_utilization=0.81 .* set it to 0.8 or less"):
        plan(*split, "rollout.gpu_memory_utilization=0.81")
    assert plan("placement.num_gpus=2", "placement.strategy=split", "rollout.gpu_memory_utilization=0.9").reference is None


def test_colocate_one_gpu_waits_and_sleeps():
    layout = plan("placement.num_gpus=1", "algo.kl_coef=0.001")
    assert layout.rollout_sleeps and all(layout.waits_for_rollout(s) for s in layout.learners)
    assert layout.gpu_use() == {0: 1.0}


@pytest.mark.parametrize("overrides,learners,reference", [
    (("run.mode=local", "placement.num_gpus=1"), [True], True),  # one process: vLLM's sleep-mode pool is not PyTorch's cache
    (("run.mode=ray", "placement.num_gpus=4"), [True] * 4, True),  # Ray colocate: each role is its own process
    (("run.mode=ray", "placement.num_gpus=4", "rollout.tensor_parallel_size=2"), [True] * 4, True),
    (("run.mode=ray", "placement.num_gpus=2", "placement.strategy=split", "rollout.gpu_memory_utilization=0.7"),
     [False], False),  # vLLM never sleeps there: its memory was taken at start-up
    (("placement.num_gpus=0",), [False], False),  # CPU
])
def test_roles_beside_a_sleeping_engine_return_their_cache(overrides, learners, reference):
    layout = plan(*overrides, "algo.kl_coef=0.001")
    assert [layout.returns_cache(slot) for slot in layout.learners] == learners
    assert layout.returns_cache(layout.reference) is reference


def test_cpu_layout():
    layout = plan("placement.learner_workers=2")
    assert layout.num_gpus == 0 and len(layout.bundles) == 1 and "GPU" not in layout.bundles[0]
    assert len(layout.learners) == 2 and not layout.rollout_sleeps
    assert not layout.waits_for_rollout(layout.learners[0])


@pytest.mark.parametrize("overrides,keys", [
    (("placement.num_gpus=0", "rollout.tensor_parallel_size=2"), "rollout.tensor_parallel_size"),
    (("placement.num_gpus=0", "placement.strategy=split"), "placement.strategy"),
    (("placement.num_gpus=4", "placement.strategy=split", "placement.rollout_gpus=4"), "placement.rollout_gpus"),
    (("placement.num_gpus=4", "placement.strategy=split", "placement.rollout_gpus=3",
      "rollout.tensor_parallel_size=2"), "rollout.tensor_parallel_size"),
    (("placement.num_gpus=4", "placement.strategy=split", "placement.rollout_gpus=2",
      "placement.learner_workers=3"), "placement.learner_workers"),
    (("placement.num_gpus=3", "rollout.tensor_parallel_size=2"), "rollout.tensor_parallel_size"),
    (("placement.num_gpus=2", "placement.learner_workers=4"), "placement.learner_workers"),
    (("placement.num_gpus=2", "placement.strategy=split", "algo.kl_coef=0.001",
      "rollout.gpu_memory_utilization=0.9"), "rollout.gpu_memory_utilization"),
    (("run.mode=local", "placement.num_gpus=2"), "run.mode"),
    (("run.mode=local", "placement.learner_workers=2"), "run.mode"),
    (("placement.num_gpus=-1",), "placement.num_gpus"),
])
def test_impossible_layouts_name_the_keys(overrides, keys):
    with pytest.raises(TinyZeroError) as err:
        plan(*overrides)
    assert keys in str(err.value) and len(str(err.value).splitlines()) == 1
