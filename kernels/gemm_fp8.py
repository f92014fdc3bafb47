"""FP8 x FP8 GEMM with fp32 accumulation and the scales applied in fp32: c = (a * sa) @ (b * sb)^T (+ bias).

a (M, K) and b (N, K) are float8 e4m3 (K contiguous in the canonical layout; any strides work).
SCALE_MODE picks the scale granularity (DESIGN.md section 8):
  0 tensor-wise  sa (), sb ()                                  epilogue: acc * sa * sb
  1 row-wise     sa (M, 1), sb (N, 1)                          epilogue: acc * sa[m] * sb[n]
  2 block-wise   sa (M, ceil(K/128)), sb (ceil(N/128), ceil(K/128))
                 every BLOCK_K step lies in one 128-wide K group, whose partial product is scaled by
                 sa[m, g] * sb[n // 128, g] before being added to the fp32 accumulator (as DeepSeek-V3 does;
                 it also bounds how long the tensor cores accumulate in their own precision). PROMOTE:
                   0 "step"   acc += dot(a, b) * s every K step;
                   1 "group"  the tensor cores accumulate the K steps of one group into a partial,
                              which is scaled into acc at the group's last step, under an `if`.
                 Triton 3.6 keeps a wgmma in flight only when its result feeds nothing in the loop but
                 the next wgmma's accumulator (or ops under an `if`, which wait for it first; its
                 triton-wgmma-pipeline pass), so "step"
                 waits on every wgmma (wait level 0) while "group" with BLOCK_K < 128 overlaps all but
                 the group's last step (levels 1 and 0). Same products and scales; the partial of a group
                 is summed in fp32 by the tensor cores instead of step by step by the FMA units.
TMA: load the a and b tiles and store c through tensor descriptors (sm_90+; the op checks that a, b and c
are row-major with 16-byte aligned bases and row strides). Out-of-range rows and columns arrive as zeros
and are clipped on the store; no per-element pointers, hence ~40 fewer registers (compile report).
PERSISTENT: one program per SM walks the tiles (tile = program_id, + grid, ...); the loop over tiles and
K steps is flattened, so the next tile's loads are issued during this tile's epilogue. The op takes it
with TMA only (with pointers the flattened loop spills). Program order is grouped (GROUP_M row blocks sweep the N blocks together) so B tiles are reused from L2.
Accumulation and epilogue are fp32, so there is no bf16 arithmetic to upcast in the interpreter.
Pure Triton: nothing here imports pyscale.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    ensure_tma_allocator,
    gemm_configs,
    gemm_default_config,
    gemm_tile,
    interpreting,
    persistent_grid,
    tile_count,
    tma_compatible,
)

SCALE_TENSOR, SCALE_ROW, SCALE_BLOCK = 0, 1, 2
SCALE_BLOCK_SIZE = 128


@triton.jit
def _block_scales(sa_ptr, sb_ptr, g, stride_sak, stride_sbk, mask_m, mask_n, BLOCK_N: tl.constexpr):
    """sa[m, g] * sb[n // 128, g] for this tile and K group g, broadcastable to (BLOCK_M, BLOCK_N).
    `sb_ptr` is one pointer when BLOCK_N divides 128 (the tile lies in one 128-row block of b, so the
    scale is one number, always in bounds), else a pointer per column."""
    sa = tl.load(sa_ptr + g * stride_sak, mask=mask_m, other=0.0)
    if BLOCK_N <= 128:
        scales = sa[:, None] * tl.load(sb_ptr + g * stride_sbk)
    else:
        scales = sa[:, None] * tl.load(sb_ptr + g * stride_sbk, mask=mask_n, other=0.0)[None, :]
    return scales


@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                     stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                     stride_sam, stride_sak, stride_sbn, stride_sbk,
                     SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, PROMOTE: tl.constexpr, TMA: tl.constexpr,
                     PERSISTENT: tl.constexpr):
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
            _fp8_tile(tl.cast(tile, tl.int64), a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc, c_desc, M, N, K,
                      stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_sam, stride_sak,
                      stride_sbn, stride_sbk, SCALE_MODE, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, PROMOTE, TMA)
    else:
        _fp8_tile(tl.program_id(0).to(tl.int64), a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc,
                  c_desc, M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_sam, stride_sak,
                  stride_sbn, stride_sbk, SCALE_MODE, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, PROMOTE, TMA)


@triton.jit
def _fp8_tile(tile, a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, a_desc, b_desc, c_desc, M, N, K,
              stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
              stride_sam, stride_sak, stride_sbn, stride_sbk,
              SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              GROUP_M: tl.constexpr, PROMOTE: tl.constexpr, TMA: tl.constexpr):
    """One output tile: the K loop and the epilogue."""
    pid_m, pid_n, offs_m, offs_n, offs_k, mask_m, mask_n, a_ptrs, b_ptrs = gemm_tile(
        tile, a_ptr, b_ptr, M, N, stride_am, stride_ak, stride_bn, stride_bk, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    if TMA:
        m0 = (pid_m * BLOCK_M).to(tl.int32)
        n0 = (pid_n * BLOCK_N).to(tl.int32)
    if SCALE_MODE == 2:
        sa_ptrs = sa_ptr + offs_m * stride_sam
        if BLOCK_N <= 128:
            sb_ptrs = sb_ptr + (pid_n * BLOCK_N // 128) * stride_sbn
        else:
            sb_ptrs = sb_ptr + (offs_n // 128) * stride_sbn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SCALE_MODE == 2 and PROMOTE == 1:
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if TMA:
            a = a_desc.load([m0, k0])
            b = b_desc.load([n0, k0]).T
        else:
            k_ok = offs_k < K - k0
            a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        if SCALE_MODE == 2:
            if PROMOTE == 1:
                part = tl.dot(a, b, part)
                if (k0 % 128 == 128 - BLOCK_K) | (k0 + BLOCK_K >= K):  # the group's last step
                    acc += part * _block_scales(sa_ptrs, sb_ptrs, k0 // 128, stride_sak, stride_sbk, mask_m,
                                                mask_n, BLOCK_N)
                    part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            else:
                acc += tl.dot(a, b) * _block_scales(sa_ptrs, sb_ptrs, k0 // 128, stride_sak, stride_sbk, mask_m,
                                                    mask_n, BLOCK_N)
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
    if TMA:  # the descriptor clips at M and N, and needs no per-element pointers
        c_desc.store([m0, n0], acc.to(c_ptr.dtype.element_ty))
    else:
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------- configs and launch

PROMOTES = ("step", "group")  # block-wise scale promotion (module docstring)
_STEP_TILES = ((128, 128, 128, 8, 4), (128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
               (128, 128, 64, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (32, 64, 128, 4, 4))
# "group" needs several K steps per 128-wide group to overlap anything: 64- and 32-deep steps, with more
# stages for the same bytes in flight
_GROUP_TILES = ((128, 128, 64, 8, 6), (128, 128, 64, 8, 4), (128, 128, 32, 8, 8), (128, 256, 64, 8, 4),
                (64, 128, 64, 4, 6), (64, 64, 64, 4, 6), (32, 64, 64, 4, 4))


def _variant(cfg: dict, promote: str, tma: bool, persistent: bool) -> dict:
    return {**cfg, "PROMOTE": promote, "TMA": tma, "PERSISTENT": persistent}


def gpu_configs(granularity: str = "row", promote: str = "step", tma: bool = False,
                persistent: bool = False) -> list[dict]:
    """Autotuning space on a GPU for one variant. BLOCK_K divides 128 in every config (block-wise scaling
    needs it). A 128x128x128 tile needs 32 KB per stage in flight (stages - 1 of them): 4 stages fit sm_89's
    99 KB; the 256-wide tiles only fit Hopper (autotuning skips configs that run out of shared memory)."""
    group = granularity == "block" and promote == "group"
    return [_variant(c, "group" if group else "step", tma, persistent)
            for c in gemm_configs(_GROUP_TILES if group else _STEP_TILES)]


def fp8_gemm_config(m: int, n: int, k: int, *, granularity: str = "row", promote: str = "step", tma: bool = False,
                    persistent: bool = False, capability: tuple[int, int] | None = None,
                    interpret: bool | None = None) -> dict:
    """One config without autotuning: the interpreter's (small tiles, few loop steps; `interpret`, default
    TRITON_INTERPRET=1) or a GPU default; BLOCK_K 128 suits block-wise scales, 64 the "group" promotion
    (two steps per group, 6 stages: 80 KB in flight)."""
    cfg = gemm_default_config(m, interpret=interpret)
    if granularity != "block" or promote != "group":
        return _variant(cfg, "step", tma, persistent)
    if interpreting() if interpret is None else interpret:
        return _variant({**cfg, "BLOCK_K": 64}, "group", tma, persistent)
    return _variant({**cfg, "BLOCK_K": 64, "num_stages": 6}, "group", tma, persistent)


def launch_fp8_gemm(a, b, c, scale_a, scale_b, bias, scale_mode: int, *, config: dict | None = None,
                    capability: tuple[int, int] | None = None, num_sms: int | None = None) -> None:
    """c (M, N) <- scaled a @ b^T (+ bias). `config` (one of `gpu_configs`, say) forces tile sizes and the
    variant (PROMOTE, TMA, PERSISTENT; TMA needs `tma_compatible(a, b, c)`); None takes `fp8_gemm_config`'s.
    A PERSISTENT launch runs min(tiles, num_sms) programs (`num_sms` required)."""
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
    promote, tma = cfg.get("PROMOTE", "step"), bool(cfg.get("TMA", False))
    if scale_mode == SCALE_BLOCK and SCALE_BLOCK_SIZE % cfg["BLOCK_K"]:
        raise ValueError(f"BLOCK_K must divide {SCALE_BLOCK_SIZE} for block-wise scales: got {cfg['BLOCK_K']}")
    if promote not in PROMOTES:
        raise ValueError(f"PROMOTE must be one of {', '.join(PROMOTES)}: got {promote!r}")
    if tma:
        if not tma_compatible(a, b, c):
            raise ValueError("TMA needs row-major a, b and c with 16-byte aligned bases and row strides")
        ensure_tma_allocator(a.device)
    persistent = bool(cfg.get("PERSISTENT", False))
    grid = (persistent_grid(m, n, cfg, num_sms) if persistent else tile_count(m, n, cfg),)
    _fp8_gemm_kernel[grid](*args, SCALE_MODE=scale_mode, HAS_BIAS=bias is not None,
                           BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                           GROUP_M=cfg["GROUP_M"], PROMOTE=1 if promote == "group" and scale_mode == SCALE_BLOCK else 0,
                           TMA=tma, PERSISTENT=persistent, num_warps=cfg.get("num_warps", 4),
                           num_stages=cfg.get("num_stages", 3))
