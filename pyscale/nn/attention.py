"""Multi-head attention block: q/k/v/o projections (no bias), rotary embedding, fused attention.

The block the built-in Llama-style model uses (DESIGN section 8): rotary with theta = 10000 in the
"rotate half" layout (the first and second halves of each head dim form the rotated pairs), GQA through
n_kv_heads, causal by default, optional sliding window. Parameter count:
d_model * head_dim * (2 * n_heads + 2 * n_kv_heads).
"""

from __future__ import annotations

import torch
from torch import nn

from pyscale.ops.attention import attention


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (..., head_dim), of the rotary angles positions * theta^(-2i/head_dim)."""
    # Angles in float64: at long contexts fp32 positions * frequencies lose the low bits of the angle.
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, heads, head_dim) by cos/sin (seq, head_dim) or (batch, seq, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    # Rotation in fp32: bf16 angles lose the position information at long contexts.
    xf, rf = x.float(), rotated.float()
    return (xf * cos.unsqueeze(-2) + rf * sin.unsqueeze(-2)).to(x.dtype)


class Attention(nn.Module):
    """Self-attention: x -> o(attention(rope(q(x)), rope(k(x)), v(x))).

    Args:
        d_model: model width (input and output features).
        n_heads: query heads.
        n_kv_heads: key/value heads; n_heads % n_kv_heads == 0 (n_kv_heads == n_heads is plain MHA).
        head_dim: per-head width; default d_model // n_heads.
        causal: causal (bottom-right aligned) masking.
        window: optional (left, right) sliding window, as pyscale.ops.attention.
        rope_theta: rotary base.
        device, dtype: of the projection weights.
    Forward: x (batch, seq, d_model) and optional positions (seq,) or (batch, seq) int (default
    0..seq-1) -> (batch, seq, d_model).
    FLOPs per forward: 2 * batch * seq * d_model * head_dim * (2 n_heads + 2 n_kv_heads) for the
    projections plus pyscale.formulas.attention_flops for the attention itself.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, head_dim: int | None = None,
                 causal: bool = True, window: tuple[int, int] | None = None, rope_theta: float = 10000.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads must be a positive multiple of n_kv_heads: got {n_heads} and {n_kv_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model must be divisible by n_heads when head_dim is not given: "
                                 f"got {d_model} and {n_heads}")
            head_dim = d_model // n_heads
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings: got {head_dim}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.causal, self.window, self.rope_theta = causal, window, rope_theta
        kw = {"device": device, "dtype": dtype, "bias": False}
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, **kw)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, **kw)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, **kw)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, **kw)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        if positions is None:
            positions = torch.arange(seq, device=x.device)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, causal=self.causal, window=self.window)
        return self.o_proj(out.reshape(batch, seq, self.n_heads * self.head_dim))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}, window={self.window}, rope_theta={self.rope_theta}")
