"""The package layout: folders grouped by job, imports pointing down, and a config that needs no torch.

Layers, bottom to top: the kernel (config, fields, errors, the RL math and its names, data, checkpoints, the
run log, scoring, console); engine (what runs on devices) and analysis (what reads completions and runs); step (the
options that change what a step generates and trains, on the engine's messages); sizing (what a run needs and
costs) and interop (other engines), built on the engine's plans and the step's schedule; the commands (trainer,
commands/: smoke, eval); the CLI. A module imports its own layer or lower ones, and never a sibling folder of its
layer: analysis never imports the engine (it reads, it loads nothing).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinyzero"
KERNEL = {"algo_names", "algos", "checkpoint", "config", "console", "data", "errors", "fields", "jsonl", "runlog",
          "scoring", "trackers"}
JOBS = {"engine", "analysis"}
COMMANDS = {"trainer", "commands", "verl_reward"}  # verl_reward: the old name, kept for old exports
MAX_TOP_LEVEL = 16  # modules directly in tinyzero/: more, and the next one goes in a folder by its job


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a ``tinyzero.`` module name; envs and rewards are plain-Python task code below all."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head in ("envs", "rewards"):
        return 0, head
    if head in KERNEL:
        return 1, "kernel"
    if head in JOBS:
        return 2, head
    if head == "step":
        return 3, head  # what changes a step, on the engine's messages
    if head in ("sizing", "interop"):
        return 4, head  # they size or export what the engine plans and loads (placement, models, dtypes)
    if head in COMMANDS:
        return 5, head
    if head == "cli":
        return 6, head
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layout.py")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyzero":
            if node.module == "tinyzero":
                found.update(f"tinyzero.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tinyzero")
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":
            yield "tinyzero." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path


def test_every_import_points_down_or_sideways_within_its_folder():
    upward = []
    for module, path in modules():
        rank, group = layer(module)
        for target in imports(path):
            if target in ("tinyzero.engine", "tinyzero.analysis", "tinyzero.step", "tinyzero.sizing", "tinyzero.interop",
                          "tinyzero.commands"):
                target = target + ".x"  # `from tinyzero.engine import sharding`
            to_rank, to_group = layer(target)
            if to_rank > rank or (to_rank == rank and rank in (2, 4) and to_group != group):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from tinyzero.trainer import Trainer\nfrom tinyzero.engine.roles import Roles\n")
    ranks = {layer(target) for target in imports(bad)}
    assert ranks == {(5, "trainer"), (2, "engine")}
    assert layer("tinyzero.config")[0] < 4 and layer("tinyzero.analysis.aha")[1] != "engine"
    assert layer("tinyzero.engine.rollout")[0] < layer("tinyzero.step.overlap")[0] < layer("tinyzero.sizing.cost")[0]


def test_the_tree_is_grouped_by_job():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == KERNEL | (COMMANDS - {"commands"}) | {"cli"}, "a new top-level module: put it in its folder"
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)
    for folder in ("engine", "analysis", "step", "sizing", "interop", "commands"):
        assert (PACKAGE / folder / "__init__.py").read_text().startswith('"""'), folder


def test_reading_a_recipe_and_help_config_import_no_torch():
    code = ("import sys; from tinyzero.config import describe, load_config; "
            "load_config('recipes/demo-cpu.yaml', ['algo.kl_estimator=k2']); describe(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_names_researchers_import_keep_working():
    from tinyzero.algos import register_advantage, register_policy_loss  # noqa: F401
    from tinyzero.envs.base import Environment  # noqa: F401
    from tinyzero.interop.verl_reward import score
    from tinyzero.rewards.countdown import countdown_reward  # noqa: F401
    from tinyzero.verl_reward import score as old_name  # what exports written before the move import

    assert old_name is score
