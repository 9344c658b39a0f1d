"""``tinyzero sweep``: the grid and its refusals, the sweep's folder, and real sweeps of a tiny random model — run to
the end, killed and continued, stopped at a budget and continued with a larger one.

The real sweeps train ``toy_tasks:Letters`` (tests/toy_tasks.py), which a tiny model learns in a step or two at
lr 1e-2 and does not at 1e-3, so the comparison has a difference to find. Each run is a ``tinyzero train`` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinyzero.commands.sweep import (
    PLAN_FILE,
    _arm_names,
    _steps,
    claim_sweep_dir,
    make_plan,
    parse_axis,
    run_env,
    run_state,
    seeds_arg,
)
from tinyzero.config import load_config
from tinyzero.engine.rollout import COMPILE_CACHE_ENV
from tinyzero.errors import TinyZeroError

DEMO = "recipes/demo-cpu.yaml"
TESTS = Path(__file__).parent


def plan(*axes: str, overrides=(), seeds=None, name=None, baseline=(), budget=None, sweep_file=None):
    return make_plan(DEMO, list(overrides), list(axes), seeds, name, list(baseline), budget, sweep_file)


def test_the_grid_is_every_combination_of_the_axes_and_the_seeds():
    p = plan("algo.policy_loss=clip,gspo", "optim.lr=1e-5,3e-5", seeds=2)
    points = p.points()
    assert len(points) == 8
    assert points[0].name == "policy_loss-clip_lr-1e-5.seed0" and points[0].arm == ("algo.policy_loss=clip",
                                                                                   "optim.lr=1e-5")
    assert [pt.seed for pt in points[:2]] == [0, 1]
    assert points[-1].name == "policy_loss-gspo_lr-3e-5.seed1"
    assert p.name == "demo-sweep"  # the recipe's run.name
    seeds_only = plan(seeds=[3, 7]).points()
    assert [(pt.name, pt.arm, pt.seed) for pt in seeds_only] == [("seed3", (), 3), ("seed7", (), 7)]
    assert [pt.seed for pt in plan(overrides=["run.seed=5"], seeds=3).points()] == [5, 6, 7]  # from the recipe's
    by_length = plan("run.steps=2,4")  # each run is finished at its own number of steps
    assert [_steps(by_length, pt) for pt in by_length.points()] == [2, 4]


def test_folder_names_are_plain_or_numbered():
    # Two axes ending in the same word keep their full keys; what a folder name should not hold becomes "_".
    assert plan("algo.kl_coef=0,0.01", "algo.entropy_coef=0,0.001").points()[1].name == \
        "kl_coef-0_entropy_coef-0.001.seed0"
    assert plan("eval.every=2,4", "checkpoint.every=4").points()[1].name == "eval.every-4_checkpoint.every-4.seed0"
    assert plan("env.options={digits: 1},{digits: 1, ops: '+'}").points()[1].name == "options-digits_1_ops_+.seed0"
    # Names that would collide, or run long, are numbered instead.
    assert _arm_names((("k", ("a/b", "a:b")),), [("k=a/b",), ("k=a:b",)]) == ["arm1", "arm2"]
    assert _arm_names((("k", ("x" * 200, "y")),), [("k=" + "x" * 200,), ("k=y",)]) == ["arm1", "arm2"]


@pytest.mark.parametrize(("axes", "overrides", "fix"), [
    (["run.seed=0,1"], [], "give seeds with --seeds"),
    (["run.name=a,b"], [], "names each run"),
    (["algo.policy_loss=clip,clip"], [], "lists a value twice"),
    (["algo.policy_loss=clip", "algo.policy_loss=gspo"], [], "given twice"),
    (["optim.lr=1e-5,1e-4"], ["optim.lr=1e-3"], "both an axis and an override"),
    ([], ["run.name=mine"], "name the sweep with --name"),
    (["optim.nonsense=1,2"], [], "optim.nonsense"),  # the config's own sentence, with the arm named
    (["algo.policy_loss=clip,gspo"], ["algo.name=ppo"], "algo.policy_loss=gspo, seed 0:"),
])
def test_refusals_name_the_cause_before_anything_runs(axes, overrides, fix):
    with pytest.raises(TinyZeroError) as err:
        plan(*axes, overrides=overrides)
    assert fix in str(err.value)


def test_other_refusals():
    with pytest.raises(TinyZeroError, match="not KEY=A,B"):
        parse_axis("algo.policy_loss")
    with pytest.raises(TinyZeroError, match="not KEY=A,B"):
        parse_axis("algo.policy_loss=clip,")
    # Commas inside brackets or quotes belong to the value.
    assert parse_axis("env.options={digits: 1, ops: '+,-'},[1, 2], x")[1] == ("{digits: 1, ops: '+,-'}", "[1, 2]", "x")
    with pytest.raises(TinyZeroError, match="at least one seed"):
        plan(seeds=0)
    with pytest.raises(TinyZeroError, match="lists a seed twice"):
        plan(seeds=[1, 1])
    with pytest.raises(TinyZeroError, match="give a count"):
        seeds_arg("two")
    assert seeds_arg("3") == 3 and seeds_arg("0,5") == [0, 5]
    with pytest.raises(TinyZeroError, match="one value for each axis"):
        plan("algo.policy_loss=clip,gspo", baseline=["optim.lr=1e-5"])
    with pytest.raises(TinyZeroError, match="not a value of that axis"):
        plan("algo.policy_loss=clip,gspo", baseline=["algo.policy_loss=cispo"])
    with pytest.raises(TinyZeroError, match="needs a price"):
        plan(budget=5.0)
    with pytest.raises(TinyZeroError, match="cannot name a folder"):
        plan(name="a/b")


def test_sweep_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": DEMO, "name": "lr", "overrides": {"run.steps": 4},
                                    "axes": {"optim.lr": [1e-5, 3e-5]}, "seeds": 2,
                                    "baseline": {"optim.lr": 1e-5}}))
    p = plan(sweep_file=path)
    assert p.name == "lr" and p.seeds == (0, 1) and p.overrides == ("run.steps=4",)
    # YAML floats are written back with their dot, so the override reads a float again (1e-05 would read as text).
    assert p.axes == (("optim.lr", ("1.0e-05", "3.0e-05")),) and p.baseline == ("optim.lr=1.0e-05",)
    assert load_config(DEMO, [*p.overrides, *p.points()[2].arm]).optim.lr == 3e-5
    assert plan(sweep_file=path, seeds=1).seeds == (0,)  # the command line over the file
    for tree, fix in (({"name": "x"}, "has no recipe"), ({"recipe": DEMO, "axis": {}}, "unknown key 'axis'"),
                      ({"recipe": DEMO, "axes": {"optim.lr": 1e-5}}, "must list its values"),
                      ({"recipe": DEMO, "overrides": ["run.steps=2"]}, "must be a mapping"),
                      ({"recipe": DEMO, "budget_usd": "ten"}, "is not a number")):
        path.write_text(yaml.safe_dump(tree))
        with pytest.raises(TinyZeroError, match=fix):
            plan(sweep_file=path)
    path.write_text("recipe: [unclosed")
    with pytest.raises(TinyZeroError, match="cannot be read"):
        plan(sweep_file=path)


def test_the_shipped_sweep_file_plans():
    p = plan(sweep_file=Path("recipes/sweeps/demo-losses.yaml"))
    assert [pt.name for pt in p.points()] == [f"policy_loss-{loss}.seed{s}" for loss in ("clip", "gspo", "cispo")
                                              for s in (0, 1)]
    assert p.baseline == ("algo.policy_loss=clip",)


def test_the_sweep_folder_is_claimed_once_and_only_for_the_same_grid(tmp_path):
    p = plan("optim.lr=1e-5,3e-5")
    folder = tmp_path / "sweep"
    claim_sweep_dir(folder, p)
    record = json.loads((folder / PLAN_FILE).read_text())
    assert [r["name"] for r in record["runs"]] == ["lr-1e-5.seed0", "lr-3e-5.seed0"]
    claim_sweep_dir(folder, plan("optim.lr=1e-5,3e-5", baseline=["optim.lr=3e-5"]))  # a rerun may change the baseline
    with pytest.raises(TinyZeroError, match="holds another sweep"):
        claim_sweep_dir(folder, plan("optim.lr=1e-5,1e-4"))
    (folder / PLAN_FILE).write_text('{"grid": ')  # cut short
    with pytest.raises(TinyZeroError, match="sweep.json is damaged"):
        claim_sweep_dir(folder, p)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(TinyZeroError, match="not a sweep's folder"):
        claim_sweep_dir(theirs, p)
    assert sorted(x.name for x in theirs.iterdir()) == ["notes.txt"]


def test_the_command_line_plans_and_refuses_in_one_sentence(tmp_path):
    listed = sweep(DEMO, "--axis", "algo.policy_loss=clip,gspo", "--seeds", "0,4", "run.steps=4", "--plan")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["policy_loss-clip.seed0: algo.policy_loss=clip run.seed=0",
                                          "policy_loss-clip.seed4: algo.policy_loss=clip run.seed=4",
                                          "policy_loss-gspo.seed0: algo.policy_loss=gspo run.seed=0",
                                          "policy_loss-gspo.seed4: algo.policy_loss=gspo run.seed=4"]
    for args, fix in (((str(tmp_path / "nowhere.yaml"),), "does not exist"),
                      ((DEMO, "--axis", "run.seed=1,2"), "give seeds with --seeds"),
                      ((DEMO, "--bogus"), "unrecognized arguments: --bogus")):
        result = sweep(*args, "--plan")
        assert result.returncode == 2 and fix in result.stderr and "Traceback" not in result.stderr


def test_the_runs_share_one_compile_cache_unless_the_user_names_one(tmp_path):
    assert run_env(tmp_path, {"PATH": "/bin"}) == {"PATH": "/bin",
                                                   COMPILE_CACHE_ENV: str(tmp_path / "cache" / "inductor")}
    assert run_env(tmp_path, {COMPILE_CACHE_ENV: "/mine"})[COMPILE_CACHE_ENV] == "/mine"


def test_run_state(tmp_path):
    run = tmp_path / "r"
    assert run_state(run, 4) == ("new", 0)
    run.mkdir()
    assert run_state(run, 4) == ("new", 0)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert run_state(run, 4) == ("interrupted", 0)
    for step, state in ((2, "resume"), (4, "finished")):
        ckpt = run / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
        (ckpt / "COMPLETE").write_text(str(step))
        assert run_state(run, 4) == (state, step)


# ------------------------------------------------------------------------------------------- real sweeps
def tiny_recipe(tmp_path: Path, model: Path, **run) -> Path:
    recipe = {"run": {"name": "toy", "steps": 2, "out_dir": str(tmp_path / "runs"), **run},
              "model": {"name": str(model)}, "env": {"name": "toy_tasks:Letters", "options": {}},
              "rollout": {"backend": "hf", "prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 4},
              "eval": {"size": 8, "max_new_tokens": 4, "every": 1}, "checkpoint": {"every": 1},
              "log": {"tensorboard": False}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinyzero.cli", "sweep", *args]


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **extra}


def sweep(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(*args), capture_output=True, text=True, timeout=600, env=env(**extra))


def steps_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # trains tiny runs, each a process of its own
def test_a_sweep_runs_its_grid_and_compares_the_arms(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    result = sweep(str(recipe), "--axis", "optim.lr=1e-3,1e-2", "--seeds", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "toy-sweep"
    names = ["lr-1e-3.seed0", "lr-1e-3.seed1", "lr-1e-2.seed0", "lr-1e-2.seed1"]
    for name in names:
        assert run_state(folder / name, 2) == ("finished", 2), name
        assert steps_of(folder / name) == [1, 2]
        config = yaml.safe_load((folder / name / "config.yaml").read_text())
        assert config["run"]["seed"] == int(name[-1]) and config["optim"]["lr"] == (1e-3 if "1e-3" in name else 1e-2)
    assert "2 arms x 2 seeds = 4 runs" in result.stdout and "[4/4] optim.lr=1e-2, seed 1: training" in result.stdout
    table = result.stdout[result.stdout.index("arm "):]
    lines = table.splitlines()
    assert lines[1].startswith("optim.lr=0.001") and "baseline" in lines[1]  # the first arm, none chosen
    assert lines[2].startswith("optim.lr=0.01") and lines[2].split()[1] == "2"
    html = (folder / "compare.html").read_text()
    assert "Each arm against the baseline, optim.lr=0.001 (2 seeds)" in html
    assert "Held-out greedy accuracy, mean over seeds" in html
    assert f"comparison: {folder / 'compare.html'}" in result.stdout

    # Again: every run is finished, none trains again; the baseline may be changed on the way.
    before = {name: (folder / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
    again = sweep(str(recipe), "--axis", "optim.lr=1e-3,1e-2", "--seeds", "2", "--baseline", "optim.lr=1e-2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(4 finished, 0 to resume, 0 to start)" in again.stdout and "training in" not in again.stdout
    assert before == {name: (folder / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
    row = again.stdout[again.stdout.index("arm "):].splitlines()[2]
    assert row.startswith("optim.lr=0.01") and row.endswith("baseline")
    assert "Each arm against the baseline, optim.lr=0.01 (2 seeds)" in (folder / "compare.html").read_text()


@pytest.mark.slow  # trains tiny runs, each a process of its own
def test_a_killed_sweep_continues_where_it_stopped(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, steps=3)
    folder = tmp_path / "runs" / "toy-sweep"
    args = (str(recipe), "--seeds", "2", "optim.lr=1e-2")
    proc = subprocess.Popen(sweep_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            start_new_session=True)
    second = folder / "seed1" / "checkpoints" / "step_000001" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its run, mid-run, as a power cut would
    proc.wait()
    assert second.exists(), "the second run never reached its first checkpoint"
    state, step = run_state(folder / "seed1", 3)
    assert state == "resume" and 1 <= step < 3
    first = (folder / "seed0" / "metrics.jsonl").read_bytes()

    result = sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(1 finished, 1 to resume, 0 to start)" in result.stdout
    assert f"[2/2] the recipe, seed 1: resuming at step {step}" in result.stdout
    assert "[1/2]" not in result.stdout and (folder / "seed0" / "metrics.jsonl").read_bytes() == first
    assert steps_of(folder / "seed1") == [1, 2, 3]  # each step logged once: the resumed log reads as one run
    assert "One arm: nothing to hold against a baseline" in (folder / "compare.html").read_text()


@pytest.mark.slow  # trains a tiny run in a process of its own
def test_ctrl_c_stops_the_run_and_the_sweep_and_says_how_to_continue(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, steps=50)
    folder = tmp_path / "runs" / "toy-sweep"
    # A suite started in the background (`make test &`, a CI runner's job) inherits SIGINT ignored, and so would the
    # sweep (Python then installs no KeyboardInterrupt; seen: the run went on to its 50th step): the sweep starts with
    # the default handler, as from a terminal.
    proc = subprocess.Popen(sweep_cmd(str(recipe)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = folder / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().count("\n") >= 2) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the sweep and its run alike
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out[-3000:], err[-3000:])
    assert f"sweep stopped during {folder / 'seed0'}: run the same command again to continue" in out
    assert "tinyzero: interrupted" in err


@pytest.mark.slow  # trains tiny runs, each a process of its own
def test_a_run_killed_before_its_first_checkpoint_is_moved_aside_and_started_again(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, steps=1)
    folder = tmp_path / "runs" / "toy-sweep"
    claim_sweep_dir(folder, make_plan(str(recipe), [], [], None, None, [], None))
    broken = folder / "seed0"
    broken.mkdir()
    (broken / ".tinyzero-run").write_text("a tinyzero run folder")
    (broken / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    result = sweep(str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{broken} stopped before its first checkpoint: moved aside to {folder / 'seed0.interrupted'}" \
        in result.stdout
    assert (folder / "seed0.interrupted" / "metrics.jsonl").read_text() == '{"step": 1, "reward/mean": 0.5}\n'
    assert run_state(broken, 1) == ("finished", 1)


@pytest.mark.slow  # trains tiny runs, each a process of its own
def test_a_budget_covers_the_whole_sweep(tmp_path, tiny_model_dir):
    # $3.6 million an hour is $1,000 a second: a budget of $1,000 lets the first run do one step and stop there.
    recipe = tiny_recipe(tmp_path, tiny_model_dir, steps=2)
    folder = tmp_path / "runs" / "toy-sweep"
    price = {"TINYZERO_USD_PER_GPU_HOUR": "3600000"}
    result = sweep(str(recipe), "--seeds", "2", "--budget-usd", "1000", **price)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_state(folder / "seed0", 2) == ("resume", 1) and not (folder / "seed1").exists()
    assert "stopped: run seed0 stopped at the sweep's budget of $1000; 0 of 2 runs finished" in result.stdout
    assert "comparison:" in result.stdout  # what there is, compared
    spent = sweep(str(recipe), "--seeds", "2", "--budget-usd", "1000", **price)
    assert "stopped: the sweep's budget of $1000 is spent" in spent.stdout and "resuming" not in spent.stdout
    more = sweep(str(recipe), "--seeds", "2", "--budget-usd", "1e12", **price)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "[1/2] the recipe, seed 0: resuming at step 1" in more.stdout
    assert run_state(folder / "seed0", 2) == ("finished", 2) and run_state(folder / "seed1", 2) == ("finished", 2)


@pytest.mark.slow  # trains tiny runs, each a process of its own
def test_a_failing_run_stops_the_sweep_with_a_sentence(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    result = sweep(str(recipe), "--axis", "env.name=toy_tasks:Letters,toy_tasks:NanScore", "optim.lr=1e-2")
    assert result.returncode == 2
    assert "failed (exit code" in result.stderr and "run the same sweep command again" in result.stderr
    assert "comparison:" not in result.stdout
