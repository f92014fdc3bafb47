"""Reference FP8 GEMM: dequantise both operands to fp32, multiply, add the bias, cast.

a (M, K) and b (N, K) float8; `granularity` names the scales (DESIGN.md section 8):
"tensor" sa () sb (); "row" sa (M, 1) sb (N, 1); "block" sa (M, ceil(K/128)) sb (ceil(N/128), ceil(K/128)).
"""

from __future__ import annotations

import torch

from pyscale.reference.quantize import dequantize

_PARTS = {"tensor": ("tensor", "tensor"), "row": ("row", "row"), "block": ("block1x128", "block128x128")}


def gemm_fp8(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
             granularity: str, out_dtype: torch.dtype = torch.bfloat16,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """(M, N) in out_dtype = dequant(a) @ dequant(b)^T (+ bias), computed in fp32."""
    ga, gb = _PARTS[granularity]
    out = dequantize(a, scale_a, ga) @ dequantize(b, scale_b, gb).T
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
