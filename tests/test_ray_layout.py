"""The layout plan on a real Ray cluster with declared GPUs (on CPU): every role of a plan is placed within
seconds, and vLLM's tensor-parallel workers find the bundles the plan gave them. A layout that could not be
placed would leave an actor pending forever; here it fails the test at a timeout instead."""

from __future__ import annotations

import os

import pytest

from tinyzero.config import load_config
from tinyzero.engine.placement import plan_layout

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cluster():
    # Workers import Probe from this file by module name: put tests/ on their path.
    path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, num_gpus=8, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


class Probe:
    """Stands in for a role: reports the GPUs Ray gave it, and can start TP workers the way vLLM's Ray
    executor does (one per bundle in VLLM_RAY_BUNDLE_INDICES, VLLM_RAY_PER_WORKER_GPUS each)."""

    def gpus(self) -> list:
        return [str(g) for g in ray.get_gpu_ids()]

    def start_tp_workers(self) -> list[list[str]]:
        from ray.util.placement_group import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = get_current_placement_group()
        assert group is not None
        assert all(b.get("GPU", 0) <= 1 for b in group.bundle_specs)  # vLLM's own check
        share = float(os.environ["VLLM_RAY_PER_WORKER_GPUS"])
        workers = [
            ray.remote(num_cpus=0, num_gpus=share, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=int(i)))(Probe).remote()
            for i in os.environ["VLLM_RAY_BUNDLE_INDICES"].split(",")
        ]
        return ray.get([w.gpus.remote() for w in workers], timeout=TIMEOUT_S)


LAYOUTS = [
    ("placement.num_gpus=1", "algo.kl_coef=0.001"),
    ("placement.num_gpus=2", "placement.strategy=split", "algo.kl_coef=0.001", "rollout.gpu_memory_utilization=0.7"),
    ("placement.num_gpus=4", "rollout.tensor_parallel_size=2", "algo.kl_coef=0.001"),
    ("placement.num_gpus=8", "placement.strategy=split", "placement.rollout_gpus=4", "rollout.tensor_parallel_size=2",
     "algo.kl_coef=0.001", "rollout.gpu_memory_utilization=0.7"),
]


@pytest.mark.parametrize("overrides", LAYOUTS, ids=lambda o: " ".join(o))
def test_every_role_of_a_plan_is_placed(cluster, overrides):
    from ray.util.placement_group import remove_placement_group

    from tinyzero.engine.roles import _RayBackend

    layout = plan_layout(load_config(None, ["run.mode=ray", *overrides]))
    backend = _RayBackend(layout, cores=2, env_vars={}, ready_timeout_s=TIMEOUT_S)
    try:
        engines = [(e, backend.spawn(Probe, e.actor, e.env())) for e in layout.engines]
        others = [backend.spawn(Probe, slot, {}) for slot in (*layout.learners, layout.reference)]
        got = ray.get([p.gpus.remote() for p in others], timeout=TIMEOUT_S)
        assert all(len(g) == 1 for g in got)  # every learner and the reference hold (a share of) one GPU
        learner_gpus = [g[0] for g in got[: len(layout.learners)]]
        assert len(set(learner_gpus)) == len(learner_gpus)  # one learner process per GPU
        used = set()
        for engine, probe in engines:
            if len(engine.bundles) > 1:
                tp_gpus = probe.start_tp_workers.remote()
                workers = ray.get(tp_gpus, timeout=TIMEOUT_S)
                assert all(len(w) == 1 for w in workers) and len({w[0] for w in workers}) == len(engine.bundles)
                used.update(w[0] for w in workers)
            else:
                (gpu,) = ray.get(probe.gpus.remote(), timeout=TIMEOUT_S)
                used.add(gpu)
        assert len(used) == sum(len(e.bundles) for e in layout.engines)  # engines never share a GPU
    finally:
        remove_placement_group(backend.group)
