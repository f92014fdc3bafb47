"""FP8 GEMM (pyscale/ops/gemm_fp8.py, kernels/gemm_fp8.py).

Judged by SQNR against the fp32 product of the dequantised operands (DESIGN.md section 3). Products of
two e4m3 values are exact in fp32 (4 + 4 significant bits), so the kernel differs from that oracle only
by summation order, the fp32 scale multiplications and the rounding of the output:
  fp32 output  >= 100 dB  (relative error ~ K * 2^-24 at worst, i.e. well above 100 dB for K <= 256)
  fp16 output  >= 60 dB   (rounding to 11 significant bits: <= 2^-11 relative, >= 66 dB for any output)
  bf16 output  >= 45 dB   (8 significant bits: <= 2^-8 relative, >= 48 dB for any output, ~56 on average)
Operands are quantised by the reference quantiser, so cast rounding does not enter (tested separately).
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
from pyscale.kernels import gemm_fp8 as kernels
from pyscale.ops.gemm_fp8 import check_fp8_device, scale_granularity
from pyscale.reference import gemm_fp8 as ref_gemm
from pyscale.reference import quantize as ref_q
from pyscale.testing.aot import assert_pairs_compile
from pyscale.testing.numerics import gpu_like_casts, sqnr_db  # noqa: F401

PARTS = {"tensor": ("tensor", "tensor"), "row": ("row", "row"), "block": ("block1x128", "block128x128")}
FLOOR_DB = {torch.float32: 100.0, torch.float16: 60.0, torch.bfloat16: 45.0}
# the structural variants (pyscale.ops.gemm_variants) every accuracy test also runs
VARIANTS = {"group": {"fp8_block": "group"}, "tma": {"tma": True}, "tma-group": {"tma": True, "fp8_block": "group"},
            "tma-persistent": {"tma": True, "persistent": True},
            "tma-group-persistent": {"tma": True, "fp8_block": "group", "persistent": True},
            "persistent": {"persistent": True}}  # persistent without TMA: the op keeps the tiled grid


pytestmark = pytest.mark.usefixtures("gpu_like_casts")  # GPU rounding for fp8/bf16 casts in the interpreter


def _operands(m, n, k, granularity, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g) * 2
    b = torch.randn(n, k, generator=g) / 3
    ga, gb = PARTS[granularity]
    qa, sa = ref_q.quantize_fp8(a, ga)
    qb, sb = ref_q.quantize_fp8(b, gb)
    return qa, qb, sa, sb


def _oracle(qa, qb, sa, sb, granularity, bias=None):
    return ref_gemm.gemm_fp8(qa, qb, sa, sb, granularity, torch.float32, bias)


@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
@pytest.mark.parametrize("mnk", [(1, 130, 200), (77, 130, 200), (64, 64, 256), (33, 1, 17)])
def test_matches_dequantised_product(granularity, mnk):
    qa, qb, sa, sb = _operands(*mnk, granularity)
    out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32)
    assert out.shape == (mnk[0], mnk[1]) and out.dtype == torch.float32
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity), out) >= FLOOR_DB[torch.float32]


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", ["row", "block"])
def test_low_precision_output_with_bias(out_dtype, granularity):
    qa, qb, sa, sb = _operands(50, 140, 256, granularity, seed=1)
    bias = torch.randn(140).to(out_dtype)
    out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=out_dtype, bias=bias)
    assert out.dtype == out_dtype
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity, bias), out) >= FLOOR_DB[out_dtype]


def test_strided_operands():
    qa, qb, sa, sb = _operands(40, 70, 160, "row", seed=2)
    wide = torch.zeros(40, 300, dtype=torch.float8_e4m3fn)
    wide[:, 100:260] = qa
    a_view = wide[:, 100:260]  # row stride 300
    b_view = qb.t().contiguous().t()  # (N, K) stored column-major
    assert not a_view.is_contiguous() and not b_view.is_contiguous()
    out = ops.gemm_fp8(a_view, b_view, sa, sb, out_dtype=torch.float32)
    assert sqnr_db(_oracle(qa, qb, sa, sb, "row"), out) >= FLOOR_DB[torch.float32]


@pytest.mark.parametrize("granularity", ["row", "block"])
def test_gpu_tile_config_in_interpreter(granularity):
    """The GPU default (128x128x128 tiles, grouped order) on a shape with partial tiles everywhere."""
    qa, qb, sa, sb = _operands(130, 140, 256, granularity, seed=3)
    c = torch.empty(130, 140)
    kernels.launch_fp8_gemm(qa, qb, c, sa, sb, None, {"row": 1, "block": 2}[granularity], config=GPU_DEFAULT)
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity), c) >= FLOOR_DB[torch.float32]


@pytest.mark.parametrize("promote", ["step", "group"])
def test_tiles_spanning_two_scale_blocks_of_b(promote):
    """BLOCK_N 256 (in the autotuning space): the tile covers two 128-row blocks of b's scales, which are
    read per column (BLOCK_N <= 128 reads the tile's one scale)."""
    qa, qb, sa, sb = _operands(20, 300, 256, "block", seed=11)
    c = torch.empty(20, 300)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 1, "PROMOTE": promote}
    kernels.launch_fp8_gemm(qa, qb, c, sa, sb, None, 2, config=cfg)
    assert sqnr_db(_oracle(qa, qb, sa, sb, "block"), c) >= FLOOR_DB[torch.float32]


def test_block_k_must_divide_the_scale_block():
    qa, qb, sa, sb = _operands(16, 16, 256, "block")
    with pytest.raises(ValueError, match="BLOCK_K must divide 128"):
        kernels.launch_fp8_gemm(qa, qb, torch.empty(16, 16), sa, sb, None, 2,
                                config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "GROUP_M": 1})


def test_empty_m():
    qa, qb, sa, sb = _operands(0, 24, 64, "row")
    out = ops.gemm_fp8(qa, qb, sa, sb)
    assert out.shape == (0, 24)


def test_forced_reference_backend_agrees():
    qa, qb, sa, sb = _operands(20, 30, 140, "block", seed=4)
    out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32)
    with pyscale.backend("reference"):
        ref_out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32)
    assert sqnr_db(ref_out, out) >= FLOOR_DB[torch.float32]


def test_bad_input_names_the_argument():
    qa, qb, sa, sb = _operands(8, 16, 64, "row")
    with pytest.raises(TypeError, match="^a must have dtype float8_e4m3fn"):
        ops.gemm_fp8(qa.float(), qb, sa, sb)
    with pytest.raises(TypeError, match="^b must have dtype"):
        ops.gemm_fp8(qa, qb.to(torch.float8_e5m2), sa, sb)
    with pytest.raises(ValueError, match="^b must have the same K"):
        ops.gemm_fp8(qa, qb[:, :32], sa, sb)
    with pytest.raises(ValueError, match="^scale_a has a shape"):
        ops.gemm_fp8(qa, qb, sa[:4], sb)
    with pytest.raises(ValueError, match="^scale_b has a shape"):
        ops.gemm_fp8(qa, qb, sa, sb[:3])
    with pytest.raises(TypeError, match="^scale_a must have dtype float32"):
        ops.gemm_fp8(qa, qb, sa.half(), sb)
    with pytest.raises(ValueError, match="^out_dtype must be one of"):
        ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="^bias must have N = 16"):
        ops.gemm_fp8(qa, qb, sa, sb, bias=torch.zeros(15, dtype=torch.bfloat16))


def _fake_gpu(monkeypatch, capability, sms=132, name="NVIDIA H100 80GB HBM3"):
    from types import SimpleNamespace

    from pyscale.ops import _device

    _device.clear_cache()
    props = SimpleNamespace(name=name, major=capability[0], minor=capability[1], multi_processor_count=sms)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)


def test_fp8_refused_below_sm89(monkeypatch):
    from pyscale.ops import _device

    _fake_gpu(monkeypatch, (8, 0))
    with pytest.raises(RuntimeError, match=r"^a is on a GPU of compute capability 8\.0: FP8 GEMMs need 8\.9"):
        check_fp8_device("a", torch.device("cuda", 0))
    _fake_gpu(monkeypatch, (9, 0))
    check_fp8_device("a", torch.device("cuda", 0))
    check_fp8_device("a", torch.device("cpu"))
    _device.clear_cache()


def test_opcheck():
    # opcheck's test_schema multiplies the inputs to detect mutation, which torch cannot do for float8
    # tensors on CPU; the other three checks run.
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for granularity in ("tensor", "row", "block"):
        qa, qb, sa, sb = _operands(5, 20, 140, granularity)
        torch.library.opcheck(torch.ops.pyscale.gemm_fp8.default,
                              (qa, qb, sa, sb, granularity, torch.bfloat16, torch.zeros(20, dtype=torch.bfloat16)),
                              test_utils=utils)


def test_formulas():
    qa, qb, sa, sb = _operands(4, 8, 300, "block")
    args = (qa, qb, sa, sb, "block", torch.bfloat16, None)
    out = torch.empty(4, 8, dtype=torch.bfloat16)
    assert formulas_for("pyscale::gemm_fp8").executed(args, {}, out) == 2 * 4 * 8 * 300
    expected_bytes = 4 * 300 + 8 * 300 + 4 * (sa.numel() + sb.numel()) + 4 * 8 * 2
    assert formulas_for("pyscale::gemm_fp8").bytes(args, {}, out) == expected_bytes


# ----------------------------------------------------------------------------- ahead of time

GPU_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}


def test_compiles_ahead_of_time():
    """Every scale mode and variant at the op's default (the compile report's specs) compiles spill-free on
    the archs it runs on and is refused on sm_80 (no FP8 tensor cores); on sm_90a every one issues wgmma."""
    from pyscale.testing import aot_specs

    entries = aot_specs.entries(["gemm"], op="gemm_fp8")
    defaults = [e for e in entries if not e.params["tma"] and e.params.get("promote", "step") == "step"]
    assert [e.spec("sm_90a").constexprs["SCALE_MODE"] for e in defaults] == [0, 1, 2]
    assert all(e.spec(arch).constexprs["BLOCK_K"] == GPU_DEFAULT["BLOCK_K"] and e.spec(arch).num_stages == 4
               for e in defaults for arch in e.archs)
    pairs = [(e.spec(arch), arch) for e in entries for arch in ("sm_80", *e.archs) if arch in e.archs or
             not e.params["tma"]]
    results = assert_pairs_compile(pairs, expect_refused=lambda r: r.arch == "sm_80")
    assert any(r.arch == "sm_89" and r.fits for r in results)
    assert all(r.mma == "wgmma" for r in results if r.arch == "sm_90a")


def test_hopper_main_loop_waits():
    """What the K loop's wgmma waits say on sm_90a (compile report "loop waits"): tensor- and row-wise keep
    one wgmma in flight (level 1); block-wise "step" waits on each (level 0: triton 3.6 keeps a wgmma in flight
    only when nothing but the next wgmma reads its result), "group" overlaps all but a group's last step
    (levels 1 and 0). TMA changes the loads, not the waits. The persistent kernels' flattened loop also holds
    the tile epilogue, whose drain (level 0) sits in a block entered once per tile (read from the PTX)."""
    from pyscale.testing import aot_specs, compile_report

    rows = compile_report.rows(aot_specs.entries(["gemm"], op="gemm_fp8"), ("sm_90a",))
    waits = {(r["op"].split(".")[1], r["params"].get("promote"), r["params"]["tma"], r["params"]["persistent"]):
             r["loop_wait_levels"] for r in rows}
    assert waits == {("tensor", None, False, False): [1], ("row", None, False, False): [1],
                     ("row", None, True, False): [1], ("row", None, True, True): [0, 1],
                     ("block", "step", False, False): [0], ("block", "step", True, False): [0],
                     ("block", "group", False, False): [0, 1], ("block", "group", True, False): [0, 1],
                     ("block", "group", True, True): [0, 1]}
    assert all(r["tma"] > 0 for r in rows if r["params"]["tma"])


# ----------------------------------------------------------------------------- scale shapes (property)



@given(m=st.integers(1, 300), n=st.integers(1, 300), k=st.integers(1, 400),
       sa_shape=st.lists(st.integers(1, 4), max_size=2), sb_shape=st.lists(st.integers(1, 4), max_size=2))
def test_scale_shapes_are_accepted_or_named(m, n, k, sa_shape, sb_shape):
    """Any pair of scale shapes is either one of the three granularities or rejected naming a scale."""
    from pyscale.ops.gemm_fp8 import scale_granularity

    sa, sb = torch.empty(sa_shape), torch.empty(sb_shape)
    kb, nb = -(-k // 128), -(-n // 128)
    valid = {((), ()): "tensor", ((m, 1), (n, 1)): "row", ((m, kb), (nb, kb)): "block"}
    key = (tuple(sa_shape), tuple(sb_shape))
    if key in valid:
        # row-wise wins where the shapes coincide (K <= 128 and N == 1 compute the same thing)
        assert scale_granularity(m, n, k, sa, sb) == valid[key]
    else:
        with pytest.raises(ValueError, match="^scale_[ab] has a shape that fits no scale granularity"):
            scale_granularity(m, n, k, sa, sb)


# ----------------------------------------------------------------------------- GPU

def _needs_fp8_gpu():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9")


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
@pytest.mark.parametrize("mnk", [(1, 4096, 4096), (113, 1000, 1008), (4096, 4096, 4096)])
def test_gpu_bf16(granularity, mnk):
    _needs_fp8_gpu()
    qa, qb, sa, sb = (t.cuda() for t in _operands(*mnk, granularity))
    out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.bfloat16)
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity), out) >= FLOOR_DB[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
@pytest.mark.parametrize("mnk", [(113, 1000, 1008), (4096, 4096, 4096)])
def test_gpu_variants_bf16(variant, granularity, mnk):
    _needs_fp8_gpu()
    qa, qb, sa, sb = (t.cuda() for t in _operands(*mnk, granularity))
    bias = torch.randn(mnk[1], device="cuda").to(torch.bfloat16)
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.bfloat16, bias=bias)
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity, bias), out) >= FLOOR_DB[torch.bfloat16]


@pytest.mark.gpu
def test_gpu_matches_scaled_mm_rowwise():
    _needs_fp8_gpu()
    qa, qb, sa, sb = (t.cuda() for t in _operands(256, 512, 1024, "row"))
    ours = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32)
    theirs = torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.reshape(1, -1), out_dtype=torch.float32)
    assert sqnr_db(theirs, ours) >= FLOOR_DB[torch.float32]


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_more_than_2_31_elements():
    """a has 2^31 + 2048 elements, so its offsets only fit in int64."""
    _needs_fp8_gpu()
    m, n, k = 2**21 + 2, 128, 1024
    a = (torch.randn(m, k, device="cuda") * 2).to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    sa, sb = torch.ones(m, 1, device="cuda"), torch.ones(n, 1, device="cuda")
    out = ops.gemm_fp8(a, b, sa, sb, out_dtype=torch.bfloat16)
    tail = a[-64:].float() @ b.float().T  # the rows whose offsets exceed 2^31
    assert sqnr_db(tail, out[-64:]) >= FLOOR_DB[torch.bfloat16]


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
@pytest.mark.parametrize("m", [1, 17, 113, 255])
@pytest.mark.parametrize("n", [1, 97, 256])
@pytest.mark.parametrize("k", [16, 129, 384])
def test_full_shape_matrix(granularity, m, n, k):
    qa, qb, sa, sb = _operands(m, n, k, granularity, seed=m + n + k)
    out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32)
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity), out) >= FLOOR_DB[torch.float32]


# ----------------------------------------------------------------------------- variants (interpreter)


@pytest.fixture
def launched(monkeypatch):
    """The configs the op launched with."""
    configs = []
    real = kernels.launch_fp8_gemm

    def spy(*args, config=None, **kwargs):
        configs.append(config)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(kernels, "launch_fp8_gemm", spy)
    return configs


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("granularity", ["tensor", "row", "block"])
@pytest.mark.parametrize("mnk", [(1, 136, 208), (77, 140, 392), (33, 1, 17)])
def test_variants_match_dequantised_product(launched, variant, granularity, mnk):
    """Each variant on odd shapes, with a bias: K = 392 ends in a partial 128-group (the "group" promotion
    runs at its last step); TMA needs 16-byte rows in a, b and the fp32 c, which K = 17 (17-byte rows) and
    N = 140 (560-byte rows... of c: 140 * 4 = 560 = 35 * 16, aligned) decide; unaligned shapes take pointers.
    The persistent variants run 3 programs in the interpreter, each walking several tiles."""
    qa, qb, sa, sb = _operands(*mnk, granularity, seed=6)
    bias = torch.randn(mnk[1])
    with ops.gemm_variants(**VARIANTS[variant]):
        out = ops.gemm_fp8(qa, qb, sa, sb, out_dtype=torch.float32, bias=bias)
    assert sqnr_db(_oracle(qa, qb, sa, sb, granularity, bias), out) >= FLOOR_DB[torch.float32]
    (cfg,) = launched
    tma = "tma" in variant and mnk[2] % 16 == 0 and mnk[1] % 4 == 0
    assert cfg["TMA"] == tma and cfg["PERSISTENT"] == (tma and "persistent" in variant)
    # K <= 128 with N = 1: block-wise scales have row-wise shapes, and the op reads them as such
    block = scale_granularity(*mnk, sa, sb) == "block"
    group = block and "group" in variant
    assert cfg["PROMOTE"] == ("group" if group else "step") and (cfg["BLOCK_K"] < 128) == group


def test_tma_reads_aligned_strided_views(launched):
    """A view with a 16-byte aligned column offset and row stride goes through the descriptors; a
    column-major b cannot (its K is not contiguous) and takes pointers."""
    qa, qb, sa, sb = _operands(40, 72, 160, "block", seed=7)
    wide = torch.zeros(40, 320, dtype=torch.float8_e4m3fn)
    wide[:, 96:256] = qa
    with ops.gemm_variants(tma=True, fp8_block="group"):
        out = ops.gemm_fp8(wide[:, 96:256], qb, sa, sb, out_dtype=torch.float32)
        out_t = ops.gemm_fp8(qa, qb.t().contiguous().t(), sa, sb, out_dtype=torch.float32)
    for o in (out, out_t):
        assert sqnr_db(_oracle(qa, qb, sa, sb, "block"), o) >= FLOOR_DB[torch.float32]
    assert [c["TMA"] for c in launched] == [True, False]


def test_variants_are_selected_by_environment(monkeypatch, launched):
    qa, qb, sa, sb = _operands(8, 16, 256, "block")
    monkeypatch.setenv("PYSCALE_GEMM_FP8_BLOCK", "group")
    monkeypatch.setenv("PYSCALE_GEMM_TMA", "1")
    ops.gemm_fp8(qa, qb, sa, sb)
    with ops.gemm_variants(tma=False, fp8_block="step"):  # the context wins
        ops.gemm_fp8(qa, qb, sa, sb)
    assert [(c["PROMOTE"], c["TMA"]) for c in launched] == [("group", True), ("step", False)]
    monkeypatch.setenv("PYSCALE_GEMM_FP8_BLOCK", "sometimes")
    with pytest.raises(ValueError, match="^PYSCALE_GEMM_FP8_BLOCK must be one of step, group"):
        ops.gemm_fp8(qa, qb, sa, sb)
    monkeypatch.delenv("PYSCALE_GEMM_FP8_BLOCK")
    with pytest.raises(ValueError, match="^fp8_block must be one of"), ops.gemm_variants(fp8_block="often"):
        pass


def test_variant_configs_and_keys():
    """Tuned configs are kept per variant (the key holds it) and every candidate of a variant's space is
    of that variant, so autotuning never mixes them."""
    op = importlib.import_module("pyscale.ops.gemm_fp8")
    for promote in ("step", "group"):
        for tma in (False, True):
            key = op.tuning_key(4096, 4096, 4096, "block", torch.bfloat16, False, (9, 0), promote=promote, tma=tma)
            cands = op.TUNING.candidates(key)
            assert {(c["PROMOTE"], c["TMA"]) for c in cands} == {(promote, tma)}
            # "group" needs several K steps per group to overlap anything
            assert all(128 % c["BLOCK_K"] == 0 and (c["BLOCK_K"] < 128 or promote == "step") for c in cands)
    row = op.tuning_key(64, 256, 256, "row", torch.bfloat16, False, (9, 0), promote="group")
    assert row["promote"] == "step"  # promotion is block-wise only
