"""One-step-off-policy overlap (``run.off_policy_steps=1``): the next batch is generated while the learner updates.

With ``off_policy_steps=0`` a step is generate → update → push, each phase waiting for the one before. With ``1``,
step t's update runs in a driver thread while the caller generates batch t+1 on the rollout engines, which still
hold the weights from before update t; when both are done the new weights are pushed. Every batch is then at most
one update stale: the learner at version t-1 (t-1 updates done) trains on a batch sampled by version t-2. Versions
count the updates the learner took, not steps: a step that trains nothing (dynamic sampling kept no group) changes
no weight, pushes nothing and leaves the next batch fresh (staleness 0).

The objective (decoupled PPO; Hilton et al. 2021, arXiv:2110.00641, as used for asynchronous RL by AReaL, Fu et
al. 2025, arXiv:2505.24298): the clip acts on pi_theta / pi_prox, where the proximal policy pi_prox is the learner
at the weights it holds when the update starts (``old_logprobs``: a separate pass, or the detached first forward),
and each token's policy-gradient term is weighted by pi_prox / pi_behav, pi_behav being the rollout engine's own
log-prob of the sampled token (``rollout_logprobs``), through ``algo.rollout_correction`` (tis truncates the weight
at ``rollout_is_cap``, mis drops tokens outside [1/cap, cap]). The learner's current weights are never taken as the
sampler: a run with ``rollout_correction=none`` would do exactly that, so it is refused.

Where the schedule goes back to on-policy, and why:
- the update of the last step and of every checkpoint step does not overlap: the next batch is generated after the
  push, from the checkpoint's weights. A run resumed from that checkpoint regenerates it identically (same weights,
  same seed, same data cursor), so resume is exact; the price is one unoverlapped step per checkpoint interval.
- a budget stop or a failed step drops the batch generated for the next step and rolls the data cursor back to
  before it: the resumed run draws and generates those prompts again (from the checkpoint's weights), so nothing is
  lost or counted twice. Its generation time was spent and stays on the cost meter.
Evaluation runs after the push, on the weights of the step it reports; the batch already generated for the next
step is untouched by it (each generation reseeds the engines from (run seed, step)).

Refused (one sentence each, before anything loads): ``run.mode=local`` (one process: nothing can run beside the
update) and ``placement.strategy=colocate`` on GPUs (vLLM sleeps on the learner's GPU during the update). On CPU in
Ray mode the roles are separate processes sharing the machine's cores: allowed (the bench gives each its cores).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tinyzero.config import Config
from tinyzero.errors import TinyZeroError
from tinyzero.step import Option


def check_overlap(config: Config) -> None:
    """Before anything loads: overlap needs separate processes on separate devices, and the behaviour correction."""
    if config.run.off_policy_steps == 0:
        return
    if config.run.mode == "local":
        raise TinyZeroError(
            "run.off_policy_steps=1 generates the next batch beside the update, but run.mode=local runs every role "
            "in one process: set run.mode=ray (with placement.strategy=split on GPUs) or run.off_policy_steps=0")
    if config.placement.num_gpus and config.placement.strategy == "colocate":
        raise TinyZeroError(
            "run.off_policy_steps=1 needs the rollout engines and the learner on different GPUs, but "
            "placement.strategy=colocate puts them on the same ones: set placement.strategy=split (two GPUs or "
            "more) or run.off_policy_steps=0")
    if config.algo.rollout_correction == "none":
        raise TinyZeroError(
            "run.off_policy_steps=1 trains on batches sampled by the weights before the last update, and "
            "algo.rollout_correction=none would treat the learner's current weights as the sampler: set "
            "algo.rollout_correction=tis (or mis)")


def overlaps(config: Config, step: int) -> bool:
    """Whether the update of ``step`` (1-based) runs beside the generation of step+1's batch: never with
    off_policy_steps 0, nor for the last step (no next batch), nor for a checkpoint step (exact resume)."""
    if config.run.off_policy_steps == 0 or step >= config.run.steps:
        return False
    every = config.checkpoint.every
    return not (every and step % every == 0)


@dataclass
class Pending:
    """A batch generated ahead of its step: what it holds and where it came from."""

    collected: Any  # dynamic_sampling.Collected
    version: int  # updates the weights that generated it had seen (the engines' version: updates pushed to them)
    cursor_before: int  # the data cursor before its prompts were drawn (where a dropped batch rolls back to)
    seconds: dict[str, float]  # its generation's phase times (rollout, reward)


def staleness(learner_version: int, batch: Pending) -> int:
    """Updates between the weights that sampled ``batch`` and the learner's weights that train on it."""
    return learner_version - batch.version


class Overlap:
    """Runs ``update()`` in one driver thread beside ``generate()`` in the caller, then ``push()``.

    The update's calls (reference, old log-probs, learner update) go to the learner's and reference's processes and
    the generation's to the rollout engines, so under Ray they compute at the same time; the push comes after both,
    because it changes the weights the generation samples from."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyzero-update")

    def step(self, update: Callable[[], Any], generate: Callable[[], Any] | None,
             push: Callable[[], None]) -> tuple[Any, Any]:
        """(update's result, generate's result or None). An error in either is raised after both have finished
        (a thread cannot be stopped halfway); the update's error first, and nothing is pushed then."""
        future = self._pool.submit(update)
        made, generate_error = None, None
        if generate is not None:
            try:
                made = generate()
            except BaseException as err:  # noqa: BLE001 - re-raised below, once the update has finished
                generate_error = err
        try:
            stats = future.result()  # raises the update's error
        except BaseException as err:
            if generate_error is not None:
                err.add_note(f"the next batch's generation failed too: {type(generate_error).__name__}: "
                             f"{generate_error}")
            raise
        if generate_error is not None:
            raise generate_error
        push()
        return stats, made

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class OffPolicy(Option):
    """The step option (tinyzero/step/__init__.py): its refusals, and which steps' updates overlap."""

    def __init__(self, config: Config):
        self.config = config

    def check(self) -> None:
        check_overlap(self.config)

    def overlaps(self, step: int) -> bool:
        return overlaps(self.config, step)
