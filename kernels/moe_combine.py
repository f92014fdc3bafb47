"""Triton kernels of the MoE combine, `pyscale.ops.moe_combine` (pure Triton + torch; imports nothing from
pyscale).

Expert outputs come one row per slot (slot s = t * k + j, DESIGN.md section 8), as the grouped GEMM
stores them; slot_pos (from `moe_align`) is -1 for the slots a capacity limit dropped.
- `_combine_kernel`: out[t] = sum_j w[t, j] * y[t * k + j] over the kept slots, a deterministic gather-sum
  in token order. Without weights it is the plain sum the grouped GEMM's backward uses to bring dX rows
  back to tokens.
- `_combine_bwd_kernel`: grad_y and grad_weights per slot.

Numerics: int64 offsets, masks on every access, fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreting


@triton.jit
def _combine_kernel(y_ptr, w_ptr, slot_pos_ptr, out_ptr, T, D, stride_ym, stride_om,
                    TOP_K: tl.constexpr, HAS_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[t] = sum_j w[t, j] * y[t * TOP_K + j] (dropped slots, slot_pos = -1, add nothing)."""
    pid_t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    rmask = rows < T
    dmask = cols < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for j in range(TOP_K):
        slot = rows * TOP_K + j
        ok = tl.load(slot_pos_ptr + slot, mask=rmask, other=-1) >= 0
        v = tl.load(y_ptr + slot[:, None] * stride_ym + cols[None, :], mask=ok[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + slot, mask=ok, other=0.0)
            acc += w[:, None] * v
        else:
            acc += v
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _combine_bwd_kernel(grad_out_ptr, y_ptr, w_ptr, slot_pos_ptr, grad_y_ptr, grad_w_ptr, num_slots, D,
                        stride_gom, stride_ym, stride_gym, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """Per slot s of token t: grad_y[s] = w[s] grad_out[t], grad_w[s] = <grad_out[t], y[s]>; both 0 for a
    dropped slot. Each slot is one row, so grad_w needs no atomics."""
    pid = tl.program_id(0).to(tl.int64)
    slot = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    in_slots = slot < num_slots
    ok = in_slots & (tl.load(slot_pos_ptr + slot, mask=in_slots, other=-1) >= 0)
    tok = tl.where(ok, slot // TOP_K, 0)
    w = tl.load(w_ptr + slot, mask=ok, other=0.0)
    dot = tl.zeros((BLOCK_M,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        dmask = cols < D
        m = ok[:, None] & dmask[None, :]
        go = tl.load(grad_out_ptr + tok[:, None] * stride_gom + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + slot[:, None] * stride_ym + cols[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(grad_y_ptr + slot[:, None] * stride_gym + cols[None, :],
                 (w[:, None] * go).to(grad_y_ptr.dtype.element_ty), mask=in_slots[:, None] & dmask[None, :])
        dot += tl.sum(go * y, axis=1)
    tl.store(grad_w_ptr + slot, dot, mask=in_slots)


def _combine_blocks(d: int) -> tuple[int, int]:
    if interpreting():
        return 32, min(triton.next_power_of_2(max(d, 1)), 128)
    return 16, min(triton.next_power_of_2(max(d, 1)), 256)


def combine(y: torch.Tensor, weights: torch.Tensor | None, slot_pos: torch.Tensor, top_k: int,
            out_dtype: torch.dtype) -> torch.Tensor:
    """y (T·k, D) by slot -> out (T, D) in token order; weights fp32 (T, k) or None (plain sum)."""
    t = slot_pos.shape[0] // top_k
    d = y.shape[1]
    out = torch.empty((t, d), dtype=out_dtype, device=y.device)
    if t == 0 or d == 0:
        return out.zero_()
    bt, bd = _combine_blocks(d)
    _combine_kernel[(triton.cdiv(t, bt), triton.cdiv(d, bd))](
        y, weights if weights is not None else y, slot_pos, out, t, d, y.stride(0), out.stride(0),
        TOP_K=top_k, HAS_W=weights is not None, BLOCK_T=bt, BLOCK_D=bd)
    return out


def combine_backward(grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, slot_pos: torch.Tensor,
                     top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_y (T·k, D) in y.dtype, grad_weights fp32 (T, k)); 0 for dropped slots."""
    slots, d = y.shape
    grad_y = torch.empty_like(y)
    grad_w = torch.empty(weights.shape, dtype=torch.float32, device=y.device)
    if slots == 0:
        return grad_y, grad_w
    bm = 32 if interpreting() else 16
    bd = min(triton.next_power_of_2(max(d, 1)), 128)
    _combine_bwd_kernel[(triton.cdiv(slots, bm),)](
        grad_out, y, weights, slot_pos, grad_y, grad_w, slots, d, grad_out.stride(0), y.stride(0),
        grad_y.stride(0), TOP_K=top_k, BLOCK_M=bm, BLOCK_D=bd)
    return grad_y, grad_w
