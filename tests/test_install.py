"""The environment `make test` builds holds the whole CPU runtime stack the engine needs."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_vllm_llm_imports():
    # In a subprocess: importing vLLM sets process-wide state we do not want in the test runner.
    result = subprocess.run(
        [sys.executable, "-c", "from vllm import LLM; import vllm; print(vllm.__version__)"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("0.")


def test_runtime_stack_imports():
    import datasets  # noqa: F401
    import ray  # noqa: F401
    import tensorboard  # noqa: F401
    import torch
    import transformers

    assert torch.__version__.startswith("2.")
    assert int(transformers.__version__.split(".")[0]) >= 5
