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
    y = torch.randn(al.sorted_ids.shape[0], d, generator=g).to(dtype)
    w = torch.rand(t, k, generator=g)
    return al, y, w


def _loop64(y, w, al):
    """out[t] = sum_j w[t, j] y[slot_pos[t k + j]] in float64, token by token."""
    t, k = w.shape
    out = torch.zeros(t, y.shape[1], dtype=torch.float64)
    for s in range(t * k):
        p = int(al.slot_pos[s])
        if p >= 0:
            out[s // k] += w.reshape(-1)[s] * y[p]
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
    pad = al.sorted_ids.long() >= al.slot_pos.shape[0]
    assert torch.all(y.grad[pad] == 0)
    if cf is not None:
        assert dropped.any()


def test_reference_backend_agrees():
    al, y, w = _setup(seed=3)
    a = moe_combine(y, w, al)
    with pyscale.backend("reference"):
        b = moe_combine(y, w, al)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_opcheck():
    al, y, w = _setup(t=9, d=16, cf=0.5, seed=4)
    torch.library.opcheck(torch.ops.pyscale.moe_combine.default,
                          (y.requires_grad_(True), w.requires_grad_(True), al.slot_pos, al.sorted_ids, 3))
    torch.library.opcheck(torch.ops.pyscale.moe_combine_backward.default,
                          (torch.randn(9, 16), y.detach(), w.detach(), al.sorted_ids, 3))


def test_bad_inputs():
    al, y, w = _setup()
    with pytest.raises(ValueError, match="y must have one row per aligned row"):
        moe_combine(y[:-1], w, al)
    with pytest.raises(ValueError, match="topk_weights must have shape"):
        moe_combine(y, w[:, :2], al)
    with pytest.raises(TypeError, match="topk_weights must have dtype float32"):
        moe_combine(y, w.double(), al)
