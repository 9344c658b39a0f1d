"""The one config source: frozen, typed dataclasses; a recipe is their values in YAML.

Each section's docstring has one ``field: help`` line per field (``tinyzero train --help-config`` prints
them), and each field carries its own constraint: allowed values as ``Literal[...]``, a range with ``at_least`` or
``between`` (every numeric field has one; numbers are finite), registry names (advantage estimators, policy
losses) with ``one_of`` (tinyzero/fields.py). YAML aliases are refused before they expand (``_NoAliasLoader``).
``load_config(recipe, overrides)`` reads a YAML recipe, applies ``a.b.c=value`` overrides (values parsed as
YAML scalars), and rejects unknown keys and wrong types with the key's dotted name.
Simplification: ``env.options`` is a free mapping here; the environment's own Options dataclass checks it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tinyzero.algo_names import KlEstimator, LossAgg, RolloutCorrection
from tinyzero.errors import TinyZeroError
from tinyzero.fields import at_least, between, build, field_helps, one_of, plain_name, range_words, short

MAX_EVAL_SIZE = 100_000  # held-out problems: each is generated and scored at every evaluation
# eval.k: pass@k studies stop at k = 1,024 (Yue et al. 2025, arXiv:2504.13837), and an evaluation hands the engine 16
# prompts x k samples at once (tinyzero/analysis/evaluation.py CHUNK_PROMPTS): k = 10**6 asked for 92 GB.
MAX_EVAL_K = 1024
# run.name in UTF-8 bytes: a file system takes at most 255 bytes a folder name (NAME_MAX), and the kit names other
# folders after a run (`tinyzero smoke` appends -smoke); 300 bytes failed deep inside with "File name too long".
MAX_RUN_NAME_BYTES = 200

_PLAIN_NAME = plain_name("run").metadata["check"]  # fields.py's rule for one folder name


def _run_name(value: str) -> str | None:
    """Why ``value`` cannot name a run folder (one plain folder name of at most ``MAX_RUN_NAME_BYTES``), or None."""
    if (problem := _PLAIN_NAME(value)) is not None:
        return problem
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_RUN_NAME_BYTES:
        return (f"a folder name of at most {MAX_RUN_NAME_BYTES} bytes (a file system takes 255 a name, and "
                f"`tinyzero smoke` appends -smoke; this one has {size})")
    return None


def _algos():
    """The algorithm registry, imported when a value is checked: reading a recipe needs no torch until then."""
    from tinyzero import algos

    return algos


@dataclass(frozen=True)
class RunConfig:
    """Run.

    name: run name; the run folder is out_dir/name (one folder name: no '/', not '.' or '..', at most 200 bytes)
    out_dir: folder that holds run folders
    seed: seed for data order, sampling and initialisation
    steps: training steps (one rollout batch and its updates per step)
    mode: local (roles as plain objects in one process) or ray (roles as Ray actors on placement groups)
    threads: torch CPU threads (0: all cores)
    budget_usd: stop cleanly, with a checkpoint, before the cost meter would pass this many dollars (0: no budget)
    off_policy_steps: 0 (strictly on-policy: generate, then update) or 1 (generate the next batch beside the update, with the weights from before it; run.mode=ray, and placement.strategy=split on GPUs; needs algo.rollout_correction tis or mis)
    """

    name: str = field(default="run", metadata={"check": _run_name})
    out_dir: str = "runs"
    seed: int = between(0, 2**31 - 1, 0)  # vLLM seeds numpy with seed + worker, which must stay below 2**32
    steps: int = at_least(1, 20)
    mode: Literal["local", "ray"] = "local"
    threads: int = between(0, 4096, 0)
    budget_usd: float = at_least(0, 0.0)
    off_policy_steps: int = between(0, 1, 0)


def _targets(text: str) -> str | list[str]:
    text = text.strip()
    return text if text == "all-linear" else [name.strip() for name in text.split(",") if name.strip()]


# Layers an adapter must not sit on: vLLM ties the LM head to the embedding, and the push never sends an adapted
# embedding, so the engine would sample from weights the learner does not have. peft's all-linear skips both.
_NOT_ADAPTED = ("lm_head", "embed_tokens")


def _untargetable(text: str) -> str | None:
    """The fix, when ``target_modules`` lists the LM head or the embedding (peft matches a listed name against the
    end of a module's dotted path, so ``model.embed_tokens`` counts too); None when it does not."""
    names = _targets(text)
    listed = [name for name in names if name.rsplit(".", 1)[-1] in _NOT_ADAPTED] if isinstance(names, list) else []
    if not listed:
        return None
    return (f"all-linear or the blocks' layer names without {listed[0]} (vLLM ties the LM head to the embedding, and "
            "an adapted embedding is never pushed to the rollout engine)")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) on a frozen base held in the compute dtype; the adapters are float32 masters.

    rank: adapter rank (0: off, every weight is trained)
    alpha: the adapters' scale is alpha / rank
    dropout: dropout on the adapters' input during updates
    target_modules: all-linear (every linear layer in the blocks, not the LM head) or comma-separated layer names, e.g. q_proj,v_proj (not lm_head or embed_tokens: vLLM ties the head to the embedding)
    push: what the rollout engine receives after each update: auto (the adapters where it computes in bfloat16/float16, the merged weights where it computes in float32), adapters (it runs W·x + scale·B·(A·x) itself, as the learner; vLLM's LoRA), merged (W + scale·B·A of the adapted layers; float32 engines only: bf16 rounds small updates away)
    """

    rank: int = between(0, 4096, 0)
    alpha: float = between(0, 1e6, 16.0, low_open=True)
    dropout: float = between(0, 0.9, 0.0)
    target_modules: str = field(default="all-linear", metadata={"check": _untargetable})
    push: Literal["auto", "adapters", "merged"] = "auto"

    def targets(self) -> str | list[str]:
        """``target_modules`` as peft, verl and the preflight take it: the shorthand ``all-linear``, or the listed
        layer names (empty when none is listed)."""
        return _targets(self.target_modules)


@dataclass(frozen=True)
class ModelConfig:
    """Model.

    name: smollm2-135m (bundled), an HF hub id, or a local HF folder
    compute_dtype: dtype of the matmuls, the rollout engine and the reference model: float32, bfloat16, or auto (bfloat16 on GPU, float32 on CPU); the learner's master weights and AdamW states are always float32 (with model.lora the frozen base is held in it)
    gradient_checkpointing: recompute activations in the backward pass to save memory
    lora: LoRA adapters (model.lora.rank > 0), see the keys below
    """

    name: str = "smollm2-135m"
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class EnvConfig:
    """Environment.

    name: a registered environment (tinyzero envs) or module:Class
    template: chat (tokenizer's chat template) or base (plain-text User/Assistant prompt)
    options: the environment's own options (see tinyzero envs)
    """

    name: str = "arithmetic"
    template: Literal["chat", "base"] = "chat"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout.

    backend: vllm (engine with in-place weight sync) or hf (transformers generate, the fallback)
    prompts_per_step: prompts sampled per step
    samples_per_prompt: completions per prompt (the GRPO group size)
    max_new_tokens: most tokens generated per completion
    temperature: sampling temperature (0: greedy, every sample of a prompt alike)
    top_p: nucleus sampling threshold
    kv_cache_gib: vLLM CPU KV-cache size in GiB
    gpu_memory_utilization: fraction of a GPU vLLM may take
    tensor_parallel_size: GPUs per vLLM engine
    filter_groups: dynamic sampling (DAPO): none, correct (keep only groups whose samples disagree on the verdict, and generate more prompts until prompts_per_step such groups are found) or score (the same on the shaped score); group estimators only (grpo, rloo)
    max_generation_rounds: dynamic sampling: most rounds of generation per step; when they run out the step trains on the groups it kept
    overlong: responses cut at max_new_tokens: keep (scored and trained like the others), mask (they add no loss) or penalty (DAPO's soft penalty, 0 down to -1 over the last overlong_buffer tokens, added to the score)
    overlong_buffer: the penalty's length, in tokens before max_new_tokens (at most max_new_tokens)
    """

    backend: Literal["vllm", "hf"] = "vllm"
    prompts_per_step: int = at_least(1, 8)
    samples_per_prompt: int = at_least(1, 8)
    max_new_tokens: int = at_least(1, 64)
    temperature: float = at_least(0, 1.0)
    top_p: float = between(0, 1, 1.0, low_open=True)
    kv_cache_gib: int = at_least(1, 2)
    gpu_memory_utilization: float = between(0, 1, 0.4, low_open=True)
    tensor_parallel_size: int = at_least(1, 1)
    filter_groups: Literal["none", "correct", "score"] = "none"
    max_generation_rounds: int = at_least(1, 3)
    overlong: Literal["keep", "mask", "penalty"] = "keep"
    overlong_buffer: int = at_least(1, 16)


@dataclass(frozen=True)
class AlgoConfig:
    """Algorithm.

    name: the advantage estimator: grpo (group-normalised), rloo (leave-one-out baseline) or ppo (critic + GAE); tinyzero/algos.py registers them
    policy_loss: the policy loss: clip (PPO's clipped surrogate, with clip_low/clip_high), gspo (one ratio per sequence, clipped per sequence by gspo_clip_low/gspo_clip_high) or cispo (each token's ratio capped at 1 + cispo_clip_high and held constant, times its log-probability)
    normalize_std: divide GRPO advantages by the group std (false: Dr. GRPO)
    gamma: PPO discount
    lam: PPO GAE lambda
    clip_low: lower PPO clip range (ratio >= 1 - clip_low)
    clip_high: upper PPO clip range (ratio <= 1 + clip_high; > clip_low is DAPO's clip-higher)
    gspo_clip_low: gspo's lower clip range of the sequence ratio (>= 1 - gspo_clip_low; the GSPO paper: 3e-4)
    gspo_clip_high: gspo's upper clip range of the sequence ratio (<= 1 + gspo_clip_high; the GSPO paper: 4e-4)
    cispo_clip_high: cispo's cap of a token's importance weight, 1 + cispo_clip_high (no lower bound; 0.28 is DAPO's clip-higher, a starting point to tune)
    kl_coef: weight of the KL to the reference model (0: no reference model is loaded)
    kl_estimator: k1, k2 or k3
    kl_applied_as: loss (a KL term added to the policy loss) or reward (a per-token penalty subtracted from the reward)
    entropy_coef: weight of the entropy bonus
    loss_agg: token-mean, seq-mean-token-mean or seq-mean-token-sum-norm
    epochs: passes over each rollout batch
    mini_batches: optimizer steps per pass
    vf_clip: PPO value clip range
    rollout_correction: correct the policy-gradient term for the rollout engine's numerics: none, tis (weight each token by min(pi_learner / pi_rollout, rollout_is_cap)) or mis (drop tokens whose ratio is outside [1/rollout_is_cap, rollout_is_cap])
    rollout_is_cap: the cap of rollout_correction (at least 1)
    """

    name: str = one_of(lambda: _algos().ADVANTAGE_ESTIMATORS, "grpo")
    policy_loss: str = one_of(lambda: _algos().POLICY_LOSSES, "clip")
    normalize_std: bool = True
    gamma: float = between(0, 1, 1.0)
    lam: float = between(0, 1, 1.0)
    clip_low: float = between(0, 1, 0.2)
    clip_high: float = at_least(0, 0.2)
    gspo_clip_low: float = between(0, 1, 3e-4)
    gspo_clip_high: float = at_least(0, 4e-4)
    cispo_clip_high: float = at_least(0, 0.28)
    kl_coef: float = at_least(0, 0.0)
    kl_estimator: KlEstimator = "k3"
    kl_applied_as: Literal["loss", "reward"] = "loss"
    entropy_coef: float = at_least(0, 0.0)
    loss_agg: LossAgg = "token-mean"
    epochs: int = at_least(1, 1)
    mini_batches: int = at_least(1, 1)
    vf_clip: float = at_least(0, 0.2)
    rollout_correction: RolloutCorrection = "none"
    rollout_is_cap: float = at_least(1, 2.0)

    @property
    def needs(self):
        """What this algorithm requires: critic, reference model, old log-probs (``algos.Needs``); a policy loss the
        estimator cannot train with (``algos.check_pairing``) is refused here, before any model loads."""
        why = _algos().check_pairing(self.name, self.policy_loss)
        if why:
            raise TinyZeroError(why)
        return _algos().needs(self.name, kl_coef=self.kl_coef, kl_applied_as=self.kl_applied_as, epochs=self.epochs,
                           mini_batches=self.mini_batches)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser.

    lr: AdamW learning rate of the policy (AdamW moves each weight by about lr a step)
    critic_lr: AdamW learning rate of the PPO critic
    weight_decay: AdamW weight decay
    grad_clip: clip the global gradient norm to this (0: off)
    warmup_steps: linear learning-rate warm-up, in optimizer steps
    micro_batch_size: sequences per forward/backward (gradients accumulate over micro-batches)
    max_tokens_per_micro_batch: token budget of an update's micro-batch (0: off, micro_batch_size rows each): rows sorted by length, packed while rows x (longest prompt + longest response) stays within it; a longer row goes alone
    """

    lr: float = between(0, 1, 1e-6, low_open=True)
    critic_lr: float = between(0, 1, 1e-5, low_open=True)
    weight_decay: float = at_least(0, 0.0)
    grad_clip: float = at_least(0, 1.0)
    warmup_steps: int = at_least(0, 0)
    micro_batch_size: int = at_least(1, 16)
    max_tokens_per_micro_batch: int = at_least(0, 0)


@dataclass(frozen=True)
class PlacementConfig:
    """Placement.

    strategy: colocate (all roles share the devices) or split (rollout on its own GPUs)
    num_gpus: GPUs to use (0: CPU only, every role on the CPU)
    rollout_gpus: GPUs given to rollout workers under split (the reference model shares the first one)
    learner_workers: learner processes sharding the policy with FSDP2 (0: one per learner GPU; 1 on CPU)
    """

    strategy: Literal["colocate", "split"] = "colocate"
    num_gpus: int = at_least(0, 0)
    rollout_gpus: int = at_least(1, 1)
    learner_workers: int = at_least(0, 0)


@dataclass(frozen=True)
class ClusterConfig:
    """Ray cluster (run.mode=ray).

    address: empty: start a Ray instance on this machine; auto: join the cluster running here (ray start --head); or host:port of its head
    """

    address: str = ""


@dataclass(frozen=True)
class CostConfig:
    """Cost meter (cost/ metrics, the progress line, run.budget_usd).

    usd_per_gpu_hour: price of one GPU for one hour (0: read $TINYZERO_USD_PER_GPU_HOUR; unset: dollars are not shown); a CPU-only run is billed as one unit
    """

    usd_per_gpu_hour: float = at_least(0, 0.0)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation (greedy decoding; accuracy counts `correct` only).

    every: evaluate every this many steps (0: only before and after training)
    size: held-out problems, never drawn for training
    max_new_tokens: most tokens per evaluation completion
    k: also sample k completions per held-out problem (rollout.temperature, rollout.top_p) and log eval/pass@k and eval/maj@k (0: off)
    """

    every: int = at_least(0, 10)
    size: int = between(1, MAX_EVAL_SIZE, 100)
    max_new_tokens: int = at_least(1, 64)
    k: int = between(0, MAX_EVAL_K, 0)


@dataclass(frozen=True)
class CurriculumConfig:
    """A curriculum: generate the problems that teach (both mechanisms off by default; they combine).

    levels: train on the environment's declared difficulty levels (tinyzero envs lists them), easiest first, moving up or down by the level's pass rate; held-out evaluation stays at the task's own options
    pass_rate: draw problems seen before again, those whose groups' pass rate is nearest data.curriculum.target, for up to 1 - fresh_share of each step
    target: the pass rate a drawn group should land near (GRPO learns most where a group's verdicts split: p(1 - p) is largest at 0.5)
    fresh_share: at least this share of each step's prompts are problems never drawn before
    table_size: problems whose pass rates are remembered (the least recently seen are forgotten first)
    start_level: the level training starts at (0: the easiest)
    up: move one level up after `patience` steps in a row whose pass rate at the level was at least this
    down: move one level down after `patience` steps in a row whose pass rate was at most this
    patience: steps in a row beyond a threshold before the level moves
    """

    levels: bool = False
    pass_rate: bool = False
    target: float = between(0, 1, 0.5, low_open=True)
    fresh_share: float = between(0, 1, 0.5)
    table_size: int = between(1, 1_000_000, 4096)
    start_level: int = between(0, 1000, 0)
    up: float = between(0, 1, 0.8, low_open=True)
    down: float = between(0, 1, 0.2)
    patience: int = between(1, 1000, 2)

    def __post_init__(self) -> None:
        if self.down >= self.up:  # else a level could be told to move up and down at once
            raise TinyZeroError(f"data.curriculum.down ({self.down:g}) must be below data.curriculum.up ({self.up:g}): "
                                "lower down or raise up")

    @property
    def on(self) -> bool:
        """Either mechanism on: the run draws its problems through the curriculum."""
        return self.levels or self.pass_rate


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    curriculum: which problems each step draws (data.curriculum.levels, data.curriculum.pass_rate; off by default), see the keys below
    """

    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints.

    every: save every this many steps (0: only at the end)
    keep_last: how many checkpoints to keep
    """

    every: int = at_least(0, 10)
    keep_last: int = at_least(1, 2)


@dataclass(frozen=True)
class LogConfig:
    """Logging.

    tensorboard: write TensorBoard event files in the run folder
    samples: completions logged as text per step
    wandb: also mirror scalars, sample tables and the config to Weights & Biases (needs the wandb extra); resume continues the same W&B run
    wandb_project: the W&B project
    wandb_name: the W&B run name (empty: run.name)
    wandb_mode: offline (files in RUN/wandb, upload later with `wandb sync`) or online (needs `wandb login`)
    """

    tensorboard: bool = True
    samples: int = at_least(0, 2)
    wandb: bool = False
    wandb_project: str = "tinyzero"
    wandb_name: str = ""
    wandb_mode: Literal["offline", "online"] = "offline"


# Family -> phrases. A space or hyphen inside a phrase matches up to three spaces/hyphens or none, so
# "re-check" also finds "recheck" and "re check"; inflections are listed, because matching is whole-word.
DEFAULT_LEXICON: dict[str, list[str]] = {
    "recheck": ["re-check", "re-checks", "re-checked", "re-checking"],
    "rethink": ["re-think", "re-thinking", "re-thought"],
    "reevaluate": ["re-evaluate", "re-evaluates", "re-evaluated", "re-evaluating", "re-evaluation"],
    "reexamine": ["re-examine", "re-examines", "re-examined", "re-examining"],
    "reconsider": ["reconsider", "reconsiders", "reconsidered", "reconsidering"],
    "double_check": ["double-check", "double-checks", "double-checked", "double-checking"],
    "verify": ["verify", "verifies", "verified", "verifying", "verification"],
    "try_again": ["try again", "trying again", "tried again", "let me try again"],
    "check_again": ["check again", "checking again", "check it again", "check that again"],
    "think_again": ["think again", "thinking again"],
    "wait": ["wait"],
    "alternatively": ["alternatively"],
    "let_me_check": ["let me check", "let's check", "let us check", "let me verify", "let me see if"],
}


def _default_lexicon() -> dict:
    return {family: list(phrases) for family, phrases in DEFAULT_LEXICON.items()}


@dataclass(frozen=True)
class AhaConfig:
    """Self-verification ("aha") metrics (docs/metrics.md, aha/).

    lexicon: re-checking phrase families, {family: [phrase, ...]}; whole words, case-insensitive; a space or hyphen in a phrase matches up to 3 spaces/hyphens or none
    margin: the aha rule: the signal must exceed its first-batch baseline by this much (absolute rate)
    patience: the aha rule: for this many consecutive rollout batches
    transcripts_every: annotated transcripts to TensorBoard every this many steps (0: never)
    transcripts: completions per annotated-transcript text
    max_chars: characters of each completion examined (the rest is ignored: the cost stays bounded)
    """

    lexicon: dict = field(default_factory=_default_lexicon)
    margin: float = between(0, 1, 0.05)
    patience: int = at_least(1, 3)
    transcripts_every: int = at_least(0, 4)
    transcripts: int = at_least(0, 3)
    max_chars: int = at_least(1, 8000)


@dataclass(frozen=True)
class RewardConfig:
    """Reward given to the learner (docs/metrics.md, control runs).

    control: none (the verifier's scores), shuffled (the batch's scores shuffled across its completions) or random (score 1 with the batch's success rate, else 0): a control run, seeded from (run.seed, step); correct, accuracy and held-out evaluation still use the verifier
    """

    control: Literal["none", "shuffled", "random"] = "none"


@dataclass(frozen=True)
class Config:
    """A whole training job."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    aha: AhaConfig = field(default_factory=AhaConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


# Keys that older recipes and run folders may still hold, with the key that replaced them.
RENAMED = {
    "model.dtype": "model.compute_dtype (master weights are always float32)",
    "algo.kl_in": "algo.kl_applied_as",
}


def _unknown_key(dotted: str, valid: list[str]) -> str:
    if dotted in RENAMED:
        return f"{dotted} was renamed: write {RENAMED[dotted]} instead"
    return f"unknown key {dotted}: valid keys here are {', '.join(sorted(valid))}"


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the recipe"
        raise TinyZeroError(f"{where} must be a mapping of keys to values, got {short(data)}")
    return build(cls, data, prefix, unknown=_unknown_key, nested=_build)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TinyZeroError(f"override {dotted}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing every alias (``*name``) as it is met, before anything is expanded: a few
    lines of nested aliases stand for billions of values, which any walk over them (checking a field, writing
    the resolved config, quoting an error) would expand. No recipe needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) and self.peek_event().anchor in self.anchors:  # else a YAML error
            event = self.peek_event()
            raise _AliasFound(f"a YAML alias (*{str(event.anchor)[:40]}) at line {event.start_mark.line + 1}")
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    pass


def _yaml(text: str, where: str) -> Any:
    """``text`` as YAML values, aliases refused in one sentence naming ``where``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe
    except _AliasFound as err:
        raise TinyZeroError(f"{where} uses {err}: tinyzero reads no YAML aliases (nested ones can stand for "
                            "billions of values); write the values out") from None
    except RecursionError:
        raise TinyZeroError(f"{where} nests too deeply to read: write it flat") from None


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise TinyZeroError(f"override {short(text)} is not a.b.c=value: write e.g. rollout.temperature=0.8")
    try:
        value = _yaml(raw, f"override {key.strip()}") if raw.strip() else ""
    except (yaml.YAMLError, ValueError):  # ValueError: an integer past 4,300 digits; read as text, checked as such
        value = raw
    return key.strip(), value


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults ← recipe YAML ← ``a.b.c=value`` overrides, checked."""
    tree: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise TinyZeroError(f"recipe {path} does not exist: give a YAML file such as recipes/demo-cpu.yaml")
        try:
            tree = _yaml(path.read_text(encoding="utf-8"), f"recipe {path}") or {}
        except UnicodeDecodeError:
            raise TinyZeroError(f"recipe {path} is not a text file: give a YAML recipe such as recipes/demo-cpu.yaml"
                                ) from None
        except yaml.YAMLError as err:
            raise TinyZeroError(f"recipe {path} is not valid YAML ({str(err).splitlines()[0][:120]}): fix it") from None
        except ValueError as err:  # a number YAML reads but Python will not build, e.g. past 4,300 digits
            raise TinyZeroError(f"recipe {path} holds a value that cannot be read ({str(err)[:80]}): fix it") from None
        if not isinstance(tree, Mapping):
            raise TinyZeroError(f"recipe {path} holds a {type(tree).__name__}, not a mapping of sections: write it as "
                                "`section:` lines with indented `key: value` pairs, as in recipes/demo-cpu.yaml")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    config = _build(Config, tree, "")
    return config


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def describe() -> str:
    """Every key with its default and help line, for ``--help-config``."""
    lines = []
    for section in dataclasses.fields(Config):
        cls = section.type if isinstance(section.type, type) else typing.get_type_hints(Config)[section.name]
        helps = field_helps(cls)
        lines.append(f"{section.name}:")
        lines.extend(_describe_fields(cls, helps, "  "))
    return "\n".join(lines)


def _describe_fields(cls: type, helps: dict, indent: str) -> list[str]:
    """One line per field of ``cls``; a nested section (model.lora) lists its own keys, indented."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{indent}{f.name}:  # {helps.get(f.name, '')}")
            lines.extend(_describe_fields(hints[f.name], field_helps(hints[f.name]), indent + "  "))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        bounds = [f.metadata.get(key) for key in ("min", "max", "min_open")]
        where = f" [{range_words(bounds[0], bounds[1], bool(bounds[2]))}]" if bounds[0] is not None else ""
        lines.append(f"{indent}{f.name}: {default!r}  # {helps.get(f.name, '')}{where}")
    return lines
