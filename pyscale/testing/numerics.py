"""Numeric helpers for tests: SQNR in dB, and the Triton interpreter's float-cast fix as a context/fixture.

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
