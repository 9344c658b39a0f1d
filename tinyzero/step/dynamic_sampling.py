"""Dynamic sampling (DAPO's group filter): generate prompts in rounds until a step has enough groups that teach.

A group estimator (GRPO, RLOO) gives a group whose G samples all got the same verdict zero advantage: its tokens
were generated and paid for, and it teaches nothing. With ``rollout.filter_groups`` on, a step draws and generates
prompts in rounds and keeps only groups whose samples disagree (on ``correct``, or on the shaped score with
``filter_groups=score``), until ``prompts_per_step`` groups are kept or ``rollout.max_generation_rounds`` rounds
have run; then it trains on the groups it kept, however few (none: the step makes no update). DAPO: Yu et al. 2025,
arXiv:2503.14476, section 3.3. Filter on the verdict by default: a shaped score (format credit) splits groups whose
answers were all wrong, and a published run that filtered on it collapsed.

Simplifications:
- Round 1 draws ``prompts_per_step`` prompts; each later round draws exactly as many as groups are still missing. No
  group is generated only to be dropped for overflow and the trained batch never exceeds ``prompts_per_step``
  groups; later rounds are smaller batches (on a GPU a small batch uses the card less well).
- Every prompt drawn counts in the data cursor, kept or not, so a resumed run draws what an uninterrupted one did.
- The step's logs (rewards, accuracy, aha metrics, rollouts file) describe every group generated, kept or not: they
  measure the policy; only the learner sees the kept groups.
- PPO refuses the filter: its advantages come from a critic, not from comparing a prompt's samples, so a group with
  one verdict still carries a learning signal there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyzero import algos
from tinyzero.config import Config
from tinyzero.engine.messages import ScoredBatch, join_rows, take_rows
from tinyzero.errors import TinyZeroError
from tinyzero.step import Option


def check_filter(config: Config) -> None:
    """Before anything loads: the filter needs an estimator that compares a prompt's samples, and samples that can
    disagree: a group of one sample, or of greedy samples (all the same completion), never does, so every step would
    generate ``max_generation_rounds`` rounds and keep nothing (issue 33: step 1 never finished)."""
    rollout, name = config.rollout, config.algo.name
    mode = rollout.filter_groups
    if mode == "none":
        return
    if not algos.advantage_estimator(name).grouped:
        grouped = ", ".join(key for key, est in algos.ADVANTAGE_ESTIMATORS.items() if est.grouped)
        raise TinyZeroError(
            f"rollout.filter_groups={mode} needs a group estimator ({grouped}), and algo.name={name} learns from a "
            "critic even when a prompt's samples agree: set rollout.filter_groups=none or pick a group estimator")
    if rollout.samples_per_prompt == 1:
        same, fix = "a group of one sample (rollout.samples_per_prompt=1) never does", "rollout.samples_per_prompt=2 or more"
    elif rollout.temperature == 0:
        same, fix = "greedy samples (rollout.temperature=0) are one completion repeated", "rollout.temperature above 0"
    else:
        return
    raise TinyZeroError(f"rollout.filter_groups={mode} keeps only groups whose samples disagree, and {same}, so no group "
                        f"would ever be kept and each step would run every generation round: set {fix}, or "
                        "rollout.filter_groups=none")


@dataclass
class Collected:
    """What one step generated: every group, which ones the learner trains on, and in how many rounds."""

    scored: ScoredBatch  # every generated group, group-contiguous, in draw order
    kept: torch.Tensor  # [groups] bool: the groups the learner trains on
    mixed: torch.Tensor  # [groups] bool: samples disagree on the filter's signal (correct unless filter=score)
    rounds: int
    wanted: int  # prompts_per_step

    def train_batch(self) -> ScoredBatch:
        """The kept groups (the very batch that was generated when every group is kept)."""
        if bool(self.kept.all()):
            return self.scored
        g = self.scored.rollout.group_size
        rows = [group * g + i for group in self.kept.nonzero().flatten().tolist() for i in range(g)]
        return take_rows(self.scored, rows)

    def row_kept(self) -> list[bool]:
        """[N] whether each generated row is in the trained batch."""
        return self.kept.repeat_interleave(self.scored.rollout.group_size).tolist()

    def metrics(self, filtering: bool) -> dict[str, float]:
        """``rollout/zero_variance_frac`` always; the filter's counts when it is on."""
        groups = len(self.mixed)
        out = {"rollout/zero_variance_frac": 1.0 - float(self.mixed.float().mean()) if groups else 0.0}
        if filtering:
            kept = int(self.kept.sum())
            out.update({"rollout/groups_generated": float(groups), "rollout/groups_kept": float(kept),
                        "rollout/groups_missing": float(max(self.wanted - kept, 0)),
                        "rollout/generation_rounds": float(self.rounds)})
        return out


def signal(scored: ScoredBatch, mode: str) -> torch.Tensor:
    """[N] the per-sample value whose spread makes a group teach: the score with ``score``, else the verdict."""
    return scored.scores if mode == "score" else scored.correct


def collect(
    draw: Callable[[int], list[dict]], generate: Callable[[list[dict], int], ScoredBatch], *, prompts: int,
    mode: str, max_rounds: int,
) -> Collected:
    """Rounds of ``draw(n)`` (n problems, counted in the cursor) and ``generate(problems, offset)`` (their scored
    groups; ``offset``: prompts drawn before them this step) until ``prompts`` groups are kept (every group when
    ``mode`` is none) or ``max_rounds`` have run."""
    batches, kept, mixed = [], [], []
    missing, drawn, rounds = prompts, 0, 0
    while missing > 0 and rounds < (max_rounds if mode != "none" else 1):
        problems = draw(missing)
        scored = generate(problems, drawn)
        drawn, rounds = drawn + len(problems), rounds + 1
        mix = algos.mixed_groups(signal(scored, mode), scored.rollout.group_size)  # [groups]
        keep = mix if mode != "none" else torch.ones_like(mix)
        batches.append(scored)
        kept.append(keep)
        mixed.append(mix)
        missing -= int(keep.sum())
    scored = batches[0] if len(batches) == 1 else join_rows(batches)
    return Collected(scored=scored, kept=torch.cat(kept), mixed=torch.cat(mixed), rounds=rounds, wanted=prompts)


class DynamicSampling(Option):
    """The step option (tinyzero/step/__init__.py): the step's rounds of generation, and their metrics."""

    def __init__(self, config: Config):
        self.config, self.rollout = config, config.rollout

    def check(self) -> None:
        check_filter(self.config)

    def collect(self, draw: Callable[[int], list[dict]],
                generate: Callable[[list[dict], int], ScoredBatch]) -> Collected:
        rollout = self.rollout
        return collect(draw, generate, prompts=rollout.prompts_per_step, mode=rollout.filter_groups,
                       max_rounds=rollout.max_generation_rounds)

    def metrics(self, collected: Collected, train: ScoredBatch) -> dict[str, float]:
        return collected.metrics(self.rollout.filter_groups != "none")
