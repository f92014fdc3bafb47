"""pyscale.testing.numerics: the DESIGN section 3 error rule that the kernel tests share."""

from __future__ import annotations

import pytest
import torch

from pyscale.testing.numerics import FLOOR_ULPS, assert_within_reference_error

ORACLE = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)


def _off_by(err: float, dtype=torch.float16) -> torch.Tensor:
    return (ORACLE + torch.tensor([0.0, err, 0.0], dtype=torch.float64)).to(dtype)


def test_forward_allows_twice_the_reference_error_and_no_more():
    reference = _off_by(2.0**-6)  # exact in fp16, so the bound is known: 2 x 2^-6 + floor
    floor = FLOOR_ULPS * 2.0**-10 * 4.0
    assert_within_reference_error("out", _off_by(2 * 2.0**-6 + floor * 0.9), reference, ORACLE)
    with pytest.raises(AssertionError, match=r"out: error .* > 2 x reference error"):
        assert_within_reference_error("out", _off_by(2 * 2.0**-6 + 2 * floor), reference, ORACLE)


def test_gradients_allow_three_times():
    reference = _off_by(2.0**-6)
    assert_within_reference_error("dq", _off_by(3.5 * 2.0**-6), reference, ORACLE, gradient=True)
    with pytest.raises(AssertionError, match="dq"):
        assert_within_reference_error("dq", _off_by(3.5 * 2.0**-6), reference, ORACLE)


def test_floor_when_the_reference_is_exact_and_nan_or_empty():
    exact = ORACLE.to(torch.float32)
    ulp_off = _off_by(2.0**-22, torch.float32)  # two fp32 ulps of 2: inside the 4-ulp floor of max|oracle| = 4
    assert_within_reference_error("out", ulp_off, exact, ORACLE)
    with pytest.raises(AssertionError):
        assert_within_reference_error("out", _off_by(2.0**-16, torch.float32), exact, ORACLE)
    with pytest.raises(AssertionError, match="NaN"):
        assert_within_reference_error("out", torch.tensor([float("nan"), 0.0, 0.0]), exact, ORACLE)
    empty = torch.empty(0, 3)
    assert_within_reference_error("out", empty, empty, empty.double())
