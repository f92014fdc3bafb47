"""Fused attention (FlashAttention-2) in Triton: the forward, its configs and launchers; the backward
lives in attention_bwd.py (re-exported here), what both share in attention_common.py.

Layouts (pyscale DESIGN section 8): q (batch, seq_q, heads_q, head_dim), k/v (batch, seq_k, heads_kv,
head_dim); varlen packs sequences along one axis, (total, heads, head_dim) with int32 cu_seqlens. Query
head h reads kv head h // (heads_q // heads_kv), so GQA/MQA never materialise repeated K/V. lse is
natural-log fp32, (batch, heads_q, seq_q) or (heads_q, total_q) for varlen. Masks, addressing and the
row statistic: attention_common.py.

The forward can load q/k/v through tensor descriptors (TMA on sm_90+; opt-in with PYSCALE_ATTN_TMA=1
or tma=True until measured), one descriptor per (sequence, head) so the hardware clips at sequence ends;
inputs whose bases or strides are not 16-byte aligned keep the pointer path, as does the backward.
Only the last dimension must be contiguous; every other stride is passed in.
Nothing here imports pyscale; the helpers at the bottom launch the kernels on torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .attention_bwd import (  # noqa: F401  (re-exported: the op's backward)
    BwdConfig,
    attention_backward,
    bwd_candidates,
    bwd_config,
    bwd_variant,
    preprocess_block_m,
)
from .attention_common import (  # noqa: F401  (block_d and seq_bucket are part of this module's API)
    _band,
    _key_ranges,
    _natural_lse,
    _seq_bounds,
    block_d,
    capability_of,
    check_row_strides,
    dummy_cu,
    last_contiguous,
    layout,
    lse_shape,
    lse_strides,
    precision,
    seq_bucket,
    upcast,
    use_tma,
    window_bounds,
)
from .common import ensure_tma_allocator, interpreting

# ----------------------------------------------------------------------------- forward

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d,
               seqlen_q, seqlen_k, win_left, win_right, qk_scale, lo, full_lo, full_hi, hi,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    cols = tl.arange(0, BLOCK_N)
    # K is read as (keys, head_dim) and transposed in the dot, as the backward reads it, so both passes
    # form each score from the same operand layout (the interpreter's matmul rounds by layout).
    k_offs = cols[:, None] * stride_kn + offs_d[None, :]
    v_offs = cols[:, None] * stride_vn + offs_d[None, :]
    k_ptr = k_base + lo.to(tl.int64) * stride_kn
    v_ptr = v_base + lo.to(tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + cols
        n_ok = offs_n < seqlen_k
        if TMA:
            # The descriptor's bounds are this sequence's keys: rows past seq_k arrive as zeros.
            k = k_desc.load([start_n, 0])
        else:
            k = tl.load(k_ptr + k_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if (start_n < full_lo) | (start_n >= full_hi):  # a boundary block: apply the band
            qk = tl.where(_band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing allowed so far keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if TMA:
            v = v_desc.load([start_n, 0])
        else:
            v = tl.load(v_ptr + v_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            if ROUND_BF16:  # the GPU feeds P to the dot in bf16
                p = p.to(tl.bfloat16).to(tl.float32)
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
              VARLEN: tl.constexpr, UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, PRECISION: tl.constexpr,
              TMA: tl.constexpr):
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
                                   offs_m, offs_d, sq, sk, win_left, win_right, qk_scale, lo, full_lo, full_hi, hi,
                                   HEAD_DIM, BLOCK_N, UPCAST, ROUND_BF16, PRECISION, TMA)
        # Rows with no key to attend to have l = 0: output 0 and lse -inf.
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        lse = _natural_lse(m_i, l_i)
        tl.store(O + b64 * stride_ob + h64 * stride_oh + q_row0 * stride_os
                 + (rows[:, None] * stride_os + offs_d[None, :]), out.to(O.dtype.element_ty),
                 mask=m_ok[:, None] & d_ok[None, :])
        tl.store(LSE + b64 * stride_lb + h64 * stride_lh + q_row0 + rows, lse, mask=m_ok)


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class FwdConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def fwd_config(head_dim: int, capability: tuple[int, int] = (9, 0), interpret: bool = False) -> FwdConfig:
    """The forward's block sizes without autotuning (callable without a GPU: the compile report uses it).

    FA2 tiles: 128 query rows x 64 keys up to D = 128, so both matmuls per step are large enough for
    wgmma (sm_90) / mma.sync (sm_80); D = 256 halves the query tile. Warps and stages are the most
    pipelined that compile without register spills and within shared memory (sm_89 has 99 KB per block),
    checked per arch for every head dim by ahead-of-time compiles of the JIT-specialised kernel.
    The interpreter gets 32 x 32 tiles so small test shapes still cross several blocks and every loop
    phase.
    """
    if interpret:
        return FwdConfig(32, 32, 4, 1)
    d = block_d(head_dim)
    hopper = capability[0] == 9
    if d <= 64:
        # sm_90: 4 warps at 3 stages spill; 8 warps keep 3 stages spill-free (128 registers).
        return FwdConfig(128, 64, 8, 3) if hopper else FwdConfig(128, 64, 4, 2)
    if d <= 128:
        if hopper:
            return FwdConfig(128, 64, 8, 3)
        return FwdConfig(128, 32 if capability == (8, 0) else 64, 8, 2)
    return FwdConfig(64, 64 if capability == (8, 0) else 32, 8, 2)


def fwd_candidates(head_dim: int, capability: tuple[int, int] = (9, 0), *, causal: bool = False,
                   seqlen: int = 4096) -> list[FwdConfig]:
    """The autotuning space for (head_dim, causal, seq_bucket(seqlen)): the default first, then a few
    alternatives (larger key tiles for long sequences, smaller query tiles where a short or causal launch
    has too few programs to fill the GPU). Configs that do not fit an arch are skipped by the tuner."""
    base = fwd_config(head_dim, capability)
    d = block_d(head_dim)
    bucket = seq_bucket(seqlen)
    if d > 128:
        extra = [FwdConfig(64, 32, 4, 2), FwdConfig(64, 64, 8, 2), FwdConfig(32, 64, 4, 2)]
    else:
        extra = [FwdConfig(128, 64, 4, 2), FwdConfig(128, 32, 4, 3)]
        if bucket >= 2048:
            extra += [FwdConfig(128, 128, 8, 2)]
        if bucket <= 1024 or causal:
            extra += [FwdConfig(64, 64, 4, 3)]
    return [base, *[c for c in extra if c != base]]


# ----------------------------------------------------------------------------- launcher

def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
                      window_left: int = -1, window_right: int = -1,
                      cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
                      max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                      config: FwdConfig | None = None, tma: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Fixed length: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D). Varlen: q (Tq, Hq, D),
    k/v (Tk, Hkv, D) with cu_seqlens_* int32 (B + 1,) and the max lengths. Inputs are assumed checked
    (pyscale.ops.attention does that) except for the row-stride limit of these kernels (ValueError).
    tma: load q/k/v through tensor descriptors (None: when PYSCALE_ATTN_TMA=1 on sm_90+); inputs that
    are not 16-byte aligned take the pointer path.
    Returns (out like q, lse fp32 (B, Hq, Sq) or (Hq, Tq))."""
    q, k, v = last_contiguous(q), last_contiguous(k), last_contiguous(v)
    batch, max_q, max_k, heads_q, heads_kv, varlen, strides = layout(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    check_row_strides(varlen, q=q, k=k, v=v)
    head_dim = q.shape[-1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if k.numel() == 0 or max_k == 0:  # nothing to attend to anywhere
        return out.zero_(), lse.fill_(float("-inf"))
    left, right = window_bounds(causal, window_left, window_right, max_q, max_k)
    cu_q = cu_seqlens_q if varlen else dummy_cu(q.device)
    cu_k = cu_seqlens_k if varlen else dummy_cu(q.device)
    use_desc = use_tma(tma, q, k, v)
    if use_desc:
        ensure_tma_allocator(q.device)

    def run(cfg: FwdConfig) -> None:
        grid = (triton.cdiv(max_q, cfg.block_m), batch * heads_q)
        _attn_fwd[grid](
            q, k, v, out, lse, cu_q, cu_k, *strides(q), *strides(k), *strides(v), *strides(out),
            *lse_strides(lse, varlen), max_q, max_k, heads_q, heads_q // heads_kv, float(scale), left, right,
            HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            VARLEN=varlen, UPCAST=upcast(q.dtype), ROUND_BF16=upcast(q.dtype), PRECISION=precision(q.dtype),
            TMA=use_desc, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    run(config or fwd_config(head_dim, capability_of(q.device), interpreting()))
    return out, lse
