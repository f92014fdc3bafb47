"""Reference FP8 and int8 quantisers (DESIGN.md section 8), plain PyTorch in fp32.

scale = max(absmax, EPS) / QMAX per group, q = clamp(x / scale, -QMAX, QMAX) rounded to nearest even,
dequantised x = q * scale. Groups of x (M, K):
  "tensor"       one scale, shape ()
  "row"          (M, 1)
  "block1x128"   (M, ceil(K/128))           1 x 128 groups along K (FP8 activations)
  "block128x128" (ceil(M/128), ceil(K/128)) 128 x 128 blocks (FP8 weights)
"""

from __future__ import annotations

import torch

EPS = 1e-12
BLOCK = 128
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
INT8_MAX = 127.0
GRANULARITIES = ("tensor", "row", "block1x128", "block128x128")


def scale_shape(granularity: str, m: int, k: int) -> tuple[int, ...]:
    """Shape of the fp32 scale tensor of an (m, k) tensor quantised with `granularity`."""
    cdiv = lambda a, b: -(-a // b)
    return {"tensor": (), "row": (m, 1), "block1x128": (m, cdiv(k, BLOCK)),
            "block128x128": (cdiv(m, BLOCK), cdiv(k, BLOCK))}[granularity]


def _group_absmax(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """absmax of every group, fp32, in the shape of the scale."""
    a = x.float().abs()
    m, k = a.shape
    if granularity == "tensor":
        return a.amax() if a.numel() else torch.zeros((), device=x.device)
    if granularity == "row":
        return a.amax(dim=1, keepdim=True) if k else torch.zeros((m, 1), device=x.device)
    rows = 1 if granularity == "block1x128" else BLOCK
    pm, pk = -(-m // rows) * rows, -(-k // BLOCK) * BLOCK
    padded = torch.nn.functional.pad(a, (0, pk - k, 0, pm - m))  # zeros never raise an absmax
    return padded.reshape(pm // rows, rows, pk // BLOCK, BLOCK).amax(dim=(1, 3))


def _expand(scale: torch.Tensor, granularity: str, m: int, k: int) -> torch.Tensor:
    """The per-group scale broadcast to one value per element of an (m, k) tensor."""
    if granularity in ("tensor", "row"):
        return scale.expand(m, k)
    rows = 1 if granularity == "block1x128" else BLOCK
    return scale.repeat_interleave(rows, dim=0)[:m].repeat_interleave(BLOCK, dim=1)[:, :k]


def quantize_fp8(x: torch.Tensor, granularity: str, fp8_dtype: torch.dtype = torch.float8_e4m3fn
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (q (M, K) fp8_dtype, scale fp32 of `scale_shape(granularity, M, K)`), contiguous."""
    x = x.contiguous()  # outputs are contiguous whatever x's strides, as the kernels' are
    qmax = FP8_MAX[fp8_dtype]
    m, k = x.shape
    scale = torch.clamp(_group_absmax(x, granularity), min=EPS) / qmax
    y = torch.clamp(x.float() / _expand(scale, granularity, m, k), -qmax, qmax)
    return y.to(fp8_dtype), scale


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (q int8 (M, K) in [-127, 127], scale fp32 (M, 1)), one scale per row, contiguous."""
    x = x.contiguous()
    m, k = x.shape
    scale = torch.clamp(_group_absmax(x, "row"), min=EPS) / INT8_MAX
    q = torch.clamp(torch.round(x.float() / scale), -INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str = "row") -> torch.Tensor:
    """q (M, K) fp8 or int8 and its scale -> fp32 (M, K) = q * scale, group by group."""
    m, k = q.shape
    return q.float() * _expand(scale.float(), granularity, m, k)
