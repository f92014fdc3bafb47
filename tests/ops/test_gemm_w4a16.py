"""W4A16 GEMM (pyscale/ops/gemm_w4a16.py, kernels/gemm_w4a16.py).

Oracle: x (in fp32) times the dequantised weights `int4_dequantize(...)` (in the scales' dtype, as the
GPU kernel dequantises, and the interpreter path too), in fp32. The kernel then differs only by summation
order and the rounding of the output: fp16 output >= 60 dB, bf16 output >= 45 dB. Rounding to 11 / 8
significant bits costs at most half an ulp, 2^-11 / 2^-8 relative, i.e. >= 66 / 48 dB even for a single
output element (~74 / ~56 dB on average over many).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyscale
from pyscale import ops
from pyscale.formulas import formulas_for
from pyscale.kernels import gemm_w4a16 as kernels
from pyscale.testing.aot import assert_pairs_compile
from pyscale.testing.numerics import gpu_like_casts, sqnr_db  # noqa: F401

FLOOR_DB = {torch.float16: 60.0, torch.bfloat16: 45.0}


pytestmark = pytest.mark.usefixtures("gpu_like_casts")  # GPU rounding for fp8/bf16 casts in the interpreter


def _problem(m, n, k, g, symmetric, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / 8).to(dtype)
    packed = ops.int4_quantize(w, g, symmetric=symmetric)
    return x, packed


def _oracle(x, packed, g, bias=None):
    w = ops.int4_dequantize(packed.qweight, packed.scales, packed.zeros, group_size=g)
    out = x.float() @ w.float().T
    return out if bias is None else out + bias.float()


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_matches_dequantised_product(g, symmetric, m):
    x, packed = _problem(m, 97, 256, g, symmetric, torch.float16)
    out = ops.gemm_w4a16(x, packed.qweight, packed.scales, packed.zeros, group_size=g)
    assert out.shape == (m, 97) and out.dtype == torch.float16
    assert sqnr_db(_oracle(x, packed, g), out) >= FLOOR_DB[torch.float16]


@pytest.mark.parametrize("m", [3, 40])
def test_bfloat16_with_bias(m):
    x, packed = _problem(m, 64, 128, 64, True, torch.bfloat16, seed=1)
    bias = torch.randn(64).to(torch.bfloat16)
    out = ops.gemm_w4a16(x, packed.qweight, packed.scales, None, group_size=64, bias=bias)
    assert out.dtype == torch.bfloat16
    assert sqnr_db(_oracle(x, packed, 64, bias), out) >= FLOOR_DB[torch.bfloat16]


@pytest.mark.parametrize("split_k,block_k,g", [(2, 64, 32), (4, 32, 64), (2, 256, 32), (2, 128, 128)])
def test_split_k_decode_path(split_k, block_k, g):
    """The GEMV path: BLOCK_M 16, K split over programs, fp32 partials summed by the caller; BLOCK_K
    spanning several groups (GROUPS_PER_TILE > 1) or lying inside one."""
    x, packed = _problem(3, 80, 512, g, False, torch.float16, seed=2)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": block_k, "SPLIT_K": split_k, "GROUP_M": 1}
    partial = torch.empty(split_k, 3, 80)
    kernels.launch_w4a16_gemm(x, packed.qweight, packed.scales, packed.zeros, None, partial, g, cfg)
    # fp32 partials: only the summation order differs
    assert sqnr_db(_oracle(x, packed, g), partial.sum(0)) >= 100.0


def test_gpu_decode_config_runs_in_interpreter():
    cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 2, "GROUP_M": 1}
    x, packed = _problem(1, 128, 512, 128, True, torch.float16, seed=3)
    partial = torch.empty(2, 1, 128)
    kernels.launch_w4a16_gemm(x, packed.qweight, packed.scales, None, None, partial, 128, cfg)
    assert sqnr_db(_oracle(x, packed, 128), partial.sum(0)) >= 100.0


def test_strided_activations():
    x, packed = _problem(20, 48, 128, 32, True, torch.float16, seed=4)
    wide = torch.zeros(20, 300, dtype=torch.float16)
    wide[:, 50:178] = x
    out = ops.gemm_w4a16(wide[:, 50:178], packed.qweight, packed.scales, group_size=32)
    assert sqnr_db(_oracle(x, packed, 32), out) >= FLOOR_DB[torch.float16]


def test_forced_reference_backend_agrees():
    x, packed = _problem(9, 40, 128, 64, False, torch.float16, seed=5)
    out = ops.gemm_w4a16(x, *packed, group_size=64)
    with pyscale.backend("reference"):
        ref_out = ops.gemm_w4a16(x, *packed, group_size=64)
    assert sqnr_db(ref_out.float(), out) >= FLOOR_DB[torch.float16]


def test_bad_input_names_the_argument():
    x, packed = _problem(4, 16, 128, 64, True, torch.float16)
    q, s = packed.qweight, packed.scales
    with pytest.raises(TypeError, match="^x must have dtype float16, bfloat16"):
        ops.gemm_w4a16(x.float(), q, s, group_size=64)
    with pytest.raises(ValueError, match="^x must have an even number of columns K"):
        ops.gemm_w4a16(torch.zeros(4, 127, dtype=torch.float16), q, s, group_size=64)
    with pytest.raises(ValueError, match="^qweight must have K/2 = 32 columns"):
        ops.gemm_w4a16(x[:, :64], q, s, group_size=64)
    with pytest.raises(ValueError, match="^group_size must divide K"):
        ops.gemm_w4a16(torch.zeros(4, 96, dtype=torch.float16), torch.zeros(16, 48, dtype=torch.uint8),
                       torch.zeros(16, 1, dtype=torch.float16), group_size=64)
    with pytest.raises(ValueError, match="^group_size must be one of"):
        ops.gemm_w4a16(x, q, s, group_size=48)
    with pytest.raises(ValueError, match=r"^scales must have shape \(N, K/group_size\)"):
        ops.gemm_w4a16(x, q, s[:, :1], group_size=64)
    with pytest.raises(TypeError, match="^scales must have dtype float16"):
        ops.gemm_w4a16(x, q, s.to(torch.bfloat16), group_size=64)
    with pytest.raises(ValueError, match="^zeros must have the shape of scales"):
        ops.gemm_w4a16(x, q, s, torch.zeros(16, 1, dtype=torch.uint8), group_size=64)
    with pytest.raises(TypeError, match="^qweight must have dtype uint8"):
        ops.gemm_w4a16(x, q.to(torch.int8), s, group_size=64)


def test_opcheck():
    x, packed = _problem(3, 16, 64, 32, False, torch.float16)
    torch.library.opcheck(torch.ops.pyscale.gemm_w4a16.default,
                          (x, packed.qweight, packed.scales, packed.zeros, 32, torch.zeros(16, dtype=torch.float16)))
    x, packed = _problem(20, 16, 64, 32, True, torch.bfloat16)
    torch.library.opcheck(torch.ops.pyscale.gemm_w4a16.default, (x, packed.qweight, packed.scales, None, 32, None))


def test_formulas():
    x, packed = _problem(4, 16, 128, 64, True, torch.float16)
    args = (x, packed.qweight, packed.scales, None, 64, None)
    out = torch.empty(4, 16, dtype=torch.float16)
    assert formulas_for("pyscale::gemm_w4a16").executed(args, {}, out) == 2 * 4 * 16 * 128
    assert formulas_for("pyscale::gemm_w4a16").bytes(args, {}, out) == 4 * 128 * 2 + 16 * 64 + 16 * 2 * 2 + 4 * 16 * 2


def test_config_paths(monkeypatch):
    """Decode shapes split K on a GPU until the grid covers the machine; prefill shapes do not."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the config function reads it at call time
    decode = kernels.w4a16_config(1, 4096, 4096, 128, num_sms=132, capability=(9, 0))
    prefill = kernels.w4a16_config(4096, 4096, 4096, 128, num_sms=132, capability=(9, 0))
    assert decode["BLOCK_M"] == 16 and decode["SPLIT_K"] > 1
    assert (4096 // decode["BLOCK_N"]) * decode["SPLIT_K"] >= 132
    assert prefill["SPLIT_K"] == 1 and prefill["BLOCK_M"] == 128


# ----------------------------------------------------------------------------- ahead of time

def test_compiles_ahead_of_time():
    """Both GPU paths (split-K GEMV for decode, prefill tiles) at the configs `w4a16_config` picks per arch
    (the compile report's specs), fp16 and bf16, with and without zero points."""
    from pyscale.testing import aot_specs

    entries = aot_specs.entries(["gemm"], op="gemm_w4a16")
    assert {e.op for e in entries} == {"gemm_w4a16.decode", "gemm_w4a16.prefill"}
    results = assert_pairs_compile([(e.spec(arch), arch) for e in entries for arch in e.archs])
    assert all(r.fits and not r.local_bytes for r in results)  # fits, no register spills


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 4, 16, 17, 64, 1024])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gpu(dtype, m, symmetric):
    x, packed = _problem(m, 4096, 4096, 128, symmetric, dtype)
    x, packed = x.cuda(), type(packed)(*(t.cuda() if t is not None else None for t in packed))
    out = ops.gemm_w4a16(x, *packed, group_size=128)
    assert sqnr_db(_oracle(x, packed, 128), out) >= FLOOR_DB[dtype]


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_more_than_2_31_elements():
    m, n, k = 2**20 + 2, 64, 2048
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = (torch.randn(n, k, device="cuda") / 8).to(torch.float16)
    packed = ops.int4_quantize(w, 128)
    out = ops.gemm_w4a16(x, *packed, group_size=128)
    assert sqnr_db(_oracle(x[-64:], packed, 128), out[-64:]) >= FLOOR_DB[torch.float16]




@given(k=st.integers(1, 600), g=st.sampled_from([16, 32, 48, 64, 128, 256]))
def test_k_and_group_size_are_validated(k, g):
    """Every (K, group_size) either runs or raises an error naming x or group_size."""
    x = torch.zeros(2, k, dtype=torch.float16)
    n_groups = max(1, k // g)
    q = torch.zeros(4, k // 2, dtype=torch.uint8)
    s = torch.zeros(4, n_groups, dtype=torch.float16)
    valid = k % 2 == 0 and g in (32, 64, 128) and k % g == 0
    if valid:
        assert ops.gemm_w4a16(x, q, s, group_size=g).shape == (2, 4)
    else:
        with pytest.raises(ValueError, match="^(x must have an even number|group_size must)"):
            ops.gemm_w4a16(x, q, s, group_size=g)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("m", [1, 16, 17, 113])
@pytest.mark.parametrize("n", [1, 97, 256])
def test_full_shape_matrix(dtype, g, symmetric, m, n):
    x, packed = _problem(m, n, 384, g, symmetric, dtype, seed=m + n)
    out = ops.gemm_w4a16(x, *packed, group_size=g)
    assert sqnr_db(_oracle(x, packed, g), out) >= FLOOR_DB[dtype]
