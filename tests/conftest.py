"""Shared fixtures: tiny random models built once per test session (no hub, about a second each)."""

import pytest

from tinyzero.models import build_tiny_model


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
