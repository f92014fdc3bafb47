"""MoE combine: weighted sum of each token's expert outputs, back in token order, with backward.

    out[t] = Σ_j topk_weights[t, j] · y[t·k + j]      (dropped slots, slot_pos = −1, add 0)

y holds one row per slot s = t·k + j, as the grouped GEMM returns it. A gather-sum per token (fp32
accumulation), so it is deterministic -- no scatter atomics. The backward (custom op
pyscale::moe_combine_backward) runs over the slots: grad_y[s] = w[s] · grad_out[t] and
grad_weights[s] = <grad_out[t], y[s]> (0 for dropped slots).

Backends: `triton` (CUDA; CPU in the interpreter), `reference`.
FLOPs (`pyscale.formulas.moe_combine_flops`): forward 2·T·k·D; backward 3·T·k·D (the scaled copy and the
dot products).
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.ops.moe_align import MoEAlignment
from pyscale.reference import moe_combine as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    from pyscale.kernels import moe_combine as k

    return k


def _combine_triton(y, weights, slot_pos, top_k):
    return _kernels().combine(y.contiguous(), weights.contiguous(), slot_pos, top_k, y.dtype)


def _combine_reference(y, weights, slot_pos, top_k):
    return ref.moe_combine(y, weights, slot_pos, top_k)


@torch.library.custom_op("pyscale::moe_combine", mutates_args=())
def _moe_combine_op(y: torch.Tensor, weights: torch.Tensor, slot_pos: torch.Tensor, top_k: int) -> torch.Tensor:
    return dispatch("moe_combine", y.device, {"triton": _combine_triton, "reference": _combine_reference},
                    y, weights, slot_pos, top_k)


@_moe_combine_op.register_fake
def _(y, weights, slot_pos, top_k):
    return y.new_empty((slot_pos.shape[0] // top_k, y.shape[1]))


def _combine_bwd_triton(grad_out, y, weights, slot_pos, top_k):
    return _kernels().combine_backward(grad_out.contiguous(), y.contiguous(), weights.contiguous(), slot_pos, top_k)


def _combine_bwd_reference(grad_out, y, weights, slot_pos, top_k):
    return ref.moe_combine_backward(grad_out, y, weights, slot_pos, top_k)


@torch.library.custom_op("pyscale::moe_combine_backward", mutates_args=())
def _moe_combine_backward_op(grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                             slot_pos: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("moe_combine_backward", y.device,
                    {"triton": _combine_bwd_triton, "reference": _combine_bwd_reference},
                    grad_out, y, weights, slot_pos, top_k)


@_moe_combine_backward_op.register_fake
def _(grad_out, y, weights, slot_pos, top_k):
    return y.new_empty(y.shape), weights.new_empty(weights.shape, dtype=torch.float32)  # contiguous, as computed


def _setup_context(ctx, inputs, output):
    y, weights, slot_pos, top_k = inputs
    ctx.save_for_backward(y, weights, slot_pos)
    ctx.top_k = top_k


def _backward(ctx, grad_out):
    y, weights, slot_pos = ctx.saved_tensors
    grad_y, grad_w = _moe_combine_backward_op(grad_out.contiguous(), y, weights, slot_pos, ctx.top_k)
    return grad_y, grad_w, None, None


_moe_combine_op.register_autograd(_backward, setup_context=_setup_context)


def moe_combine(y: torch.Tensor, topk_weights: torch.Tensor, alignment: MoEAlignment) -> torch.Tensor:
    """Weighted sum of each token's expert outputs, back in token order (differentiable in y and topk_weights).

    Args:
        y: (T·k, D) expert outputs, one row per slot s = t·k + j (as `grouped_gemm` returns them), float dtype.
        topk_weights: (T, k) float32 routing weights (from moe_route).
        alignment: the MoEAlignment of the routing (its slot_pos marks dropped slots).
    Returns:
        (T, D) in y.dtype: Σ_j topk_weights[t, j] · y[t·k + j], dropped slots contributing 0.
    FLOPs: 2·T·k·D (`pyscale.formulas.moe_combine_flops`).
    """
    check_tensor("y", y, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32,), ndim=2)
    if not isinstance(alignment, MoEAlignment):
        raise TypeError(f"alignment must be the MoEAlignment returned by moe_align: got {type(alignment).__name__}")
    slots = alignment.slot_pos.shape[0]
    if y.shape[0] != slots:
        raise ValueError(f"y must have one row per slot (T·k = {slots}): got shape {tuple(y.shape)}")
    tokens = slots // alignment.top_k
    if tuple(topk_weights.shape) != (tokens, alignment.top_k):
        raise ValueError(f"topk_weights must have shape (T, k) = {(tokens, alignment.top_k)}: "
                         f"got {tuple(topk_weights.shape)}")
    check_same_device(y=y, topk_weights=topk_weights, slot_pos=alignment.slot_pos)
    return _moe_combine_op(y, topk_weights, alignment.slot_pos, alignment.top_k)
