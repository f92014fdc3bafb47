"""Numeric helpers for tests: DESIGN §3's error rule against a float64 oracle, SQNR in dB, and the Triton
interpreter's float-cast fix as a context/fixture.

The Triton 3.6 interpreter converts fp32 to fp8 and bf16 with its own bit manipulation, which rounds
fp32 -> bf16 by truncation and gets 2-4 % of fp32 -> fp8 values wrong; GPUs round to nearest even
(saturating to the largest finite value for fp8). pyscale.ops runs its own Triton launches with the fix
(pyscale.ops._interpreter); `interpreter_casts_fixed()` extends it to kernels a test launches directly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio 10 log10(sum ref^2 / sum (ref - approx)^2), in float64.

    +inf when the two are equal; -inf when the reference is all zeros and the approximation is not.
    """
    ref = reference.detach().to(torch.float64)
    err = ref - approx.detach().to(torch.float64)
    signal = float((ref * ref).sum())
    noise = float((err * err).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# DESIGN §3: a kernel may be at most this many times less accurate than the op-by-op reference run in the
# same low precision (gradients accumulate more rounding steps, hence the looser factor) ...
FORWARD_FACTOR = 2.0
GRADIENT_FACTOR = 3.0
# ... plus a floor of a few ulps of max|oracle|, since the reference's own error can be 0 (e.g. seq_k = 1).
FLOOR_ULPS = 4


def _max_abs_error(approx: torch.Tensor, oracle: torch.Tensor) -> float:
    return (approx.detach().double() - oracle.detach().double()).abs().max().item() if approx.numel() else 0.0


def assert_within_reference_error(name: str, got: torch.Tensor, reference: torch.Tensor, oracle: torch.Tensor,
                                  *, gradient: bool = False, ulps: int = FLOOR_ULPS) -> None:
    """Assert DESIGN §3's rule: max|got - oracle| <= factor x max|reference - oracle| + ulps x eps x max|oracle|.

    got: the kernel's result; reference: the op-by-op reference in the same low precision; oracle: the
    reference in float64. factor is FORWARD_FACTOR, or GRADIENT_FACTOR with `gradient=True`; eps is that of
    got's dtype. NaN in `got` fails; empty tensors pass. `name` labels the failure message.
    """
    assert not torch.isnan(got).any(), f"{name}: NaN in the kernel result"
    factor = GRADIENT_FACTOR if gradient else FORWARD_FACTOR
    floor = ulps * torch.finfo(got.dtype).eps * (oracle.detach().abs().max().item() if oracle.numel() else 0.0)
    err, ref_err = _max_abs_error(got, oracle), _max_abs_error(reference, oracle)
    assert err <= factor * ref_err + floor, (f"{name}: error {err:.3e} > {factor:g} x reference error "
                                             f"{ref_err:.3e} + floor {floor:.3e}")


@contextlib.contextmanager
def interpreter_casts_fixed() -> Iterator[None]:
    """Inside the context, the Triton interpreter converts between floating types as a GPU does, for
    kernels launched directly (pyscale.ops applies it to its own launches already). Nests safely."""
    from pyscale.ops._interpreter import gpu_like_casts

    with gpu_like_casts():
        yield


try:  # a pytest fixture for test modules: `pytestmark = pytest.mark.usefixtures("gpu_like_casts")`
    import pytest as _pytest
except ImportError:  # pytest is a development dependency
    _pytest = None

if _pytest is not None:

    @_pytest.fixture
    def gpu_like_casts() -> Iterator[None]:
        """pytest fixture: the test runs inside `interpreter_casts_fixed()`. Import it into a test module
        (or a conftest) to use it."""
        with interpreter_casts_fixed():
            yield
