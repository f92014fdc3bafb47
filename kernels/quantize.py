"""Triton quantisers: FP8 (e4m3/e5m2) and int8, symmetric, with one scale per group of a 2-D tensor.

A group is a (rows x columns) window of x (M, K) that shares one fp32 scale = max(absmax, EPS) / QMAX:
  * per row       (1 x K)     FP8 row-wise, int8 per-token (activations) / per-channel ((N, K) weights)
  * 1 x 128                   FP8 block-wise activations
  * 128 x 128                 FP8 block-wise weights
  * whole tensor              FP8 tensor-wise: `_absmax_kernel` first, then `_quantize_kernel` with the
                              scale passed in (STATIC_SCALE)
q = clamp(x / scale, -QMAX, QMAX), rounded to nearest even (int8: explicit; FP8: the cast's own rounding).
Divisions are IEEE (tl.math.div_rn), so GPU, interpreter and the PyTorch reference agree bit for bit.
Pure Triton: nothing here imports pyscale. Launch helpers take torch tensors allocated by the caller.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import interpreting

EPS = 1e-12  # floor on absmax so an all-zero group gets a finite scale and quantises to 0




@triton.jit
def _absmax_kernel(x_ptr, out_ptr, M, K, stride_xm, stride_xk,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[0] = max(out[0], max |x|) over this program's tile; out must start at 0."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_m < M)[:, None] & (offs_k < K)[None, :]
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    tile_max = tl.max(tl.max(tl.abs(x.to(tl.float32)), axis=1), axis=0)
    # absmax values are >= 0, for which float max agrees with the integer order the atomic uses
    tl.atomic_max(out_ptr, tile_max, mask=pid_m >= 0)


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, M, K, group_k,
                     stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sk,
                     QMAX: tl.constexpr, IS_INT: tl.constexpr, STATIC_SCALE: tl.constexpr,
                     SHARE_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (i, g) quantises rows [i*BLOCK_M, (i+1)*BLOCK_M) x columns [g*group_k, (g+1)*group_k).

    SHARE_ROWS: the BLOCK_M rows share one scale (128 x 128 blocks), stored at s[i, g]; else one scale
    per row at s[row, g]. STATIC_SCALE: read the single scale s[0] instead of computing it.
    """
    pid_m = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    k_lo = pid_g * group_k
    cols = tl.arange(0, BLOCK_K)
    x_row = x_ptr + offs_m[:, None] * stride_xm
    q_row = q_ptr + offs_m[:, None] * stride_qm

    if STATIC_SCALE:
        scale = tl.load(s_ptr + tl.zeros((BLOCK_M,), tl.int64), mask=mask_m, other=1.0)
    else:
        amax = tl.zeros((BLOCK_M,), tl.float32)
        for kk in range(0, group_k, BLOCK_K):
            offs_k = k_lo + kk + cols
            mask = mask_m[:, None] & ((kk + cols < group_k) & (offs_k < K))[None, :]
            x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        if SHARE_ROWS:
            block_amax = tl.max(amax, axis=0)
            # div_rn: a plain `/` compiles to the approximate div.full.f32 on NVIDIA GPUs
            scale_one = tl.math.div_rn(tl.maximum(block_amax, 1e-12), QMAX)
            tl.store(s_ptr + pid_m * stride_sm + pid_g * stride_sk, scale_one, mask=pid_m * BLOCK_M < M)
            scale = tl.zeros((BLOCK_M,), tl.float32) + scale_one
        else:
            scale = tl.math.div_rn(tl.maximum(amax, 1e-12), tl.full((BLOCK_M,), QMAX, tl.float32))
            tl.store(s_ptr + offs_m * stride_sm + pid_g * stride_sk, scale, mask=mask_m)

    for kk in range(0, group_k, BLOCK_K):
        offs_k = k_lo + kk + cols
        mask = mask_m[:, None] & ((kk + cols < group_k) & (offs_k < K))[None, :]
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        y = tl.math.div_rn(x, tl.broadcast_to(scale[:, None], (BLOCK_M, BLOCK_K)))
        if IS_INT:
            # + and - 1.5 * 2**23 rounds |y| < 2**22 to an integer, half to even, in the default rounding
            # mode: the interpreter has no libdevice rint, and GPU and interpreter must agree.
            y = (y + 12582912.0) - 12582912.0
        y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        tl.store(q_row + offs_k[None, :] * stride_qk, y.to(q_ptr.dtype.element_ty), mask=mask)


def quantize_config(m: int, group_k: int, share_rows: bool, *, column_major: bool = False) -> dict:
    """Tile sizes for `_quantize_kernel` (no autotuning: the kernel is bandwidth-bound and simple).

    On a GPU a program covers ~2048 elements per step (about 80 registers per thread for row groups,
    measured by ahead-of-time compiles; 4096-element tiles pushed it to the 255 limit). Row-major x: a few
    rows by up to 512 columns, read along the rows. Column-major x (a transposed view, as the FP8 training
    linear quantises W^T, dy^T and x^T): 32 rows by 64 columns, so each column's 32 contiguous elements
    come in one 16-byte load per thread (64 bytes per column in bf16) and the tile is transposed in shared
    memory on its way to the row-major q; the row-major tiles would read 4 contiguous elements per column
    (8-byte loads, a quarter of each 32-byte sector).
    """
    if column_major and not share_rows and group_k > 1:
        return {"BLOCK_M": 32, "BLOCK_K": 64, "num_warps": 4}
    if interpreting():
        if share_rows:
            return {"BLOCK_M": 128, "BLOCK_K": 128, "num_warps": 4}
        block_k = min(triton.next_power_of_2(max(group_k, 16)), 256)
        return {"BLOCK_M": max(1, min(triton.next_power_of_2(max(m, 1)), 4096 // block_k)), "BLOCK_K": block_k,
                "num_warps": 4}
    if share_rows:
        return {"BLOCK_M": 128, "BLOCK_K": 32, "num_warps": 8}
    block_k = min(triton.next_power_of_2(max(group_k, 16)), 512)
    return {"BLOCK_M": max(1, min(triton.next_power_of_2(max(m, 1)), 2048 // block_k)), "BLOCK_K": block_k,
            "num_warps": 4}


def is_column_major(x) -> bool:
    """x (M, K) stored column by column (x.t() of a row-major tensor): its rows are the strided ones."""
    m, k = x.shape
    return m > 1 and k > 1 and x.stride(0) == 1 and x.stride(1) >= m


def launch_absmax(x, out) -> None:
    """out (fp32, one element, zeroed) <- max |x| over the 2-D tensor x."""
    m, k = x.shape
    bm, bk = (32, 128) if interpreting() else (16, 1024)
    grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
    _absmax_kernel[grid](x, out, m, k, x.stride(0), x.stride(1), BLOCK_M=bm, BLOCK_K=bk)


def launch_quantize(x, q, scale, *, qmax: float, is_int: bool, group_rows: int, group_k: int,
                    static_scale: bool = False) -> None:
    """Quantise x (M, K) into q (M, K) with groups of group_rows (1 or 128) x group_k columns.

    scale: fp32, indexed [row (or row block), column group]; for static_scale a one-element tensor.
    """
    m, k = x.shape
    share = group_rows > 1
    cfg = quantize_config(m, group_k, share, column_major=is_column_major(x))
    if share and group_rows != cfg["BLOCK_M"]:
        raise ValueError(f"group_rows must be {cfg['BLOCK_M']} when rows share a scale: got {group_rows}")
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(k, group_k) if k else 0)
    if grid[0] == 0 or grid[1] == 0:
        return
    s_strides = (0, 0) if static_scale else (scale.stride(0), scale.stride(1))
    _quantize_kernel[grid](x, q, scale, m, k, group_k, x.stride(0), x.stride(1), q.stride(0), q.stride(1),
                           *s_strides, QMAX=qmax, IS_INT=is_int, STATIC_SCALE=static_scale,
                           SHARE_ROWS=share, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"],
                           num_warps=cfg["num_warps"])
