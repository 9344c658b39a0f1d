"""``tinyzero sweep``: a recipe over a grid of config values and seeds, one run after another, ending in one comparison.

The grid is the product of the axes (``--axis KEY=A,B``, or ``axes:`` in a sweep YAML) and the seeds (``--seeds N``:
the recipe's ``run.seed`` and the N - 1 after it; or a list). Each point is an ordinary run, trained by
``tinyzero train`` (or continued by ``tinyzero resume``) in its own process, in a folder of its own inside the
sweep's folder (``run.out_dir/NAME``), which holds the plan in ``sweep.json``. Running the same command again skips
the runs that finished, resumes one that stopped at a checkpoint, and starts the rest; a run killed before its first
checkpoint is moved aside (renamed ``NAME.interrupted``, nothing deleted) and started again. A budget
(``--budget-usd``) covers the whole sweep: each run gets what the runs before it left (their spend as their
checkpoints record it), and the sweep stops cleanly where the next run could not afford a step.
It ends with ``compare.html`` in the sweep's folder — runs grouped into arms over their seeds, each arm's verdict
against the baseline arm (tinyzero/analysis/arms.py) — and the same verdicts printed as a table.
Simplifications: the runs go one after another on this machine, never side by side (on a GPU box with room for two
runs, two sweeps with different axes can share it); a run's spend is what its last checkpoint recorded, so time
after that checkpoint in a run that was killed is not counted.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tinyzero.errors import TinyZeroError

PLAN_FILE = "sweep.json"
NAME_BYTES = 120  # a run folder's name from its axis values; longer ones are numbered instead (run.name allows 200)
NOT_AN_AXIS = {"run.seed": "give seeds with --seeds (or seeds: in the sweep file)",
               "run.name": "the sweep names each run after its axis values",
               "run.out_dir": "the sweep's runs go in its own folder; set run.out_dir once for the whole sweep"}


@dataclass(frozen=True)
class Point:
    """One run of the grid: its folder name, its arm's overrides (key=value texts) and its seed."""

    name: str
    arm: tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class Plan:
    name: str
    recipe: str
    overrides: tuple[str, ...]  # for every run
    axes: tuple[tuple[str, tuple[str, ...]], ...]  # (dotted key, values as override texts)
    seeds: tuple[int, ...]
    baseline: tuple[str, ...] | None  # the baseline arm's overrides; None: a control arm, else the first
    budget_usd: float

    def points(self) -> list[Point]:
        arms = [tuple(f"{key}={value}" for (key, _), value in zip(self.axes, combo, strict=True))
                for combo in itertools.product(*(values for _, values in self.axes))]
        names = _arm_names(self.axes, arms)
        return [Point(f"{name}.seed{seed}" if name else f"seed{seed}", arm, seed)
                for arm, name in zip(arms, names, strict=True) for seed in self.seeds]

    def grid(self) -> dict:
        """What makes two plans the same sweep (a rerun may change the budget and the baseline, not these)."""
        return {"recipe": self.recipe, "overrides": list(self.overrides),
                "axes": [[key, list(values)] for key, values in self.axes], "seeds": list(self.seeds)}


def _arm_names(axes, arms: list[tuple[str, ...]]) -> list[str]:
    """Folder names from the axis values (``policy_loss-gspo``); numbered (``arm1``) where that is unsafe or long;
    empty without axes (the runs are then ``seed0``, ``seed1``, ...)."""
    if not axes:
        return [""]
    last = [key.rsplit(".", 1)[-1] for key, _ in axes]
    short = [k if last.count(k) == 1 else key for k, (key, _) in zip(last, axes, strict=True)]
    names = []
    for arm in arms:
        values = [text.partition("=")[2] for text in arm]
        names.append("_".join(f"{k}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', v).strip('_.') or 'empty'}"
                              for k, v in zip(short, values, strict=True)))
    if len(set(names)) != len(names) or any(len(n.encode()) > NAME_BYTES for n in names):
        return [f"arm{i + 1}" for i in range(len(arms))]
    return names


# ------------------------------------------------------------------------------------------------ the plan
def _override_text(value) -> str:
    """A YAML value written back as the text an override reads (floats keep their dot: 1.0e-05)."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def _split_values(raw: str) -> list[str]:
    """``a,b`` -> [a, b], leaving commas inside brackets and quotes alone: ``{digits: 1, ops: '+'},{digits: 2}``."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    return [*parts, raw[start:]]


def parse_axis(text: str) -> tuple[str, tuple[str, ...]]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in _split_values(raw))
    if not sep or not key or not raw.strip() or not all(values):
        raise TinyZeroError(f"axis {text!r} is not KEY=A,B: write e.g. --axis algo.policy_loss=clip,gspo")
    return key, values


def _check_axes(axes, overrides) -> None:
    seen = set()
    for key, values in axes:
        if key in NOT_AN_AXIS:
            raise TinyZeroError(f"{key} cannot be an axis: {NOT_AN_AXIS[key]}")
        if key in seen:
            raise TinyZeroError(f"axis {key} is given twice: give its values once, e.g. {key}=A,B")
        seen.add(key)
        if len(set(values)) != len(values):
            raise TinyZeroError(f"axis {key} lists a value twice ({', '.join(values)}): give each value once")
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key == "run.name":  # run.out_dir may be set: it is where the sweep's folder goes
            raise TinyZeroError(f"run.name cannot be set for a sweep: {NOT_AN_AXIS[key]}; name the sweep with --name")
        if key in seen:
            raise TinyZeroError(f"{key} is both an axis and an override: drop one")


def _seeds(given, first: int) -> tuple[int, ...]:
    """``given``: a count (the recipe's seed and the ones after it), or a list of seeds."""
    if isinstance(given, bool) or given is None:
        given = 1 if given is None else given
    if isinstance(given, int):
        if given < 1:
            raise TinyZeroError(f"--seeds {given}: give at least one seed")
        return tuple(range(first, first + given))
    if isinstance(given, list | tuple) and given and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                         for s in given):
        if len(set(given)) != len(given):
            raise TinyZeroError(f"seeds {list(given)} lists a seed twice: give each once")
        return tuple(given)
    raise TinyZeroError(f"seeds {given!r} is neither a count nor a list of seeds: write e.g. --seeds 3 or "
                        "--seeds 0,5,9")


def seeds_arg(text: str):
    """``--seeds``: ``3`` (a count) or ``0,5,9`` (the seeds)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise TinyZeroError(f"--seeds {text}: give a count (e.g. 3) or seeds (e.g. 0,5,9)") from None
    return parts[0] if "," not in text else parts


def read_sweep_file(path: Path) -> dict:
    """A sweep YAML: ``recipe``, and optionally ``name``, ``overrides`` (a mapping of dotted keys), ``axes`` (dotted
    keys to lists of values), ``seeds`` (a count or a list), ``baseline`` (a mapping of axis keys to values) and
    ``budget_usd``."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise TinyZeroError(f"sweep file {path} cannot be read ({str(err).splitlines()[0][:100]}): give a YAML file "
                            "such as recipes/sweeps/demo-losses.yaml") from None
    allowed = {"recipe", "name", "overrides", "axes", "seeds", "baseline", "budget_usd"}
    if not isinstance(tree, dict) or "recipe" not in tree:
        raise TinyZeroError(f"sweep file {path} has no recipe: key: write it as in recipes/sweeps/demo-losses.yaml")
    unknown = sorted(set(map(str, tree)) - allowed)
    if unknown:
        raise TinyZeroError(f"sweep file {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(allowed))}")
    for key in ("overrides", "axes", "baseline"):
        if not isinstance(tree.get(key, {}), dict):
            raise TinyZeroError(f"sweep file {path}: {key} must be a mapping of dotted keys to values")
    for key, values in tree.get("axes", {}).items():
        if not isinstance(values, list) or not values:
            raise TinyZeroError(f"sweep file {path}: axis {key} must list its values, e.g. {key}: [a, b]")
    return tree


def make_plan(recipe: str, overrides: list[str], axes: list[str], seeds, name: str | None, baseline: list[str],
              budget_usd: float | None, sweep_file: Path | None = None) -> Plan:
    """The plan from the command line, or from a sweep file with the command line's values over it."""
    tree = read_sweep_file(sweep_file) if sweep_file is not None else {}
    recipe = str(tree.get("recipe", recipe))
    fixed = [f"{k}={_override_text(v)}" for k, v in tree.get("overrides", {}).items()] + list(overrides)
    grid = [(str(k), tuple(_override_text(v) for v in values)) for k, values in tree.get("axes", {}).items()]
    grid += [parse_axis(text) for text in axes]
    _check_axes(grid, fixed)
    from tinyzero.config import _run_name, load_config
    from tinyzero.sizing.cost import check_budget

    config = load_config(recipe, fixed)  # the recipe and the fixed overrides, checked before anything runs
    budget = budget_usd if budget_usd is not None else tree.get("budget_usd", 0.0)
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise TinyZeroError(f"budget_usd {budget!r} is not a number: give a dollar amount, or 0 for no budget")
    plan = Plan(str(name or tree.get("name") or f"{config.run.name}-sweep"), recipe, tuple(fixed), tuple(grid),
                _seeds(seeds if seeds is not None else tree.get("seeds"), config.run.seed),
                _baseline(baseline or [f"{k}={_override_text(v)}" for k, v in tree.get("baseline", {}).items()], grid),
                float(budget))
    fix = _run_name(plan.name)
    if fix:
        raise TinyZeroError(f"sweep name {plan.name!r} cannot name a folder: {fix}")
    if plan.budget_usd < 0 or not math.isfinite(plan.budget_usd):
        raise TinyZeroError(f"--budget-usd {plan.budget_usd:g}: give a dollar amount, or 0 for no budget")
    for point in plan.points():  # every run's config, checked before the first one trains
        try:
            checked = load_config(recipe, [*fixed, *point.arm, f"run.seed={point.seed}",
                                           f"run.budget_usd={plan.budget_usd}"])
            check_budget(checked)
            checked.algo.needs  # noqa: B018 - a loss its estimator cannot train with is refused here, not mid-sweep
        except TinyZeroError as err:
            raise TinyZeroError(f"{', '.join(point.arm) or 'the recipe'}, seed {point.seed}: {err}") from None
    return plan


def _baseline(texts: list[str], axes) -> tuple[str, ...] | None:
    """The baseline arm's overrides, one value per axis, in the axes' order (None: not chosen)."""
    if not texts:
        return None
    given = {key.strip(): value.strip() for key, _, value in (t.partition("=") for t in texts)}
    keys = [key for key, _ in axes]
    if set(given) != set(keys):
        raise TinyZeroError(f"--baseline {', '.join(texts)} must give one value for each axis ({', '.join(keys)})")
    for key, values in axes:
        if given[key] not in values:
            raise TinyZeroError(f"--baseline {key}={given[key]} is not a value of that axis ({', '.join(values)})")
    return tuple(f"{key}={given[key]}" for key in keys)


# ---------------------------------------------------------------------------------------------- the folder
def claim_sweep_dir(folder: Path, plan: Plan) -> None:
    """Make ``folder`` the sweep's, or check that it already holds this very sweep; the plan is rewritten with the
    rerun's budget and baseline."""
    record = folder / PLAN_FILE
    if record.is_file():
        try:
            held = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TinyZeroError(f"{record} is damaged ({type(err).__name__}): restore it, or move {folder} aside to "
                                "start the sweep again") from None
        if not isinstance(held, dict) or held.get("grid") != plan.grid():
            raise TinyZeroError(f"{folder} holds another sweep (its plan in {PLAN_FILE} differs in recipe, overrides, "
                                "axes or seeds): rerun it with the same ones, or name this one with --name NEW")
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise TinyZeroError(f"{folder} exists and is not a sweep's folder, so nothing in it is touched: name the sweep "
                            "with --name NEW")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"grid": plan.grid(), "plan": asdict(plan),
                               "runs": [asdict(p) for p in plan.points()]}, indent=1), encoding="utf-8")
    os.replace(tmp, record)


def run_state(run_dir: Path, steps: int) -> tuple[str, int]:
    """(``new`` | ``finished`` | ``resume`` | ``interrupted``, the step of its newest checkpoint)."""
    from tinyzero.checkpoint import latest_checkpoint, read_state

    if not run_dir.exists():
        return "new", 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return ("interrupted" if (run_dir / "metrics.jsonl").exists() else "new"), 0
    step = read_state(ckpt)["step"]
    return ("finished" if step >= steps else "resume"), step


def spent_usd(run_dir: Path) -> float:
    """What a run's newest checkpoint records it spent (0 without one, or without a price)."""
    from tinyzero.checkpoint import latest_checkpoint, read_state
    from tinyzero.config import load_config
    from tinyzero.sizing.cost import billed_units, usd_per_gpu_hour

    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    if ckpt is None:
        return 0.0
    config = load_config(run_dir / "config.yaml")
    return read_state(ckpt).get("wall_s", 0.0) / 3600 * billed_units(config) * usd_per_gpu_hour(config)


def _aside(run_dir: Path) -> Path:
    """A run killed before its first checkpoint: its folder renamed beside it (kept, not deleted)."""
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.interrupted" + (f"-{n}" if n > 1 else ""))
        if not target.exists():
            run_dir.rename(target)
            return target
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- running
def _command(plan: Plan, point: Point, folder: Path, state: str, budget_left: float | None) -> list[str]:
    budget = [f"run.budget_usd={budget_left:.6f}"] if budget_left is not None else []
    cli = [sys.executable, "-m", "tinyzero.cli"]
    if state == "resume":
        return [*cli, "resume", str(folder / point.name), *budget]
    return [*cli, "train", plan.recipe, *plan.overrides, *point.arm, f"run.seed={point.seed}",
            f"run.out_dir={folder}", f"run.name={point.name}", *budget]


def run_sweep(plan: Plan, say=print) -> dict:
    """Run (or continue) the sweep; returns {"folder", "done", "total", "stopped"}: why it stopped before the end
    (the budget), "" when every run finished."""
    from tinyzero.config import load_config

    config = load_config(plan.recipe, plan.overrides)
    folder = Path(config.run.out_dir) / plan.name
    claim_sweep_dir(folder, plan)
    points = plan.points()
    steps = {p.name: _steps(plan, p) for p in points}  # an axis may be run.steps
    states = [run_state(folder / p.name, steps[p.name]) for p in points]
    counts = {s: sum(1 for st, _ in states if st == s) for s in ("finished", "resume", "interrupted", "new")}
    arms = len(points) // len(plan.seeds)
    say(f"sweep {plan.name}: {arms} arm{'s' * (arms != 1)} x {len(plan.seeds)} seed{'s' * (len(plan.seeds) != 1)} = "
        f"{len(points)} runs in {folder} ({counts['finished']} finished, {counts['resume']} to resume, "
        f"{counts['interrupted'] + counts['new']} to start)")
    for index, point in enumerate(points, start=1):
        run_dir = folder / point.name
        state, step = run_state(run_dir, steps[point.name])
        if state == "finished":
            continue
        if state == "interrupted":
            say(f"{run_dir} stopped before its first checkpoint: moved aside to {_aside(run_dir)}, starting it again")
        left = None
        if plan.budget_usd:
            left = plan.budget_usd - sum(spent_usd(folder / p.name) for p in points)
            if left <= 0:
                return _stopped(plan, folder, points, f"the sweep's budget of ${plan.budget_usd:g} is spent")
            left += spent_usd(run_dir)  # a resumed run's budget counts what it has already spent
        what = ", ".join(point.arm) or "the recipe"
        say(f"[{index}/{len(points)}] {what}, seed {point.seed}: "
            f"{'resuming at step ' + str(step) if state == 'resume' else 'training'} in {run_dir}")
        code = _run(_command(plan, point, folder, state, left), run_env(folder, dict(os.environ)))
        if code == 130 or code < 0:  # Ctrl-C reaches the run too; or it was killed
            say(f"sweep stopped during {run_dir}: run the same command again to continue (finished runs are "
                "skipped, this one resumed from its last checkpoint)")
            raise KeyboardInterrupt
        if code != 0:
            raise TinyZeroError(f"run {run_dir} failed (exit code {code}; its message is above): fix the "
                                "cause and run the same sweep command again — finished runs are skipped, this one "
                                "resumed from its last checkpoint")
        if run_state(run_dir, steps[point.name])[0] != "finished":  # the run stopped at its share of the budget
            return _stopped(plan, folder, points, f"run {point.name} stopped at the sweep's budget of "
                                                  f"${plan.budget_usd:g}")
    return {"folder": folder, "done": len(points), "total": len(points), "stopped": ""}


def _steps(plan: Plan, point: Point) -> int:
    from tinyzero.config import load_config

    return load_config(plan.recipe, [*plan.overrides, *point.arm]).run.steps


def run_env(folder: Path, environ: dict[str, str]) -> dict[str, str]:
    """The runs' environment: one inductor compile cache for the whole sweep (``folder/cache/inductor``), so that only
    its first vLLM start compiles the kernels every later one would compile again (about 10 s of g++ a start on a
    2-core CPU, docs/engine.md); a cache the user names is kept."""
    from tinyzero.engine.rollout import COMPILE_CACHE_ENV

    return {**environ, COMPILE_CACHE_ENV: environ.get(COMPILE_CACHE_ENV) or str(folder / "cache" / "inductor")}


def _run(command: list[str], env: dict[str, str]) -> int:
    """The run's exit code. Ctrl-C in a terminal reaches the run as well as the sweep: the sweep then waits for the
    run to stop in its own way (subprocess.run would kill it a quarter of a second later)."""
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait() or 130


def _stopped(plan: Plan, folder: Path, points: list[Point], why: str) -> dict:
    done = sum(run_state(folder / p.name, _steps(plan, p))[0] == "finished" for p in points)
    return {"folder": folder, "done": done, "total": len(points), "stopped": why}


# ---------------------------------------------------------------------------------------------- the verdicts
def compare(plan: Plan, folder: Path):
    """The comparison page over every run with a step done, and the table the terminal prints."""
    from tinyzero.analysis.compare import arm_verdicts, arms_of, default_baseline, load_runs, write_comparison

    dirs = [folder / p.name for p in plan.points() if (folder / p.name / "rollouts.jsonl.gz").is_file()]
    if not dirs:
        raise TinyZeroError(f"no run of the sweep in {folder} has finished a step yet: nothing to compare")
    runs = load_runs(dirs)
    arms = arms_of(runs)
    index = default_baseline(arms)
    chosen = {(folder / p.name).resolve() for p in plan.points() if p.arm == plan.baseline}
    index = next((i for i, arm in enumerate(arms) if any(r.path in chosen for r in arm.runs)), index)
    out = write_comparison(dirs, folder / "compare.html", baseline=arms[index].runs[0].path,
                           title=f"sweep {plan.name}", runs=runs)
    return out, table(arms, index, arm_verdicts)


def table(arms, baseline: int, verdicts) -> str:
    """One line per arm: its seeds, held-out accuracy at its last evaluation, and its verdicts against the baseline."""
    from tinyzero.analysis.arms import spread
    from tinyzero.analysis.compare import accuracy_shares

    rows = [("arm", "seeds", "held-out accuracy, last evaluation", "held-out vs baseline",
             "training accuracy vs baseline")]
    base = arms[baseline]
    for i, arm in enumerate(arms):
        finals = [acc[max(acc)].value for acc in map(accuracy_shares, arm.runs) if acc]
        found = spread(finals) if finals else None
        held = "—" if found is None else found.short()
        if i == baseline:
            cells = ["baseline", "baseline"]
        else:
            cells = [f"{v.word} ({100 * v.gap:+.1f} pts)" if v.gap is not None else v.word for v in verdicts(arm, base)]
        rows.append((arm.label, str(len(arm.runs)), held, *cells))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
