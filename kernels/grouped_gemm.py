"""Triton kernels of the MoE grouped GEMM, `pyscale.ops.grouped_gemm` (pure Triton + torch; imports nothing
from pyscale).

Layout (DESIGN.md section 8): `moe_align` (csrc/ops/moe) sorts slots s = t * k + j by expert into `sorted_ids`
(rows, padded per expert to a multiple of `align` with the sentinel T * k), gives the expert of each
`align`-block in `expert_ids` (-1 past the padded length `n_pad`) and each expert's padded segment start in
`offsets`. Every GEMM here runs over that sorted, padded row space: one launch covers all experts.

- `_grouped_gemm_kernel`: C[r] = A[row(r)] @ B[expert(r)] over the padded rows, persistent over tiles;
  row(r) = sorted_ids[r] // k when gathering token rows, else r. MODE 1 fuses SwiGLU (two weights, two
  accumulators, epilogue silu(g) * u, pre-activations saved); MODE 2 fuses the SwiGLU backward into the
  A prologue (dg, du from dh and the saved pre-activations) for dX.
- `_grouped_gemm_dw_kernel`: dW[e] = A_e^T @ X_e over expert e's segment (MODE 2: both SwiGLU weights).
(The backward's scatter of dX rows back to tokens is the combine kernel, `kernels/moe_combine.py`.)

Numerics: int64 offsets, masks on every access, fp32 accumulators; `UPCAST` computes in fp32 (the
interpreter has no bf16 arithmetic); `DOT_PRECISION` lets fp32 tests ask for IEEE products on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreting

MODE_PLAIN, MODE_SWIGLU, MODE_SWIGLU_BWD = 0, 1, 2


@triton.jit
def _swiglu_grads(dh, preact_ptr, p_off, width, mask):
    """SwiGLU backward in fp32 from dh and the saved pre-activations [g | u] (u `width` columns after g):
    dg = dh * u * silu'(g), du = dh * silu(g)."""
    g = tl.load(preact_ptr + p_off, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(preact_ptr + p_off + width, mask=mask, other=0.0).to(tl.float32)
    dh = dh.to(tl.float32)
    sg = tl.sigmoid(g)
    return dh * u * (sg * (1.0 + g * (1.0 - sg))), dh * g * sg


@triton.jit
def _grouped_gemm_kernel(
        a_ptr, b_ptr, b2_ptr, c_ptr, preact_ptr, sorted_ids_ptr, expert_ids_ptr, n_pad_ptr,
        M_rows, N, K, num_slots, top_k, align,
        stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_pm,
        GATHER: tl.constexpr, MODE: tl.constexpr, SAVE_PREACT: tl.constexpr, UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    """C (M_rows, N) = A[row(r)] (K) @ B[expert(r)] (K, N), persistent over (row-block, column-block) tiles.

    MODE 0: one weight. MODE 1 (SwiGLU): C = silu(A B) * (A B2); pre-activations [A B | A B2] stored in
    preact (M_rows, 2N) when SAVE_PREACT (training). MODE 2 (SwiGLU backward, dX): A is dh (M_rows, K) and preact (M_rows, 2K) holds
    [g | u]; C = dg @ B + du @ B2 with dg = dh * u * silu'(g), du = dh * silu(g) formed in the prologue.
    Rows past n_pad, padding rows and blocks with expert -1 are written as zeros.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_pad = tl.load(n_pad_ptr)
    num_m = tl.cdiv(M_rows, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_m * num_n
    for tile in range(pid, num_tiles, nprog):
        # Grouped order: GROUP_M row blocks (one expert's weights, mostly) sweep all column blocks
        # before moving on, so weight tiles stay in L2.
        width = GROUP_M * num_n
        first_m = (tile // width) * GROUP_M
        group_rows = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % width) % group_rows
        pid_n = (tile % width) // group_rows
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        in_rows = offs_m < M_rows
        nmask = offs_n < N
        sid = tl.load(sorted_ids_ptr + offs_m, mask=in_rows, other=num_slots)
        row_ok = in_rows & (offs_m < n_pad) & (sid < num_slots)
        if GATHER:
            a_rows = tl.where(row_ok, sid // top_k, 0).to(tl.int64)
        else:
            a_rows = offs_m
        expert = tl.load(expert_ids_ptr + (pid_m.to(tl.int64) * BLOCK_M) // align)
        k_end = tl.where((expert >= 0) & (pid_m * BLOCK_M < n_pad), K, 0)  # idle tiles skip the K loop
        b_base = tl.maximum(expert, 0).to(tl.int64) * stride_be
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            kmask = offs_k < K
            amask = row_ok[:, None] & kmask[None, :]
            bmask = kmask[:, None] & nmask[None, :]
            a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak, mask=amask, other=0.0)
            b = tl.load(b_ptr + b_base + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn, mask=bmask,
                        other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if MODE == 0:
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            else:
                b2 = tl.load(b2_ptr + b_base + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                             mask=bmask, other=0.0)
                if UPCAST:
                    b2 = b2.to(tl.float32)
                if MODE == 1:
                    acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
                    acc2 = tl.dot(a, b2, acc2, input_precision=DOT_PRECISION)
                else:
                    dg, du = _swiglu_grads(a, preact_ptr, offs_m[:, None] * stride_pm + offs_k[None, :], K, amask)
                    acc = tl.dot(dg.to(b.dtype), b, acc, input_precision=DOT_PRECISION)
                    acc = tl.dot(du.to(b.dtype), b2, acc, input_precision=DOT_PRECISION)
        cmask = in_rows[:, None] & nmask[None, :]
        if MODE == 1:
            if SAVE_PREACT:
                p_off = offs_m[:, None] * stride_pm + offs_n[None, :]
                tl.store(preact_ptr + p_off, acc.to(preact_ptr.dtype.element_ty), mask=cmask)
                tl.store(preact_ptr + p_off + N, acc2.to(preact_ptr.dtype.element_ty), mask=cmask)
            acc = acc * tl.sigmoid(acc) * acc2
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _grouped_gemm_dw_kernel(
        a_ptr, preact_ptr, x_ptr, dw_ptr, dw2_ptr, sorted_ids_ptr, offsets_ptr,
        N, K, num_slots, top_k,
        stride_am, stride_pm, stride_xm, stride_we, stride_wn,
        GATHER: tl.constexpr, MODE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[e] (N, K) = A_e^T (N, rows_e) @ X[row(r)] (rows_e, K) over expert e's padded segment.

    MODE 0: A is the output gradient. MODE 2 (SwiGLU backward): A is dh and preact (M_rows, 2N) holds
    [g | u]; dW = dg^T X and dW2 = du^T X share each X tile. Padding rows are masked out.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    num_k = tl.cdiv(K, BLOCK_K)
    e = pid // (num_n * num_k)
    rest = pid % (num_n * num_k)
    pid_n = rest // num_k
    pid_k = rest % num_k
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    nmask = offs_n < N
    kmask = offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        in_seg = offs_m < end
        sid = tl.load(sorted_ids_ptr + offs_m, mask=in_seg, other=num_slots)
        ok = in_seg & (sid < num_slots)
        if GATHER:
            x_rows = tl.where(ok, sid // top_k, 0).to(tl.int64)
        else:
            x_rows = offs_m
        xt = tl.load(x_ptr + x_rows[:, None] * stride_xm + offs_k[None, :], mask=ok[:, None] & kmask[None, :],
                     other=0.0)
        # A loaded transposed (BLOCK_N, BLOCK_M): the reduction runs over rows.
        amask = nmask[:, None] & ok[None, :]
        at = tl.load(a_ptr + offs_m[None, :] * stride_am + offs_n[:, None], mask=amask, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            at = at.to(tl.float32)
        if MODE == 2:
            dg, du = _swiglu_grads(at, preact_ptr, offs_m[None, :] * stride_pm + offs_n[:, None], N, amask)
            acc = tl.dot(dg.to(xt.dtype), xt, acc, input_precision=DOT_PRECISION)
            acc2 = tl.dot(du.to(xt.dtype), xt, acc2, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(at, xt, acc, input_precision=DOT_PRECISION)
    w_off = e.to(tl.int64) * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    wmask = nmask[:, None] & kmask[None, :]
    tl.store(dw_ptr + w_off, acc.to(dw_ptr.dtype.element_ty), mask=wmask)
    if MODE == 2:
        tl.store(dw2_ptr + w_off, acc2.to(dw2_ptr.dtype.element_ty), mask=wmask)


def grouped_gemm_config(n: int, k: int, rows_per_expert: float, dtype: torch.dtype,
                        capability: tuple[int, int] | None = None, *, kind: str = "fwd", mode: int = MODE_PLAIN,
                        interpret: bool | None = None) -> dict:
    """Tile configuration without autotuning (the interpreter has none).

    kind "fwd" (`_grouped_gemm_kernel`: BLOCK_M rows x BLOCK_N outputs, BLOCK_K reduction step) or "dw"
    (`_grouped_gemm_dw_kernel`: BLOCK_N x BLOCK_K output tile, BLOCK_M rows per reduction step).
    GPU: 128x128x64 tiles with 8 warps (64-row tiles when experts see few rows, which wastes less padding;
    64 columns with two accumulators; K step 32 in the SwiGLU-backward prologue);
    pipeline stages sized so that stages x (bytes of the tiles one step loads) fits the arch's shared
    memory (~99 KB on sm_86/89, ~163 KB on sm_80, ~227 KB on sm_90): MODE 1 loads two weight tiles,
    MODE 2 also the gradient and both pre-activation tiles.
    Interpreter (`interpret`, default: TRITON_INTERPRET=1): small tiles, since each program step costs ~1 ms
    regardless of size.
    """
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_M": 16, "BLOCK_N": 64 if n > 32 else 32, "BLOCK_K": 64 if k > 32 else 32, "GROUP_M": 4,
                "num_warps": 4, "num_stages": 1}
    elem = 4 if dtype == torch.float32 else 2
    if kind == "fwd":
        block_m, block_n, block_k = (128 if rows_per_expert >= 128 else 64), 128, (32 if elem == 4 else 64)
    else:
        block_m, block_n, block_k = (32 if elem == 4 else 64), 128, 128
    # Two fp32 accumulators (SwiGLU forward, both SwiGLU weight gradients) of 128x128 would take 128 of the
    # 255 registers per thread at 8 warps and spill: halve N, same FLOPs per loaded A tile.
    if mode == MODE_SWIGLU or (kind == "dw" and mode == MODE_SWIGLU_BWD):
        block_n = 64
    # The SwiGLU-backward prologue keeps dh, g, u and the two products live: a shorter K step for dX; for
    # dW on mma.sync GPUs (sm_8x, operands in registers) a 64x64 output tile as well.
    if mode == MODE_SWIGLU_BWD:
        if kind == "fwd":
            block_k = 32
        elif capability is not None and capability[0] < 9:
            block_k = 64
    # Opt-in shared memory per block (CUDA C Programming Guide, per compute capability); unknown -> tightest.
    smem_limit = {(8, 0): 163, (9, 0): 227}.get(tuple(capability) if capability else (9, 0), 99) * 1024
    budget = smem_limit - 8 * 1024  # epilogue layout conversions and barriers
    a_tiles = 3 if mode == MODE_SWIGLU_BWD else 1

    def per_stage(bn: int, bk: int) -> int:
        if kind == "fwd":
            return (a_tiles * block_m * bk + (1 if mode == MODE_PLAIN else 2) * bk * bn) * elem
        return (a_tiles * bn * block_m + block_m * bk) * elem

    # Triton keeps `stages` buffers per operand on sm_90 (TMA/wgmma pipeline), stages - 1 on sm_8x (cp.async).
    hopper = capability is None or capability[0] >= 9

    def fits(stages: int, bn: int, bk: int) -> bool:
        return (stages if hopper else stages - 1) * per_stage(bn, bk) <= budget

    while not fits(2, block_n, block_k) and block_n > 64:
        block_n //= 2
    while not fits(2, block_n, block_k) and block_k > 32:
        block_k //= 2
    stages = max(s for s in (2, 3, 4) if s == 2 or fits(s, block_n, block_k))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 8,
            "num_stages": stages}


def _num_programs(tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(tiles, 2 * sms))
    # Interpreter: cap the grid so the persistent loop really takes several tiles per program.
    return max(1, min(tiles, 8))


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def grouped_gemm_fwd(a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, sorted_ids: torch.Tensor,
                     expert_ids: torch.Tensor, n_pad: torch.Tensor, *, gather_k: int, align: int, mode: int,
                     transpose_w: bool, preact: torch.Tensor | None, num_slots: int, config: dict,
                     save_preact: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch `_grouped_gemm_kernel`.

    w (E, N, K) with transpose_w=False computes A @ w[e]^T (N outputs); w (E, K, N) with transpose_w=True
    computes A @ w[e]. MODE 1 returns (out, preact (rows, 2N), or (0,) without save_preact); MODE 2 reads
    `preact` (rows, 2K).
    """
    rows = sorted_ids.shape[0]
    if transpose_w:
        _, k, n = w.shape
        stride_bk, stride_bn = w.stride(1), w.stride(2)
    else:
        _, n, k = w.shape
        stride_bk, stride_bn = w.stride(2), w.stride(1)
    out = torch.empty((rows, n), dtype=a.dtype, device=a.device)
    if mode == MODE_SWIGLU:
        preact = torch.empty((rows, 2 * n) if save_preact else (0,), dtype=a.dtype, device=a.device)
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    tiles = triton.cdiv(rows, bm) * triton.cdiv(n, bn)
    if tiles == 0:
        return out, preact
    upcast = interpreting() and a.dtype == torch.bfloat16
    _grouped_gemm_kernel[(_num_programs(tiles, a.device),)](
        a, w, w2 if w2 is not None else w, out, preact if preact is not None else out,
        sorted_ids, expert_ids, n_pad, rows, n, k, num_slots, max(gather_k, 1), align,
        a.stride(0), a.stride(1), w.stride(0), stride_bk, stride_bn, out.stride(0),
        preact.stride(0) if preact is not None and preact.dim() == 2 else 0,
        GATHER=gather_k > 0, MODE=mode, SAVE_PREACT=save_preact and mode == MODE_SWIGLU, UPCAST=upcast,
        DOT_PRECISION=_dot_precision(a.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=config["BLOCK_K"],
        GROUP_M=config["GROUP_M"],
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    return out, preact


def grouped_gemm_dw(a: torch.Tensor, preact: torch.Tensor | None, x: torch.Tensor, sorted_ids: torch.Tensor,
                    offsets: torch.Tensor, n_experts: int, *, gather_k: int, mode: int, num_slots: int,
                    out_dtype: torch.dtype, config: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch `_grouped_gemm_dw_kernel`: dW (E, N, K) with N = a.shape[1], K = x.shape[1]."""
    n, k = a.shape[1], x.shape[1]
    dw = torch.empty((n_experts, n, k), dtype=out_dtype, device=a.device)
    dw2 = torch.empty_like(dw) if mode == MODE_SWIGLU_BWD else None
    bn, bk = config["BLOCK_N"], config["BLOCK_K"]
    grid = n_experts * triton.cdiv(n, bn) * triton.cdiv(k, bk)
    if grid == 0:
        return dw, dw2
    upcast = interpreting() and a.dtype == torch.bfloat16
    _grouped_gemm_dw_kernel[(grid,)](
        a, preact if preact is not None else a, x, dw, dw2 if dw2 is not None else dw, sorted_ids, offsets,
        n, k, num_slots, max(gather_k, 1), a.stride(0), preact.stride(0) if preact is not None else 0,
        x.stride(0), dw.stride(0), dw.stride(1),
        GATHER=gather_k > 0, MODE=mode, UPCAST=upcast, DOT_PRECISION=_dot_precision(a.dtype),
        BLOCK_M=config["BLOCK_M"], BLOCK_N=bn, BLOCK_K=bk,
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    return dw, dw2
