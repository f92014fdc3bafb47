"""Reference int4 group-wise quantisation in the interchange format of DESIGN.md section 8.

Weights are (N, K), K contiguous; groups of `group_size` along K. The scale is computed in fp32 and rounded
up to the scale dtype (so no code is clipped), and the codes are chosen against that stored scale:
|w - (q - z) s| <= s / 2. Asymmetric groups use the range extended to include 0. A constant group c
(all-zero included) is stored as s = |c| with q - z = sign(c), so it dequantises to c exactly.
"""

from __future__ import annotations

import torch


def round_up_to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 x >= 0 -> fp32 holding the smallest value of `dtype` not below x (+inf past its largest)."""
    r = x.to(dtype)
    if dtype == torch.float32:
        return r
    # for a non-negative 16-bit float, bit pattern + 1 is the next value up
    bumped = (r.view(torch.int16) + 1).view(dtype)
    return torch.where(r.float() < x, bumped, r).float()


def int4_quantize(w: torch.Tensor, group_size: int, symmetric: bool = True,
                  scale_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight uint8 (N, K/2), scales (N, K/g) in scale_dtype (default w.dtype), zeros uint8 (N, K/g) or None)."""
    scale_dtype = w.dtype if scale_dtype is None else scale_dtype
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    constant = lo == hi
    const_scale = lo.abs().to(scale_dtype).float()
    const_sign = torch.where(const_scale == 0, 0.0, torch.where(lo > 0, 1.0, -1.0))
    if symmetric:
        step = round_up_to_dtype(torch.maximum(lo.abs(), hi.abs()) / 7, scale_dtype)
        safe = torch.where(step == 0, 1.0, step)
        q = torch.where(step == 0, 0.0, torch.clamp(torch.round(groups / safe), -8, 7))
        codes = torch.where(constant, const_sign, q) + 8
        zeros = None
    else:
        lo_x, hi_x = torch.clamp(lo, max=0), torch.clamp(hi, min=0)
        step = round_up_to_dtype((hi_x - lo_x) / 15, scale_dtype)
        safe = torch.where(step == 0, 1.0, step)
        z = torch.where(step == 0, 0.0, torch.clamp(torch.round(-lo_x / safe), 0, 15))
        q = torch.where(step == 0, z, torch.clamp(torch.round(groups / safe) + z, 0, 15))
        const_zero = (const_sign < 0).float()
        z = torch.where(constant, const_zero, z)
        codes = torch.where(constant, const_zero + const_sign, q)
        zeros = z.squeeze(-1).to(torch.uint8)
    scale = torch.where(constant, const_scale, step)
    qweight = int4_pack(codes.reshape(n, k).to(torch.uint8))
    return qweight, scale.squeeze(-1).to(scale_dtype), zeros


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
