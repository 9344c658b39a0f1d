"""tests/tolerance.py: the derived tolerance admits what reordering a sum does and catches what is more than
rounding."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close, atol_for, close, eps


def test_atol_is_safety_eps_magnitude_terms():
    assert eps(torch.float32) == 2.0**-23 and eps(torch.bfloat16) == 2.0**-7
    assert atol_for(torch.float32, 2.0, terms=10) == 4 * 2.0**-23 * 2.0 * 10
    assert atol_for(torch.float64, 1.0, safety=1.0) == 2.0**-52


def test_a_reordered_float32_sum_stays_within_and_a_perturbation_is_caught():
    n = 4096
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, n)
    forward = torch.zeros((), dtype=torch.float32)
    for chunk in x.split(7):  # another blocking than torch.sum's
        forward = forward + chunk.sum()
    backward = x.flip(0).cumsum(0)[-1]
    exact = x.double().sum().float()  # the exact sum, rounded once
    magnitude = float(x.abs().sum())  # sum|x_i|: the terms' size, not the (cancelling) result's
    assert not torch.equal(forward, backward)  # the orders do round differently
    for a, b in ((forward, backward), (forward, x.sum()), (backward, exact)):
        assert_close(a, b, dtype=torch.float32, magnitude=magnitude, terms=n)
    wrong = backward + 100 * n * eps(torch.float32) * magnitude  # 25x the tolerance
    with pytest.raises(AssertionError):
        assert_close(wrong, exact, dtype=torch.float32, magnitude=magnitude, terms=n)
    assert not close(wrong, exact, dtype=torch.float32, magnitude=magnitude, terms=n)


def test_an_element_near_cancellation_gets_the_tensors_tolerance_not_its_own():
    expected = torch.tensor([0.78, 2.6e-4, -0.5])
    off_by_rounding = expected + torch.tensor([0.0, 2 * eps(torch.float32) * 0.78, 0.0])  # 8e-4 relative
    assert_close(off_by_rounding, expected)  # rtol 1e-4 would have failed it
    with pytest.raises(AssertionError):
        assert_close(expected + torch.tensor([0.0, 100 * eps(torch.float32) * 0.78, 0.0]), expected)


def test_dtype_defaults_to_the_less_precise_side():
    exact = torch.tensor([1.0 / 3.0], dtype=torch.float64)
    rounded = exact.float()
    assert_close(rounded, exact.float())
    assert_close(rounded.double(), exact, dtype=torch.float32)  # float32 rounding, compared in float64
    assert not close(rounded.double(), exact)  # at float64's eps, float32's rounding is far too much
    assert close(torch.tensor([3]), torch.tensor([3])) and not close(torch.tensor([3]), torch.tensor([4]))
