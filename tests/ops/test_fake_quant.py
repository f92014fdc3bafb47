"""Fake quantisation for QAT (pyscale/ops/fake_quant.py): forward = the inference quantisers' rounding,
backward = the straight-through estimator."""

from __future__ import annotations

import pytest
import torch

import pyscale
from pyscale import ops
from pyscale.formulas import formulas_for
from pyscale.ops.fake_quant import SCHEMES
from pyscale.reference import fake_quant as ref
from pyscale.testing.numerics import gpu_like_casts, sqnr_db  # noqa: F401

pytestmark = pytest.mark.usefixtures("gpu_like_casts")  # GPU rounding for fp8/bf16 casts in the interpreter


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_reference(scheme, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 128).to(dtype)
    out = ops.fake_quantize(x, scheme)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, ref.fake_quantize(x, scheme))


@pytest.mark.parametrize("scheme", ["int4-g32", "int4-g128-asym", "int8-token", "fp8-row"])
def test_values_are_on_the_quantisation_grid(scheme):
    """Fake-quantising twice changes (almost) nothing, and the error is what the format allows."""
    torch.manual_seed(1)
    x = torch.randn(64, 256)
    once = ops.fake_quantize(x, scheme)
    twice = ops.fake_quantize(once, scheme)
    # the second pass can move a scale by an ulp, nothing more
    torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-6)
    floor = {"int4-g32": 18.0, "int4-g128-asym": 15.0, "int8-token": 35.0, "fp8-row": 25.0}[scheme]
    assert sqnr_db(x, once) >= floor


@pytest.mark.parametrize("scheme", ["int4-g64", "int4-g32-asym", "int8-channel", "fp8-tensor"])
def test_gradient_is_straight_through(scheme):
    torch.manual_seed(2)
    x = torch.randn(8, 64, requires_grad=True)
    g = torch.randn(8, 64)
    ops.fake_quantize(x, scheme).backward(g)
    assert torch.equal(x.grad, g)


def test_int8_channel_groups_along_dim0():
    torch.manual_seed(3)
    x = torch.randn(6, 4, 32)
    x[2] *= 100  # one output channel much larger than the rest
    out = ops.fake_quantize(x, "int8-channel")
    # the other channels keep their own scale: fine resolution
    assert sqnr_db(x[0], out[0]) >= 35.0
    assert torch.equal(out, ref.fake_quantize(x, "int8-channel"))


def test_forced_reference_backend():
    torch.manual_seed(4)
    x = torch.randn(4, 64)
    for scheme in ("int4-g64-asym", "fp8-row"):
        with pyscale.backend("reference"):
            r = ops.fake_quantize(x, scheme)
        assert torch.equal(r, ops.fake_quantize(x, scheme))


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_int4_scales_rounded_to_the_deployment_dtype(scale_dtype):
    """fp32 weights fake-quantised with scales as a 16-bit deployment stores them: the result is the
    deployed dequantised weight, in fp32."""
    torch.manual_seed(5)
    x = torch.randn(8, 128) + 0.3
    out = ops.fake_quantize(x, "int4-g64-asym", scale_dtype=scale_dtype)
    q = ops.int4_quantize(x, 64, symmetric=False, scale_dtype=scale_dtype)
    assert out.dtype == torch.float32
    assert torch.equal(out, ops.int4_dequantize(*q, group_size=64).float())
    assert torch.equal(out, ref.fake_quantize(x, "int4-g64-asym", scale_dtype))
    assert not torch.equal(out, ops.fake_quantize(x, "int4-g64-asym"))  # fp32 scales differ


def test_bad_input_names_the_argument():
    x = torch.randn(4, 96)
    with pytest.raises(ValueError, match="^scheme must be one of"):
        ops.fake_quantize(x, "int3-g32")
    with pytest.raises(ValueError, match="^x must have a last dimension divisible by the group size"):
        ops.fake_quantize(x, "int4-g64")
    with pytest.raises(TypeError, match="^x must have dtype"):
        ops.fake_quantize(x.to(torch.int32), "int8-token")
    with pytest.raises(ValueError, match="^scale_dtype must be one of torch.float32 .or None. for 'int8-token'"):
        ops.fake_quantize(x, "int8-token", scale_dtype=torch.float16)


def test_opcheck():
    x = torch.randn(4, 64, requires_grad=True)
    for scheme in ("int4-g32-asym", "int8-token", "fp8-row"):
        torch.library.opcheck(torch.ops.pyscale.fake_quantize.default, (x, scheme))


def test_formulas():
    x = torch.randn(4, 64)
    out = ops.fake_quantize(x, "int8-token")
    assert formulas_for("pyscale::fake_quantize").executed((x, "int8-token"), {}, out) == 0
    assert formulas_for("pyscale::fake_quantize").bytes((x, "int8-token"), {}, out) == 2 * 4 * 256
