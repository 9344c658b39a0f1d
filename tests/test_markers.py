"""The ``gpu`` marker (declared in pyproject.toml, implemented in tests/conftest.py) skips cleanly without CUDA."""

from __future__ import annotations

from pathlib import Path

import torch


def test_gpu_tests_are_skipped_with_a_reason_where_there_is_no_gpu(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini('[pytest]\naddopts = --strict-markers\nmarkers =\n    gpu: needs a CUDA GPU\n')
    pytester.makepyfile(
        """
        import pytest
        import torch

        @pytest.mark.gpu
        def test_needs_cuda():
            assert torch.cuda.is_available()

        @pytest.mark.gpu
        class TestOnGpu:
            def test_device(self):
                assert torch.zeros(1, device="cuda").is_cuda
        """
    )
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(["SKIPPED*needs a CUDA GPU*torch.cuda.is_available() is false*"])
