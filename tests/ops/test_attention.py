"""pyscale.ops.attention / attention_varlen: kernels vs a float64 oracle (DESIGN section 3), edge cases,
custom-op registration, FLOP formulas, bad input (ahead-of-time compiles: test_attention_aot.py).

Without CUDA the kernels run in the Triton interpreter (tests/conftest.py), so CI shapes stay small
(<= ~64 programs, <= ~8 loop steps per launch); the full matrix is marked slow / gpu.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyscale
from pyscale import formulas
from pyscale.ops import attention, attention_varlen
from pyscale.reference import attention as ref
from pyscale.testing.numerics import (
    assert_within_reference_error,
    gpu_like_casts,  # noqa: F401  (a fixture)
)

ops_mod = importlib.import_module("pyscale.ops.attention")  # the module (pyscale.ops.attention is the function)
kernels = importlib.import_module("pyscale.kernels.attention")
bwd_kernels = importlib.import_module("pyscale.kernels.attention_bwd")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


# ----------------------------------------------------------------------------- helpers

def _rand(*shape, dtype, gen, device=DEVICE):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def _err(a: torch.Tensor, oracle: torch.Tensor) -> float:
    return (a.double() - oracle.double()).abs().max().item() if a.numel() else 0.0


def _window_kw(window):
    left, right = (-1, -1) if window is None else window
    return {"window_left": left, "window_right": right}


def _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, dtype, seed=0, backward=True, qk_mult=1.0,
                          also_fused=False):
    """The op (and its default backward) against the float64 oracle by DESIGN's rule; qk_mult scales q and
    k (large logits); also_fused checks the fused backward kernel on the same forward too."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _rand(b, sq, hq, d, dtype=dtype, gen=gen), _rand(b, sk, hkv, d, dtype=dtype, gen=gen), \
        _rand(b, sk, hkv, d, dtype=dtype, gen=gen)
    if qk_mult != 1.0:
        q, k = (q.float() * qk_mult).to(dtype), (k.float() * qk_mult).to(dtype)
    do = _rand(b, sq, hq, d, dtype=dtype, gen=gen)
    qg, kg, vg = (t.clone().requires_grad_(backward) for t in (q, k, v))
    out, lse = attention(qg, kg, vg, causal=causal, window=window, return_lse=True)
    kw = {"causal": causal, "scale": d ** -0.5, **_window_kw(window)}
    o64, lse64 = ref.attention(q.double(), k.double(), v.double(), **kw)
    olow, _ = ref.attention(q, k, v, compute_dtype=dtype, **kw)
    assert_within_reference_error("out", out, olow, o64)
    assert lse.dtype == torch.float32 and lse.shape == (b, hq, sq)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse64)), "lse -inf rows differ from the oracle"
    finite = torch.isfinite(lse64)
    assert (lse[finite].double() - lse64[finite]).abs().max().item() <= 1e-5 * (1 + lse64[finite].abs().max().item()) \
        if finite.any() else True
    if not backward:
        return
    out.backward(do)
    g64 = ref.attention_backward(do.double(), q.double(), k.double(), v.double(), **kw)
    glow = ref.attention_backward(do, q, k, v, compute_dtype=dtype, **kw)
    for name, got, low, orc in zip(("dq", "dk", "dv"), (qg.grad, kg.grad, vg.grad), glow, g64):
        assert got.shape == orc.shape and got.dtype == dtype
        assert_within_reference_error(name, got, low, orc, gradient=True)
    if also_fused:
        fused = kernels.attention_backward(do, q, k, v, out.detach(), lse, variant="fused", **kw)
        for name, got, low, orc in zip(("dq", "dk", "dv"), fused, glow, g64):
            assert_within_reference_error(f"fused {name}", got, low, orc, gradient=True)


# ----------------------------------------------------------------------------- numerics (CI)

CASES = [
    # b, sq, sk, hq, hkv, d, causal, window
    pytest.param(1, 1, 1, 2, 2, 32, False, None, id="seq1"),
    pytest.param(1, 1, 1, 2, 2, 32, True, None, id="seq1-causal"),
    pytest.param(1, 17, 17, 2, 2, 64, True, None, id="s17-causal"),
    pytest.param(1, 113, 113, 6, 2, 32, True, None, id="s113-gqa6:2-causal"),
    pytest.param(2, 17, 113, 8, 1, 32, True, None, id="sq<sk-mqa8:1-causal"),
    pytest.param(1, 113, 17, 4, 2, 32, True, None, id="sq>sk-causal-empty-rows"),
    pytest.param(1, 64, 64, 2, 2, 64, False, None, id="s64-noncausal"),
    pytest.param(1, 100, 70, 2, 1, 80, False, (20, 5), id="window-20-5-d80"),
    pytest.param(1, 70, 100, 2, 2, 96, True, (16, -1), id="causal+window-d96"),
    pytest.param(1, 40, 10, 1, 1, 32, False, (0, 0), id="window-excludes-rows"),
    pytest.param(1, 24, 40, 2, 1, 128, True, None, id="d128-tiny"),
    pytest.param(1, 16, 20, 1, 1, 256, False, None, id="d256-tiny"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,causal,window", CASES)
def test_matches_float64_oracle(b, sq, sk, hq, hkv, d, causal, window, dtype):
    """Both backward variants in fp32 (they share their inner loops, so fp16 checks the default only)."""
    _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, dtype, also_fused=dtype == torch.float32)


LARGE_LOGIT_CASES = [
    pytest.param(1, 113, 113, 6, 2, 32, True, None, 4.0, id="s113-gqa6:2-causal-x4"),
    pytest.param(1, 100, 70, 2, 1, 80, False, (20, 5), 4.0, id="window-20-5-d80-x4"),
    pytest.param(1, 24, 40, 2, 1, 128, True, None, 3.0, id="d128-causal-x3"),
]


@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,causal,window,mult", LARGE_LOGIT_CASES)
def test_large_logits_fp32(b, sq, sk, hq, hkv, d, causal, window, mult):
    """q and k scaled x3-x4 (logits with a standard deviation of 9-16): the backward recomputes p from the
    forward's row statistic, so a rounding of that exponent scales a whole row of p; both variants must
    stay within 3x the fp32 reference's gradient error (they did not with a log2 -> ln -> log2 round trip
    and scores formed from differently laid-out operands)."""
    _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, torch.float32, qk_mult=mult, also_fused=True)


@pytest.mark.usefixtures("gpu_like_casts")
@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,causal,window", [
    (1, 40, 33, 4, 2, 64, True, None), (1, 20, 50, 2, 1, 32, False, (8, 4))])
def test_bfloat16(b, sq, sk, hq, hkv, d, causal, window):
    """bf16 against the op-by-op bf16 reference. In the interpreter the kernels compute in fp32 but round
    P and dS to bf16 before their dots (ROUND_BF16), as the GPU path does, with the interpreter's casts
    made round-to-nearest-even like a GPU's (`gpu_like_casts`); natively on a GPU."""
    _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, torch.bfloat16, also_fused=True)


def test_rows_with_nothing_to_attend_are_zero_with_neg_inf_lse_and_zero_grads():
    gen = torch.Generator().manual_seed(1)
    q, k, v = _rand(1, 40, 2, 32, dtype=torch.float16, gen=gen), _rand(1, 8, 1, 32, dtype=torch.float16, gen=gen), \
        _rand(1, 8, 1, 32, dtype=torch.float16, gen=gen)
    q.requires_grad_(True)
    out, lse = attention(q, k, v, causal=True, return_lse=True)  # bottom-right: rows 0..31 see no key
    out.float().pow(2).sum().backward()
    assert torch.all(out[:, :32] == 0) and torch.all(torch.isneginf(lse[:, :, :32]))
    assert torch.isfinite(lse[:, :, 32:]).all() and out[:, 32:].abs().sum() > 0
    assert torch.all(q.grad[:, :32] == 0) and not torch.isnan(q.grad).any()
    dq, dk, dv = kernels.attention_backward(2 * out.detach(), q.detach(), k, v, out.detach(), lse, causal=True,
                                            scale=32 ** -0.5, variant="fused")
    assert torch.equal(dq, q.grad) and not torch.isnan(dk).any() and not torch.isnan(dv).any()


def test_seq_k_zero_gives_zeros():
    q = torch.randn(1, 5, 2, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 0, 2, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(1, 0, 2, 32, device=DEVICE, requires_grad=True)
    out, lse = attention(q, k, v, return_lse=True)
    out.sum().backward()
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse)) and torch.all(q.grad == 0)
    assert k.grad.shape == k.shape


@pytest.mark.parametrize("b,sq,sk", [(0, 5, 6), (1, 0, 6), (2, 0, 0)])
def test_empty_batch_or_sequence(b, sq, sk):
    q = torch.randn(b, sq, 4, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(b, sk, 2, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(b, sk, 2, 32, device=DEVICE, requires_grad=True)
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == q.shape and lse.shape == (b, 4, sq)
    out.sum().backward()
    assert k.grad.shape == k.shape and torch.all(k.grad == 0) and torch.all(v.grad == 0)


def test_head_dim_not_unit_stride_is_copied():
    gen = torch.Generator().manual_seed(11)
    q, k, v = (_rand(1, 19, 32, 2, dtype=torch.float32, gen=gen).transpose(2, 3) for _ in range(3))
    assert q.stride(-1) != 1
    out = attention(q, k, v, causal=True)
    expect = attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(out, expect)


def test_scale_argument():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (_rand(1, 20, 2, 32, dtype=torch.float32, gen=gen) for _ in range(3))
    out = attention(q, k, v, scale=0.37, causal=True)
    expect, _ = ref.attention(q.double(), k.double(), v.double(), causal=True, scale=0.37)
    assert _err(out, expect) < 1e-5
    assert _err(attention(q, k, v, causal=True), expect) > 1e-3  # the scale really changed something


@pytest.mark.parametrize("varlen", [False, True], ids=["fixed", "varlen"])
def test_tensor_descriptor_path_matches_pointer_path(varlen):
    """The opt-in TMA path (tensor descriptors clipped per sequence) gives the pointer path's results,
    forward and split backward."""
    gen = torch.Generator().manual_seed(13)
    if varlen:
        cu_q = torch.tensor([0, 5, 5, 40], dtype=torch.int32, device=DEVICE)
        cu_k = torch.tensor([0, 0, 9, 30], dtype=torch.int32, device=DEVICE)
        q, k, v = _rand(40, 4, 80, dtype=torch.float32, gen=gen), _rand(30, 2, 80, dtype=torch.float32, gen=gen), \
            _rand(30, 2, 80, dtype=torch.float32, gen=gen)
        kw = {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "max_seqlen_q": 35, "max_seqlen_k": 21}
    else:
        q, k, v = _rand(1, 70, 4, 64, dtype=torch.float32, gen=gen), _rand(1, 90, 2, 64, dtype=torch.float32, gen=gen), \
            _rand(1, 90, 2, 64, dtype=torch.float32, gen=gen)
        kw = {"window_left": 24}
    o_tma, l_tma = kernels.attention_forward(q, k, v, causal=True, scale=0.125, tma=True, **kw)
    o_ptr, l_ptr = kernels.attention_forward(q, k, v, causal=True, scale=0.125, tma=False, **kw)
    assert _err(o_tma, o_ptr) < 2e-6
    assert torch.equal(torch.isneginf(l_tma), torch.isneginf(l_ptr))
    fin = torch.isfinite(l_ptr)
    assert _err(l_tma[fin], l_ptr[fin]) < 2e-6
    # The split backward streams q/do (dk/dv) and k/v (dq) through per-sequence descriptors too.
    do = torch.randn(o_ptr.shape, generator=gen).to(DEVICE)
    g_tma = kernels.attention_backward(do, q, k, v, o_ptr, l_ptr, causal=True, scale=0.125, tma=True, **kw)
    g_ptr = kernels.attention_backward(do, q, k, v, o_ptr, l_ptr, causal=True, scale=0.125, tma=False, **kw)
    for a, b in zip(g_tma, g_ptr):
        assert _err(a, b) < 2e-6


@pytest.mark.parametrize("variant", ["split", "fused"])
@pytest.mark.parametrize("block", [(16, 16), (64, 32), (32, 64)])
def test_block_configs_cover_every_loop_phase(block, variant):
    """Different tile sizes move the boundary blocks (masked) and the interior (unmasked) of each loop;
    each must give the same math."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = _rand(1, 70, 2, 32, dtype=torch.float32, gen=gen), _rand(1, 90, 1, 32, dtype=torch.float32, gen=gen), \
        _rand(1, 90, 1, 32, dtype=torch.float32, gen=gen)
    do = _rand(1, 70, 2, 32, dtype=torch.float32, gen=gen)
    kw = {"causal": True, "scale": 32 ** -0.5, "window_left": 24, "window_right": -1}
    bm, bn = block
    out, lse = kernels.attention_forward(q, k, v, config=kernels.FwdConfig(bm, bn, 4, 1), **kw)
    grads = kernels.attention_backward(do, q, k, v, out, lse, config=kernels.BwdConfig(bm, bn, bn, bm, 4, 1),
                                       variant=variant, **kw)
    o64, _ = ref.attention(q.double(), k.double(), v.double(), **kw)
    g64 = ref.attention_backward(do.double(), q.double(), k.double(), v.double(), **kw)
    assert _err(out, o64) < 2e-6
    for g, e in zip(grads, g64):
        assert _err(g, e) < 1e-5


def test_non_contiguous_inputs_match_contiguous():
    gen = torch.Generator().manual_seed(4)
    qkv = _rand(2, 33, 3, 4, 32, dtype=torch.float16, gen=gen)  # a fused projection's output
    q, k, v = qkv[:, :, 0], qkv[:, :, 1, :2], qkv[:, :, 2, 2:]  # strided views, GQA 4:2
    do_t = _rand(2, 4, 33, 32, dtype=torch.float16, gen=gen).transpose(1, 2)  # (b, s, h, d), seq not innermost
    assert not q.is_contiguous() and not k.is_contiguous() and not do_t.is_contiguous()
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = attention(*leaves, causal=True)
    out.backward(do_t)
    leaves_c = [t.detach().contiguous().requires_grad_(True) for t in (q, k, v)]
    out_c = attention(*leaves_c, causal=True)
    out_c.backward(do_t.contiguous())
    assert torch.equal(out, out_c)
    for a, b in zip(leaves, leaves_c):
        assert torch.equal(a.grad, b.grad)


def test_backward_is_deterministic_and_uses_no_atomics():
    for module in (kernels, bwd_kernels, importlib.import_module("pyscale.kernels.attention_common")):
        assert "tl.atomic" not in inspect.getsource(module)  # dq, dk, dv are each written by one program
    gen = torch.Generator().manual_seed(5)
    q, k, v, do = (_rand(1, 50, 4, 32, dtype=torch.float16, gen=gen) for _ in range(4))
    k, v = k[:, :, :1], v[:, :, :1]
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attention(*leaves, causal=True).backward(do)
        runs.append([t.grad for t in leaves])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    out, lse = kernels.attention_forward(q, k, v, causal=True, scale=32 ** -0.5)
    fused = [kernels.attention_backward(do, q, k, v, out, lse, causal=True, scale=32 ** -0.5, variant="fused")
             for _ in range(2)]
    for a, b in zip(*fused):
        assert torch.equal(a, b)


class _LaunchRecorder:
    """Stands in for a @triton.jit kernel: records its name at each launch, then launches it."""

    def __init__(self, kernel, name: str, calls: list[str]):
        self.kernel, self.name, self.calls = kernel, name, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(self.name)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_pyscale_attn_bwd_selects_the_backward_kernels(monkeypatch):
    """PYSCALE_ATTN_BWD picks the kernels the op launches, and the variant is part of the backward's
    autotuning key (each variant has its own tuned configs)."""
    calls: list[str] = []
    for name in ("_attn_bwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
        monkeypatch.setattr(bwd_kernels, name, _LaunchRecorder(getattr(bwd_kernels, name), name, calls))
    keys: list[dict] = []
    tuning_key = ops_mod.tuning_key
    monkeypatch.setattr(ops_mod, "tuning_key", lambda *a, **kw: keys.append(tuning_key(*a, **kw)) or keys[-1])
    gen = torch.Generator().manual_seed(14)
    q, k, v, do = (_rand(1, 20, 2, 32, dtype=torch.float32, gen=gen) for _ in range(4))
    grads = {}
    for value, expected in (("fused", ["_attn_bwd"]), ("split", ["_attn_bwd_dkdv", "_attn_bwd_dq"]),
                            (None, ["_attn_bwd_dkdv", "_attn_bwd_dq"])):
        if value is None:
            monkeypatch.delenv("PYSCALE_ATTN_BWD", raising=False)
        else:
            monkeypatch.setenv("PYSCALE_ATTN_BWD", value)
        calls.clear()
        keys.clear()
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attention(*leaves, causal=True).backward(do)
        assert calls == expected, (value, calls)
        assert [key.get("variant") for key in keys] == [None, value or "split"]  # forward, backward
        assert not any(key["tma"] for key in keys) or CUDA  # the interpreter never loads through TMA
        grads[value] = [t.grad for t in leaves]
    for a, b in zip(grads["fused"], grads["split"]):
        assert _err(a, b) < 1e-6
    monkeypatch.setenv("PYSCALE_ATTN_BWD", "atomic")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    with pytest.raises(ValueError, match="PYSCALE_ATTN_BWD must be one of split, fused: got 'atomic'"):
        attention(*leaves, causal=True).backward(do)
    with pytest.raises(ValueError, match="variant must be one of split, fused"):
        kernels.bwd_config(64, variant="both")


def test_row_stride_at_the_int32_offset_limit_is_a_clear_error():
    """In-tile offsets are int32: a sequence stride of 2**24 elements would wrap, so the Triton path refuses
    it naming the tensor (the reference has no such limit)."""
    big = torch.zeros(2**24 + 32, dtype=torch.float16, device=DEVICE)
    wide = big.as_strided((1, 2, 1, 32), (2**24 + 32, 2**24, 32, 1))
    small = torch.zeros(1, 2, 1, 32, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match=r"q must have a sequence stride below 2\*\*24 .* got stride 16777216"):
        attention(wide, small, small)
    with pytest.raises(ValueError, match=r"k must have a sequence stride below 2\*\*24"):
        attention(small, wide, small)
    out, lse = kernels.attention_forward(small, small, small, causal=False, scale=1.0)
    with pytest.raises(ValueError, match=r"grad_out must have a sequence stride below 2\*\*24"):
        kernels.attention_backward(wide, small, small, small, out, lse, causal=False, scale=1.0)
    with pytest.raises(ValueError, match=r"v must have a sequence stride below 2\*\*24"):
        kernels.attention_forward(small[0], small[0], wide[0], causal=False, scale=1.0,
                                  cu_seqlens_q=torch.tensor([0, 2], dtype=torch.int32, device=DEVICE),
                                  cu_seqlens_k=torch.tensor([0, 2], dtype=torch.int32, device=DEVICE),
                                  max_seqlen_q=2, max_seqlen_k=2)
    with pyscale.backend("reference"):
        assert attention(wide, small, small).shape == wide.shape


# ----------------------------------------------------------------------------- varlen

VARLEN_CASES = [
    pytest.param([0, 1, 17, 0, 40], [3, 1, 30, 5, 40], 4, 2, 32, True, None, id="causal-gqa-len0-len1"),
    pytest.param([5, 0, 33], [5, 9, 20], 2, 2, 64, False, None, id="noncausal-len0"),
    pytest.param([20, 1, 36], [12, 0, 36], 2, 1, 32, True, (8, -1), id="causal-window-k0"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("lens_q,lens_k,hq,hkv,d,causal,window", VARLEN_CASES)
def test_varlen_matches_oracle(lens_q, lens_k, hq, hkv, d, causal, window, dtype):
    gen = torch.Generator().manual_seed(6)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    tq, tk = sum(lens_q), sum(lens_k)
    q, k, v = _rand(tq, hq, d, dtype=dtype, gen=gen), _rand(tk, hkv, d, dtype=dtype, gen=gen), \
        _rand(tk, hkv, d, dtype=dtype, gen=gen)
    do = _rand(tq, hq, d, dtype=dtype, gen=gen)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attention_varlen(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, window=window,
                                return_lse=True)
    out.backward(do)
    kw = {"causal": causal, "scale": d ** -0.5, **_window_kw(window)}
    o64, lse64 = ref.attention_varlen(q.double(), k.double(), v.double(), cu_q, cu_k, **kw)
    olow, _ = ref.attention_varlen(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw)
    assert lse.shape == (hq, tq)
    assert_within_reference_error("out", out, olow, o64)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse64))
    g64 = ref.attention_varlen_backward(do.double(), q.double(), k.double(), v.double(), cu_q, cu_k, **kw)
    glow = ref.attention_varlen_backward(do, q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw)
    for name, leaf, low, orc in zip(("dq", "dk", "dv"), leaves, glow, g64):
        assert_within_reference_error(name, leaf.grad, low, orc, gradient=True)
    fused = None
    if dtype == torch.float32:  # the fused backward on the same forward
        fused = kernels.attention_backward(do, q, k, v, out.detach(), lse, variant="fused", cu_seqlens_q=cu_q,
                                           cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                                           **kw)
        for name, got, low, orc in zip(("dq", "dk", "dv"), fused, glow, g64):
            assert_within_reference_error(f"fused {name}", got, low, orc, gradient=True)
    # A length-0 key sequence: its queries give 0 / -inf / zero dq, never NaN.
    for i, (a, b) in enumerate(zip(lens_q, lens_k)):
        if b == 0 and a > 0:
            rows = slice(int(cu_q[i]), int(cu_q[i + 1]))
            assert torch.all(out[rows] == 0) and torch.all(torch.isneginf(lse[:, rows]))
            assert torch.all(leaves[0].grad[rows] == 0)
            assert fused is None or torch.all(fused[0][rows] == 0)


def test_varlen_equals_fixed_length_per_sequence():
    gen = torch.Generator().manual_seed(7)
    lens = [9, 30]
    cu = torch.tensor([0, 9, 39], dtype=torch.int32, device=DEVICE)
    q, k, v = (_rand(39, 2, 32, dtype=torch.float32, gen=gen) for _ in range(3))
    out = attention_varlen(q, k, v, cu, cu, 30, 30, causal=True)
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        fixed = attention(q[None, sl], k[None, sl], v[None, sl], causal=True)[0]
        assert _err(out[sl], fixed) < 1e-6
        start += n


# ----------------------------------------------------------------------------- registration

def _small(dtype=torch.float32, seed=8):
    gen = torch.Generator().manual_seed(seed)
    return (_rand(1, 9, 4, 32, dtype=dtype, gen=gen), _rand(1, 13, 2, 32, dtype=dtype, gen=gen),
            _rand(1, 13, 2, 32, dtype=dtype, gen=gen))


def test_opcheck_fixed_length():
    q, k, v = _small()
    torch.library.opcheck(ops_mod.attention_fwd, (q, k, v, True, 0.25, -1, -1))
    out, lse = ops_mod.attention_fwd(q, k, v, True, 0.25, 4, -1)
    torch.library.opcheck(ops_mod.attention_bwd, (torch.randn_like(out), q, k, v, out, lse, True, 0.25, 4, -1))
    torch.library.opcheck(ops_mod.attention_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, True, 0.25, 4, -1, torch.randn_like(lse)))


def test_opcheck_varlen():
    gen = torch.Generator().manual_seed(9)
    cu_q = torch.tensor([0, 0, 4, 11], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 3, 3, 12], dtype=torch.int32, device=DEVICE)
    q, k, v = _rand(11, 4, 32, dtype=torch.float32, gen=gen), _rand(12, 2, 32, dtype=torch.float32, gen=gen), \
        _rand(12, 2, 32, dtype=torch.float32, gen=gen)
    args = (q, k, v, cu_q, cu_k, 7, 9, True, 0.25, -1, -1)
    torch.library.opcheck(ops_mod.attention_varlen_fwd, args)
    out, lse = ops_mod.attention_varlen_fwd(*args)
    torch.library.opcheck(ops_mod.attention_varlen_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, cu_q, cu_k, 7, 9, True, 0.25, -1, -1))


def test_reference_backward_matches_autograd_and_gradcheck():
    """The written-out reference backward (used as the gradient oracle) agrees with autograd."""
    gen = torch.Generator().manual_seed(10)
    q, k, v = (_rand(1, 7, 4, 8, dtype=torch.float64, gen=gen, device="cpu").requires_grad_(True) for _ in range(3))
    k, v = k[:, :5, :2].detach().requires_grad_(True), v[:, :5, :2].detach().requires_grad_(True)
    kw = {"causal": True, "scale": 0.3, "window_left": 3, "window_right": -1}
    assert torch.autograd.gradcheck(lambda a, b, c: ref.attention(a, b, c, **kw)[0], (q, k, v))
    do = torch.randn(1, 7, 4, 8, dtype=torch.float64, generator=gen)
    auto = torch.autograd.grad(ref.attention(q, k, v, **kw)[0], (q, k, v), do)
    for a, b in zip(auto, ref.attention_backward(do, q, k, v, **kw)):
        assert _err(a, b) < 1e-12


def test_backends_agree_and_forced_backend_is_used():
    q, k, v = _small()
    with pyscale.backend("reference"):
        out_ref = attention(q, k, v, causal=True)
    out_auto = attention(q, k, v, causal=True)
    assert _err(out_auto, out_ref) < 1e-5
    from pyscale.ops._dispatch import select_backend

    expected = "triton" if CUDA or kernels.interpreting() else "reference"
    assert select_backend("attention", q.device, ops_mod._FWD) == expected


@pytest.mark.parametrize("varlen", [False, True], ids=["fixed", "varlen"])
def test_lse_is_differentiable(varlen):
    """A loss on lse (e.g. a z-loss) gets its gradient: compared with autograd through the float64 reference."""
    gen = torch.Generator().manual_seed(12)
    q, k, v = _rand(1, 30, 4, 32, dtype=torch.float32, gen=gen), _rand(1, 20, 2, 32, dtype=torch.float32, gen=gen), \
        _rand(1, 20, 2, 32, dtype=torch.float32, gen=gen)
    w_out, w_lse = _rand(1, 30, 4, 32, dtype=torch.float32, gen=gen), _rand(1, 4, 30, dtype=torch.float32, gen=gen)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    if varlen:
        cu_q = torch.tensor([0, 30], dtype=torch.int32, device=DEVICE)
        cu_k = torch.tensor([0, 20], dtype=torch.int32, device=DEVICE)
        out, lse = attention_varlen(*(t[0] for t in leaves), cu_q, cu_k, 30, 20, causal=True, return_lse=True)
        out, lse = out[None], lse[None]
    else:
        out, lse = attention(*leaves, causal=True, return_lse=True)
    ((out * w_out).sum() + (lse * w_lse).sum()).backward()
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    o64, l64 = ref.attention(*ref_leaves, causal=True)  # rows 0..9 have no key: lse -inf, no gradient
    finite = torch.isfinite(l64)
    ((o64 * w_out.double()).sum() + (torch.where(finite, l64, 0) * w_lse.double()).sum()).backward()
    for got, leaf in zip(leaves, ref_leaves):
        assert _err(got.grad, leaf.grad) < 1e-4


# ----------------------------------------------------------------------------- FLOPs

@given(sq=st.integers(0, 40), sk=st.integers(0, 40), causal=st.booleans(),
       left=st.integers(-1, 12), right=st.integers(-1, 12))
def test_pair_count_matches_mask(sq, sk, causal, left, right):
    expected = int(ref.band_mask(sq, sk, causal, left, right).sum())
    assert formulas.attention_pairs(sq, sk, causal=causal, window=(left, right)) == expected


def test_flop_formulas():
    f = formulas.attention_flops(2, 1024, 1024, 8, 128, causal=True)
    assert f.executed == 4 * (1024 * 1025 // 2) * 2 * 8 * 128
    assert f.model == 4 * 2 * 1024 * 1024 * 8 * 128
    b = formulas.attention_flops(2, 1024, 1024, 8, 128, causal=True, pass_="bwd")
    assert b.executed * 2 == f.executed * 5 and b.model == 2 * f.model
    both = formulas.attention_flops(2, 1024, 1024, 8, 128, causal=True, pass_="fwd+bwd")
    assert both == (f.executed + b.executed, f.model + b.model)
    with pytest.raises(ValueError, match="pass_"):
        formulas.attention_flops(1, 1, 1, 1, 8, pass_="forward")


def test_flop_formulas_registry_reads_custom_op_calls():
    q, k, v = _small()
    fwd = formulas.formulas_for("pyscale::attention_fwd").executed((q, k, v, True, 0.25, -1, -1), {}, None)
    assert fwd == formulas.attention_flops(1, 9, 13, 4, 32, causal=True).executed
    bwd = formulas.formulas_for("pyscale::attention_bwd").executed(
        (q, q, k, v), {"out": q, "lse": None, "causal": False, "scale": 1.0, "window_left": 2, "window_right": 0}, None)
    assert bwd == formulas.attention_flops(1, 9, 13, 4, 32, window=(2, 0), pass_="bwd").executed
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 13], dtype=torch.int32)
    vq = q[0]
    vf = formulas.formulas_for("pyscale::attention_varlen_fwd").executed(
        (vq, k[0], v[0], cu_q, cu_k, 5, 7, True, 1.0, -1, -1), {}, None)
    assert vf == 4 * 4 * 32 * (formulas.attention_pairs(4, 6, causal=True) + formulas.attention_pairs(5, 7, causal=True))
    model = formulas.formulas_for("pyscale::attention_bwd").model(
        (q, q, k, v), {"out": q, "lse": None, "causal": True, "scale": 1.0, "window_left": -1, "window_right": -1}, None)
    assert model == 8 * 9 * 13 * 4 * 32
    out, lse = ops_mod.attention_fwd(q, k, v, True, 0.25, -1, -1)
    moved = formulas.formulas_for("pyscale::attention_fwd").bytes((q, k, v, True, 0.25, -1, -1), {}, (out, lse))
    assert moved == 4 * (2 * q.numel() + k.numel() + v.numel() + lse.numel())
    attention_ops = {op for op in formulas.BUILTIN_FORMULAS if op.startswith("pyscale::attention")}
    assert attention_ops == {"pyscale::attention_fwd", "pyscale::attention_bwd",
                             "pyscale::attention_varlen_fwd", "pyscale::attention_varlen_bwd"}
    assert all(f.model is not None and f.bytes is not None for f in map(formulas.formulas_for, attention_ops))


def test_profiler_counts_forward_and_backward_ops():
    flops_mod = pytest.importorskip("pyscale.profile.flops")
    q, k, v = (t.requires_grad_(True) for t in _small())
    with pyscale.backend("reference"), flops_mod.FlopCounter() as counter:
        attention(q, k, v, causal=True).sum().backward()
    by_op = counter.counts().by_op()
    assert by_op[("forward", "pyscale::attention_fwd")].flops == formulas.attention_flops(
        1, 9, 13, 4, 32, causal=True).executed
    assert by_op[("backward", "pyscale::attention_bwd")].flops == formulas.attention_flops(
        1, 9, 13, 4, 32, causal=True, pass_="bwd").executed


# ----------------------------------------------------------------------------- bad input

def _qkv(hq=4, hkv=2, d=32, sq=5, sk=6, b=1, dtype=torch.float16):
    return (torch.zeros(b, sq, hq, d, dtype=dtype), torch.zeros(b, sk, hkv, d, dtype=dtype),
            torch.zeros(b, sk, hkv, d, dtype=dtype))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda q, k, v: (q, k.float(), v), TypeError, "k must have the dtype of q"),
    (lambda q, k, v: (q, k, v.half().to(torch.bfloat16)), TypeError, "v must have the dtype of q"),
    (lambda q, k, v: (q.to(torch.int32), k, v), TypeError, "q must have dtype"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "q must have dtype"),
    (lambda q, k, v: (q, k[..., :16], v[..., :16]), ValueError, "k must have the same head_dim as q"),
    (lambda q, k, v: (q, k, v[:, :3]), ValueError, "v must have the shape of k"),
    (lambda q, k, v: (q, k[:, :, :1].expand(1, 6, 3, 32), v[:, :, :1].expand(1, 6, 3, 32)), ValueError, "heads_q"),
    (lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12]), ValueError, "head_dim"),
    (lambda q, k, v: (torch.zeros(1, 5, 1, 512, dtype=q.dtype),) + (torch.zeros(1, 6, 1, 512, dtype=q.dtype),) * 2,
     ValueError, "head_dim"),
    (lambda q, k, v: (q, torch.cat([k, k]), torch.cat([v, v])), ValueError, "k must have the batch size of q"),
    (lambda q, k, v: (q[0], k, v), ValueError, "q must be 4-D"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
    (lambda q, k, v: (q, k.to("meta"), v), ValueError, "device"),
])
def test_bad_input_names_the_argument(mutate, exc, match):
    q, k, v = mutate(*_qkv())
    with pytest.raises(exc, match=match):
        attention(q, k, v)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"window": (3,)}, TypeError, "window"),
    ({"window": (-2, 0)}, ValueError, "window"),
    ({"window": (1.5, 0)}, TypeError, "window"),
    ({"scale": float("nan")}, ValueError, "scale"),
])
def test_bad_options_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        attention(*_qkv(), **kwargs)


@given(hq=st.integers(1, 16), hkv=st.integers(1, 16))
def test_head_divisibility_is_checked(hq, hkv):
    q, k, v = _qkv(hq=hq, hkv=hkv)
    if hq % hkv:
        with pytest.raises(ValueError, match="heads_q must be divisible by heads_kv"):
            attention(q, k, v)
    else:
        with pyscale.backend("reference"):
            assert attention(q, k, v).shape == q.shape


def _varlen_args():
    q, k, v = torch.zeros(7, 4, 32), torch.zeros(9, 2, 32), torch.zeros(9, 2, 32)
    return q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0, 4, 9], dtype=torch.int32), 4, 5


@pytest.mark.parametrize("index,value,exc,match", [
    (3, torch.tensor([0, 3, 7], dtype=torch.int64), TypeError, "cu_seqlens_q must have dtype int32"),
    (4, torch.tensor([0, 5, 4, 9], dtype=torch.int32), ValueError, "cu_seqlens_k must be non-decreasing"),
    (4, torch.tensor([0, 9], dtype=torch.int32), ValueError, "cu_seqlens_k must have the length of cu_seqlens_q"),
    (3, torch.tensor([0, 3, 8], dtype=torch.int32), ValueError, "cu_seqlens_q must end at"),
    (3, torch.tensor([1, 3, 7], dtype=torch.int32), ValueError, "cu_seqlens_q must start at 0"),
    (3, torch.tensor([[0, 3, 7]], dtype=torch.int32), ValueError, "cu_seqlens_q must be 1-D"),
    (5, 3, ValueError, "max_seqlen_q"),
    (6, 4, ValueError, "max_seqlen_k"),
    (1, torch.zeros(9, 2, 16), ValueError, "k must have the same head_dim as q"),
    (1, torch.zeros(9, 3, 32), ValueError, "v must have the shape of k"),
])
def test_varlen_bad_input_names_the_argument(index, value, exc, match):
    args = list(_varlen_args())
    args[index] = value
    with pytest.raises(exc, match=match):
        attention_varlen(*args)


def test_varlen_compiles_fullgraph_without_reading_cu_seqlens():
    """max_seqlen_q/k are arguments (as in FlashAttention's varlen API), so under torch.compile nothing reads
    cu_seqlens on the host: fullgraph forward and backward, equal to eager; a bad cu_seqlens is caught by
    the device-side assert instead of a host check."""
    gen = torch.Generator().manual_seed(21)
    q = _rand(12, 4, 16, dtype=torch.float32, gen=gen).requires_grad_(True)
    k = _rand(10, 2, 16, dtype=torch.float32, gen=gen).requires_grad_(True)
    v = _rand(10, 2, 16, dtype=torch.float32, gen=gen).requires_grad_(True)
    cu_q = torch.tensor([0, 5, 5, 12], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 4, 10], dtype=torch.int32)

    def step(q, k, v, cu_q, cu_k):
        return attention_varlen(q, k, v, cu_q, cu_k, 7, 6, causal=True).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # raises on any graph break
    loss = compiled(q, k, v, cu_q, cu_k)
    grads = torch.autograd.grad(loss, (q, k, v))
    eager = step(q, k, v, cu_q, cu_k)
    eager_grads = torch.autograd.grad(eager, (q, k, v))
    assert torch.allclose(loss, eager)
    for g, e in zip(grads, eager_grads):
        assert torch.allclose(g, e)
    with pytest.raises(RuntimeError, match="cu_seqlens_k must start at 0, be non-decreasing"):
        compiled(q.detach(), k.detach(), v.detach(), cu_q, torch.tensor([0, 3, 4, 11], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"max_seqlen_q \(7\) must be >= its longest"):
        compiled(q.detach(), k.detach(), v.detach(), torch.tensor([0, 1, 2, 12], dtype=torch.int32), cu_k)


# ----------------------------------------------------------------------------- full matrix (slow / gpu)

SLOW_SHAPES = [(1, 1023, 1023, 4, 4), (2, 256, 512, 8, 1), (1, 512, 256, 6, 2), (3, 129, 127, 4, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("b,sq,sk,hq,hkv", SLOW_SHAPES)
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, (64, -1)), (False, (32, 16))])
def test_full_matrix(b, sq, sk, hq, hkv, d, causal, window):
    dtypes = [torch.float16, torch.bfloat16] if CUDA else [torch.float16]
    for dtype in dtypes:
        _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, dtype)
    if not CUDA:
        _check_against_oracle(b, sq, sk, hq, hkv, d, causal, window, torch.float32, backward=False)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_gpu_matches_oracle(d, causal, dtype):
    _check_against_oracle(2, 1000, 1100, 8, 2, d, causal, None, dtype, also_fused=True)
    _check_against_oracle(1, 777, 555, 4, 1, d, causal, (100, 20), dtype, also_fused=True)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_more_than_2_to_31_elements():
    """Varlen packing 2^31+ elements in q: the offsets must be int64 all the way."""
    heads, d, seq = 16, 128, 1024
    n_seq = (2**31) // (heads * d * seq) + 2
    total = n_seq * seq
    cu = torch.arange(0, total + 1, seq, dtype=torch.int32, device="cuda")
    q = torch.randn(total, heads, d, dtype=torch.bfloat16, device="cuda")
    k, v = torch.randn_like(q[:, :2]), torch.randn_like(q[:, :2])
    assert q.numel() > 2**31
    out = attention_varlen(q, k, v, cu, cu, seq, seq, causal=True)
    last = slice(total - seq, total)
    expect, _ = ref.attention(q[None, last], k[None, last], v[None, last], causal=True)
    assert _err(out[last], expect[0]) < 2e-2
