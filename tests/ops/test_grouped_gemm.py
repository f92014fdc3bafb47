"""grouped_gemm: forward and gradients vs a per-expert loop by the DESIGN.md section 3 rule; layouts with
skewed loads, empty experts and dropped slots; opcheck; bad input."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import pyscale
from pyscale.ops import grouped_gemm, moe_align
from pyscale.testing.numerics import assert_within_reference_error


def _routing(t, k, e, seed, skew=False):
    g = torch.Generator().manual_seed(seed)
    if skew:
        ids = torch.zeros(t, k, dtype=torch.int32)
        ids[:, 1:] = torch.arange(1, k, dtype=torch.int32)  # every token to experts 0..k-1, the rest empty
        return ids
    return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32).reshape(t, k)


def _loop(a, w, w2, al, gather, activation):
    """Per-expert loop on the aligned layout, op by op in the dtype of the inputs (differentiable)."""
    rows, n = al.sorted_ids.shape[0], w.shape[1]
    slots = al.slot_pos.shape[0]
    out = torch.zeros(rows, n, dtype=a.dtype)
    for e in range(w.shape[0]):
        lo, hi = int(al.offsets[e]), int(al.offsets[e + 1])
        sid = al.sorted_ids[lo:hi].long()
        r = torch.arange(lo, hi)[sid < slots]
        if r.numel() == 0:
            continue
        src = a[al.sorted_ids[r].long() // al.top_k] if gather else a[r]
        h = src @ w[e].T
        if activation == "swiglu":
            h = F.silu(h) * (src @ w2[e].T)
        out = out.index_copy(0, r, h)
    return out


def _errors(dtype, tensors, run):
    """Errors of run(*tensors in dtype) [pyscale] and of the loop in dtype vs the float64 loop, for the
    output and every gradient."""
    g = torch.Generator().manual_seed(7)
    low = [x.detach().clone().to(dtype).requires_grad_(True) for x in tensors]
    ref = [x.detach().clone().to(dtype).requires_grad_(True) for x in tensors]
    hi = [x.double().requires_grad_(True) for x in tensors]
    out = run(low, "pyscale")
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    r_out = run(ref, "loop")
    r_out.backward(grad)
    o_out = run(hi, "loop")
    o_out.backward(grad.double())
    results = [(out, r_out, o_out)] + [(a.grad, b.grad, c.grad) for a, b, c in zip(low, ref, hi)]
    return results


def _assert_rule(results):
    """results from `_errors`: the output first, then the gradients of the inputs."""
    for i, (mine, ref, oracle) in enumerate(results):
        assert_within_reference_error("out" if i == 0 else f"grad {i - 1}", mine, ref, oracle, gradient=i > 0)


CASES = [  # (dtype, activation, gather, skew, capacity_factor)
    (torch.float32, "swiglu", True, False, None),
    (torch.float32, "none", False, False, None),
    (torch.float16, "swiglu", True, False, None),
    (torch.float16, "none", True, True, None),
    (torch.float16, "none", False, False, 0.5),
    (torch.bfloat16, "swiglu", True, False, None),
    (torch.float16, "swiglu", True, True, 0.75),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).removeprefix("torch.") for x in c))
def test_grouped_gemm_vs_loop(case):
    dtype, activation, gather, skew, cf = case
    t, k, e, kdim, n = 29, 2, 4, 48, 40
    ids = _routing(t, k, e, seed=1, skew=skew)
    al = moe_align(ids, e, 16, capacity_factor=cf)
    gen = torch.Generator().manual_seed(2)
    rows = al.sorted_ids.shape[0]
    a = torch.randn(t if gather else rows, kdim, generator=gen)
    w = torch.randn(e, n, kdim, generator=gen) / kdim**0.5
    w2 = torch.randn(e, n, kdim, generator=gen) / kdim**0.5
    tensors = [a, w, w2] if activation == "swiglu" else [a, w]

    def run(ts, which):
        aa, ww = ts[0], ts[1]
        ww2 = ts[2] if activation == "swiglu" else None
        act = None if activation == "none" else activation
        if which == "pyscale":
            return grouped_gemm(aa, ww, al, gather=gather, w2=ww2, activation=act)
        return _loop(aa, ww, ww2, al, gather, activation)

    results = _errors(dtype, tensors, run)
    out = results[0][0]
    # padding rows and rows past n_pad are exactly zero
    pad = al.sorted_ids.long() >= al.slot_pos.shape[0]
    assert torch.all(out[pad] == 0)
    if not gather:  # rows that hold no slot get no gradient
        assert torch.all(results[1][0][pad] == 0)
    _assert_rule(results)


def test_inference_skips_preactivations():
    ids = _routing(13, 2, 4, seed=6)
    al = moe_align(ids, 4, 16)
    a, w, w2 = torch.randn(13, 32), torch.randn(4, 48, 32), torch.randn(4, 48, 32)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    out_train, preact = torch.ops.pyscale.grouped_gemm(a, w, w2, *lay, 2, 16, "swiglu", True)
    out_infer, none = torch.ops.pyscale.grouped_gemm(a, w, w2, *lay, 2, 16, "swiglu", False)
    assert preact.shape == (al.sorted_ids.shape[0], 96) and none.numel() == 0
    assert torch.equal(out_train, out_infer)
    with torch.no_grad():
        assert torch.equal(grouped_gemm(a, w, al, gather=True, w2=w2, activation="swiglu"), out_train)


def test_empty_experts_get_zero_weight_gradient():
    ids = torch.zeros(9, 1, dtype=torch.int32)  # experts 1..3 empty
    al = moe_align(ids, 4, 16)
    a = torch.randn(9, 32, requires_grad=True)
    w = torch.randn(4, 32, 32, requires_grad=True)
    grouped_gemm(a, w, al, gather=True).sum().backward()
    assert torch.all(w.grad[1:] == 0) and w.grad[0].abs().sum() > 0


def test_reference_backend_agrees():
    ids = _routing(17, 2, 4, seed=3)
    al = moe_align(ids, 4, 16)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(17, 32, generator=gen), torch.randn(4, 48, 32, generator=gen),
              torch.randn(4, 48, 32, generator=gen)]
    grad = torch.randn(al.sorted_ids.shape[0], 48, generator=gen)
    results = []
    for backend in (None, "reference"):
        ts = [x.clone().requires_grad_(True) for x in inputs]
        with pyscale.backend(backend) if backend else contextlib.nullcontext():
            out = grouped_gemm(ts[0], ts[1], al, gather=True, w2=ts[2], activation="swiglu")
            out.backward(grad)
        results.append([out.detach()] + [x.grad for x in ts])
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_opcheck():
    ids = _routing(11, 2, 4, seed=4)
    al = moe_align(ids, 4, 16)
    a = torch.randn(11, 32, requires_grad=True)
    w = torch.randn(4, 32, 32, requires_grad=True)
    w2 = torch.randn(4, 32, 32, requires_grad=True)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    op = torch.ops.pyscale.grouped_gemm.default
    torch.library.opcheck(op, (a, w, w2, *lay, 2, 16, "swiglu", True))
    rows = al.sorted_ids.shape[0]
    torch.library.opcheck(op, (torch.randn(rows, 32, requires_grad=True), w, None, *lay, 0, 16, "none", False))
    out, preact = op(a.detach(), w.detach(), w2.detach(), *lay, 2, 16, "swiglu", True)
    torch.library.opcheck(torch.ops.pyscale.grouped_gemm_backward.default,
                          (torch.randn_like(out), a.detach(), w.detach(), w2.detach(), preact, *lay, 2, 16, "swiglu"))


def test_bad_inputs():
    ids = _routing(8, 2, 4, seed=5)
    al = moe_align(ids, 4, 16)
    a, w = torch.randn(8, 32), torch.randn(4, 16, 32)
    with pytest.raises(ValueError, match="a must have K"):
        grouped_gemm(torch.randn(8, 31), w, al, gather=True)
    with pytest.raises(ValueError, match="one matrix per expert"):
        grouped_gemm(a, torch.randn(3, 16, 32), al, gather=True)
    with pytest.raises(ValueError, match="one row per token"):
        grouped_gemm(torch.randn(9, 32), w, al, gather=True)
    with pytest.raises(ValueError, match="one row per aligned row"):
        grouped_gemm(a, w, al)
    with pytest.raises(ValueError, match="w2"):
        grouped_gemm(a, w, al, gather=True, activation="swiglu")
    with pytest.raises(ValueError, match="activation"):
        grouped_gemm(a, w, al, gather=True, activation="gelu")
    with pytest.raises(TypeError, match="w must have the dtype of a"):
        grouped_gemm(a, w.half(), al, gather=True)
    with pytest.raises(ValueError, match="power of two"):
        grouped_gemm(a, w, moe_align(ids, 4, 24), gather=True)
    with pytest.raises(TypeError, match="alignment"):
        grouped_gemm(a, w, tuple(al), gather=True)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,k,e,d,ff", [(4096, 8, 128, 2048, 768), (4096, 2, 8, 1024, 3584), (1, 1, 8, 256, 512)])
def test_grouped_gemm_gpu(dtype, t, k, e, d, ff):
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32).cuda()
    al = moe_align(ids, e, 64)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(t, d, generator=gen)
    w = torch.randn(e, ff, d, generator=gen) / d**0.5
    w2 = torch.randn(e, ff, d, generator=gen) / d**0.5

    def run(ts, which):
        ts = [x.cuda() for x in ts]
        if which == "pyscale":
            return grouped_gemm(ts[0], ts[1], al, gather=True, w2=ts[2], activation="swiglu").cpu()
        al_cpu = al._replace(**{f: getattr(al, f).cpu() for f in ("sorted_ids", "expert_ids", "n_pad", "slot_pos",
                                                                   "offsets", "tokens_per_expert", "dropped")})
        return _loop(*[x.cpu() for x in ts], al_cpu, True, "swiglu")

    _assert_rule(_errors(dtype, [a, w, w2], run))
