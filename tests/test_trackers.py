"""``log.wandb``: the run log mirrored to Weights & Biases, in offline mode (no network).

What W&B wrote is read back with its own reader of ``.wandb`` files (``wandb leet inspect --json``, one JSON
record per line), so the checks see what a later ``wandb sync`` would upload: the scalars at their steps, the
sample tables, the config, and one run id across a resume.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyzero.errors import TinyZeroError
from tinyzero.trackers import ID_FILE, WandbMirror


@pytest.fixture(autouse=True)
def _wandb_home(tmp_path, monkeypatch):
    """W&B's own settings and caches in the test's folder, never the home folder; nothing online."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def records(run_dir: Path) -> list[list[dict]]:
    """Every offline W&B session of the run folder (oldest first), each as its list of records."""
    sessions = []
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(file)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        sessions.append([json.loads(line) for line in out.stdout.splitlines() if line.strip()])
    return sessions


def history(session: list[dict]) -> dict[int, dict]:
    """Step -> the values logged at it (W&B writes one history record per step)."""
    rows = {}
    for record in session:
        if record["type"] == "history":
            rows[int(record["history"]["step"]["num"])] = record["history"]["item"]
    return rows


def run_ids(session: list[dict]) -> set[str]:
    return {r["run"]["run_id"] for r in session if r["type"] == "run"}


def test_mirror_writes_scalars_tables_config_and_resumes_the_same_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"run": {"name": "run", "seed": 3}, "reward": {"control": "shuffled"}}
    first = WandbMirror(run_dir, project="p", name="mine", mode="offline", config=config)
    first.scalars(1, {"reward/mean": 0.25, "train/grad_norm": 1.5})
    first.scalars(2, {"reward/mean": 0.5})
    first.table("samples/train", 2, [{"prompt": "1 + 1?", "completion": "2", "score": 1.0, "correct": True,
                                      "reason": "correct"}])
    first.close()
    stored = (run_dir / ID_FILE).read_text().strip()
    again = WandbMirror(run_dir, project="p", name="mine", mode="offline", config=config)
    again.scalars(3, {"reward/mean": 0.75})
    again.close()
    one, two = records(run_dir)
    assert run_ids(one) == run_ids(two) == {stored}  # the resumed session continues the same W&B run
    assert {s: v["reward/mean"] for s, v in history(one).items()} == {1: 0.25, 2: 0.5}
    assert history(one)[1]["train/grad_norm"] == 1.5
    assert {s: v["reward/mean"] for s, v in history(two).items()} == {3: 0.75}
    run = next(r["run"] for r in one if r["type"] == "run")
    assert run["project"] == "p" and run["display_name"] == "mine"
    assert run["config"]["update"]["reward"] == {"control": "shuffled"}
    logged = history(one)[2]  # a table is a file of the run, named in the history record by flattened keys
    assert logged["samples/train._type"] == "table-file" and logged["samples/train.nrows"] == 1
    # Each session has its own offline folder (the glob's order is the file system's): the table is in the first's.
    tables = list(run_dir.glob(f"wandb/offline-run-*/files/{logged['samples/train.path']}"))
    assert len(tables) == 1
    content = json.loads(tables[0].read_text())
    assert content["columns"] == ["prompt", "completion", "score", "correct", "reason"]
    assert content["data"] == [["1 + 1?", "2", 1.0, True, "correct"]]


@pytest.mark.slow
def test_a_training_run_mirrors_its_metrics(tiny_model_dir, tmp_path):
    """A run with log.wandb=true, then resumed: W&B holds every metrics.jsonl value and evaluation, one run id."""
    from tinyzero.trainer import train

    args = [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=w", "run.steps=2",
            "rollout.backend=hf", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=4", "eval.size=2", "eval.max_new_tokens=4", "eval.every=0",
            "checkpoint.every=1", "log.wandb=true", "log.wandb_project=tz-test"]
    train(None, args)
    run_dir = tmp_path / "w"
    train(None, ["run.steps=3"], resume_dir=str(run_dir))
    tensorboard = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert tensorboard  # beside TensorBoard, never instead
    sessions = records(run_dir)
    assert len(sessions) == 2 and run_ids(sessions[0]) == run_ids(sessions[1])
    logged = {**history(sessions[0]), **history(sessions[1])}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for key, value in m.items():
            if key != "step":
                assert logged[m["step"]][key] == pytest.approx(value), key
    assert {0, 2, 3} <= {s for s, v in logged.items() if "eval/accuracy" in v}  # before, at the end, after resume
    assert logged[1]["samples/train._type"] == logged[0]["samples/eval._type"] == "table-file"


def test_missing_extra_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    with pytest.raises(TinyZeroError, match=r"needs the wandb extra.*pip install -e '\.\[wandb\]'"):
        WandbMirror(tmp_path, project="p", name="n", mode="offline", config={})


def test_the_pin_is_the_installed_version():
    import tomllib

    import wandb

    from tinyzero.trackers import WANDB_VERSION

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert extras["optional-dependencies"]["wandb"] == [f"wandb=={WANDB_VERSION}"]
    assert wandb.__version__ == WANDB_VERSION
