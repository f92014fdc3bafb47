"""Reference int8 W8A8 GEMM: exact integer product, then per-token x per-channel scales in fp32."""

from __future__ import annotations

import torch


def gemm_int8(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (M, K) int8, b (N, K) int8, scale_a (M, 1) fp32, scale_b (N, 1) fp32 -> (M, N) out_dtype.

    The int8 products are summed in float64, which is exact for any K below 2**53 / 127**2.
    """
    acc = a.to(torch.float64) @ b.to(torch.float64).T
    out = acc.float() * scale_a.float() * scale_b.float().T
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
