"""int8 x int8 GEMM (W8A8) with int32 accumulation and a fused dequantising epilogue.

c[m, n] = float(sum_k a[m, k] * b[n, k]) * sa[m] * sb[n] (+ bias[n]), written in c's dtype.
a (M, K) int8 activations with per-token scales sa (M, 1) fp32; b (N, K) int8 weights with per-output-
channel scales sb (N, 1) fp32 (DESIGN.md section 8). The int32 sum is exact (no overflow while
K < 2**31 / 127**2, about 133 000). Epilogue in fp32, so there is no bf16 arithmetic to upcast in the
interpreter. Grouped program order for L2 reuse. TMA: load the tiles and store c through tensor descriptors
(sm_90+); PERSISTENT: one program per SM walks the tiles in a flattened loop (as in gemm_fp8).
On Hopper the wgmma of every K step is waited for before the next (wait level 0) whatever the loop's
structure: triton 3.6 keeps a wgmma in flight only with an fp32 accumulator ("Can't make dot async because
the accumulator is not fp32", its triton-wgmma-pipeline pass), and int8 wgmma accumulates in int32. Loads
stay pipelined (cp.async or TMA). Pure Triton: nothing here imports pyscale.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    ensure_tma_allocator,
    gemm_configs,
    gemm_default_config,
    gemm_tile,
    persistent_grid,
    tile_count,
    tma_compatible,
)


@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                      stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                      stride_sam, stride_sbn, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr):
    if TMA:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[stride_am, 1],
                                           block_shape=[BLOCK_M, BLOCK_K])
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[stride_bn, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_cm, 1],
                                           block_shape=[BLOCK_M, BLOCK_N])
    else:
        a_desc = a_ptr
        b_desc = b_ptr
        c_desc = c_ptr
    if PERSISTENT:  # one program per SM walks the tiles; flattened, the next tile's loads overlap this epilogue
        n_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), flatten=True):
            _int8_tile(tl.cast(tile, tl.int64), a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc, c_desc,
                       M, N, K,
                       stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_sam, stride_sbn,
                       HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA)
    else:
        _int8_tile(tl.program_id(0).to(tl.int64), a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc,
                   c_desc, M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_sam, stride_sbn,
                   HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA)


@triton.jit
def _int8_tile(tile, a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc, c_desc, M, N, K,
               stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_sam, stride_sbn,
               HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_M: tl.constexpr, TMA: tl.constexpr):
    """One output tile: the K loop and the dequantising epilogue."""
    pid_m, pid_n, offs_m, offs_n, offs_k, mask_m, mask_n, a_ptrs, b_ptrs = gemm_tile(
        tile, a_ptr, b_ptr, M, N, stride_am, stride_ak, stride_bn, stride_bk, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    if TMA:
        m0 = (pid_m * BLOCK_M).to(tl.int32)
        n0 = (pid_n * BLOCK_N).to(tl.int32)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if TMA:
            a = a_desc.load([m0, k0])
            b = b_desc.load([n0, k0]).T
        else:
            k_ok = offs_k < K - k0
            a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    sa = tl.load(sa_ptr + offs_m * stride_sam, mask=mask_m, other=0.0)
    sb = tl.load(sb_ptr + offs_n * stride_sbn, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if TMA:  # the descriptor clips at M and N, and needs no per-element pointers
        c_desc.store([m0, n0], out.to(c_ptr.dtype.element_ty))
    else:
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def gpu_configs(tma: bool = False, persistent: bool = False) -> list[dict]:
    """Autotuning space on a GPU for one variant: 4 stages of 128x128x128 int8 tiles keep 96 KB in flight
    (fits sm_89's 99 KB); the 256-wide tiles only fit Hopper (autotuning skips configs that run out of
    memory)."""
    tiles = ((128, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
             (128, 128, 64, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (32, 64, 128, 4, 4))
    return [{**cfg, "TMA": tma, "PERSISTENT": persistent} for cfg in gemm_configs(tiles)]


def int8_gemm_config(m: int, n: int, k: int, *, tma: bool = False, persistent: bool = False,
                     capability: tuple[int, int] | None = None, interpret: bool | None = None) -> dict:
    """One config without autotuning: the interpreter's (small tiles, few loop steps; `interpret`, default
    TRITON_INTERPRET=1) or a GPU default."""
    return {**gemm_default_config(m, interpret=interpret), "TMA": tma, "PERSISTENT": persistent}


def launch_int8_gemm(a, b, c, scale_a, scale_b, bias, *, config: dict | None = None,
                     capability: tuple[int, int] | None = None, num_sms: int | None = None) -> None:
    """c (M, N) <- (a @ b^T) * scale_a * scale_b^T (+ bias); `config` None takes `int8_gemm_config`'s
    (TMA in a config needs `tma_compatible(a, b, c)`; PERSISTENT runs min(tiles, num_sms) programs)."""
    m, k = a.shape
    n = b.shape[0]
    if m == 0 or n == 0:
        return
    args = (a, b, c, scale_a, scale_b, bias if bias is not None else c, m, n, k, a.stride(0), a.stride(1),
            b.stride(0), b.stride(1), c.stride(0), c.stride(1), scale_a.stride(0), scale_b.stride(0))
    cfg = dict(config or int8_gemm_config(m, n, k, capability=capability))
    tma = bool(cfg.get("TMA", False))
    if tma:
        if not tma_compatible(a, b, c):
            raise ValueError("TMA needs row-major a, b and c with 16-byte aligned bases and row strides")
        ensure_tma_allocator(a.device)
    persistent = bool(cfg.get("PERSISTENT", False))
    grid = (persistent_grid(m, n, cfg, num_sms) if persistent else tile_count(m, n, cfg),)
    _int8_gemm_kernel[grid](*args, HAS_BIAS=bias is not None, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                            BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], TMA=tma, PERSISTENT=persistent,
                            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3))
