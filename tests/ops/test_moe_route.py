"""moe_route: exact expert ids vs the reference, weights and logit gradients, opcheck, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyscale
from pyscale.ops import moe_route
from pyscale.reference import moe_route as ref

CASES = [  # (tokens, experts, top_k, scoring, renormalize, n_group, topk_group, bias)
    (37, 8, 2, "softmax", True, None, None, False),
    (37, 8, 2, "softmax", False, None, None, False),
    (64, 16, 4, "sigmoid", True, None, None, True),
    (29, 16, 6, "sigmoid", True, 4, 2, True),
    (29, 16, 3, "softmax", False, 8, 3, False),
    (1, 8, 1, "softmax", True, None, None, False),
    (17, 6, 6, "softmax", True, None, None, False),  # top_k = n_experts
    (17, 6, 6, "sigmoid", False, None, None, True),
    (5, 12, 2, "softmax", True, 12, 2, True),  # groups of one expert
]


def _inputs(t, e, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=g) * 2
    b = torch.randn(e, generator=g) * 0.3 if bias else None
    return logits, b


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_route_matches_reference(case):
    t, e, k, scoring, renorm, ng, tg, has_bias = case
    logits, bias = _inputs(t, e, has_bias)
    logits.requires_grad_(True)
    w, ids = moe_route(logits, k, scoring=scoring, renormalize=renorm, n_group=ng, topk_group=tg, bias=bias)
    rw, rids = ref.moe_route(logits.detach(), k, scoring, renorm, ng, tg, bias)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, rtol=1e-6, atol=1e-6)
    # every token's experts are distinct and in range
    assert all(len(set(row.tolist())) == k for row in ids)
    if renorm:
        torch.testing.assert_close(w.sum(-1), torch.ones(t), rtol=1e-5, atol=1e-5)
    # gradient to the logits vs autograd through the reference weights (ids fixed)
    gw = torch.randn(t, k, generator=torch.Generator().manual_seed(1))
    (w * gw).sum().backward()
    x = logits.detach().double().requires_grad_(True)
    s = torch.softmax(x, -1) if scoring == "softmax" else torch.sigmoid(x)
    rw64 = s.gather(1, ids.long())
    if renorm:
        rw64 = rw64 / rw64.sum(-1, keepdim=True)
    (rw64 * gw.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), x.grad, rtol=1e-5, atol=1e-6)


def test_selection_uses_bias_but_weights_do_not():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    w, ids = moe_route(logits, 2, scoring="sigmoid", renormalize=False, bias=bias)
    assert ids[0, 0].item() == 3  # the bias promotes expert 3
    torch.testing.assert_close(w[0, 0], torch.sigmoid(torch.tensor(-1.0)))  # weight without the bias


def test_ties_go_to_lowest_expert():
    logits = torch.zeros(3, 8)
    _, ids = moe_route(logits, 3)
    assert ids.tolist() == [[0, 1, 2]] * 3


def test_group_limited_routing_stays_in_chosen_groups():
    logits, _ = _inputs(40, 16, False, seed=3)
    _, ids = moe_route(logits, 4, scoring="sigmoid", n_group=4, topk_group=2)
    groups_used = (ids.long() // 4)
    assert all(len(set(row.tolist())) <= 2 for row in groups_used)


def test_reference_backend_agrees():
    logits, bias = _inputs(33, 8, True)
    gw = torch.randn(33, 3, generator=torch.Generator().manual_seed(2))
    results = []
    for backend in ("triton", "reference"):
        x = logits.clone().requires_grad_(True)
        with pyscale.backend(backend):
            w, ids = moe_route(x, 3, scoring="sigmoid", bias=bias, n_group=2, topk_group=1)
            (w * gw).sum().backward()
        results.append((w.detach(), ids, x.grad))
    (wa, ia, ga), (wb, ib, gb) = results
    assert torch.equal(ia, ib)
    torch.testing.assert_close(wa, wb)
    torch.testing.assert_close(ga, gb)


def test_empty_batch():
    w, ids = moe_route(torch.randn(0, 8), 2)
    assert w.shape == (0, 2) and ids.shape == (0, 2)


def test_opcheck():
    logits, bias = _inputs(19, 8, True)
    op = torch.ops.pyscale.moe_route.default
    torch.library.opcheck(op, (logits.requires_grad_(True), 2, "softmax", True, 1, 1, None))
    torch.library.opcheck(op, (logits.detach(), 3, "sigmoid", True, 4, 2, bias))
    w, ids = moe_route(logits.detach(), 2)
    torch.library.opcheck(torch.ops.pyscale.moe_route_backward.default,
                          (torch.randn(19, 2), logits.detach(), w, ids, "softmax", True))


@pytest.mark.parametrize("top_k", [0, -1, 9])
def test_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        moe_route(torch.randn(4, 8), top_k)


@given(k=st.integers(-5, 20), e=st.integers(1, 12))
def test_top_k_range_property(k, e):
    logits = torch.randn(3, e)
    if 1 <= k <= e:
        assert moe_route(logits, k)[1].shape == (3, k)
    else:
        with pytest.raises(ValueError, match="top_k"):
            moe_route(logits, k)


def test_bad_inputs():
    with pytest.raises(ValueError, match="logits must not contain NaN"):
        moe_route(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="logits must be 2-D"):
        moe_route(torch.randn(2, 3, 4), 1)
    with pytest.raises(TypeError, match="logits must have dtype"):
        moe_route(torch.zeros(2, 4, dtype=torch.int32), 1)
    with pytest.raises(ValueError, match="scoring"):
        moe_route(torch.randn(2, 4), 1, scoring="relu")
    with pytest.raises(ValueError, match="bias must have n_experts"):
        moe_route(torch.randn(2, 4), 1, bias=torch.zeros(5))
    with pytest.raises(ValueError, match="n_group must divide"):
        moe_route(torch.randn(2, 6), 1, n_group=4, topk_group=1)
    with pytest.raises(ValueError, match="n_group and topk_group"):
        moe_route(torch.randn(2, 8), 1, n_group=4)
    with pytest.raises(ValueError, match="exceeds the experts of the kept groups"):
        moe_route(torch.randn(2, 8), 3, n_group=4, topk_group=1)
    with pytest.raises(TypeError, match="top_k must be an int"):
        moe_route(torch.randn(2, 8), 2.0)
