"""moe_combine: weighted gather-sum back to token order and its gradients (to y and to the routing
weights), with dropped slots; opcheck; bad input."""

from __future__ import annotations

import pytest
import torch

import pyscale
from pyscale.ops import moe_align, moe_combine


def _setup(t=23, k=3, e=6, d=40, cf=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    al = moe_align(ids, e, 16, capacity_factor=cf)
    y = torch.randn(t * k, d, generator=g).to(dtype)
    w = torch.rand(t, k, generator=g)
    return al, y, w


def _loop64(y, w, al):
    """out[t] = sum_j w[t, j] y[t k + j] over the kept slots in float64, token by token."""
    t, k = w.shape
    out = torch.zeros(t, y.shape[1], dtype=torch.float64)
    for s in range(t * k):
        if int(al.slot_pos[s]) >= 0:
            out[s // k] += w.reshape(-1)[s] * y[s]
    return out


@pytest.mark.parametrize("cf", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_combine_and_gradients(cf, dtype):
    al, y, w = _setup(cf=cf, dtype=dtype)
    y.requires_grad_(True)
    w.requires_grad_(True)
    out = moe_combine(y, w, al)
    assert out.dtype == dtype and out.shape == (23, 40)
    y64 = y.detach().double().requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True)
    ref = _loop64(y64, w64, al)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(g)
    ref.backward(g.double())
    torch.testing.assert_close(y.grad.double(), y64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=tol, atol=tol * 10)
    dropped = al.slot_pos.reshape(w.shape) < 0
    assert torch.all(w.grad[dropped] == 0)
    assert torch.all(y.grad[dropped.reshape(-1)] == 0)
    if cf is not None:
        assert dropped.any()


def test_dropped_rows_are_never_read():
    """A dropped slot's row of y may hold anything (the grouped GEMM never computes it): NaN there changes
    nothing, forward or backward."""
    al, y, w = _setup(cf=0.5, seed=2)
    dropped = al.slot_pos < 0
    assert dropped.any()
    y_nan = y.clone()
    y_nan[dropped] = float("nan")
    g = torch.randn(23, 40, generator=torch.Generator().manual_seed(3))
    results = []
    for values in (y, y_nan):
        ys, ws = values.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = moe_combine(ys, ws, al)
        out.backward(g)
        results.append((out, ys.grad, ws.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_reference_backend_agrees():
    al, y, w = _setup(seed=3)
    a = moe_combine(y, w, al)
    with pyscale.backend("reference"):
        b = moe_combine(y, w, al)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_opcheck():
    al, y, w = _setup(t=9, d=16, cf=0.5, seed=4)
    torch.library.opcheck(torch.ops.pyscale.moe_combine.default,
                          (y.requires_grad_(True), w.requires_grad_(True), al.slot_pos, 3))
    torch.library.opcheck(torch.ops.pyscale.moe_combine_backward.default,
                          (torch.randn(9, 16), y.detach(), w.detach(), al.slot_pos, 3))


def test_bad_inputs():
    al, y, w = _setup()
    with pytest.raises(ValueError, match="y must have one row per slot"):
        moe_combine(y[:-1], w, al)
    with pytest.raises(ValueError, match="topk_weights must have shape"):
        moe_combine(y, w[:, :2], al)
    with pytest.raises(TypeError, match="topk_weights must have dtype float32"):
        moe_combine(y, w.double(), al)
