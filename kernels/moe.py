"""Triton kernels of the sparse mixture-of-experts layer (pure Triton + torch; imports nothing from pyscale).

Layout (DESIGN.md section 8): `topk_ids` int32 (T, k), `topk_weights` fp32 (T, k), slot s = t * k + j.
`moe_align` (csrc/ops/moe) sorts slots by expert into `sorted_ids` (rows, padded per expert to a multiple
of `align` with the sentinel T * k), gives the expert of each `align`-block in `expert_ids` (-1 past the
padded length `n_pad`), each expert's padded segment start in `offsets` and each slot's row in `slot_pos`
(-1 when dropped). Every GEMM here runs over that sorted, padded row space: one launch covers all experts.

Kernels:
- `_route_kernel` / `_route_bwd_kernel`: router logits -> scores (softmax | sigmoid) -> optional
  group-limited selection (DeepSeek-V3) -> top-k (ties to the lower expert id) -> optional
  renormalisation; and the gradient back to the logits.
- `_grouped_gemm_kernel`: C[r] = A[row(r)] @ B[expert(r)] over the padded rows, persistent over tiles;
  row(r) = sorted_ids[r] // k when gathering token rows, else r. MODE 1 fuses SwiGLU (two weights, two
  accumulators, epilogue silu(g) * u, pre-activations saved); MODE 2 fuses the SwiGLU backward into the
  A prologue (dg, du from dh and the saved pre-activations) for dX.
- `_grouped_gemm_dw_kernel`: dW[e] = A_e^T @ X_e over expert e's segment (MODE 2: both SwiGLU weights).
- `_combine_kernel` / `_combine_bwd_kernel`: weighted gather-sum back to token order and its backward.

Numerics: int64 offsets, masks on every access, fp32 accumulators; `UPCAST` computes in fp32 (the
interpreter has no bf16 arithmetic); `DOT_PRECISION` lets fp32 tests ask for IEEE products on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreting

SOFTMAX, SIGMOID = 0, 1
MODE_PLAIN, MODE_SWIGLU, MODE_SWIGLU_BWD = 0, 1, 2




# ============================================================================ routing

@triton.jit
def _scores(x, valid, SCORING: tl.constexpr):
    """Router scores in fp32 from logits x (masked entries hold -inf and score 0)."""
    if SCORING == 0:
        mx = tl.max(x, axis=1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)  # an all -inf row must not make NaN
        ex = tl.where(valid, tl.exp(x - mx[:, None]), 0.0)
        den = tl.sum(ex, axis=1)
        den = tl.where(den > 0, den, 1.0)
        s = ex / den[:, None]
    else:
        s = tl.where(valid, tl.sigmoid(x), 0.0)
    return s


@triton.jit
def _route_kernel(logits_ptr, bias_ptr, weights_ptr, ids_ptr, T, E, group_size, stride_lt,
                  TOP_K: tl.constexpr, SCORING: tl.constexpr, RENORMALIZE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                  SELECT_ON_LOGITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = cols < E
    valid = rmask[:, None] & cmask[None, :]
    x = tl.load(logits_ptr + rows[:, None] * stride_lt + cols[None, :], mask=valid, other=float("-inf"))
    s = _scores(x, valid, SCORING)
    # Selection key: the logits themselves when that gives the same order (no bias, no groups), so
    # near-ties are decided on exact inputs rather than on rounded scores.
    if SELECT_ON_LOGITS:
        sel = x
    else:
        sel = s
        if HAS_BIAS:
            b = tl.load(bias_ptr + cols, mask=cmask, other=0.0)
            sel = sel + b[None, :]
    sel = tl.where(cmask[None, :], sel, float("-inf"))
    if N_GROUP > 1:
        # Group score = sum of the two best selection scores in the group (DeepSeek-V3); keep the
        # TOPK_GROUP best groups, mask every other expert out of the top-k.
        group = cols // group_size
        gcols = tl.arange(0, BLOCK_G)
        gscore = tl.full((BLOCK_T, BLOCK_G), float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            v = tl.where(((group == g) & cmask)[None, :], sel, float("-inf"))
            m1 = tl.max(v, axis=1)
            i1 = tl.min(tl.where(v == m1[:, None], cols[None, :], BLOCK_E), axis=1)
            v = tl.where(cols[None, :] == i1[:, None], float("-inf"), v)
            m2 = tl.max(v, axis=1)
            m2 = tl.where(m2 == float("-inf"), 0.0, m2)  # groups of one expert
            gscore = tl.where(gcols[None, :] == g, (m1 + m2)[:, None], gscore)
        keep = tl.zeros((BLOCK_T, BLOCK_E), tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            gm = tl.max(gscore, axis=1)
            gi = tl.min(tl.where(gscore == gm[:, None], gcols[None, :], BLOCK_G), axis=1)
            keep = keep | (group[None, :] == gi[:, None])
            gscore = tl.where(gcols[None, :] == gi[:, None], float("-inf"), gscore)
        sel = tl.where(keep, sel, float("-inf"))
    kcols = tl.arange(0, BLOCK_K)
    w_out = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    id_out = tl.zeros((BLOCK_T, BLOCK_K), tl.int32)
    wsum = tl.zeros((BLOCK_T,), tl.float32)
    for j in range(TOP_K):
        m = tl.max(sel, axis=1)
        idx = tl.min(tl.where(sel == m[:, None], cols[None, :], BLOCK_E), axis=1)  # ties: lowest id
        hit = cols[None, :] == idx[:, None]
        w = tl.sum(tl.where(hit, s, 0.0), axis=1)
        wsum += w
        w_out = tl.where(kcols[None, :] == j, w[:, None], w_out)
        id_out = tl.where(kcols[None, :] == j, idx[:, None], id_out)
        sel = tl.where(hit, float("-inf"), sel)
    if RENORMALIZE:
        w_out = w_out / tl.where(wsum > 0, wsum, 1.0)[:, None]
    omask = rmask[:, None] & (kcols < TOP_K)[None, :]
    optr = rows[:, None] * TOP_K + kcols[None, :]
    tl.store(weights_ptr + optr, w_out, mask=omask)
    tl.store(ids_ptr + optr, id_out, mask=omask)


@triton.jit
def _route_bwd_kernel(grad_w_ptr, logits_ptr, weights_ptr, ids_ptr, grad_logits_ptr, T, E, stride_lt,
                      stride_gt, TOP_K: tl.constexpr, SCORING: tl.constexpr, RENORMALIZE: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = cols < E
    valid = rmask[:, None] & cmask[None, :]
    x = tl.load(logits_ptr + rows[:, None] * stride_lt + cols[None, :], mask=valid, other=float("-inf"))
    s = _scores(x, valid, SCORING)
    # w_j = r_j / R with R = sum_l r_l, r_j the kept scores:  dL/dr_j = (dL/dw_j - sum_l dL/dw_l w_l) / R.
    total = tl.zeros((BLOCK_T,), tl.float32)
    gw_dot_w = tl.zeros((BLOCK_T,), tl.float32)
    for j in range(TOP_K):
        idj = tl.load(ids_ptr + rows * TOP_K + j, mask=rmask, other=-1)
        total += tl.sum(tl.where(cols[None, :] == idj[:, None], s, 0.0), axis=1)
        gwj = tl.load(grad_w_ptr + rows * TOP_K + j, mask=rmask, other=0.0)
        wj = tl.load(weights_ptr + rows * TOP_K + j, mask=rmask, other=0.0)
        gw_dot_w += gwj * wj
    total = tl.where(total > 0, total, 1.0)
    gs = tl.zeros((BLOCK_T, BLOCK_E), tl.float32)
    for j in range(TOP_K):
        idj = tl.load(ids_ptr + rows * TOP_K + j, mask=rmask, other=-1)
        gwj = tl.load(grad_w_ptr + rows * TOP_K + j, mask=rmask, other=0.0)
        if RENORMALIZE:
            gr = (gwj - gw_dot_w) / total
        else:
            gr = gwj
        gs += tl.where(cols[None, :] == idj[:, None], gr[:, None], 0.0)
    if SCORING == 0:
        gl = s * (gs - tl.sum(gs * s, axis=1)[:, None])
    else:
        gl = gs * s * (1.0 - s)
    tl.store(grad_logits_ptr + rows[:, None] * stride_gt + cols[None, :], gl, mask=valid)


def _route_block_t(block_e: int) -> int:
    return max(1, min(64, 4096 // block_e))


def route(logits: torch.Tensor, top_k: int, scoring: int, renormalize: bool, n_group: int, topk_group: int,
          bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits fp32 (T, E) -> (topk_weights fp32 (T, k), topk_ids int32 (T, k))."""
    t, e = logits.shape
    weights = torch.empty((t, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=logits.device)
    if t == 0:
        return weights, ids
    block_e = triton.next_power_of_2(e)
    block_t = _route_block_t(block_e)
    grid = (triton.cdiv(t, block_t),)
    _route_kernel[grid](
        logits, bias if bias is not None else logits, weights, ids, t, e, e // max(n_group, 1), logits.stride(0),
        TOP_K=top_k, SCORING=scoring, RENORMALIZE=renormalize, HAS_BIAS=bias is not None,
        N_GROUP=n_group, TOPK_GROUP=topk_group, SELECT_ON_LOGITS=bias is None and n_group <= 1,
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_G=triton.next_power_of_2(max(n_group, 1)),
        BLOCK_K=triton.next_power_of_2(top_k))
    return weights, ids


def route_backward(grad_w: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                   scoring: int, renormalize: bool) -> torch.Tensor:
    """Gradient fp32 (T, E) of the router logits from the gradient of topk_weights (T, k)."""
    t, e = logits.shape
    top_k = ids.shape[1]
    grad = torch.empty((t, e), dtype=torch.float32, device=logits.device)
    if t == 0:
        return grad
    block_e = triton.next_power_of_2(e)
    block_t = _route_block_t(block_e)
    _route_bwd_kernel[(triton.cdiv(t, block_t),)](
        grad_w, logits, weights, ids, grad, t, e, logits.stride(0), grad.stride(0),
        TOP_K=top_k, SCORING=scoring, RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_E=block_e)
    return grad


# ============================================================================ grouped GEMM

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
                    p_off = offs_m[:, None] * stride_pm + offs_k[None, :]
                    g = tl.load(preact_ptr + p_off, mask=amask, other=0.0).to(tl.float32)
                    u = tl.load(preact_ptr + p_off + K, mask=amask, other=0.0).to(tl.float32)
                    dh = a.to(tl.float32)
                    sg = tl.sigmoid(g)
                    dg = (dh * u * (sg * (1.0 + g * (1.0 - sg)))).to(b.dtype)
                    du = (dh * g * sg).to(b.dtype)
                    acc = tl.dot(dg, b, acc, input_precision=DOT_PRECISION)
                    acc = tl.dot(du, b2, acc, input_precision=DOT_PRECISION)
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
            p_off = offs_m[None, :] * stride_pm + offs_n[:, None]
            g = tl.load(preact_ptr + p_off, mask=amask, other=0.0).to(tl.float32)
            u = tl.load(preact_ptr + p_off + N, mask=amask, other=0.0).to(tl.float32)
            dh = at.to(tl.float32)
            sg = tl.sigmoid(g)
            dg = (dh * u * (sg * (1.0 + g * (1.0 - sg)))).to(xt.dtype)
            du = (dh * g * sg).to(xt.dtype)
            acc = tl.dot(dg, xt, acc, input_precision=DOT_PRECISION)
            acc2 = tl.dot(du, xt, acc2, input_precision=DOT_PRECISION)
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


# ============================================================================ combine

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
