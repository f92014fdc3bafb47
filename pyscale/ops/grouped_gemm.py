"""Grouped GEMM over the expert segments of a `moe_align` layout: one launch for all experts, with backward.

    out[s] = A[row(s)] @ w[e(s)]^T                          activation=None
    out[s] = silu(A[row(s)] @ w[e]^T) * (A[row(s)] @ w2[e]^T)  activation="swiglu" (fused, one kernel; the
                                                             pre-activations are written only when autograd
                                                             will need them)

s runs over the T·k slots (slot s = t·k + j, DESIGN.md section 8) and the output has one row per slot;
e(s) is the expert of slot s; row(s) is the token s // top_k when `gather=True` (the kernel gathers token
rows itself, no permuted copy of A), else s (A has one row per slot, e.g. the output of the previous
grouped GEMM). Slots a capacity limit dropped come out as zeros. Weights follow the Linear convention
(E, N, K). The kernels walk the sorted, padded rows of the layout; their grids are sized for its upper
bound and skip, on the device, everything past the real padded length (no host sync).

Backward (custom op pyscale::grouped_gemm_backward): dA rows = dOut @ w[e] (SwiGLU: dg @ w[e] + du @ w2[e]
with dg, du formed in the kernel's prologue from dOut and the saved pre-activations), summed back to
tokens by a deterministic gather-sum when gathering; dW[e] = dOut_e^T @ A_e (SwiGLU: dg^T A and du^T A in
one kernel), each expert's rows cut into a fixed number of splits reduced in split order (deterministic;
a hot expert is spread over more programs).

Backends: `triton` (CUDA; CPU in the interpreter), `reference` (a per-expert loop).
Tuning: `TUNING_FWD` (forward and dX GEMMs) and `TUNING_DW` (dW) through pyscale.ops._autotune, keyed by
the layer sizes and the routed rows per expert bucketed to a power of two. PYSCALE_MOE_DW_SPLITS=N forces
the dW row splits (an A/B knob; default: `dw_row_splits` from the shapes).
FLOPs (`pyscale.formulas.grouped_gemm_flops`), executed: the padded rows n_pad of the layout (at the default
row tile, the layout's block, every row tile of a segment holds a routed slot and runs, its padding rows
included; the rows between n_pad and the upper bound are never run; a tuned shorter tile also skips
tiles of padding only, so n_pad is then an upper bound): forward 2·n_pad·N·K
per weight (SwiGLU: 2 weights, + 4·n_pad·N for the activation); backward 2× forward for the GEMMs (dA and
dW), + 8·n_pad·N for the SwiGLU backward. Model (active parameters): the same GEMMs over the T·k routed
slots instead of n_pad rows, without the elementwise SwiGLU (PaLM's convention, as pyscale.profile.flops);
slots a capacity limit drops still count, as the layer's nominal work.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from pyscale._backend import triton_interpreting
from pyscale.ops._autotune import Tunable, bucket
from pyscale.ops._checks import check_choice, check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.ops.moe_align import MoEAlignment
from pyscale.reference import grouped_gemm as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("none", "swiglu")
DW_SPLITS_ENV = "PYSCALE_MOE_DW_SPLITS"
_KERNEL_MODULES = ("pyscale.kernels.grouped_gemm", "pyscale.kernels.common")


def _kernels():
    from pyscale.kernels import grouped_gemm as k

    return k


def _combine_kernels():
    from pyscale.kernels import moe_combine as k

    return k


def forced_dw_splits() -> int | None:
    """PYSCALE_MOE_DW_SPLITS as an int in 1..64, or None when unset."""
    raw = os.environ.get(DW_SPLITS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise ValueError(f"{DW_SPLITS_ENV} must be an integer in 1..64: got {raw!r}")
    return int(raw)


# ---------------------------------------------------------------- tuning

def tuning_key(kind: str, mode: int, dtype: torch.dtype, device: torch.device, n: int, k: int, n_experts: int,
               num_slots: int, top_k: int, align: int) -> dict[str, Any]:
    """The autotuning key of one grouped-GEMM launch: layer sizes exact, routed rows per expert bucketed to a
    power of two, the alignment block (a forward row tile may not exceed it) and the GPU's SM count (the dW
    split heuristic's)."""
    cap = tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
    sms = _kernels().parallel_programs(device) // 2  # the SM count on a GPU; 4 in the interpreter
    return {"kind": kind, "mode": mode, "dtype": str(dtype).removeprefix("torch."),
            "capability": list(cap) if cap else None, "n": n, "k": k, "experts": n_experts, "top_k": top_k,
            "align": align, "rows_per_expert": bucket(num_slots // max(n_experts, 1)), "sms": sms}


def _key_dtype(key: dict[str, Any]) -> torch.dtype:
    return getattr(torch, key["dtype"])


def default_config(key: dict[str, Any], interpret: bool) -> dict:
    """The config function of both tunables: `grouped_gemm_config`'s tiles (a forward row tile, and a dW row
    step, no longer than the alignment block, so the executed rows are exactly n_pad), plus the dW splits."""
    kern = _kernels()
    cap = tuple(key["capability"]) if key["capability"] else None
    cfg = dict(kern.grouped_gemm_config(key["n"], key["k"], key["rows_per_expert"], _key_dtype(key), cap,
                                        kind=key["kind"], mode=key["mode"], interpret=interpret))
    cfg["BLOCK_M"] = min(cfg["BLOCK_M"], key["align"])
    if key["kind"] == "dw":
        outputs = 2 if key["mode"] == kern.MODE_SWIGLU_BWD else 1
        cfg["SPLITS"] = forced_dw_splits() or kern.dw_row_splits(
            key["n"], key["k"], key["experts"], key["top_k"], key["rows_per_expert"] * key["experts"], cfg,
            key["sms"], outputs=outputs)
    return cfg


def _space(key: dict[str, Any]) -> list[dict]:
    cap = tuple(key["capability"]) if key["capability"] else None
    return _kernels().config_space(key["kind"], key["mode"], _key_dtype(key), cap, max_block_m=key["align"],
                                   default=default_config(key, False))


TUNING_FWD = Tunable("grouped_gemm.fwd", _KERNEL_MODULES, default=default_config, space=_space)
TUNING_DW = Tunable("grouped_gemm.dw", _KERNEL_MODULES, default=default_config, space=_space)


def _choose(tunable: Tunable, key: dict[str, Any], device: torch.device, run) -> dict:
    if key["kind"] == "dw" and forced_dw_splits() is not None:  # an A/B run: the forced splits, untuned
        return default_config(key, triton_interpreting())
    return tunable.choose(device, key, run, interpret=triton_interpreting())


# ---------------------------------------------------------------- forward

def _fwd_triton(a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation,
                save_preact):
    kern = _kernels()
    swiglu = activation == "swiglu"
    num_slots = slot_pos.shape[0]
    mode = kern.MODE_SWIGLU if swiglu else kern.MODE_PLAIN
    a, w, w2 = a.contiguous(), w.contiguous(), (w2.contiguous() if swiglu else None)
    e, n, k = w.shape
    out, preact = kern.fwd_outputs(num_slots, n, a.dtype, a.device, mode, save_preact)
    launch = functools.partial(kern.launch_fwd, a, w, w2, out, preact, sorted_ids, expert_ids, n_pad, slot_pos,
                               a_div=max(gather_k, 1), align=align, mode=mode, transpose_w=False,
                               save_preact=save_preact, zero_dropped=True)
    key = tuning_key("fwd", mode, a.dtype, a.device, n, k, e, num_slots, max(gather_k, 1), align)
    launch(config=_choose(TUNING_FWD, key, a.device, lambda cfg: launch(config=cfg)))
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
    slots, n = slot_pos.shape[0], w.shape[1]
    swiglu = activation == "swiglu" and save_preact
    preact = a.new_empty((slots, 2 * n)) if swiglu else a.new_empty((0,))
    return a.new_empty((slots, n)), preact


# ---------------------------------------------------------------- backward

def _bwd_triton(grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align,
                activation):
    kern = _kernels()
    swiglu = activation == "swiglu"
    num_slots = slot_pos.shape[0]
    e, n, k = w.shape
    top_k = max(gather_k, 1)
    grad_out, a = grad_out.contiguous(), a.contiguous()
    w, w2 = w.contiguous(), (w2.contiguous() if swiglu else None)
    mode = kern.MODE_SWIGLU_BWD if swiglu else kern.MODE_PLAIN
    # dX by slot; when A holds slots (gather_k = 0) this is the public gradient, so dropped slots get zeros
    grad_rows, _ = kern.fwd_outputs(num_slots, k, a.dtype, a.device, kern.MODE_PLAIN, False)
    launch_dx = functools.partial(kern.launch_fwd, grad_out, w, w2, grad_rows, preact if swiglu else None,
                                  sorted_ids, expert_ids, n_pad, slot_pos, a_div=1, align=align, mode=mode,
                                  transpose_w=True, save_preact=False, zero_dropped=gather_k == 0)
    key = tuning_key("fwd", mode, a.dtype, a.device, k, n, e, num_slots, top_k, align)
    launch_dx(config=_choose(TUNING_FWD, key, a.device, lambda cfg: launch_dx(config=cfg)))
    if gather_k > 0:
        grad_a = _combine_kernels().combine(grad_rows, None, slot_pos, gather_k, a.dtype)  # a plain sum per token
    else:
        grad_a = grad_rows
    grad_w, grad_w2 = kern.dw_outputs(e, n, k, w.dtype, w.device, mode)
    launch_dw = functools.partial(kern.launch_dw, grad_out, preact if swiglu else None, a, grad_w, grad_w2,
                                  sorted_ids, offsets, x_div=top_k, mode=mode)
    key_w = tuning_key("dw", mode, a.dtype, a.device, n, k, e, num_slots, top_k, align)
    launch_dw(config=_choose(TUNING_DW, key_w, a.device, lambda cfg: launch_dw(config=cfg)))
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
        a: (T, K) token rows when gather=True (row of slot s is s // top_k), else (T·k, K), one row per slot
            (the output of a previous grouped_gemm); float32/float16/bfloat16.
        w: (E, N, K) expert weights, Linear convention, same dtype as a.
        alignment: from `moe_align(topk_ids, E, block_size)`; block_size a power of two >= 16.
        gather: read A rows through the routing instead of in sorted order.
        w2: (E, N, K) second weight, required by activation="swiglu" (the "up" projection; w is the gate).
        activation: None or "swiglu" (silu(A w^T) * (A w2^T), fused in the kernel epilogue).
    Returns:
        (T·k, N) in a.dtype, one row per slot s = t·k + j; rows of dropped slots are 0.
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
    slots = alignment.slot_pos.shape[0]
    tokens = slots // alignment.top_k
    if gather and a.shape[0] != tokens:
        raise ValueError(f"a must have one row per token ({tokens}) when gather=True: got {a.shape[0]}")
    if not gather and a.shape[0] != slots:
        raise ValueError(f"a must have one row per slot (T·k = {slots}) when gather=False: got {a.shape[0]}")
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
