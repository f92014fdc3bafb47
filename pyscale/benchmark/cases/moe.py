"""MoE cases: the MoE layer of named models (pyscale.benchmark.shapes) -- forward, forward+backward,
forward+backward with a hot expert, and routing alone -- for pyscale.nn.MoE and two baselines built from
PyTorch ops: a per-expert Python loop and a layer on `torch._grouped_mm` (bf16, where the installed torch
has it; otherwise left out with a warning saying why, since pyscale.benchmark has no per-case skip status).

`moe_fwd_bwd_hot` routes every token's first choice to expert 0 (a selection bias, as auxiliary-loss-free
balancing applies one; the weights are the router's), the load a weight gradient split per expert is for
(`PYSCALE_MOE_DW_SPLITS` selects the split count for an A/B); the loop baseline, whose cost hardly depends
on the balance, is left out of it.

FLOPs: active parameters (router 2·T·d·E + experts 2·T·k·3·d·d_ff; ×3 with the backward); routing alone
counts the gating formula of pyscale.ops.moe_route (5·T·E + 2·T·E·k + T·k). Bytes: the layer's expert weights
(×3 with the backward); routing alone moe_route's and moe_align's own (`pyscale.formulas`).
"""

from __future__ import annotations

import warnings
from typing import Any

from pyscale import formulas
from pyscale.benchmark.cases import torch_dtype
from pyscale.benchmark.runner import Case, Workload
from pyscale.benchmark.shapes import moe_shapes

IMPLS = ("pyscale", "torch._grouped_mm", "loop")
OPS = ("moe_fwd", "moe_fwd_bwd", "moe_fwd_bwd_hot", "moe_route")
HOT_EXPERT_BIAS = 2.0  # added to expert 0's selection score: above any other (scores lie in [0, 1])


def grouped_mm_unavailable(dtype: str) -> str | None:
    """Why the torch._grouped_mm baseline cannot run here, or None when it can."""
    import torch

    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    if dtype != "bf16":
        return f"torch._grouped_mm takes bf16 only: got {dtype}"
    return None


def cases(shape_set: str, device: str) -> list[Case]:
    dtype = "bf16" if device == "cuda" else "fp32"
    impls = IMPLS
    reason = grouped_mm_unavailable(dtype)
    if reason is not None:
        # pyscale.benchmark has no per-case skip status yet: leave the case out and say why
        impls = tuple(i for i in IMPLS if i != "torch._grouped_mm")
        if device == "cuda":  # on CPU the baseline is never expected
            warnings.warn(f"moe: skipping the torch._grouped_mm baseline ({reason})", RuntimeWarning, stacklevel=2)
    out = []
    for shape in moe_shapes(shape_set):
        for op in OPS:
            for impl in ("pyscale",) if op == "moe_route" else impls:
                if op == "moe_fwd_bwd_hot" and impl == "loop":
                    continue
                out.append(Case.make("moe", op, impl, shape, dtype, shape_set))
    return out


def _route(logits, shape: dict[str, Any], bias=None):
    from pyscale.reference import moe_route as ref

    return ref.moe_route(logits, shape["top_k"], shape["scoring"], True, shape.get("n_group"),
                         shape.get("topk_group"), bias)


def loop_layer(params, x, shape: dict[str, Any], bias=None):
    """Per-expert Python loop (the usual eager implementation): route, then for each expert gather its tokens,
    run the SwiGLU MLP and index_add the weighted result back."""
    import torch
    import torch.nn.functional as F

    router, w_gate, w_up, w_down = params
    weights, ids = _route(x.float() @ router.float().T, shape, bias)
    out = torch.zeros_like(x)
    for e in range(shape["n_experts"]):
        tok, j = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        ye = (F.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T)) @ w_down[e].T
        out = out.index_add(0, tok, ye * weights[tok, j, None].to(x.dtype))
    return out


def grouped_mm_layer(params, x, shape: dict[str, Any], bias=None):
    """Sort slots by expert, gather rows, three `torch._grouped_mm` calls (bf16), weighted index_add back."""
    import torch
    import torch.nn.functional as F

    router, w_gate, w_up, w_down = params
    k = shape["top_k"]
    weights, ids = _route(x.float() @ router.float().T, shape, bias)
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    tok = order // k
    offs = torch.cumsum(torch.bincount(flat, minlength=shape["n_experts"]), 0).to(torch.int32)
    xs = x[tok]
    h = F.silu(torch._grouped_mm(xs, w_gate.transpose(1, 2), offs=offs)) * torch._grouped_mm(
        xs, w_up.transpose(1, 2), offs=offs)
    y = torch._grouped_mm(h, w_down.transpose(1, 2), offs=offs)
    y = y * weights.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(x).index_add(0, tok, y)


def make_layer(shape: dict[str, Any], device: str, dtype, *, hot: bool = False):
    """A seeded pyscale.nn.MoE for the shape, as the default module runs (its value checks are deferred:
    they never sync); `hot`: every token's first choice is expert 0 (a selection bias)."""
    import torch

    from pyscale.nn import MoE

    torch.manual_seed(0)
    m = MoE(shape["d_model"], shape["d_ff"], shape["n_experts"], shape["top_k"], scoring=shape["scoring"],
            n_group=shape.get("n_group"), topk_group=shape.get("topk_group"), expert_bias=hot,
            device=device, dtype=dtype)
    if hot:
        with torch.no_grad():
            m.expert_bias[0] = HOT_EXPERT_BIAS
    return m


def layer_fn(impl: str, module, shape: dict[str, Any]):
    """x -> out for one implementation, sharing `module`'s parameters (and selection bias)."""
    params = (module.router.weight, module.w_gate, module.w_up, module.w_down)
    bias = module.expert_bias
    if impl == "pyscale":
        return lambda x: module(x)[0]
    if impl == "loop":
        return lambda x: loop_layer(params, x, shape, bias)
    if impl == "torch._grouped_mm":
        reason = grouped_mm_unavailable("bf16")
        if reason is not None:
            raise RuntimeError(f"moe: the torch._grouped_mm baseline cannot run: {reason}")
        return lambda x: grouped_mm_layer(params, x, shape, bias)
    raise ValueError(f"moe: unknown implementation {impl!r} (known: {', '.join(IMPLS)})")


def workload(case: Case, device: str) -> Workload:
    import torch

    shape = case.params_dict
    dtype = torch_dtype(case.dtype)
    t, d, e = shape["tokens"], shape["d_model"], shape["n_experts"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    if case.op == "moe_route":
        from pyscale.ops import moe_align, moe_block_size, moe_route

        logits = torch.randn(t, e, generator=gen).to(device)
        block = moe_block_size(t, shape["top_k"], e, device, dtype)

        def route(lg):
            _, ids = moe_route(lg, shape["top_k"], scoring=shape["scoring"], n_group=shape.get("n_group"),
                               topk_group=shape.get("topk_group"), check_values=False)
            return moe_align(ids, e, block, check_values=False)

        k = shape["top_k"]
        nbytes = formulas.moe_route_bytes(t, e, k, logits.element_size()) + formulas.moe_align_bytes(t, k, e, block)
        return Workload(route, (logits,), flops=float(formulas.moe_route_flops(t, e, k)), model_flops=None,
                        bytes=float(nbytes))
    if case.op not in OPS:
        raise ValueError(f"moe: unknown op {case.op!r} (known: {', '.join(OPS)})")
    module = make_layer(shape, device, dtype, hot=case.op == "moe_fwd_bwd_hot")
    fn = layer_fn(case.impl, module, shape)
    backward = case.op in ("moe_fwd_bwd", "moe_fwd_bwd_hot")
    x = torch.randn(t, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(backward)
    if backward:
        def step(inp):
            out = fn(inp)
            out.backward(torch.ones_like(out))
            return out
    else:
        def step(inp):
            with torch.no_grad():
                return fn(inp)
    flops = float(formulas.moe_layer_model_flops(t, d, shape["d_ff"], e, shape["top_k"], backward=backward))
    weight_bytes = formulas.moe_layer_weight_bytes(d, shape["d_ff"], e, torch.finfo(dtype).bits // 8, backward=backward)
    return Workload(step, (x,), flops=flops, model_flops=flops, bytes=float(weight_bytes),
                    notes={"flops_convention": "active parameters (router + top-k experts)"})
