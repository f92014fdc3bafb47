"""Grouped GEMM over the expert segments of a `moe_align` layout: one launch for all experts, with backward.

    out[r] = A[row(r)] @ w[e(r)]^T                          activation=None
    out[r] = silu(A[row(r)] @ w[e]^T) * (A[row(r)] @ w2[e]^T)  activation="swiglu" (fused, one kernel; the
                                                             pre-activations are written only when autograd
                                                             will need them)

r runs over the padded sorted rows (alignment.sorted_ids); e(r) is the expert of r's block; row(r) is
the token sorted_ids[r] // top_k when `gather=True` (the kernel gathers token rows itself, no permuted
copy of A), else r (A already in sorted order, e.g. the output of the previous grouped GEMM). Padding
rows and rows past n_pad come out as zeros. Weights follow the Linear convention (E, N, K).

Backward (custom op pyscale::grouped_gemm_backward): dA rows = dOut @ w[e] (SwiGLU: dg @ w[e] + du @ w2[e]
with dg, du formed in the kernel's prologue from dOut and the saved pre-activations), scattered back to
tokens by a deterministic gather-sum when gathering; dW[e] = dOut_e^T @ A_e (SwiGLU: dg^T A and du^T A in
one kernel).

Backends: `triton` (CUDA; CPU in the interpreter), `reference` (a per-expert loop).
FLOPs (`pyscale.formulas.grouped_gemm_flops`), executed (padded rows included since the kernel computes
them): forward 2·n_pad·N·K per weight (SwiGLU: 2 weights, + 4·n_pad·N for the activation); backward 2×
forward for the GEMMs (dA and dW), + 8·n_pad·N for the SwiGLU backward. Model (active parameters): the same
GEMMs over the T·k routed slots instead of n_pad rows, without the elementwise SwiGLU (PaLM's convention, as
pyscale.profile.flops); slots a capacity limit drops still count, as the layer's nominal work.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_choice, check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.ops.moe_align import MoEAlignment
from pyscale.reference import grouped_gemm as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("none", "swiglu")


def _kernels():
    from pyscale.kernels import grouped_gemm as k

    return k


def _combine_kernels():
    from pyscale.kernels import moe_combine as k

    return k


def _config(n: int, k: int, rows: int, n_experts: int, dtype: torch.dtype, device: torch.device, align: int,
            kind: str, mode: int) -> dict:
    kern = _kernels()
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    cfg = dict(kern.grouped_gemm_config(n, k, rows / max(n_experts, 1), dtype, cap, kind=kind, mode=mode))
    if kind == "fwd":
        cfg["BLOCK_M"] = min(cfg["BLOCK_M"], align)  # a row tile must not straddle two experts' blocks
    return cfg


# ---------------------------------------------------------------- forward

def _fwd_triton(a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation,
                save_preact):
    kern = _kernels()
    swiglu = activation == "swiglu"
    num_slots = slot_pos.shape[0]
    mode = kern.MODE_SWIGLU if swiglu else kern.MODE_PLAIN
    cfg = _config(w.shape[1], w.shape[2], num_slots, w.shape[0], a.dtype, a.device, align, "fwd", mode)
    out, preact = kern.grouped_gemm_fwd(
        a.contiguous(), w.contiguous(), w2.contiguous() if swiglu else None, sorted_ids, expert_ids, n_pad,
        gather_k=gather_k, align=align, mode=mode, transpose_w=False,
        preact=None, num_slots=num_slots, config=cfg, save_preact=save_preact)
    return out, preact if swiglu else a.new_empty((0,))


def _fwd_reference(a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation,
                   save_preact):
    out, preact = ref.grouped_gemm(a, w, w2, sorted_ids, expert_ids, n_pad, gather_k, align, activation,
                                   slot_pos.shape[0])
    return out, preact if save_preact else a.new_empty((0,))


@torch.library.custom_op("pyscale::grouped_gemm", mutates_args=())
def _grouped_gemm_op(a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, sorted_ids: torch.Tensor,
                     expert_ids: torch.Tensor, n_pad: torch.Tensor, offsets: torch.Tensor, slot_pos: torch.Tensor,
                     gather_k: int, align: int, activation: str, save_preact: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("grouped_gemm", a.device, {"triton": _fwd_triton, "reference": _fwd_reference},
                    a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation,
                    save_preact)


@_grouped_gemm_op.register_fake
def _(a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation, save_preact):
    rows, n = sorted_ids.shape[0], w.shape[1]
    swiglu = activation == "swiglu" and save_preact
    preact = a.new_empty((rows, 2 * n)) if swiglu else a.new_empty((0,))
    return a.new_empty((rows, n)), preact


# ---------------------------------------------------------------- backward

def _bwd_triton(grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align,
                activation):
    kern = _kernels()
    swiglu = activation == "swiglu"
    num_slots = slot_pos.shape[0]
    e, n, k = w.shape
    grad_out, a = grad_out.contiguous(), a.contiguous()
    w, w2 = w.contiguous(), (w2.contiguous() if swiglu else None)
    mode = kern.MODE_SWIGLU_BWD if swiglu else kern.MODE_PLAIN
    cfg = _config(k, n, num_slots, e, a.dtype, a.device, align, "fwd", mode)
    grad_rows, _ = kern.grouped_gemm_fwd(
        grad_out, w, w2, sorted_ids, expert_ids, n_pad, gather_k=0, align=align, mode=mode, transpose_w=True,
        preact=preact if swiglu else None, num_slots=num_slots, config=cfg)
    if gather_k > 0:
        grad_a = _combine_kernels().combine(grad_rows, None, slot_pos, gather_k, a.dtype)  # a plain sum per token
    else:
        grad_a = grad_rows
    cfg_w = _config(n, k, num_slots, e, a.dtype, a.device, align, "dw", mode)
    grad_w, grad_w2 = kern.grouped_gemm_dw(
        grad_out, preact if swiglu else None, a, sorted_ids, offsets, e, gather_k=gather_k, mode=mode,
        num_slots=num_slots, out_dtype=w.dtype, config=cfg_w)
    return grad_a, grad_w, grad_w2 if swiglu else w.new_empty((0,))


def _bwd_reference(grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align,
                   activation):
    grad_a, grad_w, grad_w2 = ref.grouped_gemm_backward(grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad,
                                                        gather_k, align, activation, slot_pos.shape[0])
    return grad_a.to(a.dtype), grad_w.to(w.dtype), grad_w2.to(w.dtype) if grad_w2 is not None else w.new_empty((0,))


@torch.library.custom_op("pyscale::grouped_gemm_backward", mutates_args=())
def _grouped_gemm_backward_op(grad_out: torch.Tensor, a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None,
                              preact: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
                              n_pad: torch.Tensor, offsets: torch.Tensor, slot_pos: torch.Tensor, gather_k: int,
                              align: int, activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dispatch("grouped_gemm_backward", a.device, {"triton": _bwd_triton, "reference": _bwd_reference},
                    grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align,
                    activation)


@_grouped_gemm_backward_op.register_fake
def _(grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation):
    # contiguous, as every backend returns them whatever the inputs' strides
    return a.new_empty(a.shape), w.new_empty(w.shape), (w2.new_empty(w2.shape) if activation == "swiglu"
                                                        else w.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation, _ = inputs
    _, preact = output
    ctx.save_for_backward(a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos)
    ctx.gather_k, ctx.align, ctx.activation = gather_k, align, activation
    ctx.mark_non_differentiable(preact)


def _backward(ctx, grad_out, grad_preact):
    a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos = ctx.saved_tensors
    grad_a, grad_w, grad_w2 = _grouped_gemm_backward_op(
        grad_out.contiguous(), a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, ctx.gather_k,
        ctx.align, ctx.activation)
    return (grad_a, grad_w, grad_w2 if ctx.activation == "swiglu" else None,
            None, None, None, None, None, None, None, None, None)


_grouped_gemm_op.register_autograd(_backward, setup_context=_setup_context)


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, alignment: MoEAlignment, *, gather: bool = False,
                 w2: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """One grouped GEMM over every expert segment of `alignment` (differentiable in a, w, w2).

    Args:
        a: (T, K) token rows when gather=True (row of slot s is s // top_k), else (rows, K) rows already in
            alignment order (rows = alignment.sorted_ids.shape[0]); float32/float16/bfloat16.
        w: (E, N, K) expert weights, Linear convention, same dtype as a.
        alignment: from `moe_align(topk_ids, E, block_size)`; block_size a power of two >= 16.
        gather: read A rows through the routing instead of in sorted order.
        w2: (E, N, K) second weight, required by activation="swiglu" (the "up" projection; w is the gate).
        activation: None or "swiglu" (silu(A w^T) * (A w2^T), fused in the kernel epilogue).
    Returns:
        (rows, N) in a.dtype, in alignment order; padding rows are 0.
    FLOPs: see the module docstring (`pyscale.formulas.grouped_gemm_flops`).
    """
    act = "none" if activation is None else activation
    check_choice("activation", act, ACTIVATIONS)
    check_tensor("a", a, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("w", w, dtypes=FLOAT_DTYPES, ndim=3)
    if not isinstance(alignment, MoEAlignment):
        raise TypeError(f"alignment must be the MoEAlignment returned by moe_align: got {type(alignment).__name__}")
    e, n, k = w.shape
    if w.dtype != a.dtype:
        raise TypeError(f"w must have the dtype of a ({a.dtype}): got {w.dtype}")
    if e != alignment.n_experts:
        raise ValueError(f"w must have one matrix per expert: alignment has {alignment.n_experts} experts, "
                         f"w has shape {tuple(w.shape)}")
    if a.shape[1] != k:
        raise ValueError(f"a must have K = w.shape[2] = {k} columns: got shape {tuple(a.shape)}")
    bs = alignment.block_size
    if bs < 16 or bs & (bs - 1):
        raise ValueError(f"alignment.block_size must be a power of two >= 16 for grouped_gemm: got {bs}")
    rows = alignment.sorted_ids.shape[0]
    tokens = alignment.slot_pos.shape[0] // alignment.top_k
    if gather and a.shape[0] != tokens:
        raise ValueError(f"a must have one row per token ({tokens}) when gather=True: got {a.shape[0]}")
    if not gather and a.shape[0] != rows:
        raise ValueError(f"a must have one row per aligned row ({rows}) when gather=False: got {a.shape[0]}")
    if act == "swiglu":
        if w2 is None:
            raise ValueError("w2 (the up projection) is required with activation='swiglu'")
        check_tensor("w2", w2, dtypes=(a.dtype,), ndim=3)
        if w2.shape != w.shape:
            raise ValueError(f"w2 must have the shape of w {tuple(w.shape)}: got {tuple(w2.shape)}")
    elif w2 is not None:
        raise ValueError("w2 is only used with activation='swiglu'")
    check_same_device(a=a, w=w, w2=w2, sorted_ids=alignment.sorted_ids)
    # SwiGLU keeps its pre-activations for the backward only when one will run
    save = act == "swiglu" and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (a, w, w2))
    out, _ = _grouped_gemm_op(a, w, w2, alignment.sorted_ids, alignment.expert_ids, alignment.n_pad,
                              alignment.offsets, alignment.slot_pos, alignment.top_k if gather else 0, bs, act, save)
    return out
