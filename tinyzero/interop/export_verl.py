"""``tinyzero export verl RECIPE --out DIR``: a recipe's data, reward and settings as a verl run.

Writes into DIR: ``train.parquet`` / ``test.parquet`` (verl's columns, from ``tinyzero.data``), ``reward.py`` (a
``compute_score`` that calls tinyzero's own reward with the recipe's task options), ``run_verl.sh`` (``python -m
verl.trainer.main_ppo`` with the recipe translated key by key into verl's Hydra overrides) and ``export.json``
(the same overrides and the warnings, for tools and tests). docs/verl.md explains every line of the translation.

Simplifications: one verl version is targeted (``VERL_VERSION``); the translation is a fixed table, not a
general config mapper; the prompt-length bound is computed from the prompts' UTF-8 bytes (no tokenizer is
loaded here), which is an upper bound for byte-level tokenizers such as Qwen's and Llama's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyzero.errors import TinyZeroError

VERL_VERSION = "0.9.1"
OUTPUTS = ("train.parquet", "test.parquet", "reward.py", "run_verl.sh", "export.json")
# A base model's prompt is the whole text, prefill included: render it verbatim, with no turn markers.
BASE_CHAT_TEMPLATE = "{% for message in messages %}{{ message.content }}{% endfor %}"
# Headroom over the longest prompt for a chat template's own text (turn markers, a default system line).
CHAT_TEMPLATE_HEADROOM = 128
# Stands in for "no gradient clipping": verl always clips, and a max norm of 0 would zero every gradient.
NO_CLIP = 1.0e9
# Strings Hydra reads back unchanged without quotes (names, paths); anything else is quoted.
BARE = re.compile(r"[A-Za-z_/~][A-Za-z0-9_./~:+-]*")
KL_NAMES = {"k1": "k1", "k2": "k2", "k3": "k3"}  # verl 0.9.1 accepts our estimator names as they are

# Recipe keys verl has no setting for, with what a user should know; export warns for each one whose value
# differs from the default (docs/verl.md lists them all).
# Our advantage estimators (algo.name) and verl 0.9.1's algorithm.adv_estimator with the same formula.
VERL_ADV_ESTIMATORS = {"grpo": "grpo", "rloo": "rloo", "ppo": "gae"}
# Our policy losses (algo.policy_loss) and verl's actor.policy_loss.loss_mode.
VERL_POLICY_LOSSES = {"clip": "vanilla"}

NO_EQUIVALENT = {
    "run.threads": "verl sets its own thread counts per worker",
    "run.budget_usd": "verl has no cost meter or budget stop; stop the run yourself",
    "rollout.backend": "verl 0.9.1 generates with vLLM, SGLang or TensorRT-LLM only: vLLM is used",
    "rollout.kv_cache_gib": "a CPU-only vLLM setting; verl sizes the KV cache from gpu_memory_utilization",
    "rollout.filter_groups": "verl 0.9.1's PPO trainer does not filter groups (its DAPO recipe, outside the "
                             "package, does): every group is trained on",
    "rollout.max_generation_rounds": "verl 0.9.1's PPO trainer has no dynamic sampling",
    "rollout.overlong": "the exported reward module returns tinyzero's score without the overlong penalty or mask "
                        "(verl's DAPO reward manager has an overlong buffer of its own)",
    "rollout.overlong_buffer": "the overlong penalty is not exported",
    "placement.strategy": "verl's hybrid engine time-shares every GPU between generation and training "
                          "(our colocate); a split layout has no counterpart in its synchronous trainer",
    "placement.rollout_gpus": "verl gives every role all the GPUs in turn",
    "placement.learner_workers": "verl shards the policy over all GPUs (FSDP)",
    "cost.usd_per_gpu_hour": "verl has no cost meter",
    "eval.max_new_tokens": "verl validates with the training response length (data.max_response_length)",
    "eval.k": "verl's validation is either greedy or sampled, not both: it stays greedy (pass@k not computed)",
    "log.samples": "verl shows no training completions in TensorBoard (all of them are in trainer.rollout_data_dir)",
    "log.wandb": "add trainer.logger=[console,tensorboard,wandb] to the launch command (WANDB_MODE=offline in its "
                 "environment for offline files)",
    "aha": "aha metrics are tinyzero's: run `tinyzero aha` on the completions verl dumps",
}
# Our rollout corrections and verl 0.9.1's algorithm.rollout_correction.rollout_is: token-level truncated importance
# weights min(pi_old / pi_rollout, rollout_is_threshold) on the policy-gradient term, as ours. Masking (mis) has no
# exact counterpart there (see _rollout_correction).
VERL_ROLLOUT_IS = {"tis": "token"}


@dataclass
class Translation:
    """A recipe as verl overrides: ``overrides`` in order ``(verl key, value)``, ``warnings`` one line each."""

    overrides: list[tuple[str, Any]]
    warnings: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # shell variables the launch script sets


def split_sizes(config, train_size: int | None, test_size: int | None) -> tuple[int, int]:
    """Train problems: one per prompt the run draws (run.steps × rollout.prompts_per_step), so one pass over
    the file is the whole run; test problems: eval.size, the held-out set our runs evaluate on."""
    train = train_size if train_size is not None else config.run.steps * config.rollout.prompts_per_step
    test = test_size if test_size is not None else config.eval.size
    if test < 1:
        raise TinyZeroError(f"--test-size must be at least 1, got {test}")
    if train < config.rollout.prompts_per_step:
        raise TinyZeroError(f"--train-size must be at least rollout.prompts_per_step={config.rollout.prompts_per_step}"
                            f", got {train}: verl drops an incomplete last batch, so fewer would give no step")
    return train, test


def epochs_needed(config, train_size: int) -> int:
    """verl's ``trainer.total_epochs``: passes over the train file (whole batches only) that ``run.steps`` take."""
    return math.ceil(config.run.steps / (train_size // config.rollout.prompts_per_step))


def prompt_length_bound(prompts: list[list[dict]]) -> int:
    """An upper bound on prompt tokens for verl's ``data.max_prompt_length``, a multiple of 64.

    A byte-level BPE token stands for at least one byte, so a prompt's UTF-8 bytes bound its tokens; the
    headroom covers what the chat template adds."""
    longest = max(sum(len(str(m.get("content", "")).encode()) for m in messages) for messages in prompts)
    return 64 * math.ceil((longest + CHAT_TEMPLATE_HEADROOM) / 64)


def model_path(name: str) -> tuple[str, list[str]]:
    """The path verl loads for ``model.name``: the bundled model's converted folder, else the name itself."""
    from tinyzero.engine.models import BUNDLED, default_cache_dir

    if name != BUNDLED:
        return name, []
    folder = default_cache_dir() / "models" / "smollm2-135m-instruct"
    note = [] if folder.is_dir() else [
        f"model.name={BUNDLED}: verl reads the converted folder {folder}, which `tinyzero train` (or "
        "`tinyzero eval smollm2-135m`) writes on first use; it does not exist yet"]
    return str(folder), note


def check_translatable(config) -> None:
    """Stop before anything is written when the recipe has no verl form."""
    rollout, algo = config.rollout, config.algo
    if config.reward.control != "none":
        raise TinyZeroError(f"reward.control={config.reward.control} has no verl counterpart: verl's reward module "
                            "would score with the verifier and train a real run; train the control with tinyzero, or "
                            "export without reward.control")
    if algo.name not in VERL_ADV_ESTIMATORS:
        raise TinyZeroError(f"algo.name={algo.name} has no verl counterpart: export with one of "
                            f"{', '.join(VERL_ADV_ESTIMATORS)}")
    if algo.policy_loss not in VERL_POLICY_LOSSES:
        raise TinyZeroError(f"algo.policy_loss={algo.policy_loss} has no verl counterpart: export with one of "
                            f"{', '.join(VERL_POLICY_LOSSES)}")
    if rollout.prompts_per_step % algo.mini_batches:
        raise TinyZeroError(
            f"rollout.prompts_per_step={rollout.prompts_per_step} is not a multiple of algo.mini_batches="
            f"{algo.mini_batches}: verl's mini-batches are whole prompt groups, so choose values that divide")


def translate(config, paths: dict[str, str], max_prompt_length: int, train_size: int | None = None) -> Translation:
    """The recipe ``config`` as verl 0.9.1 overrides; ``paths``: absolute train, test and reward file paths;
    ``train_size``: problems in the train file (default: one per prompt the run draws)."""
    run, rollout, algo, optim = config.run, config.rollout, config.algo, config.optim
    check_translatable(config)
    model, warnings = model_path(config.model.name)
    o: list[tuple[str, Any]] = [
        ("algorithm.adv_estimator", VERL_ADV_ESTIMATORS[algo.name]),
        ("algorithm.norm_adv_by_std_in_grpo", algo.normalize_std),
        ("algorithm.gamma", algo.gamma),
        ("algorithm.lam", algo.lam),
        ("data.train_files", paths["train"]),
        ("data.val_files", paths["test"]),
        ("data.train_batch_size", rollout.prompts_per_step),
        ("data.max_prompt_length", max_prompt_length),
        ("data.max_response_length", rollout.max_new_tokens),
        ("data.seed", run.seed),
        ("actor_rollout_ref.model.path", model),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", config.model.gradient_checkpointing),
    ]
    if config.env.template == "base":
        o.append(("actor_rollout_ref.model.custom_chat_template", BASE_CHAT_TEMPLATE))
    if config.model.lora.rank:
        o += _lora(config.model.lora, warnings)
    o += _actor(config)
    o += _rollout(config)
    o += _kl(algo)
    o += _rollout_correction(algo, warnings)
    if algo.needs.critic:
        o += _critic(config, model)
    o += _trainer(config, epochs_needed(config, split_sizes(config, train_size, 1)[0]))
    o += [("reward.custom_reward_function.path", paths["reward"]),
          ("reward.custom_reward_function.name", "compute_score")]
    env = {"TENSORBOARD_DIR": f"{run.out_dir}/{run.name}/tensorboard"}
    if config.cluster.address:
        env["RAY_ADDRESS"] = config.cluster.address  # verl's ray.init() joins the cluster this names
    if optim.grad_clip <= 0:
        warnings.append(f"optim.grad_clip=0 (off): verl always clips; exported as grad_clip={NO_CLIP:g}, "
                        "which never binds")
    return Translation(o, warnings + unmapped_warnings(config), env)


def _dtype(config) -> str:
    from tinyzero.engine.devices import dtype_name

    return dtype_name(config.model.compute_dtype, "cuda")  # verl runs on GPUs: auto is bf16 there


def _actor(config) -> list[tuple[str, Any]]:
    algo, optim, rollout = config.algo, config.optim, config.rollout
    a = "actor_rollout_ref.actor."
    out = [
        (a + "strategy", "fsdp"),
        (a + "fsdp_config.dtype", _dtype(config)),
        (a + "optim.lr", optim.lr),
        (a + "optim.weight_decay", optim.weight_decay),
        (a + "grad_clip", optim.grad_clip if optim.grad_clip > 0 else NO_CLIP),
        (a + "ppo_mini_batch_size", rollout.prompts_per_step // algo.mini_batches),
        (a + "ppo_micro_batch_size_per_gpu", optim.micro_batch_size),
        (a + "ppo_epochs", algo.epochs),
        (a + "clip_ratio_low", algo.clip_low),
        (a + "clip_ratio_high", algo.clip_high),
        (a + "entropy_coeff", algo.entropy_coef),
        (a + "loss_agg_mode", algo.loss_agg),
    ]
    if algo.loss_agg == "seq-mean-token-sum-norm":  # ours divides by the padded width: max_new_tokens
        out.append((a + "loss_scale_factor", rollout.max_new_tokens))
    if optim.warmup_steps > 0:  # ours counts optimizer steps, verl's scheduler steps once per training step
        out.append((a + "optim.lr_warmup_steps", math.ceil(optim.warmup_steps / (algo.epochs * algo.mini_batches))))
    return out


def _rollout(config) -> list[tuple[str, Any]]:
    rollout, optim = config.rollout, config.optim
    r = "actor_rollout_ref.rollout."
    return [
        (r + "name", "vllm"),
        (r + "n", rollout.samples_per_prompt),
        (r + "temperature", rollout.temperature),
        (r + "top_p", rollout.top_p),
        (r + "dtype", _dtype(config)),
        (r + "gpu_memory_utilization", rollout.gpu_memory_utilization),
        (r + "tensor_model_parallel_size", rollout.tensor_parallel_size),
        (r + "seed", config.run.seed),
        (r + "log_prob_micro_batch_size_per_gpu", optim.micro_batch_size),
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", optim.micro_batch_size),
        ("actor_rollout_ref.ref.fsdp_config.dtype", _dtype(config)),
    ]


def _kl(algo) -> list[tuple[str, Any]]:
    in_loss = algo.kl_coef > 0 and algo.kl_applied_as == "loss"
    in_reward = algo.kl_coef > 0 and algo.kl_applied_as == "reward"
    out: list[tuple[str, Any]] = [("actor_rollout_ref.actor.use_kl_loss", in_loss),
                                  ("algorithm.use_kl_in_reward", in_reward)]
    if in_loss:
        out += [("actor_rollout_ref.actor.kl_loss_coef", algo.kl_coef),
                ("actor_rollout_ref.actor.kl_loss_type", KL_NAMES[algo.kl_estimator])]
    if in_reward:
        out += [("algorithm.kl_ctrl.type", "fixed"), ("algorithm.kl_ctrl.kl_coef", algo.kl_coef),
                ("algorithm.kl_penalty", KL_NAMES[algo.kl_estimator])]
    return out


def _rollout_correction(algo, warnings: list[str]) -> list[tuple[str, Any]]:
    if algo.rollout_correction == "none":
        return []
    if algo.rollout_correction not in VERL_ROLLOUT_IS:
        warnings.append(f"algo.rollout_correction={algo.rollout_correction} has no verl equivalent and is not exported: "
                        "verl 0.9.1's nearest forms differ, IcePop (rollout_is_threshold='LOW_HIGH') keeps the ratio "
                        "as a weight inside the band and token_k1 rejection (rollout_rs) also drops the tokens from the "
                        "KL term and the loss's token count; ours only zeroes their policy-gradient weight")
        return []
    c = "algorithm.rollout_correction."
    return [(c + "rollout_is", VERL_ROLLOUT_IS[algo.rollout_correction]), (c + "rollout_is_threshold", algo.rollout_is_cap)]


def _critic(config, model: str) -> list[tuple[str, Any]]:
    optim = config.optim
    return [
        ("critic.model.path", model),
        ("critic.model.enable_gradient_checkpointing", config.model.gradient_checkpointing),
        ("critic.optim.lr", optim.critic_lr),
        ("critic.optim.weight_decay", optim.weight_decay),
        ("critic.grad_clip", optim.grad_clip if optim.grad_clip > 0 else NO_CLIP),
        ("critic.cliprange_value", config.algo.vf_clip),
        ("critic.ppo_micro_batch_size_per_gpu", optim.micro_batch_size),
    ]


def _trainer(config, epochs: int) -> list[tuple[str, Any]]:
    run, ckpt = config.run, config.checkpoint
    t = "trainer."
    out = [
        (t + "project_name", "tinyzero"),
        (t + "experiment_name", run.name),
        (t + "nnodes", 1),
        (t + "n_gpus_per_node", max(config.placement.num_gpus, 1)),
        (t + "total_epochs", epochs),
        (t + "total_training_steps", run.steps),
        (t + "val_before_train", True),
        # ours evaluates every k steps and always after the last; verl's test_freq also fires on the last step
        (t + "test_freq", config.eval.every if config.eval.every > 0 else run.steps),
        (t + "save_freq", ckpt.every if ckpt.every > 0 else run.steps),
        (t + "max_actor_ckpt_to_keep", ckpt.keep_last),
        (t + "default_local_dir", f"{run.out_dir}/{run.name}/checkpoints"),
        # every completion as JSONL per step, as our rollouts.jsonl.gz keeps them (`tinyzero aha` reads them)
        (t + "rollout_data_dir", f"{run.out_dir}/{run.name}/rollouts"),
        (t + "validation_data_dir", f"{run.out_dir}/{run.name}/evals"),
        (t + "logger", ["console", "tensorboard"] if config.log.tensorboard else ["console"]),
    ]
    if config.algo.needs.critic:
        out.append((t + "max_critic_ckpt_to_keep", ckpt.keep_last))
    return out


def _lora(lora, warnings: list[str]) -> list[tuple[str, Any]]:
    """``model.lora`` as verl 0.9.1's own LoRA keys (its model config: lora_rank, lora_alpha, target_modules)."""
    if lora.dropout:
        warnings.append(f"model.lora.dropout={lora.dropout:g} has no verl equivalent and is not exported: verl's "
                        "FSDP LoRA has no dropout key")
    return [("actor_rollout_ref.model.lora_rank", lora.rank), ("actor_rollout_ref.model.lora_alpha", lora.alpha),
            ("actor_rollout_ref.model.target_modules", lora.targets())]


def unmapped_warnings(config) -> list[str]:
    """One line per recipe option with no verl equivalent whose value differs from the default."""
    from tinyzero.config import Config

    ours, defaults = dataclasses.asdict(config), dataclasses.asdict(Config())
    lines = []
    for dotted, why in NO_EQUIVALENT.items():
        section, _, key = dotted.partition(".")
        pairs = [(f"{section}.{k}", v, defaults[section][k]) for k, v in ours[section].items()] if not key else [
            (dotted, ours[section][key], defaults[section][key])]
        for name, value, default in pairs:
            if dotted == "eval.max_new_tokens":
                default = config.rollout.max_new_tokens  # verl's one length is the training one
            if value != default:
                lines.append(f"{name}={_short(value)} has no verl equivalent and is not exported: {why}")
    if config.optim.max_tokens_per_micro_batch:
        lines.append(f"optim.max_tokens_per_micro_batch={config.optim.max_tokens_per_micro_batch} is not exported "
                     f"(verl trains in micro-batches of optim.micro_batch_size={config.optim.micro_batch_size} rows): "
                     "verl's own token budget is actor_rollout_ref.actor.use_dynamic_bsz=true with "
                     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu, which counts unpadded tokens; add them to "
                     "the launch command by hand")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------------------------ writing


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: strings quoted, so braces, commas and spaces stay text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if "${" in text:
        raise TinyZeroError(f"{text!r} contains '${{', which verl's config reads as an interpolation: rename it")
    if BARE.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text  # a name or a path: Hydra reads it as this string unquoted
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def launch_script(translation: Translation, recipe: str) -> str:
    """A bash script that runs verl with the translated overrides; extra ``key=value`` arguments go last."""
    lines = [
        "#!/usr/bin/env bash",
        f"# verl {VERL_VERSION} run of {recipe}, written by `tinyzero export verl` (docs/verl.md).",
        "# Usage: bash run_verl.sh [more key=value overrides for verl]   (PYTHON=... picks the interpreter)",
        "# Needs verl with vLLM and tinyzero (pip install --no-deps) in that Python, and a GPU per trainer rank.",
        "set -euo pipefail",
        'PYTHON="${PYTHON:-python3}"',
        'if ! "$PYTHON" -c "import verl" 2>/dev/null; then',
        f'  echo "run_verl.sh: verl is not installed in $PYTHON: pip install \'verl[vllm]=={VERL_VERSION}\' '
        '(or set PYTHON to the interpreter that has it)" >&2',
        "  exit 1",
        "fi",
        'if ! "$PYTHON" -c "import tinyzero.interop.verl_reward" 2>/dev/null; then',
        '  echo "run_verl.sh: tinyzero is not installed in $PYTHON: pip install --no-deps PATH_TO_TINYZERO '
        '(its rewards need only the standard library)" >&2',
        "  exit 1",
        "fi",
    ]
    for name, value in translation.env.items():
        lines.append(f'export {name}="${{{name}:-{value}}}"')
    lines.append("args=(")
    lines += [f"  {shlex.quote(f'{key}={hydra_value(value)}')}" for key, value in translation.overrides]
    lines += [")", 'exec "$PYTHON" -m verl.trainer.main_ppo "${args[@]}" "$@"', ""]
    return "\n".join(lines)


def reward_module(tasks: dict[str, dict], recipe: str) -> str:
    """The module verl loads: the task table and ``compute_score``, which calls tinyzero's reward."""
    return f'''"""verl reward for the tinyzero export of {recipe}: compute_score dispatches on data_source to tinyzero.

Written by `tinyzero export verl`; verl loads it through reward.custom_reward_function.path/.name. It needs
tinyzero importable in verl's Python (pip install --no-deps PATH_TO_TINYZERO); docs/verl.md explains the result.
"""

import sys

# data_source -> the environment (a registered name or module:Class) and the recipe's options for it
TASKS = {tasks!r}

try:
    from tinyzero.interop.verl_reward import score as _score
except ImportError as err:
    raise ImportError(
        f"tinyzero is not importable in {{sys.executable}}: install it beside verl with "
        "`pip install --no-deps PATH_TO_TINYZERO`"
    ) from err


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
    """{{"score": reward, "acc": 1.0 if correct else 0.0, and each reward component}} for one completion."""
    return _score(TASKS, data_source, solution_str, ground_truth)
'''


def check_out_dir(out: Path) -> None:
    """DIR may be new, empty, or an earlier export (only our file names); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise TinyZeroError(f"--out {out} is a file: give a folder for the export")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise TinyZeroError(f"--out {out} already holds other files ({', '.join(foreign[:3])}): "
                                "give a new or empty folder")


def export(recipe: str, overrides: list[str], out: Path, train_size: int | None = None,
           test_size: int | None = None) -> dict:
    """Write the export into ``out``; returns the manifest (also written as export.json)."""
    from tinyzero.config import load_config
    from tinyzero.data import make_splits, to_columns, write_columns
    from tinyzero.envs import make_env

    config = load_config(recipe, overrides)
    env = make_env(config.env.name, config.env.options)
    out = Path(out).expanduser().resolve()
    check_out_dir(out)
    check_translatable(config)
    train_n, test_n = split_sizes(config, train_size, test_size)
    train, test = make_splits(env, train_n, test_n, config.run.seed, progress=True)
    columns = {split: to_columns(env, problems, split, config.env.template)
               for split, problems in (("train", train), ("test", test))}  # prompts rendered once, for both uses
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: str(write_columns(cols, split, out)) for split, cols in columns.items()}
    paths["reward"] = str(out / "reward.py")
    bound = prompt_length_bound(columns["train"]["prompt"] + columns["test"]["prompt"])
    translation = translate(config, paths, bound, train_n)
    tasks = {env.name: {"env": config.env.name, "options": dict(config.env.options)}}
    (out / "reward.py").write_text(reward_module(tasks, recipe))
    script = out / "run_verl.sh"
    script.write_text(launch_script(translation, recipe))
    script.chmod(0o755)
    manifest = {"recipe": str(recipe), "overrides": list(overrides), "verl_version": VERL_VERSION,
                "train_size": train_n, "test_size": test_n, "env": translation.env,
                "verl_overrides": {k: v for k, v in translation.overrides}, "warnings": translation.warnings,
                "tasks": tasks}
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
