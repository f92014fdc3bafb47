"""Reference int4 group-wise quantisation in the interchange format of DESIGN.md section 8.

Weights are (N, K), K contiguous; groups of `group_size` along K. The scale is computed in fp32,
rounded to the weight dtype, and the codes are chosen against that rounded scale.
"""

from __future__ import annotations

import torch


def int4_quantize(w: torch.Tensor, group_size: int, symmetric: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight uint8 (N, K/2), scales (N, K/g) in w.dtype, zeros uint8 (N, K/g) or None)."""
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    if symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / 7).to(w.dtype).float()
        q = torch.clamp(torch.round(groups / scale), -8, 7)
        codes = torch.where(scale == 0, 0.0, q) + 8
        zeros = None
    else:
        scale = ((hi - lo) / 15).to(w.dtype).float()
        z = torch.where(scale == 0, 0.0, torch.clamp(torch.round(-lo / scale), 0, 15))
        codes = torch.where(scale == 0, z, torch.clamp(torch.round(groups / scale) + z, 0, 15))
        zeros = z.squeeze(-1).to(torch.uint8)
    qweight = int4_pack(codes.reshape(n, k).to(torch.uint8))
    return qweight, scale.squeeze(-1).to(w.dtype), zeros


def int4_pack(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (N, K) in 0..15 -> uint8 (N, K/2): low nibble even k, high nibble odd k."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def int4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K/2) -> uint8 codes (N, K)."""
    n, half = packed.shape
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(n, 2 * half)


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    group_size: int) -> torch.Tensor:
    """(q - z) * s in scales.dtype, shape (N, K); symmetric codes carry the +8 offset (z = 8)."""
    codes = int4_unpack(qweight).float()
    n, k = codes.shape
    z = zeros.float() if zeros is not None else torch.full_like(scales, 8, dtype=torch.float32)
    w = (codes.reshape(n, k // group_size, group_size) - z.unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return w.reshape(n, k).to(scales.dtype)
