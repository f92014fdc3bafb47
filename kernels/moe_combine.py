"""Triton kernels of the MoE combine, `pyscale.ops.moe_combine` (pure Triton + torch; imports nothing from
pyscale).

- `_combine_kernel`: out[t] = sum_j w[t, j] * y[slot_pos[t * k + j]], a deterministic gather-sum back to
  token order (slot_pos from `moe_align`, -1 for dropped slots; DESIGN.md section 8). Without weights it is
  the plain sum the grouped GEMM's backward uses to scatter dX rows back to tokens.
- `_combine_bwd_kernel`: grad_y and grad_weights over the sorted rows.

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
    """out[t] = sum_j w[t, j] * y[slot_pos[t, j]] (dropped slots, slot_pos = -1, add nothing)."""
    pid_t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    rmask = rows < T
    dmask = cols < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for j in range(TOP_K):
        pos = tl.load(slot_pos_ptr + rows * TOP_K + j, mask=rmask, other=-1).to(tl.int64)
        ok = pos >= 0
        v = tl.load(y_ptr + pos[:, None] * stride_ym + cols[None, :], mask=ok[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + rows * TOP_K + j, mask=ok, other=0.0)
            acc += w[:, None] * v
        else:
            acc += v
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _combine_bwd_kernel(grad_out_ptr, y_ptr, w_ptr, sorted_ids_ptr, grad_y_ptr, grad_w_ptr, M_rows, D, num_slots,
                        stride_gom, stride_ym, stride_gym, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """Per sorted row r holding slot s of token t: grad_y[r] = w[s] grad_out[t], grad_w[s] = <grad_out[t], y[r]>.

    Each slot lives in one row, so grad_w needs no atomics; padding rows get grad_y = 0.
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    in_rows = offs_m < M_rows
    sid = tl.load(sorted_ids_ptr + offs_m, mask=in_rows, other=num_slots).to(tl.int64)
    ok = in_rows & (sid < num_slots)
    tok = tl.where(ok, sid // TOP_K, 0)
    w = tl.load(w_ptr + sid, mask=ok, other=0.0)
    dot = tl.zeros((BLOCK_M,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        dmask = cols < D
        m = ok[:, None] & dmask[None, :]
        go = tl.load(grad_out_ptr + tok[:, None] * stride_gom + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs_m[:, None] * stride_ym + cols[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(grad_y_ptr + offs_m[:, None] * stride_gym + cols[None, :],
                 (w[:, None] * go).to(grad_y_ptr.dtype.element_ty), mask=in_rows[:, None] & dmask[None, :])
        dot += tl.sum(go * y, axis=1)
    tl.store(grad_w_ptr + sid, dot, mask=ok)


def _combine_blocks(d: int) -> tuple[int, int]:
    if interpreting():
        return 32, min(triton.next_power_of_2(max(d, 1)), 128)
    return 16, min(triton.next_power_of_2(max(d, 1)), 256)


def combine(y: torch.Tensor, weights: torch.Tensor | None, slot_pos: torch.Tensor, top_k: int,
            out_dtype: torch.dtype) -> torch.Tensor:
    """y (rows, D) sorted -> out (T, D) in token order; weights fp32 (T, k) or None (plain sum)."""
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


def combine_backward(grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, sorted_ids: torch.Tensor,
                     top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_y (rows, D) in y.dtype, grad_weights fp32 (T, k); 0 for dropped slots)."""
    rows, d = y.shape
    num_slots = weights.numel()
    grad_y = torch.empty_like(y)
    grad_w = torch.zeros(weights.shape, dtype=torch.float32, device=y.device)
    if rows == 0:
        return grad_y, grad_w
    if d == 0:
        return grad_y, grad_w
    bm = 32 if interpreting() else 16
    bd = min(triton.next_power_of_2(d), 128)
    _combine_bwd_kernel[(triton.cdiv(rows, bm),)](
        grad_out, y, weights, sorted_ids, grad_y, grad_w, rows, d, num_slots, grad_out.stride(0), y.stride(0),
        grad_y.stride(0), TOP_K=top_k, BLOCK_M=bm, BLOCK_D=bd)
    return grad_y, grad_w
