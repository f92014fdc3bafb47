"""Auxiliary losses (Switch load balancing, router z-loss) and the auxiliary-loss-free bias update."""

from __future__ import annotations

import math

import pytest
import torch

from pyscale.ops import load_balancing_loss, moe_align, moe_route, router_z_loss, update_expert_bias


def test_load_balancing_loss_formula_and_gradient():
    g = torch.Generator().manual_seed(0)
    t, e, k = 31, 8, 2
    logits = torch.randn(t, e, generator=g, dtype=torch.float64).requires_grad_(True)
    _, ids = moe_route(logits.float(), k)
    counts = moe_align(ids, e, 16).tokens_per_expert
    loss = load_balancing_loss(logits, counts, k, coef=0.1)
    # the same sum written as explicit loops
    p = torch.softmax(logits, -1)
    expected = 0.0
    for i in range(e):
        f_i = float(counts[i]) / (t * k)
        expected = expected + f_i * sum(p[tt, i] for tt in range(t)) / t
    expected = 0.1 * e * expected
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad.double(), grad_expected, rtol=1e-5, atol=1e-7)


def test_load_balancing_loss_is_coef_at_uniform_routing():
    t, e, k = 16, 4, 1
    logits = torch.zeros(t, e)  # P_i = 1/E
    counts = torch.full((e,), t * k // e, dtype=torch.int32)  # f_i = 1/E
    assert math.isclose(float(load_balancing_loss(logits, counts, k, coef=0.5)), 0.5, rel_tol=1e-6)


def test_sigmoid_load_balancing_uses_normalised_scores():
    logits = torch.randn(10, 6)
    counts = torch.tensor([5, 5, 4, 3, 2, 1])
    s = torch.sigmoid(logits)
    p = (s / s.sum(-1, keepdim=True)).mean(0)
    expected = 6 * ((counts / 20.0) * p).sum()
    torch.testing.assert_close(load_balancing_loss(logits, counts, 2, scoring="sigmoid"), expected)


def test_z_loss():
    logits = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    z = router_z_loss(logits, coef=1e-3)
    expected = 1e-3 * sum(float(torch.log(torch.exp(row).sum())) ** 2 for row in logits.detach()) / 12
    assert math.isclose(float(z.detach()), expected, rel_tol=1e-6)
    z.backward()
    lse = torch.logsumexp(logits.detach(), -1, keepdim=True)
    torch.testing.assert_close(logits.grad.double(), 1e-3 * 2 * lse * torch.softmax(logits.detach(), -1) / 12)


def test_bias_update_moves_toward_balance():
    bias = torch.zeros(4)
    update_expert_bias(bias, torch.tensor([8, 2, 5, 5]), rate=0.01)
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="tokens_per_expert must have n_experts"):
        load_balancing_loss(torch.randn(3, 4), torch.ones(5), 1)
    with pytest.raises(ValueError, match="scoring"):
        load_balancing_loss(torch.randn(3, 4), torch.ones(4), 1, scoring="x")


@pytest.mark.parametrize("top_k,error,match", [(0, ValueError, r"top_k must lie in 1..n_experts = 1..4: got 0"),
                                               (5, ValueError, r"top_k must lie in 1..n_experts = 1..4: got 5"),
                                               (2.0, TypeError, "top_k must be an int"),
                                               (True, TypeError, "top_k must be an int")])
def test_load_balancing_loss_checks_top_k(top_k, error, match):
    with pytest.raises(error, match=match):
        load_balancing_loss(torch.randn(3, 4), torch.ones(4), top_k)


def test_bias_update_checks_tokens_per_expert():
    bias = torch.zeros(4)
    with pytest.raises(ValueError, match=r"tokens_per_expert must have one entry per expert \(bias has 4\): got 1"):
        update_expert_bias(bias, torch.tensor([8]), rate=0.01)  # would broadcast silently
    with pytest.raises(ValueError, match="tokens_per_expert must have one entry per expert"):
        update_expert_bias(bias, torch.tensor([8, 2, 5]), rate=0.01)
    with pytest.raises(ValueError, match="tokens_per_expert must be 1-D"):
        update_expert_bias(bias, torch.ones(2, 2), rate=0.01)
    assert torch.equal(bias, torch.zeros(4))
