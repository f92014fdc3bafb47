"""W4A16 GEMM: fp16/bf16 activations x group-wise int4 weights, dequantised in registers.

out[m, n] = sum_k x[m, k] * (q[n, k] - z[n, k // G]) * s[n, k // G] (+ bias[n]).
Weights in the interchange format of DESIGN.md section 8: qweight uint8 (N, K/2) with the even k in the
low nibble; scales (N, K/G) in the activation dtype; zero points uint8 (N, K/G), or a constant 8 for the
symmetric format (codes stored as q + 8).

One kernel, two shapes of launch (both chosen by `w4a16_config`):
  * decode, M <= 16: BLOCK_M = 16 and split-K. The weight read dominates, so the grid is spread over
    K as well as N until it covers the GPU; each K split writes an fp32 partial (SPLIT_K, M, N) that the
    caller sums (deterministic, unlike atomics).
  * prefill, M > 16: 64/128-row tiles, SPLIT_K = 1, the output written directly with the bias fused.
Each K step loads BLOCK_K/2 packed bytes per weight row, splits the nibbles, interleaves them back into
k order (tl.join + reshape), subtracts the zero point, multiplies by the group scale (the BLOCK_K
columns span GROUPS_PER_TILE whole groups, or lie inside one) and feeds tl.dot with fp32 accumulation.
UPCAST (the interpreter): multiply in fp32, since the interpreter has no bf16 arithmetic; the dequantised
weights are still rounded to the activation dtype first, so the result matches the GPU path's.
Pure Triton: nothing here imports pyscale.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import grouped_pid, interpreting


@triton.jit
def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, k_per_split,
                       stride_xm, stride_xk, stride_qn, stride_qk, stride_sn, stride_sg, stride_zn, stride_zg,
                       stride_os, stride_om, stride_on,
                       GROUP_SIZE: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, HAS_ZEROS: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = grouped_pid(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kh = tl.arange(0, BLOCK_K // 2)
    offs_g = tl.arange(0, GROUPS_PER_TILE)
    mask_m = offs_m < M
    mask_n = offs_n < N
    n_groups = K // GROUP_SIZE
    k_start = pid_k * k_per_split

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, k_per_split, BLOCK_K):
        k0 = k_start + kk
        k_idx = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k_idx[None, :] * stride_xk,
                    mask=mask_m[:, None] & (k_idx < K)[None, :], other=0.0)
        kh = k0 // 2 + offs_kh
        packed = tl.load(qw_ptr + offs_n[:, None] * stride_qn + kh[None, :] * stride_qk,
                         mask=mask_n[:, None] & (kh < K // 2)[None, :], other=0)
        codes = tl.join(packed & 0xF, packed >> 4).reshape(BLOCK_N, BLOCK_K)  # low nibble = even k
        g_idx = k0 // GROUP_SIZE + offs_g
        g_mask = mask_n[:, None] & (g_idx < n_groups)[None, :]
        scale = tl.load(s_ptr + offs_n[:, None] * stride_sn + g_idx[None, :] * stride_sg, mask=g_mask, other=0.0)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + offs_n[:, None] * stride_zn + g_idx[None, :] * stride_zg, mask=g_mask, other=0)
            centred = codes.to(tl.int16).reshape(BLOCK_N, GROUPS_PER_TILE, BLOCK_K // GROUPS_PER_TILE) \
                - zero.to(tl.int16)[:, :, None]
        else:
            centred = codes.to(tl.int16).reshape(BLOCK_N, GROUPS_PER_TILE, BLOCK_K // GROUPS_PER_TILE) - 8
        if UPCAST:
            # round the dequantised weight to the activation dtype as the GPU path does (the fp32
            # product of a 4-bit integer and a 16-bit scale is exact), then multiply in fp32
            w = centred.to(tl.float32) * scale.to(tl.float32)[:, :, None]
            w = w.to(x_ptr.dtype.element_ty).to(tl.float32).reshape(BLOCK_N, BLOCK_K)
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc)
        else:
            # (q - z) is a small integer, exact in fp16/bf16; one rounding of the product, as in the reference
            w = centred.to(x_ptr.dtype.element_ty) * scale[:, :, None]
            w = w.reshape(BLOCK_N, BLOCK_K)
            acc = tl.dot(x, tl.trans(w), acc)

    out_mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        o_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, acc, mask=out_mask)


# ----------------------------------------------------------------------------- configs and launch

def w4a16_config(m: int, n: int, k: int, group_size: int, *, num_sms: int | None = None,
                 capability: tuple[int, int] | None = None, interpret: bool | None = None) -> dict:
    """Tile sizes, warps, stages and SPLIT_K for one problem (no autotuning: decode shapes are few and
    the right split follows from the machine size).

    Decode (M <= 16): BLOCK_M 16 (tl.dot's minimum), split K until there are about 2 programs per SM.
    Prefill: 128 x 128 tiles (64-row for M <= 64), BLOCK_K 64, no split.
    Interpreter (`interpret`, default TRITON_INTERPRET=1): small tiles.
    """
    if interpreting() if interpret is None else interpret:
        block_k = 64
        if m <= 16:
            cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": block_k, "SPLIT_K": 1, "GROUP_M": 1}
        else:
            cfg = {"BLOCK_M": 32 if m <= 32 else 64, "BLOCK_N": 64, "BLOCK_K": block_k, "SPLIT_K": 1, "GROUP_M": 4}
        return {**cfg, "num_warps": 4, "num_stages": 1}
    stages = 4 if capability is not None and capability >= (9, 0) else 3
    if m <= 16:
        block_n, block_k = 64, 128  # ~96 registers; a 256-wide K step needs ~250 (ahead-of-time compiles)
        tiles = triton.cdiv(n, block_n)
        k_steps = triton.cdiv(k, block_k)
        target = 2 * (num_sms or 132)
        split = 1
        while tiles * split < target and split * 2 <= k_steps and split < 16:
            split *= 2
        return {"BLOCK_M": 16, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split, "GROUP_M": 1,
                "num_warps": 4, "num_stages": stages}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "GROUP_M": 8,
                "num_warps": 4, "num_stages": stages}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "GROUP_M": 8,
            "num_warps": 8, "num_stages": stages}


def split_k_of(config: dict) -> int:
    return int(config.get("SPLIT_K", 1))


def launch_w4a16_gemm(x, qweight, scales, zeros, bias, out, group_size: int, config: dict) -> None:
    """out <- x @ dequant(qweight)^T (+ bias when SPLIT_K == 1).

    With SPLIT_K == 1, out is (M, N) in the output dtype; else an fp32 (SPLIT_K, M, N) buffer of partial
    sums over disjoint K ranges (the caller sums them and adds the bias).
    """
    m, k = x.shape
    n = qweight.shape[0]
    if m == 0 or n == 0:
        return
    bk, split = config["BLOCK_K"], split_k_of(config)
    if bk % 2 or (bk % group_size and group_size % bk):
        raise ValueError(f"BLOCK_K must be even and divide or be divided by group_size: got {bk}, {group_size}")
    groups_per_tile = max(1, bk // group_size)
    # every split covers whole BLOCK_K steps, so K ranges never overlap
    k_per_split = triton.cdiv(triton.cdiv(k, split), bk) * bk
    if split == 1:
        o_strides = (0, out.stride(0), out.stride(1))
    else:
        o_strides = (out.stride(0), out.stride(1), out.stride(2))
    z_strides = (zeros.stride(0), zeros.stride(1)) if zeros is not None else (0, 0)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), split)
    _w4a16_gemm_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else qweight, bias if bias is not None else scales, out,
        m, n, k, k_per_split, x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), *z_strides, *o_strides,
        GROUP_SIZE=group_size, GROUPS_PER_TILE=groups_per_tile, HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None and split == 1, SPLIT_K=split, UPCAST=interpreting(),
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=bk, GROUP_M=config["GROUP_M"],
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3))
