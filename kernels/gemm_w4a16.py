"""W4A16 GEMM: fp16/bf16 activations x group-wise int4 weights, dequantised in registers.

out[m, n] = sum_k x[m, k] * (q[n, k] - z[n, k // G]) * s[n, k // G] (+ bias[n]).
Weights in the interchange format of DESIGN.md section 8: qweight uint8 (N, K/2) with the even k in the
low nibble; scales (N, K/G) in the activation dtype; zero points uint8 (N, K/G), or a constant 8 for the
symmetric format (codes stored as q + 8).

One kernel, two shapes of launch (both chosen by `w4a16_config`):
  * decode, M <= 16: BLOCK_M = 16 and split-K. The weight read dominates, so the grid is spread over
    K as well as N until it covers the GPU. Still one launch: each K split writes its fp32 partial to a
    workspace (SPLIT_K, M, N) and counts itself in on its tile's counter; the split that arrives last
    sums the partials in split order (deterministic: the order never depends on who arrives last), adds
    the bias, casts, writes out and resets the counter for the next launch.
  * prefill, M > 16: 64/128-row tiles, SPLIT_K = 1, the output written directly with the bias fused.
Each K step loads BLOCK_K/2 packed bytes per weight row, splits the nibbles, interleaves them back into
k order (tl.join + reshape), subtracts the zero point, multiplies by the group scale (the BLOCK_K
columns span GROUPS_PER_TILE whole groups, or lie inside one) and feeds tl.dot with fp32 accumulation.
SWAP_AB: compute out^T = W x^T, the dequantised weights being the MMA's first operand. On sm_90a that
operand may sit in registers, so the wgmma reads W without a trip through shared memory and triton 3.6
keeps it in flight (compile report: loop wait levels > 0); with W as the second operand (the default)
each step stores W to shared memory and waits on its wgmma (level 0). The products are the same.
UPCAST (the interpreter): multiply in fp32, since the interpreter has no bf16 arithmetic; the dequantised
weights are still rounded to the activation dtype first, so the result matches the GPU path's.
`_w4a16_dequant_kernel` writes the dequantised weights (N, K) for large M, where cuBLAS on a scratch
copy beats dequantising in every row tile (pyscale.ops.gemm_w4a16 decides).
Pure Triton: nothing here imports pyscale.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import grouped_pid, interpreting, tile_count


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_n, mask_n, k0, K, stride_qn, stride_qk, stride_sn, stride_sg,
                  stride_zn, stride_zg, GROUP_SIZE: tl.constexpr, GROUPS_PER_TILE: tl.constexpr,
                  HAS_ZEROS: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The weights w[offs_n, k0:k0+BLOCK_K] = (q - z) * s, (BLOCK_N, BLOCK_K) in the scales' dtype."""
    offs_kh = tl.arange(0, BLOCK_K // 2)
    offs_g = tl.arange(0, GROUPS_PER_TILE)
    kh = k0 // 2 + offs_kh
    packed = tl.load(qw_ptr + offs_n[:, None] * stride_qn + kh[None, :] * stride_qk,
                     mask=mask_n[:, None] & (kh < K // 2)[None, :], other=0)
    codes = tl.join(packed & 0xF, packed >> 4).reshape(BLOCK_N, BLOCK_K)  # low nibble = even k
    g_idx = k0 // GROUP_SIZE + offs_g
    g_mask = mask_n[:, None] & (g_idx < K // GROUP_SIZE)[None, :]
    scale = tl.load(s_ptr + offs_n[:, None] * stride_sn + g_idx[None, :] * stride_sg, mask=g_mask, other=0.0)
    if HAS_ZEROS:
        zero = tl.load(z_ptr + offs_n[:, None] * stride_zn + g_idx[None, :] * stride_zg, mask=g_mask, other=0)
        centred = codes.to(tl.int16).reshape(BLOCK_N, GROUPS_PER_TILE, BLOCK_K // GROUPS_PER_TILE) \
            - zero.to(tl.int16)[:, :, None]
    else:
        centred = codes.to(tl.int16).reshape(BLOCK_N, GROUPS_PER_TILE, BLOCK_K // GROUPS_PER_TILE) - 8
    if UPCAST:
        # the fp32 product of a 4-bit integer and a 16-bit scale is exact: one rounding, as on the GPU
        w = (centred.to(tl.float32) * scale.to(tl.float32)[:, :, None]).to(s_ptr.dtype.element_ty)
    else:
        # (q - z) is a small integer, exact in fp16/bf16; one rounding of the product, as in the reference
        w = centred.to(s_ptr.dtype.element_ty) * scale[:, :, None]
    return w.reshape(BLOCK_N, BLOCK_K)


@triton.jit
def _store_out(acc, bias_ptr, out_ptr, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on,
               HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, count_ptr, M, N, K, k_per_split,
                       stride_xm, stride_xk, stride_qn, stride_qk, stride_sn, stride_sg, stride_zn, stride_zg,
                       stride_om, stride_on,
                       GROUP_SIZE: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, HAS_ZEROS: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr,
                       SWAP_AB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = grouped_pid(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_start = pid_k * k_per_split

    if SWAP_AB:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, k_per_split, BLOCK_K):
        k0 = k_start + kk
        k_idx = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k_idx[None, :] * stride_xk,
                    mask=mask_m[:, None] & (k_idx < K)[None, :], other=0.0)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_n, mask_n, k0, K, stride_qn, stride_qk, stride_sn, stride_sg,
                          stride_zn, stride_zg, GROUP_SIZE, GROUPS_PER_TILE, HAS_ZEROS, UPCAST, BLOCK_N, BLOCK_K)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        if SWAP_AB:
            acc_t = tl.dot(w, tl.trans(x), acc_t)
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if SWAP_AB:
        acc = tl.trans(acc_t)

    if SPLIT_K == 1:
        _store_out(acc, bias_ptr, out_ptr, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on, HAS_BIAS)
    else:
        # workspace (SPLIT_K, M, N) fp32, contiguous
        tile_ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        out_mask = mask_m[:, None] & mask_n[None, :]
        tl.store(tile_ws + pid_k * M * N, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is written before the release below
        arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the last split of this tile: reduce in split order, then the epilogue
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(tile_ws + s * M * N, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(count_ptr + pid, 0)  # nobody else touches it again in this launch
            _store_out(total, bias_ptr, out_ptr, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on, HAS_BIAS)


@triton.jit
def _w4a16_dequant_kernel(qw_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_qn, stride_qk, stride_sn, stride_sg,
                          stride_zn, stride_zg, stride_wn, stride_wk,
                          GROUP_SIZE: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, HAS_ZEROS: tl.constexpr,
                          UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """w (N, K) <- (q - z) * s in the scales' dtype, one (BLOCK_N, BLOCK_K) tile per program."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1).to(tl.int64) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    w = _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_n, mask_n, k0, K, stride_qn, stride_qk, stride_sn, stride_sg,
                      stride_zn, stride_zg, GROUP_SIZE, GROUPS_PER_TILE, HAS_ZEROS, UPCAST, BLOCK_N, BLOCK_K)
    tl.store(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, w,
             mask=mask_n[:, None] & (offs_k < K)[None, :])


# ----------------------------------------------------------------------------- configs and launch

DECODE_MAX_M = 16  # up to here one 16-row tile covers the batch and K is split across programs
# decode tiles (BLOCK_N, BLOCK_K, num_warps, num_stages); SPLIT_K follows from the machine size
_DECODE_TILES = ((64, 128, 4, 4), (64, 256, 4, 3), (32, 128, 4, 4), (32, 256, 4, 4), (128, 128, 4, 4),
                 (128, 128, 8, 3), (64, 128, 4, 6))
# prefill tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_PREFILL_TILES = ((128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                  (128, 256, 64, 8, 3), (64, 64, 128, 4, 4))


def _split_k(n: int, k: int, block_n: int, block_k: int, num_sms: int | None) -> int:
    """Split K (a power of two, at most 16, whole BLOCK_K steps per split) until the grid has about two
    programs per SM."""
    tiles = triton.cdiv(n, block_n)
    k_steps = triton.cdiv(k, block_k)
    target = 2 * (num_sms or 132)
    split = 1
    while tiles * split < target and split * 2 <= k_steps and split < 16:
        split *= 2
    return split


def _decode(n: int, k: int, tile: tuple[int, int, int, int], num_sms: int | None, swap: bool) -> dict:
    block_n, block_k, warps, stages = tile
    return {"BLOCK_M": 16, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": _split_k(n, k, block_n, block_k, num_sms),
            "GROUP_M": 1, "SWAP_AB": swap, "num_warps": warps, "num_stages": stages}


def _prefill(tile: tuple[int, int, int, int, int], swap: bool) -> dict:
    block_m, block_n, block_k, warps, stages = tile
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": 1, "GROUP_M": 8,
            "SWAP_AB": swap, "num_warps": warps, "num_stages": stages}


def w4a16_config(m: int, n: int, k: int, group_size: int, *, num_sms: int | None = None,
                 capability: tuple[int, int] | None = None, swap: bool = False,
                 interpret: bool | None = None) -> dict:
    """Tile sizes, warps, stages and SPLIT_K for one problem without autotuning.

    Decode (M <= 16): BLOCK_M 16 (tl.dot's minimum), 64 x 128 tiles (~96 registers; a 256-wide K step needs
    ~250, ahead-of-time compiles), split K until there are about 2 programs per SM. Prefill: 128 x 128 tiles
    (64-row for M <= 64), BLOCK_K 64, no split. `swap`: the SWAP_AB variant (module docstring).
    Interpreter (`interpret`, default TRITON_INTERPRET=1): small tiles, decode split in up to 4.
    """
    if interpreting() if interpret is None else interpret:
        block_k = 64
        if m <= DECODE_MAX_M:  # split K as on a GPU, so the fused reduction runs in the interpreter too
            split = min(4, 1 << (triton.cdiv(k, block_k).bit_length() - 1))
            cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": block_k, "SPLIT_K": split, "GROUP_M": 1}
        else:
            cfg = {"BLOCK_M": 32 if m <= 32 else 64, "BLOCK_N": 64, "BLOCK_K": block_k, "SPLIT_K": 1, "GROUP_M": 4}
        return {**cfg, "SWAP_AB": swap, "num_warps": 4, "num_stages": 1}
    stages = 4 if capability is not None and capability >= (9, 0) else 3
    if m <= DECODE_MAX_M:
        return _decode(n, k, (64, 128, 4, stages), num_sms, swap)
    if m <= 64:
        return _prefill((64, 128, 64, 4, stages), swap)
    return _prefill((128, 128, 64, 8, stages), swap)


def gpu_configs(m: int, n: int, k: int, *, num_sms: int | None = None, swap: bool = False) -> list[dict]:
    """The autotuning space of one problem on a GPU: a few decode tiles, each split to fill the machine,
    or a few prefill tiles (the config function's choice is always tried as well)."""
    if m <= DECODE_MAX_M:
        return [_decode(n, k, tile, num_sms, swap) for tile in _DECODE_TILES]
    return [_prefill(tile, swap) for tile in _PREFILL_TILES]


def split_k_of(config: dict) -> int:
    return int(config.get("SPLIT_K", 1))


def _check_block_k(bk: int, group_size: int) -> None:
    if bk % 2 or (bk % group_size and group_size % bk):
        raise ValueError(f"BLOCK_K must be even and divide or be divided by group_size: got {bk}, {group_size}")


def launch_w4a16_gemm(x, qweight, scales, zeros, bias, out, group_size: int, config: dict, *,
                      workspace=None, counters=None) -> None:
    """out (M, N) <- x @ dequant(qweight)^T (+ bias), in one launch.

    With SPLIT_K > 1, `workspace` is an fp32 (SPLIT_K, M, N) contiguous buffer (any contents) and
    `counters` an int32 buffer of at least `tile_count` zeros (one per output tile, the grid's first axis),
    left at zero again when the launch ends
    (so one buffer serves every later launch on the same stream; never two launches at once).
    """
    m, k = x.shape
    n = qweight.shape[0]
    if m == 0 or n == 0:
        return
    bk, split = config["BLOCK_K"], split_k_of(config)
    _check_block_k(bk, group_size)
    if split > 1:
        if workspace is None or tuple(workspace.shape) != (split, m, n) or not workspace.is_contiguous():
            raise ValueError(f"workspace must be a contiguous fp32 ({split}, {m}, {n}) buffer for SPLIT_K = {split}")
        if counters is None or counters.numel() < tile_count(m, n, config):
            raise ValueError(f"counters must hold at least {tile_count(m, n, config)} zeroed int32")
    groups_per_tile = max(1, bk // group_size)
    # every split covers whole BLOCK_K steps, so K ranges never overlap
    k_per_split = triton.cdiv(triton.cdiv(k, split), bk) * bk
    z_strides = (zeros.stride(0), zeros.stride(1)) if zeros is not None else (0, 0)
    grid = (tile_count(m, n, config), split)
    _w4a16_gemm_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else qweight, bias if bias is not None else scales, out,
        workspace if workspace is not None else out, counters if counters is not None else qweight,
        m, n, k, k_per_split, x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), *z_strides, out.stride(0), out.stride(1),
        GROUP_SIZE=group_size, GROUPS_PER_TILE=groups_per_tile, HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None, SPLIT_K=split, UPCAST=interpreting(), SWAP_AB=bool(config.get("SWAP_AB", False)),
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=bk, GROUP_M=config["GROUP_M"],
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3))


def dequant_config(group_size: int, *, interpret: bool | None = None) -> dict:
    """Tiles of `_w4a16_dequant_kernel`: 64 x 256 weights per program (bandwidth-bound, no tuning)."""
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4}
    return {"BLOCK_N": 64, "BLOCK_K": 256, "num_warps": 4}


def launch_w4a16_dequant(qweight, scales, zeros, group_size: int, w) -> None:
    """w (N, K) in scales.dtype <- the dequantised weights (any strides)."""
    n, k = w.shape
    if n == 0 or k == 0:
        return
    cfg = dequant_config(group_size)
    bk = cfg["BLOCK_K"]
    _check_block_k(bk, group_size)
    z_strides = (zeros.stride(0), zeros.stride(1)) if zeros is not None else (0, 0)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k, bk))
    _w4a16_dequant_kernel[grid](
        qweight, scales, zeros if zeros is not None else qweight, w, n, k, qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), *z_strides, w.stride(0), w.stride(1),
        GROUP_SIZE=group_size, GROUPS_PER_TILE=max(1, bk // group_size), HAS_ZEROS=zeros is not None,
        UPCAST=interpreting(), BLOCK_N=cfg["BLOCK_N"], BLOCK_K=bk, num_warps=cfg["num_warps"])
