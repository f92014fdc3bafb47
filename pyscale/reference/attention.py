"""Attention in plain PyTorch: the oracle for the fused kernels and the CPU fallback.

Same contract as pyscale.ops.attention (DESIGN section 8): q (batch, seq_q, heads_q, head_dim), k/v
(batch, seq_k, heads_kv, head_dim); query head h reads kv head h // (heads_q // heads_kv); query row i
may attend key j when -left <= j - i - (seq_k - seq_q) <= right (causal: right = 0, bottom-right
aligned; -1 means unbounded). lse is natural-log fp32 (batch, heads_q, seq_q). Rows with nothing to
attend to give output 0 and lse -inf, with zero (never NaN) gradients.

It materialises the (seq_q, seq_k) score matrix: O(seq^2) memory, meant for tests and small inputs.
"""

from __future__ import annotations

import torch


def band_mask(seq_q: int, seq_k: int, causal: bool, window_left: int = -1, window_right: int = -1,
              device: torch.device | str | None = None) -> torch.Tensor:
    """bool (seq_q, seq_k): True where query i may attend key j (bottom-right aligned band)."""
    i = torch.arange(seq_q, device=device)[:, None]
    j = torch.arange(seq_k, device=device)[None, :]
    rel = j - i - (seq_k - seq_q)
    ok = torch.ones(seq_q, seq_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        ok &= rel >= -window_left
    if window_right >= 0:
        ok &= rel <= window_right
    if causal:
        ok &= rel <= 0
    return ok


def _compute_dtype(dtype: torch.dtype, compute_dtype: torch.dtype | None) -> torch.dtype:
    if compute_dtype is not None:
        return compute_dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, window_left: int = -1, window_right: int = -1,
              compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention, op by op; differentiable with autograd.

    Args:
        q: (batch, seq_q, heads_q, head_dim).
        k, v: (batch, seq_k, heads_kv, head_dim); heads_q % heads_kv == 0.
        causal: bottom-right aligned causal mask.
        scale: softmax scale, default 1/sqrt(head_dim).
        window_left, window_right: sliding-window reach to the left/right of the diagonal; -1 unbounded.
        compute_dtype: dtype of every intermediate. Default fp32 (float64 for float64 inputs); pass the
            input dtype to get the error of an op-by-op low-precision implementation.
    Returns:
        out (batch, seq_q, heads_q, head_dim) in q.dtype; lse (batch, heads_q, seq_q), fp32 (float64
        for float64 inputs), natural log.
    """
    ct = _compute_dtype(q.dtype, compute_dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[2] // k.shape[2]
    qc = q.to(ct).transpose(1, 2)  # (b, hq, sq, d)
    kc = k.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)
    vc = v.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)
    s = (qc @ kc.transpose(-1, -2)) * scale
    ok = band_mask(q.shape[1], k.shape[1], causal, window_left, window_right, device=q.device)
    s = s.masked_fill(~ok, float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_full((*s.shape[:-1], 1), float("-inf"))
    empty = torch.isinf(m) & (m < 0)
    # Shift empty rows by 0 (not -inf) and divide them by 1: their p is all 0, so out is 0, never NaN.
    m = torch.where(empty, torch.zeros_like(m), m).detach()
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    l_safe = torch.where(empty, torch.ones_like(l), l)
    out = (p / l_safe) @ vc
    lse = torch.where(empty, torch.full_like(l, float("-inf")), m + torch.log(l_safe)).squeeze(-1)
    lse_dtype = torch.float64 if ct == torch.float64 else torch.float32
    return out.transpose(1, 2).to(q.dtype), lse.to(lse_dtype)


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                       causal: bool = False, scale: float | None = None, window_left: int = -1,
                       window_right: int = -1, compute_dtype: torch.dtype | None = None,
                       dlse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `attention` for the output gradient do (shaped like q) and, optionally, the lse
    gradient dlse (batch, heads_q, seq_q), in q's dtype.

    Written out rather than left to autograd, so it also runs inside a custom op's implementation
    (where autograd is off): with P the softmax, dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
    dQ = scale * dS K, dK = scale * dS^T Q, with dK and dV summed over each kv head's query heads.
    """
    ct = _compute_dtype(q.dtype, compute_dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    heads_kv = k.shape[2]
    group = q.shape[2] // heads_kv
    qc = q.to(ct).transpose(1, 2)
    kc = k.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)
    vc = v.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)
    doc = do.to(ct).transpose(1, 2)
    s = (qc @ kc.transpose(-1, -2)) * scale
    ok = band_mask(q.shape[1], k.shape[1], causal, window_left, window_right, device=q.device)
    s = s.masked_fill(~ok, float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_full((*s.shape[:-1], 1), float("-inf"))
    empty = torch.isinf(m) & (m < 0)
    m = torch.where(empty, torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(empty, torch.ones_like(l), l)
    out = p @ vc
    dv = p.transpose(-1, -2) @ doc
    delta = (doc * out).sum(-1, keepdim=True)
    if dlse is not None:
        delta = delta - dlse.to(ct).unsqueeze(-1)
    ds = p * (doc @ vc.transpose(-1, -2) - delta)
    dq = (ds @ kc) * scale
    dk = (ds.transpose(-1, -2) @ qc) * scale
    b, sk, d = k.shape[0], k.shape[1], k.shape[3]
    # Sum the group's query heads into their kv head (head h belongs to kv head h // group).
    dk = dk.view(b, heads_kv, group, sk, d).sum(2)
    dv = dv.view(b, heads_kv, group, sk, d).sum(2)
    return (dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype), dv.transpose(1, 2).to(v.dtype))


def _split(t: torch.Tensor, cu: list[int]) -> list[torch.Tensor]:
    return [t[cu[i]:cu[i + 1]].unsqueeze(0) for i in range(len(cu) - 1)]


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, *, causal: bool = False, scale: float | None = None,
                     window_left: int = -1, window_right: int = -1,
                     compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention` on packed sequences: q (total_q, heads_q, head_dim), k/v (total_k, heads_kv, head_dim),
    cu_seqlens_* int (batch + 1,) offsets. Returns out like q and lse (heads_q, total_q)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for qi, ki, vi in zip(_split(q, cq), _split(k, ck), _split(v, ck)):
        o, l = attention(qi, ki, vi, causal=causal, scale=scale, window_left=window_left,
                         window_right=window_right, compute_dtype=compute_dtype)
        outs.append(o[0])
        lses.append(l[0])
    out = torch.cat(outs, 0) if outs else q.new_empty(q.shape)
    lse_dtype = torch.float64 if _compute_dtype(q.dtype, compute_dtype) == torch.float64 else torch.float32
    lse = torch.cat(lses, 1) if lses else q.new_empty((q.shape[1], 0), dtype=lse_dtype)
    return out, lse


def attention_varlen_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, *, causal: bool = False,
                              scale: float | None = None, window_left: int = -1, window_right: int = -1,
                              compute_dtype: torch.dtype | None = None, dlse: torch.Tensor | None = None,
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `attention_varlen` for the output gradient do (shaped like q) and optionally the lse
    gradient dlse (heads_q, total_q)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for i in range(len(cq) - 1):
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        g = attention_backward(do[qs][None], q[qs][None], k[ks][None], v[ks][None], causal=causal, scale=scale,
                               window_left=window_left, window_right=window_right, compute_dtype=compute_dtype,
                               dlse=None if dlse is None else dlse[:, qs][None])
        dq[qs], dk[ks], dv[ks] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
