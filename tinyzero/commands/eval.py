"""``tinyzero eval``: models, runs and checkpoints on the same held-out problems, greedy and at several k, side by side.

What a MODEL_OR_RUN can be:
- a run folder (it holds ``config.yaml``): its latest complete checkpoint's ``policy/``;
- a checkpoint folder (``runs/X/checkpoints/step_N``): its ``policy/``; the run's config is two folders up;
- for a LoRA run, its ``adapter/`` merged into the run's base in a temporary folder (``merge`` writes one to keep);
  the adapter files are parsed before any model loads, so a damaged one is one sentence naming it;
- anything ``model.name`` takes: the bundled ``smollm2-135m``, a Hugging Face folder, a hub id.

The problems, environment, template, seed and defaults come from the first run among the models given (the same
``sample_test(env, eval.size, run.seed)`` its trainer evaluated on), else from the config defaults; flags override
them. Every model then sees the same problems and the same sampling seeds (tinyzero/analysis/evaluation.py), one model at a
time, each on a fresh ``RolloutWorker`` (vLLM, or HF with ``--backend hf``), scored by the environment's reward.
For a run or checkpoint the result is also written to ``RUN/eval/step_NNNNNN.json`` and to TensorBoard
(``RUN/tensorboard/eval``, at the checkpoint's step) unless ``--no-save``.

Simplifications: a checkpoint written before checkpoints carried their tokenizer has none in ``policy/``; it is
paired with the tokenizer of the run's ``model.name`` through a folder of symbolic links. One engine at a time,
never two models in memory together.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinyzero.checkpoint import ADAPTER_DIR as ADAPTER
from tinyzero.checkpoint import MARKER, complete_checkpoints, latest_checkpoint, read_state, verify_checkpoint
from tinyzero.config import MAX_EVAL_SIZE, Config, load_config
from tinyzero.errors import TinyZeroError

# Files of a model folder that are its weights or its architecture, never its tokenizer.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Target:
    """One model to evaluate, and where it came from."""

    spec: str  # as the user wrote it
    label: str  # its column in the table
    model: str  # a folder, the bundled name or a hub id (resolve_model takes it)
    run_dir: Path | None = None
    step: int | None = None
    config: Config | None = None  # the run's config, for runs and checkpoints
    tokenizer_from: str | None = None  # where the tokenizer lives when the folder has none (checkpoints)
    lora_base: str | None = None  # a LoRA checkpoint: ``model`` is its adapter folder, merged into this base


@dataclass(frozen=True)
class Settings:
    """What every model is evaluated on and how; the same for all models of one command."""

    env: str
    options: dict = field(default_factory=dict)
    template: str = "chat"
    split: str = "test"
    size: int = 100
    seed: int = 0
    ks: tuple[int, ...] = (1, 8)
    samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    backend: str = "vllm"

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        sampled = (f"{self.samples} samples per problem at temperature {self.temperature:g}" if self.ks
                   else "no sampling")
        return (f"{self.size} {self.split} problems of {self.env}({opts}), seed {self.seed}, {self.template} "
                f"template; greedy and {sampled}, at most {self.max_new_tokens} new tokens; {self.backend} backend")


def resolve_target(spec: str) -> Target:
    """A run folder, a checkpoint folder, or a model (bundled name, HF folder, hub id)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise TinyZeroError(f"run {spec} has no complete checkpoint yet: wait for its first one "
                                "(checkpoint.every), or give a model")
        return _checkpoint_target(spec, ckpt, path)
    if path.is_dir() and (path / "state.json").is_file() and ((path / "policy").is_dir() or (path / ADAPTER).is_dir()):
        if not (path / MARKER).is_file():
            raise TinyZeroError(f"checkpoint {spec} is incomplete (no {MARKER} marker): give a finished one")
        run_dir = path.parent.parent
        if not (run_dir / "config.yaml").is_file():
            raise TinyZeroError(f"checkpoint {spec} has no run config two folders up ({run_dir / 'config.yaml'}): "
                                f"give its policy folder ({path / 'policy'}) as a model instead")
        return _checkpoint_target(spec, path, run_dir)
    return Target(spec, spec, spec)


def _checkpoint_target(spec: str, ckpt: Path, run_dir: Path) -> Target:
    """A checkpoint to evaluate: the files eval reads (``policy/``, ``state.json``) checked against its checksums."""
    config = load_config(run_dir / "config.yaml")
    lora = (ckpt / ADAPTER).is_dir()
    if not verify_checkpoint(ckpt, only=(f"{ADAPTER}/" if lora else "policy/", "state.json")):
        import sys

        print(f"tinyzero: note: {ckpt} was written before checkpoints carried checksums: its files are not checked",
              file=sys.stderr)
    step = int(read_state(ckpt)["step"])
    if lora:
        check_adapter(ckpt)
        return Target(spec, f"{run_dir.name} step {step}", str(ckpt / ADAPTER), run_dir, step, config,
                      lora_base=config.model.name)
    return Target(spec, f"{run_dir.name} step {step}", str(ckpt / "policy"), run_dir, step, config,
                  tokenizer_from=config.model.name)


def check_adapter(ckpt: Path) -> None:
    """A LoRA checkpoint's adapter files, parsed before any model loads (checksums only prove the files are the ones
    saved, and a checkpoint from before checksums has none): ``adapter_config.json`` a LoRA config, every tensor of
    ``adapter_model.safetensors`` readable, finite and of the config's rank, ``base.json`` readable. One sentence
    naming the first damaged file."""
    import torch
    from safetensors import SafetensorError, safe_open

    from tinyzero.engine.lora import read_base

    folder = ckpt / ADAPTER
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    config = _adapter_config(config_path, ckpt)
    if not weights_path.is_file():
        _damaged(weights_path, ckpt, "it is missing" if not weights_path.exists() else "it is not a file")
    pattern = config.get("rank_pattern")
    rank = None if isinstance(pattern, dict) and pattern else config["r"]  # per-layer ranks: not checked here
    try:
        with safe_open(str(weights_path), framework="pt") as weights:
            names = list(weights.keys())
            if not names:
                _damaged(weights_path, ckpt, "it holds no adapter tensors")
            for name in names:
                tensor = weights.get_tensor(name)
                side = 0 if ".lora_A." in name else 1 if ".lora_B." in name else None
                if side is not None and rank is not None and (tensor.dim() != 2 or tensor.shape[side] != rank):
                    _damaged(weights_path, ckpt, f"{name[:100]} has shape {list(tensor.shape)}, not rank {rank} as "
                                                 "adapter_config.json says")
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    _damaged(weights_path, ckpt, f"{name[:100]} holds NaN or infinite values")
    except (SafetensorError, OSError) as err:
        _damaged(weights_path, ckpt, f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}")
    read_base(folder)


def _adapter_config(path: Path, ckpt: Path) -> dict:
    """``adapter_config.json`` as tinyzero writes it: a JSON object of peft's LoRA type, with a positive rank."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bad UTF-8, an int too long
        _damaged(path, ckpt, "it is missing" if not path.exists() else "it is a folder" if path.is_dir()
                 else type(err).__name__)
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        _damaged(path, ckpt, "it is not a LoRA adapter config")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        _damaged(path, ckpt, f"its rank r is {str(rank)[:40]!r}, not a whole number of 1 or more")
    return config


def _damaged(path: Path, ckpt: Path, what: str):
    """One sentence: the damaged checkpoint file, and what to give instead (the checkpoint before it, if any)."""
    found = [c.resolve() for c in complete_checkpoints(ckpt.parent.parent)]
    earlier = found[:found.index(ckpt.resolve())] if ckpt.resolve() in found else []
    fix = (f"give the checkpoint before it ({earlier[-1]}) instead, or restore the file from a copy" if earlier
           else "restore the file from a copy (the run has no earlier checkpoint)")
    raise TinyZeroError(f"checkpoint file {path} is damaged ({what}): {fix}")


def settings_for(targets: list[Target], *, env: str | None = None, options: dict | None = None,
                 template: str | None = None, split: str = "test", size: int | None = None, seed: int | None = None,
                 ks: tuple[int, ...] = (1, 8), samples: int | None = None, temperature: float | None = None,
                 max_new_tokens: int | None = None, backend: str | None = None) -> tuple[Settings, Config]:
    """Flags first, then the first run's config, then the defaults; also returns that config."""
    from tinyzero.analysis.evaluation import check_ks

    base = next((t.config for t in targets if t.config is not None), None) or load_config(None)
    same_env = env is None or env == base.env.name
    merged = {**(base.env.options if same_env else {}), **(options or {})}
    samples = samples if samples is not None else max(ks, default=0)
    check_ks(ks, samples)
    for flag, value in (("--size", size), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise TinyZeroError(f"{flag} must be at least 1, got {value}")
    if size is not None and size > MAX_EVAL_SIZE:
        raise TinyZeroError(f"--size must be at most {MAX_EVAL_SIZE:,} (as eval.size), got {size:,}")
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise TinyZeroError(f"--temperature must be a finite number, 0 or more, got {temperature}")
    if seed is not None and not 0 <= seed < 2**31:
        raise TinyZeroError(f"--seed must be between 0 and {2**31 - 1} (as run.seed), got {seed}")
    if split not in ("test", "train"):
        raise TinyZeroError(f"--split {split!r}: use test (held-out problems) or train (the first training problems)")
    def pick(flag, default):
        return default if flag is None else flag

    settings = Settings(
        env=env or base.env.name, options=merged, template=template or base.env.template, split=split,
        size=pick(size, base.eval.size), seed=pick(seed, base.run.seed), ks=tuple(ks), samples=samples,
        temperature=pick(temperature, base.rollout.temperature), top_p=base.rollout.top_p,
        max_new_tokens=pick(max_new_tokens, base.eval.max_new_tokens), backend=backend or base.rollout.backend)
    return settings, base


def problems_for(env, settings: Settings, eval_size: int) -> list[dict]:
    """The held-out problems a run with this seed evaluated on, or (``train``) the first ones it trained on."""
    from tinyzero.data import iter_train, sample_test

    if settings.split == "test":
        return sample_test(env, settings.size, settings.seed)
    held_out = {env.key(p) for p in sample_test(env, eval_size, settings.seed)}
    stream = iter_train(env, settings.seed, held_out)
    return [next(stream) for _ in range(settings.size)]


# ---------------------------------------------------------------------------------------------- running
def run_eval(specs: list[str], settings_kwargs: dict, *, save: bool = True, progress: bool = True) -> dict:
    """Evaluate every model on the same problems; returns ``{"settings": ..., "results": [...]}``."""
    from tinyzero.analysis.evaluation import Sampling
    from tinyzero.console import quiet_libraries
    from tinyzero.envs import make_env

    targets = [resolve_target(spec) for spec in specs]  # every path checked before any model loads
    settings, base = settings_for(targets, **settings_kwargs)
    env = make_env(settings.env, settings.options)
    _note_other_tasks(targets, env, settings)
    problems = problems_for(env, settings, base.eval.size)
    sampling = Sampling(settings.ks, settings.samples, settings.temperature, settings.top_p, settings.seed) \
        if settings.ks else None
    quiet_libraries()  # the progress bar and the table, not per-shard loading bars
    if base.run.threads:
        import torch

        torch.set_num_threads(base.run.threads)  # before any engine: vLLM's CPU worker freezes the count
    results = []
    for target in targets:
        metrics = _evaluate_target(target, env, problems, settings, sampling, base, progress)
        result = {"model": target.label, "source": target.spec, "step": target.step, "metrics": metrics}
        if save and target.run_dir is not None:
            result["saved"] = str(_save(target, settings, metrics))
        results.append(result)
    return {"settings": asdict(settings), "description": settings.describe(), "results": results}


def _note_other_tasks(targets: list[Target], env, settings: Settings) -> None:
    """Say so when a run is evaluated on another task or template than it trained on (its numbers still stand)."""
    import sys

    from tinyzero.envs import make_env

    for t in targets:
        if t.config is None:
            continue
        trained = make_env(t.config.env.name, t.config.env.options)
        if type(trained) is not type(env) or trained.options != env.options or t.config.env.template != settings.template:
            print(f"tinyzero: note: {t.spec} trained on {t.config.env.name} {t.config.env.options} with the "
                  f"{t.config.env.template} template; it is evaluated here on {settings.describe()}", file=sys.stderr)


def _evaluate_target(target: Target, env, problems, settings: Settings, sampling, base: Config,
                     progress: bool) -> dict:
    from tinyzero.analysis.evaluation import encode_prompt, evaluate
    from tinyzero.scoring import PARALLEL_SCORING_MIN, score_many, scoring_pool

    pool = scoring_pool() if len(problems) * max(settings.samples, 1) >= PARALLEL_SCORING_MIN else None
    try:
        with _model_folder(target) as folder:
            _check_finite(target, folder)
            worker, tokenizer = _load(target, folder, settings, base)
            try:
                prompts = [encode_prompt(tokenizer, env, p, settings.template)[1] for p in problems]
                outcome = evaluate(worker, env, prompts, problems, lambda t, p: score_many(env, t, p, pool),
                                   max_new_tokens=settings.max_new_tokens, sampling=sampling, progress=progress,
                                   label=target.label)
            finally:
                worker.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"problems": float(len(problems)), **outcome.metrics}


def _check_finite(target: Target, folder: Path) -> None:
    """A model whose weights hold a NaN or an infinity is refused: it would be scored as if it were a model (about
    a second per GB, one tensor in memory at a time)."""
    import torch
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    tensor = weights.get_tensor(name)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        raise TinyZeroError(f"model {target.spec} has NaN or infinite weights ({name[:100]} in "
                                            f"{file.name}), so it was not evaluated: evaluate an earlier checkpoint")
        except (SafetensorError, OSError) as err:
            raise TinyZeroError(f"model {target.spec}: {file} is damaged ({str(err)[:100]}): evaluate an earlier "
                                "checkpoint, or restore the file") from None


def _load(target: Target, folder: Path, settings: Settings, base: Config):
    """The rollout worker and tokenizer of one model; a folder that does not load is one sentence."""

    from tinyzero.engine.devices import dtype_name, resolve_device
    from tinyzero.engine.models import default_cache_dir, load_tokenizer
    from tinyzero.engine.roles import _max_model_len
    from tinyzero.engine.rollout import RolloutWorker

    device = resolve_device()
    dtype = dtype_name(base.model.compute_dtype, device)
    try:
        tokenizer = load_tokenizer(folder)
        worker = RolloutWorker(folder, backend=settings.backend, dtype=dtype, seed=settings.seed, device=device,
                               max_model_len=_max_model_len(folder), kv_cache_gib=base.rollout.kv_cache_gib,
                               gpu_memory_utilization=base.rollout.gpu_memory_utilization,
                               tensor_parallel_size=base.rollout.tensor_parallel_size,
                               cache_dir=default_cache_dir() / "eval")
    except TinyZeroError:
        raise
    except Exception as exc:  # any loader failure means the same thing to the user: this folder is not a model
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TinyZeroError(f"model {target.spec} does not load ({type(exc).__name__}: {first}): give a Hugging "
                            "Face model folder (config.json, weights, tokenizer), a run folder or a checkpoint "
                            "folder") from exc
    return worker, tokenizer


@contextmanager
def _model_folder(target: Target):
    """A local folder with the model's weights and a tokenizer: the resolved model, or for a checkpoint whose
    ``policy/`` has no tokenizer, a temporary folder of links to its files plus the run's model's tokenizer files."""
    from tinyzero.engine.models import resolve_model

    if target.lora_base is not None:  # LoRA: base + adapters merged into a temporary folder (float32: exact)
        from tinyzero.engine.lora import write_merged

        with tempfile.TemporaryDirectory(prefix="tinyzero-eval-") as tmp:
            yield write_merged(resolve_model(target.lora_base), Path(target.model), Path(tmp), target.lora_base)
        return
    folder = resolve_model(target.model)
    if target.tokenizer_from is None or (folder / "tokenizer_config.json").is_file():
        yield folder
        return
    source = resolve_model(target.tokenizer_from)
    with tempfile.TemporaryDirectory(prefix="tinyzero-eval-") as tmp:
        view = Path(tmp)
        for item in folder.iterdir():
            os.symlink(item.resolve(), view / item.name)
        for item in source.iterdir():
            if item.is_file() and not (view / item.name).exists() and item.name not in _MODEL_FILES \
                    and not item.name.endswith(_WEIGHT_SUFFIXES):
                os.symlink(item.resolve(), view / item.name)
        yield view


def merge(spec: str, out: Path, dtype: str = "bfloat16") -> Path:
    """``tinyzero merge``: a LoRA run's (or checkpoint's) adapters merged into its base, written to ``out`` as a
    plain HF folder (vLLM serve, verl, the hub); ``dtype`` is the saved weights' dtype. The folder is written under
    a hidden name beside ``out`` and renamed into place when complete, so a refusal or a failure leaves nothing at
    ``out``; returns where it was written (``out`` resolved)."""
    import shutil

    import torch

    from tinyzero.engine.lora import write_merged
    from tinyzero.engine.models import resolve_model

    target = resolve_target(spec)
    if target.lora_base is None:
        where = f"{target.model} is already a plain HF folder" if target.config is not None else \
            f"{spec} is not a run or checkpoint folder"
        raise TinyZeroError(f"tinyzero merge takes a LoRA run or checkpoint, and {where}: give a run trained with "
                            "model.lora.rank > 0")
    final = _merge_destination(out)
    staging = _staging_folder(out, final)  # the one write before the model loads: proves the folder writable
    try:
        write_merged(resolve_model(target.lora_base), Path(target.model), staging, target.lora_base,
                     getattr(torch, dtype))
        try:
            os.replace(staging, final)  # over an empty folder too (rename(2) replaces an empty directory)
        except OSError as err:  # something appeared at --out while the merge ran
            raise TinyZeroError(f"--out {out} could not be put in place ({err.strerror or type(err).__name__}): "
                                "give a new or empty folder") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _merge_destination(out: Path) -> Path:
    """``--out`` checked without writing anything: a new name in an existing folder, or an empty folder."""
    try:
        final = out.resolve()  # a link is followed: the folder it names is the one written
        parent = final.parent
        exists, is_dir, parent_exists = final.exists(), final.is_dir(), parent.exists()
        empty = is_dir and not any(final.iterdir())
        above = next(p for p in final.parents if p.exists())  # the nearest thing above it that exists
    except (OSError, RuntimeError) as err:  # no permission to look, a name too long, a loop of links
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)[:80] or type(err).__name__
        raise TinyZeroError(f"--out {out} cannot be checked ({why}): give a new or empty folder you can write "
                            "to") from None
    if exists:
        if not is_dir:
            raise TinyZeroError(f"--out {out} is a file: give a new or empty folder")
        if not empty:
            raise TinyZeroError(f"--out {out} is not empty: give a new or empty folder")
    elif not above.is_dir():
        raise TinyZeroError(f"--out {out}: {above} is a file, not a folder: give a new folder inside a folder")
    elif not parent_exists:
        raise TinyZeroError(f"--out {out}: the folder it would go in ({parent}) does not exist: create it first, "
                            "or give a new folder inside an existing one")
    return final


def _staging_folder(out: Path, final: Path) -> Path:
    """A new hidden folder beside ``final`` (same file system, so the last rename is atomic)."""
    import secrets

    staging = final.parent / f".tinyzero-merge-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as err:  # a read-only or special file system, no write permission
        raise TinyZeroError(f"--out {out}: cannot write in {final.parent} ({err.strerror or type(err).__name__}): "
                            "give a new folder in a place you can write to") from None
    return staging


def _save(target: Target, settings: Settings, metrics: dict) -> Path:
    """``RUN/eval/step_NNNNNN.json`` (the latest evaluation of that checkpoint) and TensorBoard at its step."""
    out = target.run_dir / "eval" / f"step_{target.step:06d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": target.label, "step": target.step, "settings": asdict(settings), "metrics": metrics}
    out.write_text(json.dumps(record, indent=1) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    # A folder of its own: TensorBoard shows it as a run named "eval" beside the training curves, so these
    # points never mix with the trainer's own eval/ values at the same step.
    with SummaryWriter(log_dir=str(target.run_dir / "tensorboard" / "eval")) as writer:
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, target.step)
    return out


# ------------------------------------------------------------------------------------------------ output
ROWS = [  # (metric key or prefix, row label, format)
    ("accuracy", "greedy accuracy", "pct"),
    ("pass@", "pass@{k}", "pct"),
    ("maj@", "maj@{k}", "pct"),
    ("format_rate", "greedy format rate", "pct"),
    ("sampled_format_rate", "sampled format rate", "pct"),
    ("response_length", "greedy length, mean (tokens)", "num"),
    ("response_length_median", "greedy length, median", "num"),
    ("sampled_length", "sampled length, mean", "num"),
    ("sampled_length_median", "sampled length, median", "num"),
    ("tokens", "tokens generated", "int"),
    ("seconds", "seconds", "num"),
]


def _rows(report: dict) -> list[tuple[str, str, str]]:
    """(metric key, label, format) for every metric present, in table order."""
    keys = list(dict.fromkeys(k for r in report["results"] for k in r["metrics"]))
    rows = []
    for key, label, fmt in ROWS:
        if key.endswith("@"):
            for k in sorted(int(x.removeprefix(key)) for x in keys if x.startswith(key)):
                rows.append((f"{key}{k}", label.format(k=k), fmt))
        elif key in keys:
            rows.append((key, label, fmt))
    return rows


def _cell(value, fmt: str) -> str:
    if value is None:
        return "—"
    if fmt == "pct":
        return f"{value:.1%}"
    if fmt == "int":
        return f"{value:,.0f}"
    return f"{value:.1f}"


def format_table(report: dict) -> str:
    """A Markdown table: one row per metric, one column per model."""
    results = report["results"]
    lines = [report["description"], "",
             "| metric | " + " | ".join(r["model"] for r in results) + " |",
             "| --- |" + " --- |" * len(results)]
    for key, label, fmt in _rows(report):
        lines.append(f"| {label} | " + " | ".join(_cell(r["metrics"].get(key), fmt) for r in results) + " |")
    return "\n".join(lines)


def format_csv(report: dict) -> str:
    """One row per model: model, source, step, then every metric."""
    keys = [key for key, _, _ in _rows(report)] + ["problems"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "source", "step", *keys])
    for r in report["results"]:
        writer.writerow([r["model"], r["source"], r["step"] if r["step"] is not None else "",
                         *(r["metrics"].get(key, "") for key in keys)])
    return buf.getvalue()
