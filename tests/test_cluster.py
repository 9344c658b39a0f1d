"""Joining a running Ray cluster by address (`cluster.address`), as on a multi-node box: a local head is started
with `ray start --head`, and a run with two FSDP2 learner processes connects to it by address."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tinyzero.errors import TinyZeroError
from tinyzero.trainer import train

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def ray_head():
    port = _free_port()
    # A short folder: Ray's socket paths must fit in 107 characters, which pytest's tmp_path can exceed.
    temp = tempfile.mkdtemp(prefix="tz-ray-", dir="/tmp")
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, (started.stdout + started.stderr)[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopped = subprocess.run([RAY, "stop", "--force"], capture_output=True, text=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-2000:]


def cli(*args: str) -> subprocess.CompletedProcess:
    # A fresh process, as a user's: Ray reads its authentication mode once, when it is first imported.
    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_joins_a_cluster_by_address(ray_head, tiny_model_dir, tmp_path):
    result = cli(
        "train", "recipes/demo-cpu.yaml", f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=cluster",
        "run.steps=1", "run.mode=ray", f"cluster.address={ray_head}", "placement.learner_workers=2",
        "rollout.backend=hf", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "eval.size=4", "eval.max_new_tokens=8", "env.options={digits: 1, ops: '+', answer_format: last_integer}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = [json.loads(x) for x in (tmp_path / "cluster/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1] and "train/pg_loss" in metrics[0]
    # Saving gathers the sharded policy (a collective): the two learner processes met at the rendezvous.
    assert (tmp_path / "cluster/checkpoints/step_000001/policy/model.safetensors").is_file()


def test_an_unreachable_cluster_is_one_sentence(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # restored after: Ray's later runs here must not inherit it
    port = _free_port()  # nothing listens there
    with pytest.raises(TinyZeroError, match="ray start --head"):
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.mode=ray",
                     f"cluster.address=127.0.0.1:{port}", "rollout.backend=hf", "run.steps=1"])
    assert "RAY_AUTH_MODE" not in os.environ  # refused before touching Ray's settings
