"""Fused attention (FlashAttention-2) in Triton: forward, backward preprocess, backward.

Layouts (pyscale DESIGN section 8): q (batch, seq_q, heads_q, head_dim), k/v (batch, seq_k, heads_kv,
head_dim); varlen packs sequences along one axis, (total, heads, head_dim) with int32 cu_seqlens. Query
head h reads kv head h // (heads_q // heads_kv), so GQA/MQA never materialise repeated K/V. lse is
natural-log fp32, (batch, heads_q, seq_q) or (heads_q, total_q) for varlen.

Masking: query row i may attend key j when  -left <= j - i - (seq_k - seq_q) <= right  (0 <= j < seq_k);
causal is right = 0 (bottom-right aligned), an unbounded side is a large number. Each program splits its
loop into [masked | unmasked | masked] block ranges so only boundary blocks pay for the mask, and blocks
outside the band are never visited (causal skips everything above the diagonal).

Backward: one launch whose programs either own a key block (dk, dv, looping over every query head of
the kv head's group and over the query blocks in its band) or a query block of one head (dq). Nothing
is accumulated with atomics, so it is deterministic, and memory stays O(sequence).

The forward can load q/k/v through tensor descriptors (TMA on sm_90+; opt-in with PYSCALE_ATTN_TMA=1
or tma=True until measured), one descriptor per (sequence, head) so the hardware clips at sequence ends;
inputs whose bases or strides are not 16-byte aligned keep the pointer path, as does the backward.
Only the last dimension must be contiguous; every other stride is passed in. Base offsets are int64;
offsets inside a tile are int32 (a row stride must stay below 2**24 elements). Nothing here imports pyscale; the helpers at the bottom launch the kernels on torch tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .common import interpreting

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453




# ----------------------------------------------------------------------------- shared helpers

@triton.jit
def _key_ranges(m0, seqlen_q, seqlen_k, win_left, win_right,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-block ranges for query rows [m0, m0 + BLOCK_M): [lo, full_lo) masked, [full_lo, full_hi)
    unmasked, [full_hi, hi) masked. All are multiples of BLOCK_N (lo, full_*) or block-rounded (hi)."""
    off = seqlen_k - seqlen_q
    last = m0 + BLOCK_M - 1
    # Clamp before dividing: Triton's integer division truncates toward zero.
    lo = tl.maximum(m0 + off - win_left, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.minimum(last + off + win_right + 1, seqlen_k)
    hi = tl.maximum(hi, lo)
    hi = ((hi + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    # Unmasked blocks: every row's lower bound is below the block and every upper bound above it.
    full_lo = tl.maximum(last + off - win_left, lo)
    full_lo = tl.minimum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, hi)
    full_hi = tl.maximum(tl.minimum(m0 + off + win_right + 1, seqlen_k), 0)
    full_hi = (full_hi // BLOCK_N) * BLOCK_N
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _query_ranges(n0, seqlen_q, seqlen_k, win_left, win_right,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query-block ranges for key columns [n0, n0 + BLOCK_N), split like `_key_ranges`."""
    off = seqlen_k - seqlen_q
    last = n0 + BLOCK_N - 1
    lo = tl.maximum(n0 - off - win_right, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.minimum(last - off + win_left + 1, seqlen_q)
    hi = tl.maximum(hi, lo)
    hi = ((hi + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_lo = tl.maximum(last - off - win_right, lo)
    full_lo = tl.minimum(((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, hi)
    full_hi = tl.maximum(tl.minimum(n0 - off + win_left + 1, seqlen_q), 0)
    full_hi = (full_hi // BLOCK_M) * BLOCK_M
    # A key block that runs past seq_k needs its column mask on every query block.
    full_hi = tl.where(n0 + BLOCK_N <= seqlen_k, full_hi, full_lo)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right):
    """(BLOCK_M, BLOCK_N) mask of allowed (query row, key column) pairs."""
    rel = offs_n[None, :] - offs_m[:, None] - (seqlen_k - seqlen_q)
    ok = (rel >= -win_left) & (rel <= win_right)
    return ok & (offs_n[None, :] < seqlen_k) & (offs_m[:, None] < seqlen_q)


@triton.jit
def _seq_bounds(cu_seqlens, b, seqlen, VARLEN: tl.constexpr):
    """(start as int64, length as int32) of sequence b: from cu_seqlens when varlen, else (0, seqlen)."""
    if VARLEN:
        start = tl.load(cu_seqlens + b)
        end = tl.load(cu_seqlens + b + 1)
        return start.to(tl.int64), end - start
    else:
        return (b * 0).to(tl.int64), seqlen + b * 0


# ----------------------------------------------------------------------------- forward
# Addressing: each program forms int64 scalar base pointers (batch, head, sequence start, tile start) and
# adds int32 offsets inside a tile (rows * row_stride + column), which stay far below 2**31; positions
# within a sequence are int32. Keeping per-element offsets 32-bit keeps the pointer tiles out of spills.

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d,
               seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, hi,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    cols = tl.arange(0, BLOCK_N)
    kt_offs = cols[None, :] * stride_kn + offs_d[:, None]  # K^T tile (BLOCK_D, BLOCK_N)
    v_offs = cols[:, None] * stride_vn + offs_d[None, :]
    k_ptr = k_base + lo.to(tl.int64) * stride_kn
    v_ptr = v_base + lo.to(tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + cols
        n_ok = offs_n < seqlen_k
        if TMA:
            # The descriptor's bounds are this sequence's keys: rows past seq_k arrive as zeros.
            kt = tl.trans(k_desc.load([start_n, 0]))
        else:
            kt = tl.load(k_ptr + kt_offs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        qk = tl.dot(q, kt, input_precision=PRECISION)
        if MASK:
            ok = _band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right)
            qk = tl.where(ok, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row with nothing allowed so far keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            qk = qk * qk_scale
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_use = m_new
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if TMA:
            v = v_desc.load([start_n, 0])
        else:
            v = tl.load(v_ptr + v_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(p, v.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, cu_seqlens_q, cu_seqlens_k,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
              seqlen_q, seqlen_k, heads_q, group, sm_scale, win_left, win_right,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    kvh = h // group
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    k_start, sk = _seq_bounds(cu_seqlens_k, b, seqlen_k, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 < sq:
        rows = tl.arange(0, BLOCK_M)
        offs_m = m0 + rows
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < sq
        d_ok = offs_d < HEAD_DIM
        b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), kvh.to(tl.int64)
        q_row0 = q_start + m0.to(tl.int64)
        k_base = K + b64 * stride_kb + k_start * stride_ks + kvh64 * stride_kh
        v_base = V + b64 * stride_vb + k_start * stride_vs + kvh64 * stride_vh
        if TMA:
            # Tensor descriptors (TMA on sm_90+): one per (sequence, head), so the hardware clips at
            # the sequence's end and the head dim; the launcher checked 16-byte bases and strides.
            q_desc = tl.make_tensor_descriptor(Q + b64 * stride_qb + h64 * stride_qh + q_start * stride_qs,
                                               shape=[sq, HEAD_DIM], strides=[stride_qs, 1],
                                               block_shape=[BLOCK_M, BLOCK_D])
            k_desc = tl.make_tensor_descriptor(k_base, shape=[sk, HEAD_DIM], strides=[stride_ks, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(v_base, shape=[sk, HEAD_DIM], strides=[stride_vs, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            q = q_desc.load([m0, 0])
        else:
            k_desc = k_base
            v_desc = v_base
            q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + q_row0 * stride_qs
                        + (rows[:, None] * stride_qs + offs_d[None, :]), mask=m_ok[:, None] & d_ok[None, :],
                        other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        qk_scale = sm_scale * 1.4426950408889634  # exp2 domain
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        lo, full_lo, full_hi, hi = _key_ranges(m0, sq, sk, win_left, win_right, BLOCK_M, BLOCK_N)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, stride_ks, stride_vs,
                                   offs_m, offs_d,
                                   sq, sk, win_left, win_right, qk_scale, lo, full_lo,
                                   HEAD_DIM, BLOCK_N, True, UPCAST, PRECISION, TMA)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, stride_ks, stride_vs,
                                   offs_m, offs_d,
                                   sq, sk, win_left, win_right, qk_scale, full_lo, full_hi,
                                   HEAD_DIM, BLOCK_N, False, UPCAST, PRECISION, TMA)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, stride_ks, stride_vs,
                                   offs_m, offs_d,
                                   sq, sk, win_left, win_right, qk_scale, full_hi, hi,
                                   HEAD_DIM, BLOCK_N, True, UPCAST, PRECISION, TMA)
        # Rows with no key to attend to have l = 0: output 0 and lse -inf.
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        tl.store(O + b64 * stride_ob + h64 * stride_oh + q_row0 * stride_os
                 + (rows[:, None] * stride_os + offs_d[None, :]), out.to(O.dtype.element_ty),
                 mask=m_ok[:, None] & d_ok[None, :])
        tl.store(LSE + b64 * stride_lb + h64 * stride_lh + q_row0 + rows, lse, mask=m_ok)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _attn_bwd_preprocess(O, DO, DLSE, DELTA, cu_seqlens_q,
                         stride_ob, stride_os, stride_oh, stride_dob, stride_dos, stride_doh,
                         stride_lb, stride_lh, seqlen_q, heads_q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         VARLEN: tl.constexpr, HAS_DLSE: tl.constexpr):
    """delta[row] = sum_d out * d_out - d_lse[row]: the softmax-backward correction, once per row (a
    gradient on lse adds d_lse * p to ds = p * (dp - delta), so it folds into delta). DLSE shares LSE's
    layout."""
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
    if HAS_DLSE:
        delta -= tl.load(DLSE + b64 * stride_lb + h64 * stride_lh + row0 + rows, mask=m_ok, other=0.0)
    tl.store(DELTA + b64 * stride_lb + h64 * stride_lh + row0 + rows, delta, mask=m_ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
                    offs_n, offs_d, seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, hi,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    rows = tl.arange(0, BLOCK_M)
    q_offs = rows[:, None] * stride_qs + offs_d[None, :]
    do_offs = rows[:, None] * stride_dos + offs_d[None, :]
    q_ptr = q_base + lo.to(tl.int64) * stride_qs
    do_ptr = do_base + lo.to(tl.int64) * stride_dos
    lse_ptr = lse_base + lo.to(tl.int64)
    delta_ptr = delta_base + lo.to(tl.int64)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + rows
        m_ok = offs_m < seqlen_q
        q = tl.load(q_ptr + q_offs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(do_ptr + do_offs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # Empty rows store lse = -inf; +inf makes their probabilities 0 instead of inf.
        lse = tl.load(lse_ptr + rows, mask=m_ok, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        delta = tl.load(delta_ptr + rows, mask=m_ok, other=0.0)
        # Work on the transposes so p^T and ds^T come out in the layout the dk/dv products need.
        qkt = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        pt = tl.math.exp2(qkt * qk_scale - lse[None, :])
        if MASK:
            ok = tl.trans(_band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right))
            pt = tl.where(ok, pt, 0.0)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        if UPCAST:
            dv = tl.dot(pt, do, dv, input_precision=PRECISION)
            dk = tl.dot(dst, q, dk, input_precision=PRECISION)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
            dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=PRECISION)
        q_ptr += BLOCK_M * stride_qs
        do_ptr += BLOCK_M * stride_dos
        lse_ptr += BLOCK_M
        delta_ptr += BLOCK_M
    return dk, dv


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                  seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, hi,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    cols = tl.arange(0, BLOCK_N)
    k_offs = cols[:, None] * stride_kn + offs_d[None, :]
    v_offs = cols[:, None] * stride_vn + offs_d[None, :]
    k_ptr = k_base + lo.to(tl.int64) * stride_kn
    v_ptr = v_base + lo.to(tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + cols
        n_ok = offs_n < seqlen_k
        k = tl.load(k_ptr + k_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_ptr + v_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            ok = _band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if UPCAST:
            dq = tl.dot(ds, k, dq, input_precision=PRECISION)
        else:
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
    return dq


@triton.jit
def _attn_bwd(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, cu_seqlens_q, cu_seqlens_k,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
              stride_dqb, stride_dqs, stride_dqh, stride_dkb, stride_dks, stride_dkh,
              stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
              seqlen_q, seqlen_k, heads_kv, group, n_blocks_k, n_blocks_q, sm_scale, win_left, win_right,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
              VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Programs [0, n_blocks_k) own a key block of kv head (b, kvh) and write its dk, dv (summed over the
    group's query heads in a fixed order); the rest own one query block of one query head and write dq."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_kv
    kvh = pid_bh % heads_kv
    q_start, sq = _seq_bounds(cu_seqlens_q, b, seqlen_q, VARLEN)
    k_start, sk = _seq_bounds(cu_seqlens_k, b, seqlen_k, VARLEN)
    qk_scale = sm_scale * 1.4426950408889634
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    b64, kvh64 = b.to(tl.int64), kvh.to(tl.int64)
    k_base = K + b64 * stride_kb + k_start * stride_ks + kvh64 * stride_kh
    v_base = V + b64 * stride_vb + k_start * stride_vs + kvh64 * stride_vh
    if pid < n_blocks_k:
        n0 = pid * BLOCK_N1
        if n0 < sk:
            cols = tl.arange(0, BLOCK_N1)
            offs_n = n0 + cols
            kv_mask = (offs_n < sk)[:, None] & d_ok[None, :]
            n064 = n0.to(tl.int64)
            k = tl.load(k_base + n064 * stride_ks + (cols[:, None] * stride_ks + offs_d[None, :]),
                        mask=kv_mask, other=0.0)
            v = tl.load(v_base + n064 * stride_vs + (cols[:, None] * stride_vs + offs_d[None, :]),
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
                lse_base = LSE + b64 * stride_lb + h64 * stride_lh + q_start
                delta_base = DELTA + b64 * stride_lb + h64 * stride_lh + q_start
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs,
                                         stride_dos, offs_n, offs_d, sq, sk, win_left, win_right, qk_scale,
                                         lo, full_lo, HEAD_DIM, BLOCK_M1, True, UPCAST, PRECISION)
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs,
                                         stride_dos, offs_n, offs_d, sq, sk, win_left, win_right, qk_scale,
                                         full_lo, full_hi, HEAD_DIM, BLOCK_M1, False, UPCAST, PRECISION)
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs,
                                         stride_dos, offs_n, offs_d, sq, sk, win_left, win_right, qk_scale,
                                         full_hi, hi, HEAD_DIM, BLOCK_M1, True, UPCAST, PRECISION)
            dk = dk * sm_scale
            row0 = k_start + n064
            tl.store(DK + b64 * stride_dkb + kvh64 * stride_dkh + row0 * stride_dks
                     + (cols[:, None] * stride_dks + offs_d[None, :]), dk.to(DK.dtype.element_ty), mask=kv_mask)
            tl.store(DV + b64 * stride_dvb + kvh64 * stride_dvh + row0 * stride_dvs
                     + (cols[:, None] * stride_dvs + offs_d[None, :]), dv.to(DV.dtype.element_ty), mask=kv_mask)
    else:
        idx = pid - n_blocks_k
        h64 = kvh64 * group + (idx // n_blocks_q)
        m0 = (idx % n_blocks_q) * BLOCK_M2
        if m0 < sq:
            rows = tl.arange(0, BLOCK_M2)
            offs_m = m0 + rows
            m_ok = offs_m < sq
            q_mask = m_ok[:, None] & d_ok[None, :]
            row0 = q_start + m0.to(tl.int64)
            q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + row0 * stride_qs
                        + (rows[:, None] * stride_qs + offs_d[None, :]), mask=q_mask, other=0.0)
            do = tl.load(DO + b64 * stride_dob + h64 * stride_doh + row0 * stride_dos
                         + (rows[:, None] * stride_dos + offs_d[None, :]), mask=q_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + b64 * stride_lb + h64 * stride_lh + row0 + rows, mask=m_ok, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
            delta = tl.load(DELTA + b64 * stride_lb + h64 * stride_lh + row0 + rows, mask=m_ok, other=0.0)
            dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)
            lo, full_lo, full_hi, hi = _key_ranges(m0, sq, sk, win_left, win_right, BLOCK_M2, BLOCK_N2)
            dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                               sq, sk, win_left, win_right, qk_scale, lo, full_lo,
                               HEAD_DIM, BLOCK_N2, True, UPCAST, PRECISION)
            dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                               sq, sk, win_left, win_right, qk_scale, full_lo, full_hi,
                               HEAD_DIM, BLOCK_N2, False, UPCAST, PRECISION)
            dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                               sq, sk, win_left, win_right, qk_scale, full_hi, hi,
                               HEAD_DIM, BLOCK_N2, True, UPCAST, PRECISION)
            dq = dq * sm_scale
            tl.store(DQ + b64 * stride_dqb + h64 * stride_dqh + row0 * stride_dqs
                     + (rows[:, None] * stride_dqs + offs_d[None, :]), dq.to(DQ.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------- configs and launchers

@dataclass(frozen=True)
class FwdConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BwdConfig:
    block_m1: int  # query rows per step of a dk/dv program
    block_n1: int  # keys owned by a dk/dv program
    block_m2: int  # query rows owned by a dq program
    block_n2: int  # keys per step of a dq program
    num_warps: int
    num_stages: int


def block_d(head_dim: int) -> int:
    """Head dims are padded (and masked) to a power of two of at least 16, the smallest tl.dot K."""
    return max(16, triton.next_power_of_2(head_dim))


def preprocess_block_m(head_dim: int) -> int:
    """Rows per preprocess program: two fp32 (rows, BLOCK_D) tiles must stay in 4 warps' registers."""
    return min(128, 8192 // block_d(head_dim))


def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    return torch.cuda.get_device_capability(device)


def fwd_config(head_dim: int, capability: tuple[int, int] = (9, 0), interpret: bool = False) -> FwdConfig:
    """Block sizes for the forward without autotuning.

    FA2 tiles: 128 query rows x 64 keys for D <= 128 with 8 warps, so both matmuls per step are large
    enough for wgmma (sm_90) / mma.sync (sm_80); D = 256 halves the tiles. Three pipeline stages only
    on sm_90 at D <= 128: elsewhere the third stage costs shared memory (sm_89 has 99 KB per block) or
    register spills (checked by ahead-of-time compiles of the JIT-specialised kernel). The interpreter
    gets 32 x 32 tiles so small test shapes still cross several blocks and every loop phase.
    """
    if interpret:
        return FwdConfig(32, 32, 4, 1)
    d = block_d(head_dim)
    hopper = capability[0] == 9
    if d <= 64:
        return FwdConfig(128, 64, 4, 3 if hopper else 2)
    if d <= 128:
        if hopper:
            return FwdConfig(128, 64, 8, 3)
        return FwdConfig(128, 32 if capability == (8, 0) else 64, 8, 2)
    return FwdConfig(64, 64 if capability == (8, 0) else 32, 8, 2)


def bwd_config(head_dim: int, capability: tuple[int, int] = (9, 0), interpret: bool = False) -> BwdConfig:
    """Block sizes for the backward without autotuning (see `fwd_config`).

    A dk/dv program keeps k, v, dk and dv of its key block in registers, so its key block shrinks as the
    head dim grows; the stage counts are the largest that compile without register spills per arch.
    """
    if interpret:
        return BwdConfig(32, 32, 32, 32, 4, 1)
    d = block_d(head_dim)
    hopper = capability[0] == 9
    if d <= 64:
        return BwdConfig(32, 128, 128, 32, 8, 1)
    if d <= 128:
        if hopper:
            return BwdConfig(32, 128, 128, 32, 8, 1)
        return BwdConfig(64, 64, 64, 64, 8, 1 if capability == (8, 0) else 2)
    return BwdConfig(32, 32, 32, 32, 4 if hopper else 8, 1)


def fwd_candidates(head_dim: int, capability: tuple[int, int]) -> list[FwdConfig]:
    """The forward's autotuning space (pyscale.ops times it); the default config comes first."""
    base = fwd_config(head_dim, capability)
    extra = [FwdConfig(128, 128, 8, 2), FwdConfig(128, 64, 4, 3), FwdConfig(64, 64, 4, 3)]
    if block_d(head_dim) > 128:
        extra = [FwdConfig(64, 32, 4, 2), FwdConfig(32, 64, 4, 2)]
    return [base, *[c for c in extra if c != base]]


def bwd_candidates(head_dim: int, capability: tuple[int, int]) -> list[BwdConfig]:
    """The backward's autotuning space (pyscale.ops times it); the default config comes first."""
    base = bwd_config(head_dim, capability)
    extra = [BwdConfig(16, 64, 64, 16, 8, 2), BwdConfig(64, 64, 64, 64, 8, 2), BwdConfig(32, 64, 64, 32, 8, 1)]
    if block_d(head_dim) > 128:
        extra = [BwdConfig(16, 32, 32, 16, 4, 1)]
    return [base, *[c for c in extra if c != base]]


def _window_bounds(causal: bool, window_left: int, window_right: int, max_q: int, max_k: int) -> tuple[int, int]:
    """(left, right) as non-negative ints: -1 (unbounded) becomes a reach beyond any sequence; causal
    caps right at 0."""
    unbounded = max_q + max_k + 1
    left = unbounded if window_left < 0 else min(window_left, unbounded)
    right = unbounded if window_right < 0 else min(window_right, unbounded)
    if causal:
        right = min(right, 0)
    return left, right


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    # Only the head dim must be unit-stride (vectorised loads); any other layout is used in place.
    return t if t.stride(-1) == 1 else t.contiguous()


def _layout(q: torch.Tensor, k: torch.Tensor, cu_seqlens_q, max_seqlen_q, max_seqlen_k):
    """(batch, max_sq, max_sk, heads_q, heads_kv, varlen) and a function giving (b, s, h) strides."""
    varlen = cu_seqlens_q is not None
    if varlen:
        batch = cu_seqlens_q.numel() - 1
        heads_q, heads_kv = q.shape[1], k.shape[1]
        strides = lambda t: (0, t.stride(0), t.stride(1))
        return batch, int(max_seqlen_q), int(max_seqlen_k), heads_q, heads_kv, True, strides
    batch, sq, heads_q = q.shape[0], q.shape[1], q.shape[2]
    sk, heads_kv = k.shape[1], k.shape[2]
    strides = lambda t: (t.stride(0), t.stride(1), t.stride(2))
    return batch, sq, sk, heads_q, heads_kv, False, strides


def _lse_shape(q: torch.Tensor, varlen: bool) -> tuple[int, ...]:
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def _dummy_cu(device: torch.device) -> torch.Tensor:
    return torch.empty(1, dtype=torch.int32, device=device)  # never read (VARLEN=False)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs stay fp32 (IEEE) in the dots: TF32 would silently drop to 10 mantissa bits.
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 arithmetic is wrong; compute in fp32 there.
    return interpreting() and dtype == torch.bfloat16


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte-aligned bases and (non-unit) strides in bytes."""
    return all(t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
               for t in tensors)


def _use_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tma: bool | None) -> bool:
    if tma is None:
        # Opt-in until measured on a Hopper GPU (PYSCALE_ATTN_TMA=1); the pointer path is the default.
        tma = (os.environ.get("PYSCALE_ATTN_TMA") == "1" and q.device.type == "cuda"
               and _capability(q.device)[0] >= 9)
    return bool(tma) and _tma_ok(q, k, v)


def _ensure_allocator(device: torch.device) -> None:
    """In-kernel descriptors need scratch memory from triton's allocator; install one if none is set."""
    if device.type != "cuda":
        return
    try:
        from triton.runtime._allocation import NullAllocator, _allocator
        missing = isinstance(_allocator.get(), NullAllocator)
    except (ImportError, AttributeError):  # private API moved: set ours
        missing = True
    if missing:
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device))


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
                      window_left: int = -1, window_right: int = -1,
                      cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
                      max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                      config: FwdConfig | None = None, tma: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Fixed length: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D). Varlen: q (Tq, Hq, D),
    k/v (Tk, Hkv, D) with cu_seqlens_* int32 (B + 1,) and the max lengths. Inputs are assumed checked
    (pyscale.ops.attention does that). tma: load q/k/v through tensor descriptors (None: when
    PYSCALE_ATTN_TMA=1 on sm_90+); inputs that are not 16-byte aligned take the pointer path.
    Returns (out like q, lse fp32 (B, Hq, Sq) or (Hq, Tq))."""
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    batch, max_q, max_k, heads_q, heads_kv, varlen, strides = _layout(q, k, cu_seqlens_q, max_seqlen_q,
                                                                      max_seqlen_k)
    head_dim = q.shape[-1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if k.numel() == 0 or max_k == 0:  # nothing to attend to anywhere
        return out.zero_(), lse.fill_(float("-inf"))
    left, right = _window_bounds(causal, window_left, window_right, max_q, max_k)
    cu_q = cu_seqlens_q if varlen else _dummy_cu(q.device)
    cu_k = cu_seqlens_k if varlen else _dummy_cu(q.device)
    use_tma = _use_tma(q, k, v, tma)
    if use_tma:
        _ensure_allocator(q.device)

    def run(cfg: FwdConfig) -> None:
        grid = (triton.cdiv(max_q, cfg.block_m), batch * heads_q)
        _attn_fwd[grid](
            q, k, v, out, lse, cu_q, cu_k, *strides(q), *strides(k), *strides(v), *strides(out),
            *_lse_strides(lse, varlen), max_q, max_k, heads_q, heads_q // heads_kv, float(scale), left, right,
            HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            VARLEN=varlen, UPCAST=_upcast(q.dtype), PRECISION=_precision(q.dtype), TMA=use_tma,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    run(config or fwd_config(head_dim, _capability(q.device), interpreting()))
    return out, lse


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, *, causal: bool, scale: float, window_left: int = -1,
                       window_right: int = -1, cu_seqlens_q: torch.Tensor | None = None,
                       cu_seqlens_k: torch.Tensor | None = None, max_seqlen_q: int | None = None,
                       max_seqlen_k: int | None = None, config: BwdConfig | None = None,
                       dlse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward (preprocess, then dq/dk/dv). Shapes as `attention_forward`; do like out;
    dlse (optional) the gradient of lse, like lse. Returns (dq like q, dk like k, dv like v), contiguous."""
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    do, out = _last_contiguous(do), _last_contiguous(out)
    batch, max_q, max_k, heads_q, heads_kv, varlen, strides = _layout(q, k, cu_seqlens_q, max_seqlen_q,
                                                                      max_seqlen_k)
    head_dim = q.shape[-1]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0 or max_q == 0 or max_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    left, right = _window_bounds(causal, window_left, window_right, max_q, max_k)
    cu_q = cu_seqlens_q if varlen else _dummy_cu(q.device)
    cu_k = cu_seqlens_k if varlen else _dummy_cu(q.device)
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    dlse = None if dlse is None else dlse.to(torch.float32).contiguous()
    pre_m = preprocess_block_m(head_dim)
    _attn_bwd_preprocess[(triton.cdiv(max_q, pre_m), batch * heads_q)](
        out, do, delta if dlse is None else dlse, delta, cu_q, *strides(out), *strides(do), *_lse_strides(lse, varlen),
        max_q, heads_q, HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M=pre_m, VARLEN=varlen,
        HAS_DLSE=dlse is not None)
    group = heads_q // heads_kv

    def run(cfg: BwdConfig) -> None:
        n_blocks_k = triton.cdiv(max_k, cfg.block_n1)
        n_blocks_q = triton.cdiv(max_q, cfg.block_m2)
        grid = (n_blocks_k + group * n_blocks_q, batch * heads_kv)
        _attn_bwd[grid](
            q, k, v, do, dq, dk, dv, lse, delta, cu_q, cu_k,
            *strides(q), *strides(k), *strides(v), *strides(do), *strides(dq), *strides(dk), *strides(dv),
            *_lse_strides(lse, varlen), max_q, max_k, heads_kv, group, n_blocks_k, n_blocks_q, float(scale),
            left, right, HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M1=cfg.block_m1,
            BLOCK_N1=cfg.block_n1, BLOCK_M2=cfg.block_m2, BLOCK_N2=cfg.block_n2, VARLEN=varlen,
            UPCAST=_upcast(q.dtype), PRECISION=_precision(q.dtype), num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)

    run(config or bwd_config(head_dim, _capability(q.device), interpreting()))
    return dq, dk, dv
