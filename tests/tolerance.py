"""Rounding tolerances for the tests, derived from the dtype and the magnitudes involved, not tuned on one CPU.

torch picks its kernels by the CPU's capability (AVX-512, AVX2, default; ``ATEN_CPU_CAPABILITY`` forces a lesser
one), and each blocks and orders its sums its own way. Two computations of the same value that differ only in
rounding (another kernel, another summation order, micro-batches summed apart) then differ by at most

    atol = safety * eps(dtype) * magnitude * terms

- ``eps``: the dtype's machine epsilon (``torch.finfo``), twice the unit roundoff u.
- ``terms``: how many terms are accumulated into one result: the longest reduction on the way (the vocabulary
  for a softmax over it, the tokens for a gradient summed over a batch, the steps of a recurrence). Linear, not
  sqrt(terms): a sum of n terms in any order is within (n - 1) * u * sum|x_i| of the exact one (Higham, Accuracy
  and Stability of Numerical Algorithms, 2nd ed., §4.2), so two orders are within n * eps * sum|x_i|. sqrt(n)
  is only the typical size for independent errors, which a vectorised kernel's blocked partial sums are not; the
  tests' n are small (tens to hundreds), so the bound stays orders of magnitude below the effects they check.
  bf16 autocast rounds the matmuls' inputs and sums in float32: there ``terms`` counts bf16 rounding stages (1
  for a forward against float32's), not summed terms.
- ``magnitude``: stands for sum|x_i|, the size of what is accumulated. By default the largest |value| of the
  expected tensor: one tolerance for every element, no rtol, since an element near cancellation (a small sum of
  large terms) carries the rounding of its terms, not of its own small value (issue 28's AVX2 failure: 2.1e-7
  on an element of 2.6e-4 in a gradient of largest element 0.78). Pass it where the result is ~0 by design.
- ``safety`` (4): covers a magnitude read from the result rather than from the terms, library functions (exp,
  log) that round to within an ulp or two rather than half, and a few chained reductions (a forward pass).
"""

from __future__ import annotations

import torch

SAFETY = 4.0
# The tiny test models (tests/tiny_models.py): the longest reduction of their forward is the logsumexp over the
# 320-entry vocabulary, and their tokens' |log p| is about log 320 = 5.8 (7.3 the most measured; 10 bounds it).
TINY_VOCAB = 320
TINY_LOGPROB = 10.0


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype: the gap between 1 and the next representable number."""
    return torch.finfo(dtype).eps


def atol_for(dtype: torch.dtype, magnitude: float, terms: int = 1, safety: float = SAFETY) -> float:
    """The rounding tolerance of the module docstring: ``safety * eps(dtype) * magnitude * terms``."""
    return safety * eps(dtype) * float(magnitude) * terms


def tiny_logprob_atol(dtype: torch.dtype = torch.float32) -> float:
    """Two computations of a tiny model's log-probs (another engine, batch or kernel): 1.5e-3 in float32."""
    return atol_for(dtype, TINY_LOGPROB, terms=TINY_VOCAB)


def _tolerance(actual, expected, dtype, magnitude, terms, safety) -> tuple[torch.Tensor, torch.Tensor, float]:
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if dtype is None:  # the less precise of the two: the rounding the comparison has to allow for
        dtype = max(actual.dtype, expected.dtype, key=lambda d: eps(d) if d.is_floating_point else 0.0)
    if not dtype.is_floating_point:  # integers compare exactly
        return actual, expected, 0.0
    if magnitude is None:
        magnitude = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return actual, expected, atol_for(dtype, magnitude, terms, safety)


def assert_close(actual, expected, *, dtype=None, magnitude=None, terms: int = 1, safety: float = SAFETY,
                 msg=None, **kwargs) -> None:
    """``torch.testing.assert_close`` with ``atol_for`` as the absolute tolerance and no relative one. ``dtype``
    defaults to the less precise of the two tensors' dtypes, ``magnitude`` to the largest |expected|."""
    actual, expected, atol = _tolerance(actual, expected, dtype, magnitude, terms, safety)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0, msg=msg, **kwargs)


def close(actual, expected, *, dtype=None, magnitude=None, terms: int = 1, safety: float = SAFETY) -> bool:
    """Whether ``assert_close`` would pass: for checks that two computations really differ (``not close``)."""
    actual, expected, atol = _tolerance(actual, expected, dtype, magnitude, terms, safety)
    return bool((actual.double() - expected.double()).abs().max() <= atol) if expected.numel() else True
