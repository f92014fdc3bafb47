"""W4A16 GEMM (pyscale/ops/gemm_w4a16.py, kernels/gemm_w4a16.py).

Oracle: x (in fp32) times the dequantised weights `int4_dequantize(...)` (in the scales' dtype, as the
GPU kernel dequantises, and the interpreter path too), in fp32. The kernel then differs only by summation
order and the rounding of the output: fp16 output >= 60 dB, bf16 output >= 45 dB. Rounding to 11 / 8
significant bits costs at most half an ulp, 2^-11 / 2^-8 relative, i.e. >= 66 / 48 dB even for a single
output element (~74 / ~56 dB on average over many).
"""

from __future__ import annotations

import importlib

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


# the op's paths: the fused kernel with either operand order, and the dense path (dequantise + torch.mm)
VARIANTS = {"fused": {"w4a16_dense_min_m": "off"}, "swap": {"w4a16_swap_ab": True, "w4a16_dense_min_m": "off"},
            "dense": {"w4a16_dense_min_m": 1}}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_matches_dequantised_product(variant, g, symmetric, m):
    """Odd N, a bias, every group size with and without zero points; decode M (split K in the
    interpreter too) and prefill M."""
    x, packed = _problem(m, 97, 256, g, symmetric, torch.float16)
    bias = torch.randn(97).to(torch.float16)
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_w4a16(x, packed.qweight, packed.scales, packed.zeros, group_size=g, bias=bias)
    assert out.shape == (m, 97) and out.dtype == torch.float16
    assert sqnr_db(_oracle(x, packed, g, bias), out) >= FLOOR_DB[torch.float16]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("m", [3, 40])
def test_bfloat16_with_bias(variant, m):
    x, packed = _problem(m, 64, 384, 64, True, torch.bfloat16, seed=1)
    bias = torch.randn(64).to(torch.bfloat16)
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_w4a16(x, packed.qweight, packed.scales, None, group_size=64, bias=bias)
    assert out.dtype == torch.bfloat16
    assert sqnr_db(_oracle(x, packed, 64, bias), out) >= FLOOR_DB[torch.bfloat16]


def _split_launch(x, packed, g, cfg, bias=None, counters=None):
    """One launch of the split-K kernel as the op makes it: fp32 workspace, zeroed tile counters."""
    m, n = x.shape[0], packed.qweight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype)
    counters = torch.zeros(kernels.tile_count(m, n, cfg), dtype=torch.int32) if counters is None else counters
    workspace = torch.full((cfg["SPLIT_K"], m, n), float("nan"))  # any contents: every read is written first
    kernels.launch_w4a16_gemm(x, packed.qweight, packed.scales, packed.zeros, bias, out, g, cfg,
                              workspace=workspace, counters=counters)
    return out, counters


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("split_k,block_k,g", [(2, 64, 32), (4, 32, 64), (2, 256, 32), (2, 128, 128), (8, 64, 64)])
def test_split_k_decode_is_one_launch(split_k, block_k, g, swap):
    """The GEMV path: BLOCK_M 16, K split over programs (BLOCK_K spanning several groups, or lying inside
    one; 8 splits of a K with only 8 steps), and the last split of each tile reducing the partials, adding
    the bias and casting, in the same launch; the counters are back at zero afterwards."""
    x, packed = _problem(3, 80, 512, g, False, torch.float16, seed=2)
    bias = torch.randn(80).to(torch.float16)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": block_k, "SPLIT_K": split_k, "GROUP_M": 1, "SWAP_AB": swap}
    out, counters = _split_launch(x, packed, g, cfg, bias)
    assert sqnr_db(_oracle(x, packed, g, bias), out) >= FLOOR_DB[torch.float16]
    assert not counters.any()
    again, _ = _split_launch(x, packed, g, cfg, bias, counters)  # the same counters serve the next launch
    assert torch.equal(again, out)  # and the split order fixes the sum: deterministic


def test_split_k_needs_its_buffers():
    x, packed = _problem(2, 64, 256, 64, True, torch.float16)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2, "GROUP_M": 1}
    out = torch.empty(2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="^workspace must be a contiguous fp32"):
        kernels.launch_w4a16_gemm(x, packed.qweight, packed.scales, None, None, out, 64, cfg)
    with pytest.raises(ValueError, match="^counters must hold at least 2"):
        kernels.launch_w4a16_gemm(x, packed.qweight, packed.scales, None, None, out, 64, cfg,
                                  workspace=torch.empty(2, 2, 64), counters=torch.zeros(1, dtype=torch.int32))


def test_gpu_decode_config_runs_in_interpreter():
    """The GPU default for decode (64 x 128 tiles, K split to fill 132 SMs) on a small problem."""
    x, packed = _problem(1, 128, 1024, 128, True, torch.float16, seed=3)
    cfg = kernels.w4a16_config(1, 128, 1024, 128, num_sms=132, capability=(9, 0), interpret=False)
    assert cfg["SPLIT_K"] == 8 and cfg["BLOCK_N"] == 64
    out, counters = _split_launch(x, packed, 128, cfg)
    assert sqnr_db(_oracle(x, packed, 128), out) >= FLOOR_DB[torch.float16] and not counters.any()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("m", [2, 20])
def test_strided_activations(variant, m):
    x, packed = _problem(m, 48, 128, 32, True, torch.float16, seed=4)
    wide = torch.zeros(m, 300, dtype=torch.float16)
    wide[:, 50:178] = x
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_w4a16(wide[:, 50:178], packed.qweight, packed.scales, group_size=32)
        out_t = ops.gemm_w4a16(x.t().contiguous().t(), packed.qweight, packed.scales, group_size=32)
    for o in (out, out_t):
        assert sqnr_db(_oracle(x, packed, 32), o) >= FLOOR_DB[torch.float16]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("g", [32, 64, 128])
def test_dense_path_dequantises_exactly(g, symmetric):
    """The dense path's scratch weights are the interchange format's dequantisation, bit for bit (odd N,
    K not a multiple of the kernel's 128-wide tile)."""
    _, packed = _problem(1, 45, 384, g, symmetric, torch.bfloat16, seed=8)
    w = torch.empty(45, 384, dtype=torch.bfloat16)
    kernels.launch_w4a16_dequant(packed.qweight, packed.scales, packed.zeros, g, w)
    assert torch.equal(w, ops.int4_dequantize(packed.qweight, packed.scales, packed.zeros, group_size=g))


def test_dense_path_threshold(monkeypatch):
    """From PYSCALE_W4A16_DENSE_MIN_M rows (default 1024) the op dequantises and calls torch.mm; "off"
    never does."""
    from pyscale.ops import _gemm_variants

    calls = []
    real = kernels.launch_w4a16_dequant
    monkeypatch.setattr(kernels, "launch_w4a16_dequant", lambda *a: calls.append(a[-1].shape) or real(*a))
    x, packed = _problem(24, 32, 128, 64, True, torch.float16, seed=9)
    assert _gemm_variants.current().w4a16_dense_min_m == 1024
    ops.gemm_w4a16(x, *packed, group_size=64)
    monkeypatch.setenv("PYSCALE_W4A16_DENSE_MIN_M", "24")
    ops.gemm_w4a16(x, *packed, group_size=64)
    ops.gemm_w4a16(x[:23], *packed, group_size=64)
    with ops.gemm_variants(w4a16_dense_min_m="off"):
        ops.gemm_w4a16(x, *packed, group_size=64)
    assert calls == [(32, 128)]
    monkeypatch.setenv("PYSCALE_W4A16_DENSE_MIN_M", "0")
    with pytest.raises(ValueError, match="^PYSCALE_W4A16_DENSE_MIN_M must be a positive number of rows or 'off'"):
        ops.gemm_w4a16(x, *packed, group_size=64)


def test_no_per_call_device_query(monkeypatch, tmp_path):
    """A decode loop asks the device for its properties once: planning two calls on a (faked) GPU reads
    them once, and never through the uncached torch.cuda queries."""
    from types import SimpleNamespace

    from pyscale.ops import _autotune, _device

    gemm_w4a16 = importlib.import_module("pyscale.ops.gemm_w4a16")
    queries = []
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: queries.append(device) or props)

    def uncached(*args, **kwargs):
        raise AssertionError("a per-call device query")

    monkeypatch.setattr(torch.cuda, "get_device_capability", uncached)
    monkeypatch.setattr(torch.cuda, "get_device_name", uncached)
    monkeypatch.setenv(_autotune.CACHE_ENV_VAR, str(tmp_path / "tuned.json"))
    monkeypatch.setattr(_autotune, "capturing", uncached)  # "cached" policy: never asks
    monkeypatch.setattr(gemm_w4a16, "triton_interpreting", lambda: False)  # plan as a GPU process does
    _device.clear_cache()
    _autotune.clear_memory()
    gpu = torch.device("cuda", 0)
    try:
        configs = [gemm_w4a16._config(gpu, m, 8192, 8192, 128, torch.bfloat16, False, True, uncached) for m in (1, 1, 7)]
    finally:
        _device.clear_cache()
    assert len(queries) == 1
    assert configs[0] == configs[1] == kernels.w4a16_config(1, 8192, 8192, 128, num_sms=132, capability=(9, 0),
                                                            interpret=False)
    assert configs[0]["SPLIT_K"] > 1


def test_counters_are_kept_per_stream_and_never_freed():
    gemm_w4a16 = importlib.import_module("pyscale.ops.gemm_w4a16")
    cpu = torch.device("cpu")
    first = gemm_w4a16._tile_counters(cpu, 10)
    assert gemm_w4a16._tile_counters(cpu, 100) is first and not first.any()
    bigger = gemm_w4a16._tile_counters(cpu, first.numel() + 1)
    assert bigger is not first and bigger.numel() > first.numel()
    assert any(t is first for t in gemm_w4a16._retired)  # a captured graph may still point at it


def test_tuning_space_is_small_and_keyed_by_bucket():
    """W4A16 tunes through the shared mechanism: M bucketed (decode's 1-16 rows in 5 buckets), a space of at
    most 8 candidates per problem, each decode candidate split to fill the machine, and the variant apart."""
    from pyscale.ops._device import DeviceInfo

    gemm_w4a16 = importlib.import_module("pyscale.ops.gemm_w4a16")
    h100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 132)
    keys = {m: gemm_w4a16.tuning_key(m, 8192, 8192, 128, torch.bfloat16, False, False, h100) for m in range(1, 17)}
    assert {k["m"] for k in keys.values()} == {1, 2, 4, 8, 16}
    for m in (1, 16, 17, 4096):
        for swap in (False, True):
            key = gemm_w4a16.tuning_key(m, 8192, 8192, 128, torch.bfloat16, False, False, h100, swap=swap)
            cands = gemm_w4a16.TUNING.candidates(key)
            assert 2 <= len(cands) <= 8 and all(c["SWAP_AB"] == swap for c in cands)
            if m <= 16:
                assert all(c["BLOCK_M"] == 16 and (8192 // c["BLOCK_N"]) * c["SPLIT_K"] >= 132 for c in cands)
            else:
                assert all(c["SPLIT_K"] == 1 for c in cands)
            for interpret in (False, True):
                assert gemm_w4a16.TUNING.default(key, interpret) == kernels.w4a16_config(
                    key["m"], 8192, 8192, 128, num_sms=132, capability=(9, 0), swap=swap, interpret=interpret)


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
    """Both GPU paths (one-launch split-K GEMV for decode, prefill tiles) at the configs the op picks per arch
    (the compile report's specs), fp16 and bf16, with and without zero points, both operand orders; and the
    dense path's dequantising kernel."""
    from pyscale.testing import aot_specs

    entries = aot_specs.entries(["gemm"], op="gemm_w4a16")
    assert {e.op for e in entries} == {"gemm_w4a16.decode", "gemm_w4a16.prefill", "gemm_w4a16.dequant"}
    results = assert_pairs_compile([(e.spec(arch), arch) for e in entries for arch in e.archs])
    assert all(r.fits and not r.local_bytes for r in results)  # fits, no register spills
    decode = [e for e in entries if e.op == "gemm_w4a16.decode"]
    assert all(e.spec(arch).constexprs["SPLIT_K"] > 1 for e in decode for arch in e.archs)


def test_hopper_main_loop_waits():
    """sm_90a: with the weights as the MMA's register operand (SWAP_AB) the K loop keeps wgmmas in flight
    (loop wait level > 0), for decode and prefill; with the weights second (the default) prefill stores
    them to shared memory and waits on each wgmma (level 0), and decode's 16-row tiles use mma.sync."""
    from pyscale.testing import aot_specs, compile_report

    rows = compile_report.rows(aot_specs.entries(["gemm"], op="gemm_w4a16"), ("sm_90a",))
    for r in rows:
        if r["op"] == "gemm_w4a16.dequant":
            assert r["mma"] == "none"
        elif r["params"]["swap"]:
            assert r["mma"] == "wgmma" and min(r["loop_wait_levels"]) > 0, r
        elif r["op"] == "gemm_w4a16.prefill":
            assert r["mma"] == "wgmma" and r["loop_wait_levels"] == [0], r
        else:
            assert r["mma"] == "mma.sync", r


def _cuda(x, packed):
    return x.cuda(), type(packed)(*(t.cuda() if t is not None else None for t in packed))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 4, 16, 17, 64, 1024])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gpu(variant, dtype, m, symmetric):
    x, packed = _cuda(*_problem(m, 4096, 4096, 128, symmetric, dtype))
    bias = torch.randn(4096, device="cuda").to(dtype)
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_w4a16(x, *packed, group_size=128, bias=bias)
    assert sqnr_db(_oracle(x, packed, 128, bias), out) >= FLOOR_DB[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("m", [1, 8])
def test_gpu_cuda_graph_capture(variant, m):
    """The whole call (split-K decode with its fused reduction, or the dense path) records into a CUDA
    graph; replays read new activations and give the same result each time (deterministic reduction)."""
    x, packed = _cuda(*_problem(m, 8192, 8192, 128, False, torch.bfloat16, seed=10))
    bias = torch.randn(8192, device="cuda").to(torch.bfloat16)
    with ops.gemm_variants(**VARIANTS[variant]):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            ops.gemm_w4a16(x, *packed, group_size=128, bias=bias)  # warm: compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ops.gemm_w4a16(x, *packed, group_size=128, bias=bias)
    x.copy_(torch.randn_like(x))
    graph.replay()
    first = out.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, first)
    assert sqnr_db(_oracle(x, packed, 128, bias), first) >= FLOOR_DB[torch.bfloat16]


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
