"""Attention backward (FlashAttention-2) in Triton: preprocess, then dK/dV and dQ, in two variants.

Shapes, masks and the row statistic as attention.py / attention_common.py. With P = softmax, dV = P^T dO,
dS = P * (dO V^T - delta) where delta = rowsum(dO * O) (minus the lse gradient), dQ = scale * dS K,
dK = scale * dS^T Q, and dK/dV summed over each kv head's query heads.

- `split` (the default): two launches, each with its own register allocation. `_attn_bwd_dkdv` programs
  own a key block of one kv head and loop over the query blocks of every query head of its group (GQA
  summed in-program, in a fixed order); `_attn_bwd_dq` programs own a query block of one query head and
  loop over its key blocks. The dq kernel needs far fewer registers than the dk/dv one (bf16 on sm_90a,
  from the compile report: 106 vs 220 at D = 64, 158 vs 254 at D = 128), so its programs are not held to
  the dk/dv side's occupancy.
- `fused`: one launch whose programs take either role (the first n_blocks_k programs per kv head are
  dK/dV programs): one launch fewer and both roles in flight together, but every program gets the dk/dv
  side's registers. Selectable (PYSCALE_ATTN_BWD=fused) so a GPU run can compare both in one process.
Every loop is one software-pipelined loop (cp.async, num_stages >= 2) over the band's blocks, with the
mask applied on boundary blocks only, and reads each query block's row statistics in one load: with
three specialised loops per role and separate lse and delta loads, pipelined configs spilled.
Nothing is accumulated with atomics: every dq, dk, dv element is written by exactly one program, so the
backward is deterministic, and memory stays O(sequence).

Scores are not pre-scaled: exp2(qk * scale * log2(e) - lse) is one FMA per element, and scaling K first
would round K * scale to the input dtype (bf16: 2^-9 of a large logit) for no saved instruction.
Nothing here imports pyscale.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .attention_common import (
    _band,
    _band_t,
    _key_ranges,
    _lse_log2,
    _query_ranges,
    _seq_bounds,
    block_d,
    capability_of,
    check_row_strides,
    dummy_cu,
    last_contiguous,
    layout,
    lse_strides,
    precision,
    seq_bucket,
    upcast,
    use_tma,
    window_bounds,
)
from .common import ensure_tma_allocator, interpreting

VARIANTS = ("split", "fused")
DEFAULT_VARIANT = "split"


# ----------------------------------------------------------------------------- kernels

@triton.constexpr_function
def _stats_width(lse_lo):
    """Floats per row in STATS: (hi, lo, delta, pad) with LSE_LO, else (hi, delta)."""
    return 4 if lse_lo else 2


@triton.jit
def _attn_bwd_preprocess(O, DO, LSE, DLSE, STATS, cu_seqlens_q,
                         stride_ob, stride_os, stride_oh, stride_dob, stride_dos, stride_doh,
                         stride_lb, stride_lh, seqlen_q, heads_q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         VARLEN: tl.constexpr, HAS_DLSE: tl.constexpr, LSE_LO: tl.constexpr):
    """The row statistics the backward reads, once per row, interleaved so one load brings a row's:
    lse * log2(e) as hi (+inf on rows with nothing to attend to, so their p is 0) and, with LSE_LO, lo
    (attention_common.py), then delta = sum_d out * d_out - d_lse (the softmax-backward correction; a
    gradient on lse adds d_lse * p to ds = p * (dp - delta), so it folds into delta). STATS is LSE's
    layout times `_stats_width(LSE_LO)`; DLSE shares LSE's layout."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    m0 = pid_m * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = (m0 + rows) < sq
    mask = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    row0 = q_start + m0.to(tl.int64)
    o = tl.load(O + b64 * stride_ob + h64 * stride_oh + row0 * stride_os + (rows[:, None] * stride_os + offs_d[None, :]),
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b64 * stride_dob + h64 * stride_doh + row0 * stride_dos
                 + (rows[:, None] * stride_dos + offs_d[None, :]), mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    stat = b64 * stride_lb + h64 * stride_lh + row0 + rows
    if HAS_DLSE:
        delta -= tl.load(DLSE + stat, mask=m_ok, other=0.0)
    hi, lo = _lse_log2(LSE + stat, m_ok, LSE_LO)
    width: tl.constexpr = _stats_width(LSE_LO)
    tl.store(STATS + width * stat, hi, mask=m_ok)
    if LSE_LO:
        tl.store(STATS + width * stat + 1, lo, mask=m_ok)
        tl.store(STATS + width * stat + 2, delta, mask=m_ok)
    else:
        tl.store(STATS + width * stat + 1, delta, mask=m_ok)


@triton.jit
def _row_stats(STATS, stat, mask, LSE_LO: tl.constexpr):
    """(hi, lo, delta) of the rows at LSE offsets `stat` from the preprocess's interleaved STATS in one
    load (lo is 0 without LSE_LO); masked rows get hi = +inf and delta = 0, so their p and ds are 0."""
    width: tl.constexpr = _stats_width(LSE_LO)
    t = tl.load(STATS + width * stat[:, None] + tl.arange(0, width)[None, :], mask=mask[:, None], other=0.0)
    if LSE_LO:
        hi_delta, lo_pad = tl.split(tl.reshape(t, [t.shape[0], 2, 2]))
        hi, delta = tl.split(hi_delta)
        lo, _ = tl.split(lo_pad)
    else:
        hi, delta = tl.split(t)
        lo = tl.zeros_like(hi)
    return tl.where(mask, hi, float("inf")), lo, delta


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, q_desc, do_desc, STATS, stat_base, stride_qs, stride_dos,
                    offs_n, offs_d, seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, full_lo, full_hi, hi,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr,
                    PRECISION: tl.constexpr, TMA: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    rows = tl.arange(0, BLOCK_M)
    q_offs = rows[:, None] * stride_qs + offs_d[None, :]
    do_offs = rows[:, None] * stride_dos + offs_d[None, :]
    q_ptr = q_base + lo.to(tl.int64) * stride_qs
    do_ptr = do_base + lo.to(tl.int64) * stride_dos
    stat = stat_base + lo.to(tl.int64)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + rows
        m_ok = offs_m < seqlen_q
        if TMA:  # the descriptors end at this sequence's last row: rows past it arrive as zeros
            q = q_desc.load([start_m, 0])
            do = do_desc.load([start_m, 0])
        else:
            q = tl.load(q_ptr + q_offs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(do_ptr + do_offs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse_hi, lse_lo, delta = _row_stats(STATS, stat + rows, m_ok, LSE_LO)
        # Work on the transposes so p^T and ds^T come out in the layout the dk/dv products need.
        qkt = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        if LSE_LO:
            pt = tl.math.exp2((qkt * qk_scale - lse_hi[None, :]) - lse_lo[None, :])
        else:
            pt = tl.math.exp2(qkt * qk_scale - lse_hi[None, :])
        if (start_m < full_lo) | (start_m >= full_hi):  # a boundary block: apply the band
            pt = tl.where(_band_t(offs_n, offs_m, seqlen_q, seqlen_k, win_left, win_right), pt, 0.0)
        # dp^T is issued before dv's product, so dv's wgmma runs while ds^T is formed (fewer registers, too).
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if UPCAST:
            if ROUND_BF16:  # the GPU feeds P and dS to their dots in bf16
                dv = tl.dot(pt.to(tl.bfloat16).to(tl.float32), do, dv, input_precision=PRECISION)
            else:
                dv = tl.dot(pt, do, dv, input_precision=PRECISION)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        if UPCAST:
            if ROUND_BF16:
                dst = dst.to(tl.bfloat16).to(tl.float32)
            dk = tl.dot(dst, q, dk, input_precision=PRECISION)
        else:
            dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=PRECISION)
        q_ptr += BLOCK_M * stride_qs
        do_ptr += BLOCK_M * stride_dos
        stat += BLOCK_M
    return dk, dv


@triton.jit
def _bwd_dq_inner(dq, q, do, lse_hi, lse_lo, delta, k_base, v_base, k_desc, v_desc, stride_kn, stride_vn,
                  offs_m, offs_d, seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, full_lo, full_hi, hi,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr,
                  PRECISION: tl.constexpr, TMA: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    cols = tl.arange(0, BLOCK_N)
    k_offs = cols[:, None] * stride_kn + offs_d[None, :]
    v_offs = cols[:, None] * stride_vn + offs_d[None, :]
    k_ptr = k_base + lo.to(tl.int64) * stride_kn
    v_ptr = v_base + lo.to(tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + cols
        n_ok = offs_n < seqlen_k
        if TMA:
            k = k_desc.load([start_n, 0])
            v = v_desc.load([start_n, 0])
        else:
            k = tl.load(k_ptr + k_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(v_ptr + v_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if LSE_LO:
            p = tl.math.exp2((qk * qk_scale - lse_hi[:, None]) - lse_lo[:, None])
        else:
            p = tl.math.exp2(qk * qk_scale - lse_hi[:, None])
        if (start_n < full_lo) | (start_n >= full_hi):
            p = tl.where(_band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if UPCAST:
            if ROUND_BF16:
                ds = ds.to(tl.bfloat16).to(tl.float32)
            dq = tl.dot(ds, k, dq, input_precision=PRECISION)
        else:
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
    return dq


@triton.jit
def _dkdv_block(Q, K, V, DO, DK, DV, STATS, n0, b64, kvh64, q_start, sq, k_start, sk,
                stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
                group, sm_scale, win_left, win_right,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
                UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr, PRECISION: tl.constexpr,
                TMA: tl.constexpr):
    """dk, dv of keys [n0, n0 + BLOCK_N1) of kv head kvh, summed over the group's query heads in order."""
    qk_scale = sm_scale * 1.4426950408889634
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    cols = tl.arange(0, BLOCK_N1)
    offs_n = n0 + cols
    kv_mask = (offs_n < sk)[:, None] & d_ok[None, :]
    row0 = k_start + n0.to(tl.int64)
    k = tl.load(K + b64 * stride_kb + kvh64 * stride_kh + row0 * stride_ks + (cols[:, None] * stride_ks + offs_d[None, :]),
                mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * stride_vb + kvh64 * stride_vh + row0 * stride_vs + (cols[:, None] * stride_vs + offs_d[None, :]),
                mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _query_ranges(n0, sq, sk, win_left, win_right, BLOCK_M1, BLOCK_N1)
    for g in range(group):
        h64 = kvh64 * group + g
        q_base = Q + b64 * stride_qb + q_start * stride_qs + h64 * stride_qh
        do_base = DO + b64 * stride_dob + q_start * stride_dos + h64 * stride_doh
        stat_base = b64 * stride_lb + h64 * stride_lh + q_start
        if TMA:  # one descriptor per (sequence, head), clipped at the sequence's end and the head dim
            q_desc = tl.make_tensor_descriptor(q_base, shape=[sq, HEAD_DIM], strides=[stride_qs, 1],
                                               block_shape=[BLOCK_M1, BLOCK_D])
            do_desc = tl.make_tensor_descriptor(do_base, shape=[sq, HEAD_DIM], strides=[stride_dos, 1],
                                                block_shape=[BLOCK_M1, BLOCK_D])
        else:
            q_desc = q_base
            do_desc = do_base
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, q_desc, do_desc, STATS, stat_base, stride_qs,
                                 stride_dos, offs_n, offs_d, sq, sk, win_left, win_right, qk_scale,
                                 lo, full_lo, full_hi, hi, HEAD_DIM, BLOCK_M1, UPCAST, ROUND_BF16, LSE_LO, PRECISION,
                                 TMA)
    dk = dk * sm_scale
    tl.store(DK + b64 * stride_dkb + kvh64 * stride_dkh + row0 * stride_dks
             + (cols[:, None] * stride_dks + offs_d[None, :]), dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b64 * stride_dvb + kvh64 * stride_dvh + row0 * stride_dvs
             + (cols[:, None] * stride_dvs + offs_d[None, :]), dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_block(Q, K, V, DO, DQ, STATS, m0, b64, h64, kvh64, q_start, sq, k_start, sk,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
              stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh, sm_scale, win_left, win_right,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
              UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr, PRECISION: tl.constexpr,
              TMA: tl.constexpr):
    """dq of query rows [m0, m0 + BLOCK_M2) of query head h (reading kv head kvh)."""
    qk_scale = sm_scale * 1.4426950408889634
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows = tl.arange(0, BLOCK_M2)
    offs_m = m0 + rows
    m_ok = offs_m < sq
    q_mask = m_ok[:, None] & d_ok[None, :]
    row0 = q_start + m0.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + row0 * stride_qs + (rows[:, None] * stride_qs + offs_d[None, :]),
                mask=q_mask, other=0.0)
    do = tl.load(DO + b64 * stride_dob + h64 * stride_doh + row0 * stride_dos
                 + (rows[:, None] * stride_dos + offs_d[None, :]), mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse_hi, lse_lo, delta = _row_stats(STATS, b64 * stride_lb + h64 * stride_lh + row0 + rows, m_ok, LSE_LO)
    k_base = K + b64 * stride_kb + k_start * stride_ks + kvh64 * stride_kh
    v_base = V + b64 * stride_vb + k_start * stride_vs + kvh64 * stride_vh
    if TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[sk, HEAD_DIM], strides=[stride_ks, 1],
                                           block_shape=[BLOCK_N2, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[sk, HEAD_DIM], strides=[stride_vs, 1],
                                           block_shape=[BLOCK_N2, BLOCK_D])
    else:
        k_desc = k_base
        v_desc = v_base
    dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_ranges(m0, sq, sk, win_left, win_right, BLOCK_M2, BLOCK_N2)
    dq = _bwd_dq_inner(dq, q, do, lse_hi, lse_lo, delta, k_base, v_base, k_desc, v_desc, stride_ks, stride_vs,
                       offs_m, offs_d, sq, sk, win_left, win_right, qk_scale, lo, full_lo, full_hi, hi,
                       HEAD_DIM, BLOCK_N2, UPCAST, ROUND_BF16, LSE_LO, PRECISION, TMA)
    dq = dq * sm_scale
    tl.store(DQ + b64 * stride_dqb + h64 * stride_dqh + row0 * stride_dqs
             + (rows[:, None] * stride_dqs + offs_d[None, :]), dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, STATS, cu_seqlens_q, cu_seqlens_k,
                   stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                   stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                   stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
                   seqlen_q, seqlen_k, heads_kv, group, sm_scale, win_left, win_right,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
                   VARLEN: tl.constexpr, UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr,
                   PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Split backward, dK/dV: program (key block, batch * kv head)."""
    n0 = tl.program_id(0) * BLOCK_N1
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_kv
    kvh = pid_bh % heads_kv
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    k_start, sk = _seq_bounds(cu_seqlens_k, b, seqlen_k, VARLEN)
    if n0 < sk:
        _dkdv_block(Q, K, V, DO, DK, DV, STATS, n0, b.to(tl.int64), kvh.to(tl.int64), q_start, sq, k_start, sk,
                    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                    stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
                    group, sm_scale, win_left, win_right,
                    HEAD_DIM, BLOCK_D, BLOCK_M1, BLOCK_N1, UPCAST, ROUND_BF16, LSE_LO, PRECISION, TMA)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, STATS, cu_seqlens_q, cu_seqlens_k,
                 stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                 stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                 stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
                 seqlen_q, seqlen_k, heads_q, group, sm_scale, win_left, win_right,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
                 VARLEN: tl.constexpr, UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr,
                 PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Split backward, dQ: program (query block, batch * query head)."""
    m0 = tl.program_id(0) * BLOCK_M2
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    k_start, sk = _seq_bounds(cu_seqlens_k, b, seqlen_k, VARLEN)
    if m0 < sq:
        _dq_block(Q, K, V, DO, DQ, STATS, m0, b.to(tl.int64), h.to(tl.int64), (h // group).to(tl.int64),
                  q_start, sq, k_start, sk, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                  stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                  stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh, sm_scale, win_left, win_right,
                  HEAD_DIM, BLOCK_D, BLOCK_M2, BLOCK_N2, UPCAST, ROUND_BF16, LSE_LO, PRECISION, TMA)


@triton.jit
def _attn_bwd(Q, K, V, DO, DQ, DK, DV, STATS, cu_seqlens_q, cu_seqlens_k,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
              stride_dqb, stride_dqs, stride_dqh, stride_dkb, stride_dks, stride_dkh,
              stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
              seqlen_q, seqlen_k, heads_kv, group, n_blocks_k, n_blocks_q, sm_scale, win_left, win_right,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
              VARLEN: tl.constexpr, UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, LSE_LO: tl.constexpr,
              PRECISION: tl.constexpr):
    """Fused backward: programs [0, n_blocks_k) of kv head (b, kvh) do `_dkdv_block`; the rest own one
    query block of one of the group's query heads and do `_dq_block`."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_kv
    kvh = pid_bh % heads_kv
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    k_start, sk = _seq_bounds(cu_seqlens_k, b, seqlen_k, VARLEN)
    b64, kvh64 = b.to(tl.int64), kvh.to(tl.int64)
    if pid < n_blocks_k:
        n0 = pid * BLOCK_N1
        if n0 < sk:
            _dkdv_block(Q, K, V, DO, DK, DV, STATS, n0, b64, kvh64, q_start, sq, k_start, sk,
                        stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                        stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                        stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
                        group, sm_scale, win_left, win_right,
                        HEAD_DIM, BLOCK_D, BLOCK_M1, BLOCK_N1, UPCAST, ROUND_BF16, LSE_LO, PRECISION, False)
    else:
        idx = pid - n_blocks_k
        m0 = (idx % n_blocks_q) * BLOCK_M2
        if m0 < sq:
            _dq_block(Q, K, V, DO, DQ, STATS, m0, b64, kvh64 * group + (idx // n_blocks_q), kvh64,
                      q_start, sq, k_start, sk, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                      stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                      stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh, sm_scale, win_left, win_right,
                      HEAD_DIM, BLOCK_D, BLOCK_M2, BLOCK_N2, UPCAST, ROUND_BF16, LSE_LO, PRECISION, False)


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class BwdConfig:
    block_m1: int  # query rows per step of a dk/dv program
    block_n1: int  # keys owned by a dk/dv program
    block_m2: int  # query rows owned by a dq program
    block_n2: int  # keys per step of a dq program
    num_warps: int  # of the fused kernel, or of the split dk/dv kernel
    num_stages: int
    dq_num_warps: int | None = None  # of the split dq kernel (None: as the dk/dv kernel)
    dq_num_stages: int | None = None

    @property
    def dq_launch(self) -> tuple[int, int]:
        """(num_warps, num_stages) of the split dq kernel."""
        return (self.dq_num_warps or self.num_warps, self.dq_num_stages or self.num_stages)


def preprocess_block_m(head_dim: int) -> int:
    """Rows per preprocess program: two fp32 (rows, BLOCK_D) tiles must stay in 4 warps' registers."""
    return min(128, 8192 // block_d(head_dim))


def bwd_variant(variant: str | None = None) -> str:
    """The backward variant: `variant`, else PYSCALE_ATTN_BWD, else DEFAULT_VARIANT; ValueError naming the
    source for anything but split / fused."""
    source = "variant"
    if variant is None:
        variant, source = os.environ.get("PYSCALE_ATTN_BWD") or DEFAULT_VARIANT, "PYSCALE_ATTN_BWD"
    if variant not in VARIANTS:
        raise ValueError(f"{source} must be one of {', '.join(VARIANTS)}: got {variant!r}")
    return variant


def bwd_config(head_dim: int, capability: tuple[int, int] = (9, 0), interpret: bool = False,
               variant: str = DEFAULT_VARIANT) -> BwdConfig:
    """The backward's block sizes without autotuning (callable without a GPU: the compile report uses it).

    A dk/dv program keeps dk and dv of its key block in registers and streams query blocks; a dq program
    keeps q, do and dq of its query block and streams key blocks. The products put the large side first,
    so on sm_90 each is one wgmma with M = 128. Split configs are the most pipelined that compile without
    spills and within shared memory per arch (AOT-checked for every head dim):
    - sm_90: 32-query x 128-key dk/dv steps and 128 x 32 dq steps at 2 stages up to D = 128. At D = 256
      the dk/dv program takes 32 keys with mma.sync (a 64-key wgmma tile spills: dk + dv alone are 128
      registers per thread), as the fused kernel did.
    - sm_80 / sm_89 (mma.sync): the loop-invariant k and v stay in registers as mma.sync operands, so
      the dk/dv steps are smaller than on sm_90 to keep 2 stages spill-free: 16 x 128 up to D = 64 (32
      query rows spill), 32 x 64 up to D = 128, 32 x 32 at D = 256 (sm_89's 99 KB of shared memory).
    Fused: the same tiles, with the dq programs at the dk/dv programs' warps and stages (one launch);
    both branches share one register allocation, which the dk/dv side sizes, so it pipelines spill-free
    too (each branch is one loop; the three specialised loops per branch it had before did spill).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}: got {variant!r}")
    if interpret:
        return BwdConfig(32, 32, 32, 32, 4, 1)
    d = block_d(head_dim)
    if capability[0] == 9:
        cfg = BwdConfig(32, 128, 128, 32, 8, 2, 8, 2) if d <= 128 else BwdConfig(32, 32, 64, 32, 8, 2, 8, 2)
    elif d <= 64:
        cfg = BwdConfig(16, 128, 128, 32, 8, 2, 8, 2)
    elif d <= 128:
        cfg = BwdConfig(32, 64, 64, 64, 8, 2, 8, 2)
    else:
        cfg = BwdConfig(32, 32, 32, 32, 8, 2, 4, 2)
    return dataclasses.replace(cfg, dq_num_warps=None, dq_num_stages=None) if variant == "fused" else cfg


def bwd_candidates(head_dim: int, capability: tuple[int, int] = (9, 0), *, variant: str = DEFAULT_VARIANT,
                   causal: bool = False, seqlen: int = 4096) -> list[BwdConfig]:
    """The autotuning space for (head_dim, variant, causal, seq_bucket(seqlen)): the default first, then
    a few alternatives (a third stage, wider query steps, the unpipelined tiles, and smaller key blocks
    where a short or causal launch has too few programs). Configs that do not fit are skipped."""
    base = bwd_config(head_dim, capability, variant=variant)
    d = block_d(head_dim)
    if d <= 128:
        extra = [BwdConfig(32, 128, 128, 32, 8, 3, 8, 3), BwdConfig(64, 64, 64, 64, 8, 2, 8, 2),
                 BwdConfig(32, 128, 128, 32, 8, 1, 8, 1), BwdConfig(16, 128, 128, 32, 8, 3, 8, 3)]
        if seq_bucket(seqlen) <= 1024 or causal:
            extra.append(BwdConfig(32, 64, 64, 32, 4, 2, 4, 2))
    else:
        extra = [BwdConfig(32, 32, 32, 32, 8, 1, 8, 1), BwdConfig(16, 64, 64, 16, 8, 2, 8, 2),
                 BwdConfig(32, 32, 64, 32, 4, 2, 8, 2)]
    if variant == "fused":  # one launch: the dq programs run at the dk/dv programs' warps and stages
        extra = [dataclasses.replace(c, dq_num_warps=None, dq_num_stages=None) for c in extra]
    return [base, *[c for c in extra if c != base]]


# ----------------------------------------------------------------------------- launcher

def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, *, causal: bool, scale: float, window_left: int = -1,
                       window_right: int = -1, cu_seqlens_q: torch.Tensor | None = None,
                       cu_seqlens_k: torch.Tensor | None = None, max_seqlen_q: int | None = None,
                       max_seqlen_k: int | None = None, config: BwdConfig | None = None,
                       dlse: torch.Tensor | None = None, variant: str | None = None, tma: bool | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward (preprocess, then dk/dv and dq). Shapes as `attention_forward`; do like out;
    dlse (optional) the gradient of lse, like lse. variant: "split" or "fused" (None: PYSCALE_ATTN_BWD,
    else split). tma: the split kernels stream q/do (dk/dv) and k/v (dq) through tensor descriptors
    (None: when PYSCALE_ATTN_TMA=1 on sm_90+; unaligned inputs and the fused variant use pointers).
    Returns (dq like q, dk like k, dv like v), contiguous."""
    variant = bwd_variant(variant)
    q, k, v = last_contiguous(q), last_contiguous(k), last_contiguous(v)
    do, out = last_contiguous(do), last_contiguous(out)
    batch, max_q, max_k, heads_q, heads_kv, varlen, strides = layout(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    check_row_strides(varlen, q=q, k=k, v=v, out=out, grad_out=do)
    head_dim = q.shape[-1]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0 or max_q == 0 or max_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    left, right = window_bounds(causal, window_left, window_right, max_q, max_k)
    cu_q = cu_seqlens_q if varlen else dummy_cu(q.device)
    cu_k = cu_seqlens_k if varlen else dummy_cu(q.device)
    lse = lse.contiguous()
    lse_lo = q.dtype == torch.float32
    stats = torch.empty((*lse.shape, _stats_width(lse_lo)), dtype=torch.float32, device=q.device)
    dlse = None if dlse is None else dlse.to(torch.float32).contiguous()
    pre_m = preprocess_block_m(head_dim)
    _attn_bwd_preprocess[(triton.cdiv(max_q, pre_m), batch * heads_q)](
        out, do, lse, lse if dlse is None else dlse, stats, cu_q, *strides(out), *strides(do),
        *lse_strides(lse, varlen), max_q, heads_q, HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M=pre_m,
        VARLEN=varlen, HAS_DLSE=dlse is not None, LSE_LO=lse_lo)
    group = heads_q // heads_kv
    flags = {"HEAD_DIM": head_dim, "BLOCK_D": block_d(head_dim), "VARLEN": varlen, "UPCAST": upcast(q.dtype),
             "ROUND_BF16": upcast(q.dtype), "LSE_LO": lse_lo, "PRECISION": precision(q.dtype)}
    common = (*strides(q), *strides(k), *strides(v), *strides(do))
    use_desc = variant == "split" and use_tma(tma, q, k, v, do)
    if use_desc:
        ensure_tma_allocator(q.device)

    def run(cfg: BwdConfig) -> None:
        n_blocks_k = triton.cdiv(max_k, cfg.block_n1)
        if variant == "fused":
            n_blocks_q = triton.cdiv(max_q, cfg.block_m2)
            _attn_bwd[(n_blocks_k + group * n_blocks_q, batch * heads_kv)](
                q, k, v, do, dq, dk, dv, stats, cu_q, cu_k, *common, *strides(dq), *strides(dk), *strides(dv),
                *lse_strides(lse, varlen), max_q, max_k, heads_kv, group, n_blocks_k, n_blocks_q, float(scale),
                left, right, BLOCK_M1=cfg.block_m1, BLOCK_N1=cfg.block_n1, BLOCK_M2=cfg.block_m2,
                BLOCK_N2=cfg.block_n2, **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            return
        _attn_bwd_dkdv[(n_blocks_k, batch * heads_kv)](
            q, k, v, do, dk, dv, stats, cu_q, cu_k, *common, *strides(dk), *strides(dv),
            *lse_strides(lse, varlen), max_q, max_k, heads_kv, group, float(scale), left, right,
            BLOCK_M1=cfg.block_m1, BLOCK_N1=cfg.block_n1, **flags, TMA=use_desc, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        dq_warps, dq_stages = cfg.dq_launch
        _attn_bwd_dq[(triton.cdiv(max_q, cfg.block_m2), batch * heads_q)](
            q, k, v, do, dq, stats, cu_q, cu_k, *common, *strides(dq), *lse_strides(lse, varlen),
            max_q, max_k, heads_q, group, float(scale), left, right,
            BLOCK_M2=cfg.block_m2, BLOCK_N2=cfg.block_n2, **flags, TMA=use_desc, num_warps=dq_warps,
            num_stages=dq_stages)

    run(config or bwd_config(head_dim, capability_of(q.device), interpreting(), variant))
    return dq, dk, dv
