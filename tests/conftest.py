"""Shared fixtures: tiny random models built once per test session (no hub, about a second each); and the
``gpu`` marker: tests that need CUDA are skipped, with the reason, where ``torch.cuda.is_available()`` is false."""

import pytest
from tiny_models import build_tiny_model

pytest_plugins = ["pytester"]  # tests/test_markers.py runs a small suite through this conftest

GPU_SKIP_REASON = "needs a CUDA GPU: torch.cuda.is_available() is false on this machine"


def pytest_collection_modifyitems(config, items):
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2 with a separate lm_head (untied), float32, byte-level tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_tied_model_dir(tmp_path_factory):
    """A tiny random Llama whose lm_head is tied to its input embeddings, like SmolLM2."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-tied"), arch="llama", tie_word_embeddings=True
    )
