"""FP8 x FP8 GEMM with fp32 accumulation and the scales applied in fp32: c = (a * sa) @ (b * sb)^T (+ bias).

a (M, K) and b (N, K) are float8 e4m3 (K contiguous in the canonical layout; any strides work).
SCALE_MODE picks the scale granularity (DESIGN.md section 8):
  0 tensor-wise  sa (), sb ()                                  epilogue: acc * sa * sb
  1 row-wise     sa (M, 1), sb (N, 1)                          epilogue: acc * sa[m] * sb[n]
  2 block-wise   sa (M, ceil(K/128)), sb (ceil(N/128), ceil(K/128))
                 every BLOCK_K step lies in one 128-wide K group, so its partial product is scaled by
                 sa[m, g] * sb[n // 128, g] before being added to the fp32 accumulator (as DeepSeek-V3 does;
                 it also bounds how long the tensor cores accumulate in their own precision).
Program order is grouped (GROUP_M row blocks sweep the N blocks together) so B tiles are reused from L2.
Accumulation and epilogue are fp32, so there is no bf16 arithmetic to upcast in the interpreter.
Pure Triton: nothing here imports pyscale.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import gemm_configs, gemm_default_config, gemm_tile

SCALE_TENSOR, SCALE_ROW, SCALE_BLOCK = 0, 1, 2
SCALE_BLOCK_SIZE = 128






@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                     stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                     stride_sam, stride_sak, stride_sbn, stride_sbk,
                     SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    offs_m, offs_n, offs_k, mask_m, mask_n, a_ptrs, b_ptrs = gemm_tile(
        a_ptr, b_ptr, M, N, stride_am, stride_ak, stride_bn, stride_bk, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    if SCALE_MODE == 2:
        sa_ptrs = sa_ptr + offs_m * stride_sam
        sb_ptrs = sb_ptr + (offs_n // 128) * stride_sbn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        if SCALE_MODE == 2:
            g = k0 // 128
            sa = tl.load(sa_ptrs + g * stride_sak, mask=mask_m, other=0.0)
            sb = tl.load(sb_ptrs + g * stride_sbk, mask=mask_n, other=0.0)
            acc += tl.dot(a, b) * (sa[:, None] * sb[None, :])
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if SCALE_MODE == 0:
        zero_m = tl.zeros((BLOCK_M,), tl.int64)
        zero_n = tl.zeros((BLOCK_N,), tl.int64)
        sa = tl.load(sa_ptr + zero_m, mask=mask_m, other=0.0)
        sb = tl.load(sb_ptr + zero_n, mask=mask_n, other=0.0)
        acc = acc * sa[:, None] * sb[None, :]
    elif SCALE_MODE == 1:
        sa = tl.load(sa_ptr + offs_m * stride_sam, mask=mask_m, other=0.0)
        sb = tl.load(sb_ptr + offs_n * stride_sbn, mask=mask_n, other=0.0)
        acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------- configs and launch

def gpu_configs() -> list[dict]:
    """Autotuning space on a GPU. BLOCK_K divides 128 in every config (block-wise scaling needs it).
    A 128x128x128 tile needs 32 KB per stage in flight (stages - 1 of them): 4 stages fit sm_89's 99 KB;
    the 256-wide tiles only fit Hopper (autotuning skips configs that run out of shared memory)."""
    return gemm_configs(((128, 128, 128, 8, 4), (128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
                         (128, 128, 64, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (32, 64, 128, 4, 4)))


def fp8_gemm_config(m: int, n: int, k: int, *, capability: tuple[int, int] | None = None,
                    interpret: bool | None = None) -> dict:
    """One config without autotuning: the interpreter's (small tiles, few loop steps; `interpret`, default
    TRITON_INTERPRET=1) or a GPU default; BLOCK_K 128 suits block-wise scales."""
    return gemm_default_config(m, interpret=interpret)


def launch_fp8_gemm(a, b, c, scale_a, scale_b, bias, scale_mode: int, *, config: dict | None = None,
                    capability: tuple[int, int] | None = None) -> None:
    """c (M, N) <- scaled a @ b^T (+ bias). `config` (one of `gpu_configs`, say) forces tile sizes;
    None takes `fp8_gemm_config`'s."""
    m, k = a.shape
    n = b.shape[0]
    if m == 0 or n == 0:
        return
    if scale_mode == SCALE_TENSOR:
        s_strides = (0, 0, 0, 0)
    else:
        s_strides = (scale_a.stride(0), scale_a.stride(1), scale_b.stride(0), scale_b.stride(1))
    args = (a, b, c, scale_a, scale_b, bias if bias is not None else c, m, n, k,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), *s_strides)
    cfg = dict(config or fp8_gemm_config(m, n, k, capability=capability))
    if scale_mode == SCALE_BLOCK and SCALE_BLOCK_SIZE % cfg["BLOCK_K"]:
        raise ValueError(f"BLOCK_K must divide {SCALE_BLOCK_SIZE} for block-wise scales: got {cfg['BLOCK_K']}")
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _fp8_gemm_kernel[grid](*args, SCALE_MODE=scale_mode, HAS_BIAS=bias is not None,
                           BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                           GROUP_M=cfg["GROUP_M"], num_warps=cfg.get("num_warps", 4),
                           num_stages=cfg.get("num_stages", 3))
