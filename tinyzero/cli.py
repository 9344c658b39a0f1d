"""The ``tinyzero`` command line: ``data``, ``reward``, ``envs``, ``export``, ``merge``, ``train``, ``resume``, ``smoke``,
``eval``, ``aha``, ``report`` and ``sweep``.

User-fixable errors (TinyZeroError) print one sentence and exit non-zero, never a traceback.
Heavy imports (torch, vLLM, datasets) happen inside the commands that need them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tinyzero.errors import TinyZeroError


def _options(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TinyZeroError(f"option {pair!r} is not KEY=VALUE: write e.g. -o digits=3")
        out[key.strip()] = value.strip()
    return out


def cmd_envs(args: argparse.Namespace) -> int:
    from tinyzero.envs import REGISTRY
    from tinyzero.envs.base import describe_options, levels

    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}  ({cls.ability}) — {doc}")
        for opt, typ, default, help_text in describe_options(cls.Options):
            print(f"    {opt:<14} {typ:<6} default {default!r:<8} {help_text}")
        found = levels(cls())
        if len(found) > 1:  # data.curriculum.levels: at the default options; a recipe's own options end its ladder
            steps = " | ".join(", ".join(f"{k}={v}" for k, v in level.items()) for level in found)
            print(f"    levels (data.curriculum.levels, easiest first, at the defaults): {steps}")
    _print_gym_tasks()
    print("Out-of-tree tasks: pass 'package.module:ClassName' wherever an environment name goes.")
    return 0


def _print_gym_tasks() -> None:
    from tinyzero.envs import gym

    if not gym.available():
        print(f"gym:TASK — reasoning-gym's tasks; not installed here: {gym.INSTALL.split(': ', 1)[1]}")
        return
    names = gym.task_names()
    print(f"gym:TASK  (reasoning) — {len(names)} reasoning-gym tasks, scored by their own verifiers (docs/gym.md);"
          " -o KEY=VALUE sets the generator's config, plus answer_format, timeout_s, max_answer_chars, memory_mb")
    for name in names:
        fields = ", ".join(gym.generator_fields(name))
        print(f"    gym:{name:<26} {gym.placement(name):<10} {fields}")


def cmd_data(args: argparse.Namespace) -> int:
    from tinyzero.data import make_splits, write_split
    from tinyzero.envs import make_env

    env = make_env(args.env, _options(args.option))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = make_splits(env, args.train_size, args.test_size, args.seed, progress=True)
    generated = time.perf_counter() - start
    for split, problems in (("train", train), ("test", test)):
        path = write_split(env, problems, split, args.template, out)
        print(f"wrote {len(problems):,} {split} problems to {path}")
    print(f"done in {time.perf_counter() - start:.1f} s (generation {generated:.1f} s)")
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    from tinyzero.envs import make_env

    env = make_env(args.env, _options(args.option))
    write = sys.stdout.write
    for number, raw in enumerate(sys.stdin.buffer, start=1):  # bytes: a line that is not UTF-8 is one sentence
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TinyZeroError(f"line {number}: not UTF-8 text; give one JSON object per line") from None
        if not line.strip():
            continue
        write(json.dumps(_score_line(env, line, number).to_dict()) + "\n")
    sys.stdout.flush()
    return 0


def _score_line(env, line: str, number: int):
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        raise TinyZeroError(f"line {number}: not valid JSON ({err}); give one JSON object per line") from None
    except ValueError as err:  # an integer past 4,300 digits
        raise TinyZeroError(f"line {number}: JSON tinyzero does not read ({str(err)[:80]}); give one JSON object "
                            "per line") from None
    if not isinstance(item, dict) or not isinstance(item.get("completion"), str):
        raise TinyZeroError(f'line {number}: expected {{"completion": str, "problem": {{...}}}}')
    if not isinstance(item.get("problem"), dict):
        raise TinyZeroError(f"line {number}: 'problem' must be an object such as the dataset stores")
    try:
        return env.reward(item["completion"], item["problem"])
    except (ValueError, KeyError, TypeError) as err:
        raise TinyZeroError(f"line {number}: malformed problem for {env.name} ({err})") from None


def cmd_export(args: argparse.Namespace) -> int:
    from tinyzero.interop.export_verl import export

    manifest = export(args.recipe, args.overrides, Path(args.out), args.train_size, args.test_size)
    for line in manifest["warnings"]:
        print(f"tinyzero: warning: {line}", file=sys.stderr)
    out = Path(args.out).expanduser().resolve()
    print(f"wrote {manifest['train_size']:,} train and {manifest['test_size']:,} test problems, reward.py and "
          f"run_verl.sh (verl {manifest['verl_version']}) to {out}")
    print(f"next, on the GPU box with verl installed (docs/verl.md): bash {out / 'run_verl.sh'}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tinyzero.commands.eval import merge

    out = merge(args.run, Path(args.out).expanduser(), args.dtype)
    print(f"wrote {args.run}'s LoRA adapters merged into its base to {out.resolve()} ({args.dtype}): a plain Hugging "
          "Face folder for vLLM serve, verl or the hub")
    return 0


def cmd_aha(args: argparse.Namespace) -> int:
    from tinyzero.analysis.aha_file import Fields, analyse_file, settings_for, table

    path = Path(args.file)
    if not path.is_file():
        raise TinyZeroError(f"{path} does not exist: give a JSONL or JSONL.gz transcript file")
    settings = settings_for(path, args.env, _options(args.option))
    fields = Fields(args.completion_field, args.problem_field, args.step_field, args.correct_field, args.prompt_field)
    summary = analyse_file(path, settings, fields)
    print(json.dumps(summary) if args.json else table(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    out_path = Path(args.out) if args.out else None
    if len(args.run_dir) > 1:
        from tinyzero.analysis.compare import write_comparison

        out = write_comparison([Path(p) for p in args.run_dir], out_path,
                               baseline=Path(args.baseline) if args.baseline else None)
    else:
        if args.baseline:
            raise TinyZeroError("--baseline names one of several runs to compare: give two run folders or more")
        from tinyzero.analysis.report import write_report

        out = write_report(Path(args.run_dir[0]), out_path)
    print(f"report: {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tinyzero.commands.sweep import compare, make_plan, run_sweep, seeds_arg

    recipe, sweep_file = args.recipe, None
    if Path(recipe).is_file() and _is_sweep_file(Path(recipe)):
        recipe, sweep_file = None, Path(recipe)
    plan = make_plan(recipe, args.overrides, args.axis, seeds_arg(args.seeds) if args.seeds else None, args.name,
                     args.baseline, args.budget_usd, sweep_file)
    if args.plan:
        for point in plan.points():
            print(f"{point.name}: {' '.join(point.arm) or '(the recipe)'} run.seed={point.seed}")
        return 0
    done = run_sweep(plan)
    out, table = compare(plan, done["folder"])
    print(table)
    if done["stopped"]:
        print(f"stopped: {done['stopped']}; {done['done']} of {done['total']} runs finished. Raise --budget-usd and "
              "run the same command again to go on.")
    print(f"comparison: {out}")
    return 0


def _is_sweep_file(path: Path) -> bool:
    """A sweep YAML names its recipe at the top (``recipe:``); a recipe never does."""
    import yaml

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # the recipe reader says what is wrong with it
    return isinstance(tree, dict) and "recipe" in tree


def cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        from tinyzero.config import describe

        print(describe())
        return 0
    if args.recipe is None:
        raise TinyZeroError("no recipe given: write e.g. `tinyzero train recipes/demo-cpu.yaml`")
    return _finish(_train(args.recipe, args.overrides, None))


def cmd_resume(args: argparse.Namespace) -> int:
    return _finish(_train(None, args.overrides, args.run_dir))


def cmd_smoke(args: argparse.Namespace) -> int:
    _vllm_quiet()
    from tinyzero.commands.smoke import report, run_smoke
    from tinyzero.config import load_config

    result = run_smoke(args.recipe, args.overrides)
    print(report(result, load_config(args.recipe, args.overrides)))
    return 0 if result.passed else 1


def _train(recipe, overrides, resume_dir):
    _vllm_quiet()
    from tinyzero.trainer import train

    return train(recipe, overrides, resume_dir=resume_dir)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.json and args.csv:
        raise TinyZeroError("--json and --csv both asked for: pick one output format")
    _vllm_quiet()
    from tinyzero.analysis.evaluation import parse_ks
    from tinyzero.commands.eval import format_csv, format_table, run_eval

    settings = dict(env=args.env, options=_options(args.option), template=args.template, split=args.split,
                    size=args.size, seed=args.seed, ks=parse_ks(args.k), samples=args.samples,
                    temperature=args.temperature, max_new_tokens=args.max_new_tokens, backend=args.backend)
    report = run_eval([args.model, *args.compare], settings, save=not args.no_save, progress=not args.no_progress)
    if args.json:
        print(json.dumps(report, indent=1))
    elif args.csv:
        print(format_csv(report), end="")
    else:
        print(format_table(report))
        for result in report["results"]:
            if "saved" in result:
                print(f"saved: {result['saved']} (and TensorBoard, run \"eval\", step {result['step']})")
    return 0


def _vllm_quiet() -> None:
    from tinyzero.console import quiet_vllm

    quiet_vllm()


def _finish(summary: dict) -> int:
    if summary.get("usd") is not None:
        print(f"cost: ${summary['usd']:.2f} ({summary['gpu_hours']:.2f} GPU-hours)")
    print(
        f"held-out greedy accuracy: {summary['before']:.1%} before -> {summary['after']:.1%} after "
        f"{summary['steps']} steps, on {summary['n']} problems never used in training"
    )
    print(f"run folder: {summary['run_dir']}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {summary['run_dir']}/tensorboard  (then open localhost:6006)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyzero", description="Pure-RL training on verifiable rewards (GRPO/PPO), CPU to multi-GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list the registered environments and their options")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("data", help="write train/test parquet files for an environment (verl columns)")
    p.add_argument("env", help="environment name (see `tinyzero envs`) or module:Class")
    p.add_argument("--out", required=True, help="output folder for train.parquet and test.parquet")
    p.add_argument("--train-size", type=int, default=327_680, help="train problems (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=1024, help="test problems (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed → identical files")
    p.add_argument("--template", choices=("base", "chat"), default="base", help="prompt template")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="environment option, repeatable (e.g. -o max_count=4)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("reward", help="score JSONL completions from stdin; JSONL verdicts to stdout")
    p.add_argument("env", help="environment name or module:Class")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="environment option, repeatable (e.g. -o format_score=0)")
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("export", help="export a recipe for another engine: `export verl RECIPE --out DIR` writes "
                                      "the parquet files, a reward module and a verl launch script")
    p.add_argument("engine", choices=("verl",), help="the engine to export for (verl 0.9.1)")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/countdown-3b.yaml")
    p.add_argument("overrides", nargs="*", metavar="a.b.c=value", help="override recipe values first")
    p.add_argument("--out", required=True, help="a new or empty folder (or an earlier export) to write into")
    p.add_argument("--train-size", type=int, help="train problems (default: run.steps x rollout.prompts_per_step)")
    p.add_argument("--test-size", type=int, help="test problems (default: eval.size)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a model from a YAML recipe (overrides as a.b.c=value)")
    p.add_argument("recipe", nargs="?", help="YAML recipe, e.g. recipes/demo-cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="a.b.c=value", help="override recipe values")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("smoke", help="2 short steps of a recipe's real layout (push checked, checkpoint, resume), "
                                     "then its projected time and cost")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/countdown-3b.yaml")
    p.add_argument("overrides", nargs="*", metavar="a.b.c=value", help="override recipe values")
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser("eval", help="greedy accuracy, pass@k and maj@k of models, runs or checkpoints, side by side",
                       description="Evaluate MODEL_OR_RUN (and --compare ones) on the same held-out problems with "
                                   "the same sampling seeds. Problems, environment and defaults come from the first "
                                   "run given, else the config defaults; the flags override them.")
    p.add_argument("model", metavar="MODEL_OR_RUN",
                   help="smollm2-135m, an HF folder or hub id, a run folder (its latest checkpoint) or a checkpoint "
                        "folder (runs/X/checkpoints/step_N)")
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL_OR_RUN", help="more models for the same table")
    p.add_argument("--env", help="environment (default: the run's, else arithmetic)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="environment option over the run's, repeatable (e.g. -o digits=3)")
    p.add_argument("--template", choices=("chat", "base"), help="prompt template (default: the run's, else chat)")
    p.add_argument("--split", default="test", help="test (held-out problems, default) or train (the first "
                                                   "problems training drew)")
    p.add_argument("--size", type=int, help="problems (default: the run's eval.size, else 100)")
    p.add_argument("--seed", type=int, help="problem and sampling seed (default: the run's run.seed, else 0)")
    p.add_argument("--k", default="1,8", help="k for pass@k and maj@k, comma-separated; 0: greedy only "
                                              "(default: %(default)s)")
    p.add_argument("--samples", type=int, help="samples per problem, at least the largest k (default: the largest k)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the run's, else 1.0)")
    p.add_argument("--max-new-tokens", type=int, help="most tokens per completion (default: eval.max_new_tokens)")
    p.add_argument("--backend", choices=("vllm", "hf"), help="rollout engine (default: the run's, else vllm)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--csv", action="store_true", help="print the results as CSV, one row per model")
    p.add_argument("--no-save", action="store_true", help="write nothing into run folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("aha", help="self-verification metrics of a JSONL(.gz) transcript file (a table, or --json)")
    p.add_argument("file", help="e.g. runs/demo/rollouts.jsonl.gz")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--env", help="environment for task-grounded checks (default: the run folder's config.yaml)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="environment option")
    p.add_argument("--completion-field", default="completion", help="field with the completion text")
    p.add_argument("--problem-field", default="problem", help="field with the problem (optional)")
    p.add_argument("--step-field", default="step", help="field with the training step (optional)")
    p.add_argument("--correct-field", default="correct", help="field with correct true/false (optional)")
    p.add_argument("--prompt-field", default="prompt", help="field with the prompt, whose copies do not count")
    p.set_defaults(func=cmd_aha)

    p = sub.add_parser("report", help="a self-contained HTML report of a run folder: curves, aha metrics, transcripts;"
                                      " of several: their curves overlaid, config differences, the claim against a "
                                      "control run")
    p.add_argument("run_dir", nargs="+", metavar="RUN_DIR", help="the run folder, e.g. runs/demo; several to compare")
    p.add_argument("--out", help="where to write the HTML (default: RUN_DIR/report.html; for several runs "
                                 "FIRST_RUN_DIR/compare.html)")
    p.add_argument("--baseline", metavar="RUN_DIR", help="one of the runs: its arm (the runs that differ from it only "
                                                         "by run.seed) is the one every other arm is held against")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="a recipe over a grid of values and seeds, one run after another (resumable), "
                                     "ending in one comparison with each arm's verdict against a baseline",
                       description="Train RECIPE at every combination of the --axis values and --seeds, each run in "
                                   "its own folder inside RUN.OUT_DIR/NAME; run it again to continue after a stop. "
                                   "Or give a sweep YAML (recipes/sweeps/) in place of the recipe.")
    p.add_argument("recipe", metavar="RECIPE_OR_SWEEP", help="a YAML recipe, or a sweep YAML that names one")
    p.add_argument("overrides", nargs="*", metavar="a.b.c=value", help="overrides for every run of the sweep")
    p.add_argument("--axis", action="append", default=[], metavar="KEY=A,B",
                   help="one axis of the grid, repeatable (e.g. --axis algo.policy_loss=clip,gspo,cispo)")
    p.add_argument("--seeds", metavar="N|A,B", help="a count (the recipe's run.seed and the ones after it) or a list "
                                                   "of seeds (default 1)")
    p.add_argument("--name", help="the sweep's folder under run.out_dir (default: the recipe's run.name + -sweep)")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                   help="the arm the others are held against, one value per axis (default: a control arm, else "
                        "the first)")
    p.add_argument("--budget-usd", type=float, help="stop cleanly before the whole sweep would pass this many dollars "
                                                   "(needs cost.usd_per_gpu_hour); 0: no budget")
    p.add_argument("--plan", action="store_true", help="print the runs the sweep would make, and stop")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("merge", help="a LoRA run's adapters merged into its base, written as a plain HF folder")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a LoRA run folder (its latest checkpoint) or a checkpoint")
    p.add_argument("--out", required=True, help="a new folder inside an existing one, or an empty folder (written "
                                                "under a hidden name beside it, renamed into place when complete)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="the saved weights' dtype (merged in float32 either way; default bfloat16, as vLLM serves)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("resume", help="continue a run from its latest complete checkpoint")
    p.add_argument("run_dir", help="the run folder, e.g. runs/demo")
    p.add_argument("overrides", nargs="*", metavar="a.b.c=value", help="e.g. run.steps=40 to train longer")
    p.set_defaults(func=cmd_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and all("=" in t and not t.startswith("-") for t in extra):
        args.overrides += extra  # overrides given after the flags (argparse takes a positional list only before)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except TinyZeroError as err:
        print(f"tinyzero: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except KeyboardInterrupt:
        print("tinyzero: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
