"""Reference fake quantisation (quantise, then dequantise, in the input's dtype) for QAT.

Schemes and their groups, for x (..., K) with K the last dimension:
  "int4-g32" / "int4-g64" / "int4-g128" (+ "-asym")  int4 groups of g along K (DESIGN.md section 8)
  "int8-token"    one int8 scale per row of the (-1, K) view (per token)
  "int8-channel"  one int8 scale per index of dim 0, over all the rest (per output channel of (N, K))
  "fp8-tensor"    one e4m3 scale for the tensor
  "fp8-row"       one e4m3 scale per row of the (-1, K) view
"""

from __future__ import annotations

import torch

from pyscale.reference import int4 as ref_int4
from pyscale.reference import quantize as ref_q

SCHEMES = ("int4-g32", "int4-g64", "int4-g128", "int4-g32-asym", "int4-g64-asym", "int4-g128-asym",
           "int8-token", "int8-channel", "fp8-tensor", "fp8-row")


def parse_int4(scheme: str) -> tuple[int, bool]:
    """("int4-g64-asym") -> (64, False): group size and whether it is symmetric."""
    parts = scheme.split("-")
    return int(parts[1][1:]), len(parts) == 2


def rows_view(x: torch.Tensor, scheme: str) -> torch.Tensor:
    """The 2-D view whose rows are the scheme's scale groups (int4 rows are then split into groups)."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    if scheme == "int8-channel":
        return x.reshape(x.shape[0], -1)
    return x.reshape(-1, x.shape[-1])


def fake_quantize(x: torch.Tensor, scheme: str, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (any shape, float) -> dequant(quant(x)) in x.dtype, same shape, contiguous.

    scale_dtype: int4 schemes store (and round) their scales in it, and dequantise in it (default x.dtype)."""
    x2 = rows_view(x, scheme)
    if scheme.startswith("int4"):
        g, symmetric = parse_int4(scheme)
        q, s, z = ref_int4.int4_quantize(x2, g, symmetric, scale_dtype)
        out = ref_int4.int4_dequantize(q, s, z, g)
    elif scheme.startswith("int8"):
        q, s = ref_q.quantize_int8(x2)
        out = ref_q.dequantize(q, s, "row")
    else:
        granularity = scheme.split("-")[1]
        q, s = ref_q.quantize_fp8(x2, granularity)
        out = ref_q.dequantize(q, s, granularity)
    return out.to(x.dtype).reshape(x.shape).contiguous()
