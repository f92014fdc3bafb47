"""Reference W4A16 GEMM: dequantise the int4 weights (DESIGN.md section 8) and multiply in fp32."""

from __future__ import annotations

import torch

from pyscale.reference.int4 import int4_dequantize


def gemm_w4a16(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) fp16/bf16, qweight uint8 (N, K/2), scales (N, K/g), zeros uint8 (N, K/g) or None
    -> (M, N) in x.dtype. The weights are dequantised in scales.dtype (as the kernel does on a GPU)."""
    w = int4_dequantize(qweight, scales, zeros, group_size)
    out = x.float() @ w.float().T
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
