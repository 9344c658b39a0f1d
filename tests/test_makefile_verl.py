"""`make verl-setup` (verl's own venv for the interop check) fails loudly and is part of `make test`.

As in tests/test_makefile.py, a fake venv python under tmp_path stands in for pip: no test installs anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAMP = ".tinyzero-verl-installed"
PARENT_MAKE_VARS = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PARENT_MAKE_VARS}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                          text=True, timeout=60, env=env)


def fake_python(tmp_path: Path, fail_on: str = "") -> tuple[Path, Path]:
    """Logs each call; fails like pip when its arguments contain ``fail_on``."""
    log = tmp_path / "calls.log"
    fail = f'case "$*" in *{fail_on}*) echo "ERROR: No matching distribution found" >&2; exit 1;; esac\n'
    path = tmp_path / "fakepy"
    path.write_text(f'#!/bin/bash\necho "$*" >> "{log}"\n' + (fail if fail_on else "") + "exit 0\n")
    path.chmod(0o755)
    return path, log


def test_failing_verl_install_stops_make_and_writes_no_stamp(tmp_path):
    venv = tmp_path / "venv-verl"
    venv.mkdir()
    py, log = fake_python(tmp_path, fail_on="verl==")
    result = make("verl-setup", f"VERL_VENV={venv}", f"VERL_PY={py}")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR: No matching distribution found" in out
    assert "ready" not in out
    assert not (venv / STAMP).exists()
    assert "--no-deps" not in log.read_text()  # the steps after the failure did not run


def test_verl_venv_takes_cpu_torch_first_then_verl_then_tinyzero_without_deps(tmp_path):
    venv = tmp_path / "venv-verl"
    venv.mkdir()
    py, log = fake_python(tmp_path)
    result = make("verl-setup", f"VERL_VENV={venv}", f"VERL_PY={py}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / STAMP).exists()
    calls = log.read_text().splitlines()
    installs = [c for c in calls if " install " in f" {c} "]
    assert installs[1].endswith("install -q torch==2.13.0")
    assert installs[2].endswith("install -q torch==2.13.0 verl==0.9.1")  # torch pinned: no CUDA build pulled
    assert installs[3].endswith("install -q --no-deps -e .")
    assert not any("vllm" in c for c in calls)


def test_make_test_runs_the_suite_with_verls_python(tmp_path):
    result = make("-n", "test", f"VENV={tmp_path / 'v'}", f"VERL_VENV={tmp_path / 'vv'}")
    assert result.returncode == 0, result.stderr
    assert f"TINYZERO_VERL_PYTHON={tmp_path / 'vv'}/bin/python {tmp_path / 'v'}/bin/pytest -q" in result.stdout
    assert "verl==0.9.1" in result.stdout  # the verl venv is built first
