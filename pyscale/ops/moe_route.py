"""MoE gating: router logits -> (topk_weights, topk_ids) in one fused kernel, with a backward to the logits.

Scores are softmax(logits) over experts or sigmoid(logits). Experts are chosen by the top-k of the
selection key -- the logits themselves without bias or groups (same order as the scores), else
scores + bias (DeepSeek-V3's auxiliary-loss-free balancing: the bias moves selection only, never the
weights) -- restricted, with group-limited routing, to the `topk_group` groups (of n_experts / n_group
experts) whose two best keys sum highest. Ties go to the lower expert id. The kept scores are the
weights, divided by their sum when `renormalize`.

Backends: `triton` (CUDA, and CPU in the interpreter), `reference`.
FLOPs (executed, routing overhead; `pyscale.formulas.moe_route_flops`): 5·T·E for scoring (exp, sum, divide, compare, select) plus 2·T·E·k for
the k max/argmax passes, plus T·k for renormalisation; the backward 4·T·E + 2·T·E·k.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_choice, check_int, check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.reference import moe_route as ref

SCORINGS = ("softmax", "sigmoid")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    from pyscale.kernels import moe_route as k

    return k


def _route_triton(logits, top_k, scoring, renormalize, n_group, topk_group, bias):
    k = _kernels()
    b = bias.float().contiguous() if bias is not None else None
    return k.route(logits.float().contiguous(), top_k, SCORINGS.index(scoring), renormalize, n_group, topk_group, b)


def _route_reference(logits, top_k, scoring, renormalize, n_group, topk_group, bias):
    return ref.moe_route(logits, top_k, scoring, renormalize, n_group if n_group > 1 else None,
                         topk_group if n_group > 1 else None, bias)


@torch.library.custom_op("pyscale::moe_route", mutates_args=())
def _moe_route_op(logits: torch.Tensor, top_k: int, scoring: str, renormalize: bool, n_group: int,
                  topk_group: int, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("moe_route", logits.device, {"triton": _route_triton, "reference": _route_reference},
                    logits, top_k, scoring, renormalize, n_group, topk_group, bias)


@_moe_route_op.register_fake
def _(logits, top_k, scoring, renormalize, n_group, topk_group, bias):
    t = logits.shape[0]
    return (logits.new_empty((t, top_k), dtype=torch.float32), logits.new_empty((t, top_k), dtype=torch.int32))


def _route_bwd_triton(grad_w, logits, weights, ids, scoring, renormalize):
    k = _kernels()
    g = k.route_backward(grad_w.float().contiguous(), logits.float().contiguous(), weights.contiguous(),
                         ids.contiguous(), SCORINGS.index(scoring), renormalize)
    return g.to(logits.dtype)


def _route_bwd_reference(grad_w, logits, weights, ids, scoring, renormalize):
    return ref.moe_route_backward(grad_w, logits, weights, ids, scoring, renormalize).to(logits.dtype)


@torch.library.custom_op("pyscale::moe_route_backward", mutates_args=())
def _moe_route_backward_op(grad_w: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                           scoring: str, renormalize: bool) -> torch.Tensor:
    return dispatch("moe_route_backward", logits.device,
                    {"triton": _route_bwd_triton, "reference": _route_bwd_reference},
                    grad_w, logits, weights, ids, scoring, renormalize)


@_moe_route_backward_op.register_fake
def _(grad_w, logits, weights, ids, scoring, renormalize):
    return logits.new_empty(logits.shape)  # contiguous, as computed


def _setup_context(ctx, inputs, output):
    logits, _, scoring, renormalize, *_ = inputs
    weights, ids = output
    ctx.save_for_backward(logits, weights, ids)
    ctx.scoring, ctx.renormalize = scoring, renormalize
    ctx.mark_non_differentiable(ids)


def _backward(ctx, grad_w, grad_ids):
    logits, weights, ids = ctx.saved_tensors
    if grad_w is None:
        return None, None, None, None, None, None, None
    g = _moe_route_backward_op(grad_w.contiguous(), logits, weights, ids, ctx.scoring, ctx.renormalize)
    return g, None, None, None, None, None, None


_moe_route_op.register_autograd(_backward, setup_context=_setup_context)


def check_group_routing(n_experts: int, top_k: int, n_group: int | None, topk_group: int | None) -> None:
    """Reject group-limited routing settings moe_route cannot honour (errors name the argument)."""
    if (n_group is None) != (topk_group is None):
        raise ValueError(f"n_group and topk_group go together: got n_group={n_group}, topk_group={topk_group}")
    if n_group is None:
        return
    check_int("n_group", n_group, or_none=True)
    check_int("topk_group", topk_group, or_none=True)
    if n_group < 1 or n_experts % n_group:
        raise ValueError(f"n_group must divide n_experts = {n_experts}: got {n_group}")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must lie in 1..n_group = 1..{n_group}: got {topk_group}")
    kept = topk_group * (n_experts // n_group)
    if top_k > kept:
        raise ValueError(f"top_k = {top_k} exceeds the experts of the kept groups "
                         f"(topk_group * n_experts / n_group = {kept})")


def moe_route(logits: torch.Tensor, top_k: int, *, scoring: str = "softmax", renormalize: bool = True,
              n_group: int | None = None, topk_group: int | None = None, bias: torch.Tensor | None = None,
              check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the top-k experts of every token and their weights (differentiable in the logits).

    Args:
        logits: (T, E) float32/float16/bfloat16 router logits, finite (NaN is an error).
        top_k: experts per token, 1 <= top_k <= E.
        scoring: "softmax" (over the E experts) or "sigmoid" (per expert).
        renormalize: divide the k kept scores by their sum, so each token's weights sum to 1.
        n_group, topk_group: group-limited routing (DeepSeek-V3): E splits into n_group groups of E / n_group
            experts; only experts of the topk_group groups with the highest sum of their two best keys are
            eligible. Both or neither; top_k <= topk_group * E / n_group.
        bias: (E,) float, added to the scores for selection only (auxiliary-loss-free balancing).
        check_values: reject NaN logits (reads the tensor: a device sync on CUDA; skipped under torch.compile).
    Returns:
        topk_weights fp32 (T, k), topk_ids int32 (T, k); column j is the j-th best expert.
    FLOPs: see the module docstring (`pyscale.formulas.moe_route_flops`).
    """
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    t, e = logits.shape
    check_int("top_k", top_k)
    if e < 1:
        raise ValueError(f"logits must have at least one expert column: got shape {tuple(logits.shape)}")
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k must lie in 1..n_experts = 1..{e}: got {top_k}")
    check_choice("scoring", scoring, SCORINGS)
    check_group_routing(e, top_k, n_group, topk_group)
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != e:
            raise ValueError(f"bias must have n_experts = {e} entries: got {bias.shape[0]}")
        check_same_device(logits=logits, bias=bias)
    if check_values and not torch.compiler.is_compiling() and t and bool(torch.isnan(logits).any()):
        raise ValueError("logits must not contain NaN (the router produced NaN: check its input and weights)")
    return _moe_route_op(logits, top_k, scoring, renormalize, n_group or 1, topk_group or 1,
                         bias.detach() if bias is not None else None)
