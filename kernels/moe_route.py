"""Triton kernels of MoE routing, `pyscale.ops.moe_route` (pure Triton + torch; imports nothing from pyscale).

- `_route_kernel`: router logits (T, E) -> scores (softmax | sigmoid) -> optional group-limited selection
  (DeepSeek-V3) -> top-k (ties to the lower expert id) -> optional renormalisation; writes topk_weights fp32
  and topk_ids int32 (T, k) (DESIGN.md section 8).
- `_route_bwd_kernel`: the gradient back to the logits, the chosen ids held fixed.

Numerics: int64 offsets, masks on every access, fp32 throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SOFTMAX, SIGMOID = 0, 1


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
def _load_scores(logits_ptr, T, E, stride_lt, SCORING: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_E: tl.constexpr):
    """This program's BLOCK_T rows of logits (masked entries -inf), their masks and their scores."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = cols < E
    valid = rmask[:, None] & cmask[None, :]
    x = tl.load(logits_ptr + rows[:, None] * stride_lt + cols[None, :], mask=valid, other=float("-inf"))
    return rows, cols, rmask, cmask, valid, x, _scores(x, valid, SCORING)


@triton.jit
def _route_kernel(logits_ptr, bias_ptr, weights_ptr, ids_ptr, T, E, group_size, stride_lt,
                  TOP_K: tl.constexpr, SCORING: tl.constexpr, RENORMALIZE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                  SELECT_ON_LOGITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, cols, rmask, cmask, valid, x, s = _load_scores(logits_ptr, T, E, stride_lt, SCORING, BLOCK_T, BLOCK_E)
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
    rows, cols, rmask, cmask, valid, x, s = _load_scores(logits_ptr, T, E, stride_lt, SCORING, BLOCK_T, BLOCK_E)
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
