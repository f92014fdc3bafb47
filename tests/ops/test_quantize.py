"""FP8 / int8 quantisers (pyscale/ops/quantize.py, kernels/quantize.py) against the reference.

The casts are tested on their own, bit for bit: the interpreter's fp32 -> fp8 conversion is replaced by
torch's (round to nearest even, saturating) through `interpreter_casts_fixed`, the conversion a GPU does.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

import pyscale
from pyscale import ops
from pyscale.reference import quantize as ref
from pyscale.testing.aot import assert_pairs_compile
from pyscale.testing.numerics import gpu_like_casts, sqnr_db  # noqa: F401

GRANS = ("tensor", "row", "block1x128", "block128x128")


pytestmark = pytest.mark.usefixtures("gpu_like_casts")  # GPU rounding for fp8/bf16 casts in the interpreter


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


@pytest.mark.parametrize("granularity", GRANS)
@pytest.mark.parametrize("shape", [(1, 7), (77, 300), (130, 129)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_quantizer_matches_reference_bitwise(granularity, shape, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * torch.logspace(-3, 3, shape[1])).to(dtype)  # wide dynamic range per row
    q, s = ops.quantize_fp8(x, granularity)
    rq, rs = ref.quantize_fp8(x, granularity)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert tuple(s.shape) == ref.scale_shape(granularity, *shape)
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    assert torch.equal(_bits(q), _bits(rq))


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_fp8_e5m2_quantizer_matches_reference(granularity):
    torch.manual_seed(1)
    x = torch.randn(33, 160) * 5
    q, s = ops.quantize_fp8(x, granularity, fp8_dtype=torch.float8_e5m2)
    rq, rs = ref.quantize_fp8(x, granularity, torch.float8_e5m2)
    assert q.dtype == torch.float8_e5m2
    assert torch.equal(s, rs) and torch.equal(_bits(q), _bits(rq))


@pytest.mark.parametrize("granularity", GRANS)
def test_fp8_rounding_error_bound(granularity):
    """Round to nearest in e4m3 (3 mantissa bits): |x/s - q| <= max(|x/s| 2^-4, 2^-10) (subnormal step 2^-9)."""
    torch.manual_seed(2)
    x = torch.randn(64, 256) * 3
    q, s = ops.quantize_fp8(x, granularity)
    y = x / ref._expand(s, granularity, 64, 256)
    err = (y - q.float()).abs()
    assert bool((err <= torch.clamp(y.abs() * 2.0**-4, min=2.0**-10) * (1 + 1e-6)).all())
    assert float(q.float().abs().max()) <= 448.0


def test_int8_quantizer_rounds_half_to_even_and_matches_reference():
    # row absmax 127 gives scale 1, so x / scale is exact and the ties are real ties
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.49, -126.5]])
    q, s = ops.quantize_int8(x)
    assert float(s) == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, 3, -126]]
    torch.manual_seed(3)
    x = torch.randn(77, 300).to(torch.float16)
    q, s = ops.quantize_int8(x)
    rq, rs = ref.quantize_int8(x)
    assert torch.equal(q, rq) and torch.equal(s, rs)
    assert int(q.abs().max()) == 127  # the absmax element of each row maps to +-127


def test_zero_rows_quantize_to_zero_with_finite_scale():
    x = torch.zeros(3, 40)
    x[1] = torch.linspace(-1, 1, 40)
    for q, s in (ops.quantize_fp8(x, "row"), ops.quantize_int8(x)):
        assert bool(torch.isfinite(s).all()) and float(s[0]) > 0
        assert bool((q.float()[0] == 0).all()) and bool((q.float()[2] == 0).all())


@pytest.mark.parametrize("granularity", ["row", "block1x128"])
def test_strided_input(granularity):
    torch.manual_seed(4)
    base = torch.randn(200, 96)
    x = base.t()  # (96, 200), column-major
    q, s = ops.quantize_fp8(x, granularity)
    rq, rs = ref.quantize_fp8(x.contiguous(), granularity)
    assert torch.equal(_bits(q), _bits(rq)) and torch.equal(s, rs)
    q8, s8 = ops.quantize_int8(base[::2, 5:])
    r8, rs8 = ref.quantize_int8(base[::2, 5:].contiguous())
    assert torch.equal(q8, r8) and torch.equal(s8, rs8)


@pytest.mark.parametrize("granularity", ["tensor", "row", "block1x128"])
@pytest.mark.parametrize("shape", [(97, 300), (2, 129), (130, 3)])
def test_transposed_views_take_the_transposing_tile(monkeypatch, granularity, shape):
    """A transposed (column-major) view, as the FP8 training linear quantises W^T, dy^T and x^T, is read
    in 32-row tiles along its contiguous dimension and written transposed; bit for bit the reference's
    quantisation of the contiguous copy (odd shapes, partial tiles on both axes)."""
    from pyscale.kernels import quantize as kq

    tiles = []
    real = kq.quantize_config
    monkeypatch.setattr(kq, "quantize_config", lambda *a, **kw: tiles.append(real(*a, **kw)) or tiles[-1])
    torch.manual_seed(6)
    base = (torch.randn(shape[1], shape[0]) * torch.logspace(-2, 2, shape[0])).to(torch.bfloat16)
    x = base.t()
    assert kq.is_column_major(x)
    q, s = ops.quantize_fp8(x, granularity)
    rq, rs = ref.quantize_fp8(x.contiguous(), granularity)
    assert q.is_contiguous() and torch.equal(_bits(q), _bits(rq)) and torch.equal(s, rs)
    q8, s8 = ops.quantize_int8(x)
    r8, rs8 = ref.quantize_int8(x.contiguous())
    assert torch.equal(q8, r8) and torch.equal(s8, rs8)
    assert tiles and all(t["BLOCK_M"] == 32 and t["BLOCK_K"] == 64 for t in tiles)


def test_dequantize_round_trip():
    torch.manual_seed(5)
    x = torch.randn(130, 300)
    q, s = ops.quantize_fp8(x, "block128x128")
    d = ops.dequantize(q, s, "block128x128")
    assert d.shape == x.shape
    torch.testing.assert_close(d, ref.dequantize(q, s, "block128x128"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale must have shape"):
        ops.dequantize(q, s, "row")


def test_forced_reference_backend_agrees():
    torch.manual_seed(6)
    x = torch.randn(20, 140)
    q, s = ops.quantize_fp8(x, "block1x128")
    with pyscale.backend("reference"):
        rq, rs = ops.quantize_fp8(x, "block1x128")
    assert torch.equal(_bits(q), _bits(rq)) and torch.equal(s, rs)


def test_bad_input_names_the_argument():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="^x must have dtype"):
        ops.quantize_fp8(x.to(torch.int32))
    with pytest.raises(ValueError, match="^x must be 2-D"):
        ops.quantize_int8(x[None])
    with pytest.raises(ValueError, match="^granularity must be one of"):
        ops.quantize_fp8(x, "column")
    with pytest.raises(ValueError, match="^fp8_dtype must be one of"):
        ops.quantize_fp8(x, "row", fp8_dtype=torch.float16)


def test_opcheck():
    x = torch.randn(5, 140)
    for gran in GRANS:
        torch.library.opcheck(torch.ops.pyscale.quantize_fp8.default, (x, gran, torch.float8_e4m3fn))
    torch.library.opcheck(torch.ops.pyscale.quantize_int8.default, (x,))


def test_formulas():
    from pyscale.formulas import formulas_for

    x = torch.randn(6, 256)
    out = torch.ops.pyscale.quantize_fp8.default(x, "row", torch.float8_e4m3fn)
    assert formulas_for("pyscale::quantize_fp8").executed((x, "row", torch.float8_e4m3fn), {}, out) == 0
    assert formulas_for("pyscale::quantize_fp8").bytes((x, "row", torch.float8_e4m3fn), {}, out) == 6 * 256 * (4 + 1) + 6 * 4


# ----------------------------------------------------------------------------- test helpers

def test_sqnr_db():
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)  # noise power 1 % of the signal's
    assert sqnr_db(torch.zeros(2), torch.ones(2)) == -math.inf


@triton.jit
def _cast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(y_ptr.dtype.element_ty), mask=mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_kernel_casts_round_like_torch(dtype):
    """Under gpu_like_casts (or on a GPU) a kernel's fp32 -> bf16/fp8 cast rounds to nearest even and
    saturates like torch's; ties and values past the fp8 range are included."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and dtype != torch.bfloat16 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton stores FP8 from compute capability 8.9")
    torch.manual_seed(7)
    ties = torch.tensor([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1.0625, 1.1875, 17.0, 19.0])  # bf16 / e4m3 ties
    x = torch.cat([torch.randn(900) * 50, ties, -ties]).to(device)
    limit = 448.0 if dtype == torch.float8_e4m3fn else None
    y = torch.empty(x.numel(), dtype=dtype, device=device)
    _cast_kernel[(1,)](x, y, x.numel(), BLOCK=1024)
    expected = (x.clamp(-limit, limit) if limit else x).to(dtype)
    assert torch.equal(y.view(torch.uint8 if y.element_size() == 1 else torch.int16),
                       expected.view(torch.uint8 if y.element_size() == 1 else torch.int16))


# ----------------------------------------------------------------------------- ahead of time

def test_quantize_kernels_compile_ahead_of_time():
    """Largest-tile configs (kernels/quantize.py quantize_config on a GPU; the compile report's specs); FP8
    stores are refused on sm_80."""
    from pyscale.testing import aot_specs

    entries = aot_specs.entries(["quantize"])
    fp8 = [(e.spec(a), a) for e in entries if e.op.startswith("quantize_fp8") for a in ("sm_80", *e.archs)]
    rest = [(e.spec(a), a) for e in entries if not e.op.startswith("quantize_fp8") for a in e.archs]
    results = assert_pairs_compile(fp8, expect_refused=lambda r: r.arch == "sm_80")
    results += assert_pairs_compile(rest)
    assert all(not r.local_bytes for r in results)  # no register spills


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", GRANS)
def test_gpu_casts_match_torch(granularity):
    """On a GPU the kernel's own fp32 -> e4m3 conversion (round to nearest even, saturating) must agree
    bit for bit with torch's, as the interpreter fix assumes."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton stores FP8 from compute capability 8.9")
    x = (torch.randn(513, 1000, device="cuda") * torch.logspace(-3, 3, 1000, device="cuda")).to(torch.bfloat16)
    q, s = ops.quantize_fp8(x, granularity)
    rq, rs = ref.quantize_fp8(x, granularity)
    assert torch.equal(s, rs) and torch.equal(_bits(q), _bits(rq))
    q8, s8 = ops.quantize_int8(x)
    r8, rs8 = ref.quantize_int8(x)
    assert torch.equal(s8, rs8) and torch.equal(q8, r8)
