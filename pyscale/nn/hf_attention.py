"""pyscale's fused attention as a Hugging Face `transformers` attention function, padding included.

transformers calls an attention function as fn(module, query, key, value, attention_mask, dropout=...,
scaling=..., is_causal=..., **kwargs) with (batch, heads, seq, head_dim) tensors and expects
((batch, seq, heads, head_dim) output, attention weights or None). What `attention_mask` holds depends on
the mask function registered under the same name: for a name with none, transformers passes None even
for a padded batch, and every padded sequence then attends to its pad tokens (wrong logits, silently).
`register_hf_attention` therefore registers the FlashAttention-style mask too (a boolean (batch, seq_k)
padding mask, or None when nothing is padded), and `hf_attention_forward` packs the real tokens into
`attention_varlen` when there is padding. Causal is bottom-right aligned, which is what a KV cache needs
(the new queries are the last positions). transformers itself is imported only by `register_hf_attention`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pyscale.ops.attention import attention, attention_varlen


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def hf_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function on pyscale's kernels.

    Args:
        module: the attention layer (its `is_causal`, default True, is used when is_causal is None).
        query: (batch, heads_q, seq_q, head_dim); key, value: (batch, heads_kv, seq_k, head_dim) (GQA native).
        attention_mask: None (no padding) or the boolean/0-1 (batch, seq_k) padding mask (True: a real token)
            that transformers' `flash_attention_mask` gives; the queries are the last seq_q positions.
            Each sequence's real tokens must be contiguous (left or right padding).
        dropout: must be 0 (pyscale's attention has no dropout); scaling: the softmax scale.
    Returns:
        (out (batch, seq_q, heads_q, head_dim), None); padded query rows are 0.
    """
    if dropout:
        raise ValueError(f"dropout must be 0 (pyscale's fused attention has no dropout): got {dropout!r}")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (batch, seq, heads, head_dim)
    if attention_mask is None:
        return attention(q, k, v, causal=causal, scale=scaling), None
    if attention_mask.dim() != 2 or attention_mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(f"attention_mask must be the (batch, seq_k) = {(k.shape[0], k.shape[1])} padding mask of "
                         f"transformers' flash_attention_mask (register it with register_hf_attention): got shape "
                         f"{tuple(attention_mask.shape)}")
    keys = attention_mask.bool()
    queries = keys[:, k.shape[1] - q.shape[1]:]
    lengths_q, lengths_k = queries.sum(1, dtype=torch.int32), keys.sum(1, dtype=torch.int32)
    packed = attention_varlen(q[queries], k[keys], v[keys], _offsets(lengths_q), _offsets(lengths_k),
                              int(lengths_q.max()), int(lengths_k.max()), causal=causal, scale=scaling)
    out = q.new_zeros(q.shape).index_put((queries,), packed)
    return out, None


def register_hf_attention(name: str = "pyscale") -> str:
    """Register `hf_attention_forward` and the padding-mask function under `name` with transformers;
    then `AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)` uses pyscale's kernels."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, hf_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
