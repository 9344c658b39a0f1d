"""A quiet console: the libraries' noise named in tinyzero/console.py is silenced, and nothing else is.

Each check runs in a fresh interpreter, because the noise is printed once per process (at vLLM's import, at an
engine's start) and partly by native code straight to file descriptor 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOISE = ("Triton is installed, but doesn't include CPU backend", "reduce_op", "NUMA binding",
         "Loading safetensors checkpoint shards")


def _console(code: str) -> str:
    """What a fresh interpreter running ``code`` prints, stdout and stderr together (vLLM logs to stdout)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_native_lines_are_dropped_by_their_text_and_others_pass():
    err = _console(
        "import os\n"
        "from tinyzero.console import drop_native_lines\n"
        "with drop_native_lines():\n"
        "    os.write(2, b'[W utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy for memory allocation x\\n')\n"
        "    os.write(2, b'a real warning\\n')\n"
        "    os.write(2, b'no newline at the end')\n"
        "os.write(2, b'\\nafter: NUMA binding: Using MEMBIND policy for memory allocation\\n')\n")
    assert "a real warning\n" in err and "no newline at the end" in err
    assert err.count("NUMA binding") == 1 and "after: NUMA binding" in err  # only inside the block


@pytest.mark.slow
def test_a_vllm_engine_starts_without_the_noise_and_real_warnings_still_show(tiny_model_dir, tmp_path):
    env = ("import os\n"
           "os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING='0', VLLM_CPU_KVCACHE_SPACE='1', "
           f"VLLM_CACHE_ROOT={str(tmp_path / 'vllm')!r})\n")
    loud = _console(env + "from vllm import LLM\n"
                   f"LLM(model={str(tiny_model_dir)!r}, max_model_len=256, enforce_eager=True)\n")
    assert [noise for noise in NOISE if noise not in loud] == []  # what this vllm-cpu prints unfiltered
    quiet = _console(
        env + "import logging, warnings\n"
        "from tinyzero.engine.rollout import RolloutWorker\n"
        f"w = RolloutWorker({str(tiny_model_dir)!r}, backend='vllm', max_model_len=256, kv_cache_gib=1, "
        f"cache_dir={str(tmp_path)!r})\n"
        "assert w.generate([[1, 2, 3]], n=1, max_new_tokens=4, temperature=0.0, top_p=1.0)\n"
        "warnings.warn('a real FutureWarning', FutureWarning)\n"
        "logging.getLogger('vllm.triton_utils.importing').error('another vLLM message')\n"
        "w.close()\n")
    assert [noise for noise in NOISE if noise in quiet] == []
    assert "a real FutureWarning" in quiet and "another vLLM message" in quiet
