"""`scaled_dot_product_attention`: torch.nn.functional.scaled_dot_product_attention's signature and
semantics on pyscale's fused attention, for code written against SDPA.

SDPA's layout is (batch..., heads, seq, head_dim) and its `is_causal` mask is top-left aligned (query i
sees keys j <= i, whatever seq_k is); pyscale's own op takes (batch, seq, heads, head_dim) and aligns
causal bottom-right (DESIGN.md section 8). This wrapper transposes (views, no copies: the kernels read
any strides with a unit-stride head dim) and translates the mask:
    seq_q <= seq_k: the keys past seq_q are never seen, so bottom-right causal on the first seq_q keys;
    seq_q >  seq_k: a right window of seq_q - seq_k around the bottom-right diagonal, i.e. j - i <= 0.
GQA needs enable_gqa=True, as in SDPA. attn_mask and dropout are not supported and raise: a padded
batch belongs on `attention_varlen` (see pyscale.nn.hf_attention), not behind a mask.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_tensor
from pyscale.ops.attention import FLOAT_DTYPES, attention


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES)
        if t.dim() < 3:
            raise ValueError(f"{name} must be (batch..., heads, seq, head_dim) or (batch, seq, head_dim): got "
                             f"shape {tuple(t.shape)}")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} must have the dtype of query ({str(query.dtype).removeprefix('torch.')}): "
                            f"got {str(t.dtype).removeprefix('torch.')}")
        if t.dim() != query.dim() or t.shape[:-3] != query.shape[:-3]:
            raise ValueError(f"{name} must have the batch dimensions of query {tuple(query.shape[:-3])}: got shape "
                             f"{tuple(t.shape)}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key must have the head_dim of query: got {key.shape[-1]} vs {query.shape[-1]}")
    if value.shape != key.shape:
        raise ValueError(f"value must have the shape of key {tuple(key.shape)} (one head_dim for q, k and v): got "
                         f"{tuple(value.shape)}")
    if query.dim() > 3:
        heads_q, heads_kv = query.shape[-3], key.shape[-3]
        if heads_q != heads_kv and not enable_gqa:
            raise ValueError(f"key has {heads_kv} heads and query {heads_q}: pass enable_gqa=True for grouped-query "
                             f"attention")
        if heads_kv == 0 or heads_q % heads_kv:
            raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv})")


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, *, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.scaled_dot_product_attention, fused and differentiable.

    Args:
        query: (batch..., heads_q, seq_q, head_dim), or (batch, seq_q, head_dim) for one head;
            float16/bfloat16/float32, head_dim a multiple of 8 up to 256.
        key, value: (batch..., heads_kv, seq_k, head_dim), query's dtype, device and batch dimensions.
        attn_mask: must be None (masks are not supported: ValueError).
        dropout_p: must be 0.0 (no dropout: ValueError).
        is_causal: SDPA's top-left causal mask (query i attends to keys j <= i).
        scale: softmax scale; default 1/sqrt(head_dim).
        enable_gqa: allow heads_q to be a multiple of heads_kv (query head h reads kv head
            h // (heads_q // heads_kv), as SDPA's repeat_interleave).
    Returns:
        (batch..., heads_q, seq_q, head_dim) in query's dtype (a transposed view of a contiguous
        (batch, seq_q, heads_q, head_dim) buffer).
    """
    if attn_mask is not None:
        raise ValueError("attn_mask is not supported by pyscale's fused attention: pass None and is_causal, or pack "
                         "padded sequences for pyscale.ops.attention_varlen")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or dropout_p != 0:
        raise ValueError(f"dropout_p must be 0.0 (pyscale's fused attention has no dropout): got {dropout_p!r}")
    _check(query, key, value, enable_gqa)
    single_head = query.dim() == 3
    if single_head:
        query, key, value = query.unsqueeze(-3), key.unsqueeze(-3), value.unsqueeze(-3)
    batch = query.shape[:-3]
    q, k, v = (t.reshape(-1, *t.shape[-3:]).transpose(1, 2) for t in (query, key, value))  # (B, S, H, D)
    seq_q, seq_k = q.shape[1], k.shape[1]
    if not is_causal:
        out = attention(q, k, v, scale=scale)
    elif seq_q <= seq_k:
        out = attention(q, k[:, :seq_q], v[:, :seq_q], causal=True, scale=scale)
    else:
        out = attention(q, k, v, scale=scale, window=(-1, seq_q - seq_k))
    out = out.transpose(1, 2).reshape(*batch, *out.shape[2:3], seq_q, out.shape[-1])
    return out.squeeze(-3) if single_head else out
