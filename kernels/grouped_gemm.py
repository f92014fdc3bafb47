"""Triton kernels of the MoE grouped GEMM, `pyscale.ops.grouped_gemm` (pure Triton + torch; imports nothing
from pyscale).

Layout (DESIGN.md section 8): `moe_align` (csrc/ops/moe) sorts slots s = t * k + j by expert into `sorted_ids`
(padded per expert to a multiple of `align` with the sentinel T * k), gives the expert of each `align`-block
in `expert_ids` and each expert's padded segment start in `offsets`, all allocated at the upper bound
U = T·k + E·(align − 1) rows, with the real padded length in the device tensor `n_pad`.

Work follows the real routing, with no host sync: grids are sized for U, and every program reads `n_pad`
(or its expert's segment) on the device and skips what lies past it. Row tiles walk the sorted, padded
row space; their results are stored by slot: every output here has exactly T·k rows (slot order, row s
for slot s), so nothing is allocated, written or read for padding.

- `_grouped_gemm_kernel`: C[s] = A[s // a_div] @ B[expert(s)] for the slots s of each row tile (a_div =
  top_k gathers token rows, 1 reads slot rows), persistent over the real tiles. MODE 1 fuses SwiGLU (two
  weights, two accumulators, epilogue silu(g) * u, pre-activations saved by slot); MODE 2 fuses the SwiGLU
  backward into the A prologue (dg, du from dh and the saved pre-activations) for dX. ZERO_DROPPED writes
  zeros to the rows of slots a capacity limit dropped (slot_pos -1), so a public output is fully defined.
- `_grouped_gemm_dw_kernel`: dW[e] = A_e^T @ X_e, expert e's segment cut into SPLITS row ranges of equal
  length (each a whole number of BLOCK_M steps), one program per (expert, split, output tile): a hot expert
  runs on SPLITS times as many programs. SPLITS = 1 stores dW directly; otherwise each non-empty split
  stores an fp32 partial and `_dw_reduce_kernel` sums them in split order, so the result is deterministic
  (no atomics) and depends only on that expert's rows.
(The backward's sum of dX rows back to tokens is the combine kernel, `kernels/moe_combine.py`.)

Numerics: int64 offsets, masks on every access, fp32 accumulators; `UPCAST` computes in fp32 (the
interpreter has no bf16 arithmetic); `DOT_PRECISION` lets fp32 tests ask for IEEE products on a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import interpreting

MODE_PLAIN, MODE_SWIGLU, MODE_SWIGLU_BWD = 0, 1, 2
DW_REDUCE_BLOCK = 1024  # elements of dW per program of the split reduction
DW_WORKSPACE_BYTES = 256 << 20  # most fp32 partials the split dW may hold at once


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
def _zero_dropped_rows(ptr, stride, ncols, slot_pos_ptr, num_slots, pid, nprog, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """Rows of `ptr` (num_slots, ncols) whose slot was dropped (slot_pos -1) <- 0. Reads slot_pos once and
    writes only the dropped rows, so the dropless case costs T·k int32 reads."""
    for sb in range(pid, tl.cdiv(num_slots, BLOCK_M), nprog):
        offs = sb * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # < T·k + BLOCK_M: no int32 overflow
        in_slots = offs < num_slots
        pos = tl.load(slot_pos_ptr + offs, mask=in_slots, other=0)
        drop = in_slots & (pos < 0)
        if tl.sum(drop.to(tl.int32), axis=0) > 0:
            for n0 in range(0, ncols, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
                zeros = tl.zeros((BLOCK_M, BLOCK_N), ptr.dtype.element_ty)
                tl.store(ptr + offs[:, None] * stride + cols[None, :], zeros,
                         mask=drop[:, None] & (cols < ncols)[None, :])


@triton.jit
def _grouped_gemm_kernel(
        a_ptr, b_ptr, b2_ptr, c_ptr, preact_ptr, sorted_ids_ptr, expert_ids_ptr, n_pad_ptr, slot_pos_ptr,
        N, K, num_slots, a_div, align,
        stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_pm,
        MODE: tl.constexpr, SAVE_PREACT: tl.constexpr, ZERO_DROPPED: tl.constexpr, UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    """C (T·k, N)[s] = A[s // a_div] (K) @ B[expert(s)] (K, N) for every routed slot s, persistent over the
    (row-block, column-block) tiles of the real padded length n_pad (BLOCK_M divides align).

    MODE 0: one weight. MODE 1 (SwiGLU): C = silu(A B) * (A B2); pre-activations [A B | A B2] stored in
    preact (T·k, 2N) when SAVE_PREACT (training). MODE 2 (SwiGLU backward, dX): A is dh (T·k, K) and preact
    (T·k, 2K) holds [g | u]; C = dg @ B + du @ B2 with dg = dh * u * silu'(g), du = dh * silu(g) formed in
    the prologue. Padding rows are neither computed into nor stored; tiles past n_pad do not exist.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_pad = tl.load(n_pad_ptr)
    num_m = tl.cdiv(n_pad, BLOCK_M)  # the real row blocks; programs past the last tile only zero dropped rows
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in range(pid, num_m * num_n, nprog):
        # Grouped order: GROUP_M row blocks (one expert's weights, mostly) sweep all column blocks
        # before moving on, so weight tiles stay in L2.
        width = GROUP_M * num_n
        first_m = (tile // width) * GROUP_M
        group_rows = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % width) % group_rows
        pid_n = (tile % width) // group_rows
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        nmask = offs_n < N
        sid = tl.load(sorted_ids_ptr + offs_m, mask=offs_m < n_pad, other=num_slots)
        row_ok = sid < num_slots
        slot = tl.where(row_ok, sid, 0)
        a_rows = (slot // a_div).to(tl.int64)  # int32 division (slots < 2**31): no 64-bit divide routine
        slot = slot.to(tl.int64)
        expert = tl.load(expert_ids_ptr + (pid_m.to(tl.int64) * BLOCK_M) // align)
        # a row tile of padding only (BLOCK_M < align) skips the K loop; its stores are all masked off
        k_end = tl.where(tl.max(row_ok.to(tl.int32), axis=0) > 0, K, 0)
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
                    dg, du = _swiglu_grads(a, preact_ptr, slot[:, None] * stride_pm + offs_k[None, :], K, amask)
                    acc = tl.dot(dg.to(b.dtype), b, acc, input_precision=DOT_PRECISION)
                    acc = tl.dot(du.to(b.dtype), b2, acc, input_precision=DOT_PRECISION)
        cmask = row_ok[:, None] & nmask[None, :]
        if MODE == 1:
            if SAVE_PREACT:
                p_off = slot[:, None] * stride_pm + offs_n[None, :]
                tl.store(preact_ptr + p_off, acc.to(preact_ptr.dtype.element_ty), mask=cmask)
                tl.store(preact_ptr + p_off + N, acc2.to(preact_ptr.dtype.element_ty), mask=cmask)
            acc = acc * tl.sigmoid(acc) * acc2
        tl.store(c_ptr + slot[:, None] * stride_cm + offs_n[None, :], acc.to(c_ptr.dtype.element_ty), mask=cmask)
    if ZERO_DROPPED:
        _zero_dropped_rows(c_ptr, stride_cm, N, slot_pos_ptr, num_slots, pid, nprog, BLOCK_M, BLOCK_N)
        if SAVE_PREACT:
            _zero_dropped_rows(preact_ptr, stride_pm, 2 * N, slot_pos_ptr, num_slots, pid, nprog, BLOCK_M, BLOCK_N)


@triton.jit
def _dw_split_range(offsets_ptr, e, split, SPLITS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows [lo, hi) of split `split` of expert e's segment, the end of the segment, and how many of the
    SPLITS splits hold rows: the segment's BLOCK_M steps are dealt out in equal runs, in order."""
    start = tl.load(offsets_ptr + e).to(tl.int64)
    end = tl.load(offsets_ptr + e + 1).to(tl.int64)
    steps = tl.cdiv(end - start, BLOCK_M)
    per = tl.maximum(tl.cdiv(steps, SPLITS), 1)
    lo = start + split * per * BLOCK_M
    hi = tl.minimum(lo + per * BLOCK_M, end)
    return lo, hi, end, tl.cdiv(steps, per)


@triton.jit
def _grouped_gemm_dw_kernel(
        a_ptr, preact_ptr, x_ptr, dw_ptr, dw2_ptr, sorted_ids_ptr, offsets_ptr,
        N, K, num_slots, x_div,
        stride_am, stride_pm, stride_xm, stride_ws, stride_we, stride_wn,
        MODE: tl.constexpr, SPLITS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[e] (N, K) = A_e^T (N, rows) @ X_e (rows, K) over one split of expert e's padded segment; A (T·k, N)
    is read by slot, X row of slot s is s // x_div.

    MODE 0: A is the output gradient. MODE 2 (SwiGLU backward): A is dh and preact (T·k, 2N) holds [g | u];
    dW = dg^T X and dW2 = du^T X share each X tile. Padding rows are masked out. SPLITS = 1: dw_ptr is dW
    (E, N, K); else the fp32 workspace (SPLITS, E, N, K), written only by splits that hold rows.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    num_k = tl.cdiv(K, BLOCK_K)
    tiles = num_n * num_k
    e = pid // (SPLITS * tiles)
    rest = pid % (SPLITS * tiles)
    split = rest // tiles
    pid_n = (rest % tiles) // num_k
    pid_k = (rest % tiles) % num_k
    lo, hi, end, _ = _dw_split_range(offsets_ptr, e, split, SPLITS, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    nmask = offs_n < N
    kmask = offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        in_seg = offs_m < hi
        sid = tl.load(sorted_ids_ptr + offs_m, mask=in_seg, other=num_slots)
        ok = in_seg & (sid < num_slots)
        slot = tl.where(ok, sid, 0)
        x_rows = (slot // x_div).to(tl.int64)  # int32 division (slots < 2**31)
        slot = slot.to(tl.int64)
        xt = tl.load(x_ptr + x_rows[:, None] * stride_xm + offs_k[None, :], mask=ok[:, None] & kmask[None, :],
                     other=0.0)
        # A loaded transposed (BLOCK_N, BLOCK_M): the reduction runs over rows.
        amask = nmask[:, None] & ok[None, :]
        at = tl.load(a_ptr + slot[None, :] * stride_am + offs_n[:, None], mask=amask, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            at = at.to(tl.float32)
        if MODE == 2:
            dg, du = _swiglu_grads(at, preact_ptr, slot[None, :] * stride_pm + offs_n[:, None], N, amask)
            acc = tl.dot(dg.to(xt.dtype), xt, acc, input_precision=DOT_PRECISION)
            acc2 = tl.dot(du.to(xt.dtype), xt, acc2, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(at, xt, acc, input_precision=DOT_PRECISION)
    w_off = split.to(tl.int64) * stride_ws + e.to(tl.int64) * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    # one split: every expert stores (an empty one its zeros); several: only splits that hold rows
    wmask = nmask[:, None] & kmask[None, :] & ((lo < end) | (SPLITS == 1))
    tl.store(dw_ptr + w_off, acc.to(dw_ptr.dtype.element_ty), mask=wmask)
    if MODE == 2:
        tl.store(dw2_ptr + w_off, acc2.to(dw2_ptr.dtype.element_ty), mask=wmask)


@triton.jit
def _dw_reduce_kernel(ws_ptr, dw_ptr, offsets_ptr, NK, stride_ws, stride_we, stride_de, SPLITS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK: tl.constexpr):
    """dW[e] = the sum of expert e's non-empty split partials (SPLITS, E, N·K) in split order (0 if none)."""
    pid = tl.program_id(0)
    e = tl.program_id(1)
    _, _, _, used = _dw_split_range(offsets_ptr, e, 0, SPLITS, BLOCK_M)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < NK
    base = ws_ptr + e.to(tl.int64) * stride_we + offs
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(0, used):
        acc += tl.load(base + i * stride_ws, mask=mask, other=0.0)
    tl.store(dw_ptr + e.to(tl.int64) * stride_de + offs, acc.to(dw_ptr.dtype.element_ty), mask=mask)


def _smem_per_stage(kind: str, mode: int, elem: int, block_m: int, block_n: int, block_k: int) -> int:
    """Bytes of the tiles one pipeline stage loads: MODE 1 two weight tiles, MODE 2 also the gradient and
    both pre-activation tiles."""
    a_tiles = 3 if mode == MODE_SWIGLU_BWD else 1
    if kind == "fwd":
        return (a_tiles * block_m * block_k + (1 if mode == MODE_PLAIN else 2) * block_k * block_n) * elem
    return (a_tiles * block_n * block_m + block_m * block_k) * elem


def fits_shared_memory(kind: str, mode: int, dtype: torch.dtype, capability: tuple[int, int] | None, block_m: int,
                       block_n: int, block_k: int, stages: int) -> bool:
    """Whether `stages` pipelined tiles fit the arch's opt-in shared memory per block (CUDA C Programming
    Guide, per compute capability: ~99 KB on sm_86/89, ~163 KB on sm_80, ~227 KB on sm_90; unknown ->
    the tightest), less 8 KB for epilogue layout conversions and barriers. Triton keeps `stages` buffers
    per operand on sm_90 (TMA/wgmma pipeline), stages - 1 on sm_8x (cp.async)."""
    elem = 4 if dtype == torch.float32 else 2
    smem_limit = {(8, 0): 163, (9, 0): 227}.get(tuple(capability) if capability else (9, 0), 99) * 1024
    hopper = capability is None or capability[0] >= 9
    buffers = stages if hopper else stages - 1
    return buffers * _smem_per_stage(kind, mode, elem, block_m, block_n, block_k) <= smem_limit - 8 * 1024


def grouped_gemm_config(n: int, k: int, rows_per_expert: float, dtype: torch.dtype,
                        capability: tuple[int, int] | None = None, *, kind: str = "fwd", mode: int = MODE_PLAIN,
                        interpret: bool | None = None) -> dict:
    """Tile configuration without autotuning (the default of the tuner; the interpreter has no tuner).

    kind "fwd" (`_grouped_gemm_kernel`: BLOCK_M rows x BLOCK_N outputs, BLOCK_K reduction step) or "dw"
    (`_grouped_gemm_dw_kernel`: BLOCK_N x BLOCK_K output tile, BLOCK_M rows per reduction step; its
    SPLITS come from `dw_row_splits`).
    GPU: 128x128x64 tiles with 8 warps (64-row tiles when experts see few rows, which wastes less padding;
    64 columns with two accumulators; K step 32 in the SwiGLU-backward prologue); pipeline stages as many
    as fit shared memory (`fits_shared_memory`), at most 4.
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
    # dW on mma.sync GPUs (sm_8x, operands in registers) a 64x64 output tile and 32-row steps as well (64
    # rows take 249-255 registers and spill 8 bytes in fp16).
    if mode == MODE_SWIGLU_BWD:
        if kind == "fwd":
            block_k = 32
        elif capability is not None and capability[0] < 9:
            block_m, block_k = 32, 64

    def fits(stages: int, bn: int, bk: int) -> bool:
        return fits_shared_memory(kind, mode, dtype, capability, block_m, bn, bk, stages)

    while not fits(2, block_n, block_k) and block_n > 64:
        block_n //= 2
    while not fits(2, block_n, block_k) and block_k > 32:
        block_k //= 2
    stages = max(s for s in (2, 3, 4) if s == 2 or fits(s, block_n, block_k))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 8,
            "num_stages": stages}


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) candidates per (kind, mode) for the autotuner; the
# config function's choice comes first. Each compiles spill-free with the default's unit strides on the
# archs it is offered on (`report --full` lists them); shared memory and the row-block limit filter them per
# launch, and the 256-wide tile is Hopper's only (on mma.sync it spills).
FWD_SPACE = {
    MODE_PLAIN: ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)),
    MODE_SWIGLU: ((64, 128, 64, 8, 3), (64, 64, 64, 4, 4), (128, 64, 32, 8, 4)),
    MODE_SWIGLU_BWD: ((128, 64, 32, 8, 4), (64, 128, 32, 8, 3), (128, 128, 32, 8, 3)),
}
DW_SPACE = {
    MODE_PLAIN: ((32, 128, 128, 8, 4), (64, 128, 64, 4, 4), (64, 64, 128, 4, 4)),
    MODE_SWIGLU_BWD: ((64, 64, 64, 8, 3), (32, 64, 128, 8, 4)),
}
DW_SPLIT_CHOICES = (1, 2, 4, 8)


def space_shapes(kind: str, mode: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """The candidate tile shapes of one kernel launch (FWD_SPACE / DW_SPACE)."""
    if kind == "fwd":
        return FWD_SPACE[mode]
    return DW_SPACE[MODE_SWIGLU_BWD if mode == MODE_SWIGLU_BWD else MODE_PLAIN]


def offered(kind: str, mode: int, dtype: torch.dtype, capability: tuple[int, int] | None, shape: tuple,
            max_block_m: int) -> bool:
    """Whether candidate `shape` is in the space of this launch."""
    bm, bn, bk, _, stages = shape
    if bm > max_block_m or (bn > 128 and capability is not None and capability[0] < 9):
        return False
    return fits_shared_memory(kind, mode, dtype, capability, bm, bn, bk, stages)


def config_space(kind: str, mode: int, dtype: torch.dtype, capability: tuple[int, int] | None, *,
                 max_block_m: int, default: dict) -> list[dict]:
    """A small autotuning space around `default`: other tile shapes, and for dW other row splits. Every
    candidate has BLOCK_M <= max_block_m (a forward row tile must not straddle two experts' blocks; a dW
    step no longer than them) and fits shared memory."""
    out = []
    for shape in space_shapes(kind, mode):
        if not offered(kind, mode, dtype, capability, shape, max_block_m):
            continue
        bm, bn, bk, warps, stages = shape
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": default.get("GROUP_M", 8),
               "num_warps": warps, "num_stages": stages}
        if kind == "dw":
            cfg["SPLITS"] = default["SPLITS"]
        out.append(cfg)
    if kind == "dw":
        out += [{**default, "SPLITS": s} for s in DW_SPLIT_CHOICES if s != default["SPLITS"]]
    return out


def dw_row_splits(n: int, k: int, n_experts: int, top_k: int, max_rows_per_expert: int, config: dict,
                  parallel_programs: int, *, outputs: int = 1) -> int:
    """Row splits per expert for the dW kernel, from shapes only (no host sync): enough that an expert
    holding every token (1/top_k of all rows, the worst case with distinct ids per token) runs on as many
    programs as the GPU runs at once, so its row loop is no longer than the average program's share; at
    most 16, at most its BLOCK_M steps, and within DW_WORKSPACE_BYTES of fp32 partials (`outputs` weight
    gradients, 2 for SwiGLU). 1 when the expert's output tiles alone already fill the GPU (large experts).
    """
    tiles = triton.cdiv(n, config["BLOCK_N"]) * triton.cdiv(k, config["BLOCK_K"])
    if tiles == 0 or n_experts == 0:
        return 1
    want = math.ceil(parallel_programs / (tiles * max(top_k, 1)))
    steps = triton.cdiv(max(max_rows_per_expert, 1), config["BLOCK_M"])
    fit = DW_WORKSPACE_BYTES // max(4 * n_experts * n * k * outputs, 1)
    return max(1, min(want, 16, steps, fit))


def parallel_programs(device: torch.device) -> int:
    """Programs the device runs at once, for grid sizing: 2 per SM on a GPU; 8 in the interpreter (so a
    persistent loop really takes several tiles per program)."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def fwd_outputs(num_slots: int, n: int, dtype: torch.dtype, device: torch.device, mode: int,
                save_preact: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out (T·k, N), preact (T·k, 2N) for MODE 1 with save_preact, (0,) for MODE 1 without, else None)."""
    out = torch.empty((num_slots, n), dtype=dtype, device=device)
    if mode != MODE_SWIGLU:
        return out, None
    return out, torch.empty((num_slots, 2 * n) if save_preact else (0,), dtype=dtype, device=device)


def launch_fwd(a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, out: torch.Tensor,
               preact: torch.Tensor | None, sorted_ids: torch.Tensor, expert_ids: torch.Tensor, n_pad: torch.Tensor,
               slot_pos: torch.Tensor, *, a_div: int, align: int, mode: int, transpose_w: bool, save_preact: bool,
               zero_dropped: bool, config: dict) -> None:
    """Launch `_grouped_gemm_kernel` into `out` (and `preact`); idempotent (every output row is overwritten).

    w (E, N, K) with transpose_w=False computes A @ w[e]^T (N outputs); w (E, K, N) with transpose_w=True
    computes A @ w[e]. MODE 2 reads `preact` (T·k, 2K). The grid is sized for the upper-bound rows.
    """
    if transpose_w:
        n = w.shape[2]
        stride_bk, stride_bn = w.stride(1), w.stride(2)
    else:
        n = w.shape[1]
        stride_bk, stride_bn = w.stride(2), w.stride(1)
    k = a.shape[1]
    num_slots = slot_pos.shape[0]
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    if align % bm:
        raise ValueError(f"BLOCK_M = {bm} must divide the alignment block {align}")
    tiles = triton.cdiv(sorted_ids.shape[0], bm) * triton.cdiv(n, bn)
    if tiles == 0 or num_slots == 0:
        return
    upcast = interpreting() and a.dtype == torch.bfloat16
    _grouped_gemm_kernel[(max(1, min(tiles, parallel_programs(a.device))),)](
        a, w, w2 if w2 is not None else w, out, preact if preact is not None else out,
        sorted_ids, expert_ids, n_pad, slot_pos, n, k, num_slots, a_div, align,
        a.stride(0), a.stride(1), w.stride(0), stride_bk, stride_bn, out.stride(0),
        preact.stride(0) if preact is not None and preact.dim() == 2 else 0,
        MODE=mode, SAVE_PREACT=save_preact and mode == MODE_SWIGLU, ZERO_DROPPED=zero_dropped, UPCAST=upcast,
        DOT_PRECISION=_dot_precision(a.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=config["BLOCK_K"],
        GROUP_M=config["GROUP_M"], num_warps=config["num_warps"], num_stages=config["num_stages"])


def dw_outputs(n_experts: int, n: int, k: int, dtype: torch.dtype, device: torch.device,
               mode: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dW (E, N, K), dW2 of the same shape for MODE 2 else None)."""
    dw = torch.empty((n_experts, n, k), dtype=dtype, device=device)
    return dw, (torch.empty_like(dw) if mode == MODE_SWIGLU_BWD else None)


def launch_dw(a: torch.Tensor, preact: torch.Tensor | None, x: torch.Tensor, dw: torch.Tensor,
              dw2: torch.Tensor | None, sorted_ids: torch.Tensor, offsets: torch.Tensor, *, x_div: int, mode: int,
              config: dict) -> None:
    """Launch `_grouped_gemm_dw_kernel` (and, with SPLITS > 1, `_dw_reduce_kernel`) into dw (E, N, K), dw2;
    N = a.shape[1], K = x.shape[1]. Idempotent: every element of dw is overwritten."""
    e, n, k = dw.shape
    bn, bk, splits = config["BLOCK_N"], config["BLOCK_K"], config.get("SPLITS", 1)
    tiles = triton.cdiv(n, bn) * triton.cdiv(k, bk)
    if e * tiles == 0:
        return
    if splits > 1:  # fp32 partials, written only by splits that hold rows and read only there
        targets = [torch.empty((splits, e, n, k), dtype=torch.float32, device=dw.device)
                   for _ in range(2 if mode == MODE_SWIGLU_BWD else 1)]
    else:
        targets = [dw] + ([dw2] if mode == MODE_SWIGLU_BWD else [])
    upcast = interpreting() and a.dtype == torch.bfloat16
    _grouped_gemm_dw_kernel[(e * splits * tiles,)](
        a, preact if preact is not None else a, x, targets[0], targets[-1], sorted_ids, offsets,
        n, k, a.shape[0], x_div, a.stride(0),
        preact.stride(0) if preact is not None else 0, x.stride(0),
        targets[0].stride(0) if splits > 1 else 0, targets[0].stride(-3), targets[0].stride(-2),
        MODE=mode, SPLITS=splits, UPCAST=upcast, DOT_PRECISION=_dot_precision(a.dtype),
        BLOCK_M=config["BLOCK_M"], BLOCK_N=bn, BLOCK_K=bk,
        num_warps=config["num_warps"], num_stages=config["num_stages"])
    if splits > 1:
        for ws, out in zip(targets, [dw] + ([dw2] if mode == MODE_SWIGLU_BWD else [])):
            _dw_reduce_kernel[(triton.cdiv(n * k, DW_REDUCE_BLOCK), e)](
                ws, out, offsets, n * k, ws.stride(0), ws.stride(1), out.stride(0), SPLITS=splits,
                BLOCK_M=config["BLOCK_M"], BLOCK=DW_REDUCE_BLOCK, num_warps=4, num_stages=1)
