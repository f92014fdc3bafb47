"""FLOP counting of a whole pyscale.nn.MoE step (forward + backward): every op counted, executed FLOPs
include the grouped GEMM's padding rows, model FLOPs count the T·k routed slots only."""

from __future__ import annotations

import pytest
import torch

from pyscale.formulas import formulas_for
from pyscale.nn import MoE
from pyscale.ops import moe_align, moe_block_size, moe_route
from pyscale.profile import flops as fl

T, D, FF, E, K = 24, 16, 32, 4, 2


def _step(m: MoE, x: torch.Tensor) -> None:
    out, aux = m(x)
    (out.square().mean() + aux.load_balancing_loss + aux.z_loss).backward()


def _padded_rows(m: MoE, x: torch.Tensor) -> int:
    """n_pad of the module's own routing, recomputed outside the counter."""
    with torch.no_grad():
        _, ids = moe_route(x @ m.router.weight.T, K)
    block = moe_block_size(T, K, E, x.device, x.dtype)
    return int(moe_align(ids, E, block, capacity_factor=m.capacity_factor).n_pad)


def _forward_model_flops() -> int:
    """Router GEMM + gating + expert GEMMs on T·k rows + combine; norms and activations count 0 (PaLM)."""
    router = 2 * T * D * E
    gating = 5 * T * E + 2 * T * E * K + T * K  # moe_route's formula (routing overhead)
    experts = 2 * T * K * 3 * D * FF  # w_gate, w_up (fused SwiGLU) and w_down, active experts only
    combine = 2 * T * K * D
    return router + gating + experts + combine


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_moe_step_is_fully_counted(capacity_factor):
    torch.manual_seed(0)
    m = MoE(D, FF, E, K, capacity_factor=capacity_factor)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(1), requires_grad=True)
    counts = fl.count_flops(_step, m, x)

    assert counts.uncounted_ops == ()
    assert counts.has_backward
    # model FLOPs: the analytic count on T·k slots, x3 for the step (dropped slots still count)
    assert counts.forward_model_flops == _forward_model_flops()
    assert counts.model_flops == 3 * _forward_model_flops()
    assert counts.flops >= counts.model_flops
    assert counts.forward_flops > counts.forward_model_flops  # padding rows are executed work

    n_pad = _padded_rows(m, x)
    assert n_pad > T * K  # the case must have padding, or the two counts could not differ
    ops = counts.by_op()
    gemm_fwd, gemm_bwd = ops[("forward", "pyscale::grouped_gemm")], ops[("backward", "pyscale::grouped_gemm_backward")]
    assert gemm_fwd.calls == 2 and gemm_bwd.calls == 2
    assert gemm_fwd.model_flops == 2 * T * K * 3 * D * FF
    assert gemm_fwd.flops == 2 * n_pad * 3 * D * FF + 4 * n_pad * FF  # + the fused SwiGLU
    assert gemm_bwd.flops == 2 * 2 * n_pad * 3 * D * FF + 8 * n_pad * FF
    assert gemm_bwd.model_flops == 0  # the backward's model FLOPs are 2x the forward by convention


def test_model_formula_is_registered():
    """The grouped GEMM's model formula is its own in the registry the counter reads (pyscale.formulas)."""
    for op in ("pyscale::grouped_gemm", "pyscale::grouped_gemm_backward"):
        found = formulas_for(op)
        assert found.model is not None and found.model is not found.executed
