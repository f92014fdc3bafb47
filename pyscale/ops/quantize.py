"""FP8 and int8 quantisers (DESIGN.md section 8): `quantize_fp8`, `quantize_int8`, `dequantize`.

Symmetric, one fp32 scale per group: scale = max(absmax, 1e-12) / QMAX, q = clamp(x / scale, -QMAX, QMAX)
rounded to nearest even (QMAX = 448 for e4m3, 57344 for e5m2, 127 for int8); x ~ q * scale.
Backends: `triton` (CUDA, or CPU in the interpreter; FP8 on GPUs older than sm_89, which Triton cannot
store FP8 on, uses torch's casts) and `reference`. int4 group-wise quantisation is
`pyscale.ops.int4_quantize` (the `_C` op).

FLOPs: 0 -- elementwise work is not counted (as for aten elementwise ops in pyscale.profile.flops and for
int4_quantize). Bytes: x read once per pass (twice for FP8 tensor-wise: absmax, then quantise), q and the
scales written; `pyscale.formulas` counts the compulsory traffic (every input and output once).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyscale.ops._checks import check_choice, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.reference import quantize as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
GRANULARITIES = ref.GRANULARITIES
EPS = ref.EPS


class QuantizedTensor(NamedTuple):
    data: torch.Tensor  # (M, K) float8 or int8
    scale: torch.Tensor  # fp32, shape from the granularity (see scale_shape)


def scale_shape(granularity: str, m: int, k: int) -> tuple[int, ...]:
    """Shape of the fp32 scales of an (m, k) tensor: tensor (), row (m, 1), block1x128 (m, ceil(k/128)),
    block128x128 (ceil(m/128), ceil(k/128))."""
    check_choice("granularity", granularity, GRANULARITIES)
    return ref.scale_shape(granularity, m, k)


# ---------------------------------------------------------------- backends

def _fp8_triton(x: torch.Tensor, granularity: str, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    from pyscale.kernels import quantize as kq

    m, k = x.shape
    # Triton stores fp8 only from sm_89 on; older GPUs can still hold FP8 data, cast by torch
    old_gpu = x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9)
    if x.numel() == 0 or old_gpu:
        return ref.quantize_fp8(x, granularity, fp8_dtype)
    qmax = ref.FP8_MAX[fp8_dtype]
    q = torch.empty((m, k), dtype=fp8_dtype, device=x.device)
    if granularity == "tensor":
        amax = torch.zeros(1, dtype=torch.float32, device=x.device)
        kq.launch_absmax(x, amax)
        scale = torch.clamp(amax, min=EPS) / qmax
        kq.launch_quantize(x, q, scale, qmax=qmax, is_int=False, group_rows=1, group_k=k, static_scale=True)
        return q, scale.reshape(())
    scale = torch.empty(ref.scale_shape(granularity, m, k), dtype=torch.float32, device=x.device)
    kq.launch_quantize(x, q, scale, qmax=qmax, is_int=False, group_rows=ref.BLOCK if granularity == "block128x128" else 1,
                       group_k=k if granularity == "row" else ref.BLOCK)
    return q, scale


def _int8_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from pyscale.kernels import quantize as kq

    m, k = x.shape
    if x.numel() == 0:
        return ref.quantize_int8(x)
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    kq.launch_quantize(x, q, scale, qmax=ref.INT8_MAX, is_int=True, group_rows=1, group_k=k)
    return q, scale


_FP8 = {"triton": _fp8_triton, "reference": ref.quantize_fp8}
_INT8 = {"triton": _int8_triton, "reference": ref.quantize_int8}


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op("pyscale::quantize_fp8", mutates_args=())
def _quantize_fp8_op(x: torch.Tensor, granularity: str, fp8_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("quantize_fp8", x.device, _FP8, x, granularity, fp8_dtype)


@_quantize_fp8_op.register_fake
def _(x, granularity, fp8_dtype):
    m, k = x.shape
    return (x.new_empty((m, k), dtype=fp8_dtype),
            x.new_empty(ref.scale_shape(granularity, m, k), dtype=torch.float32))


@torch.library.custom_op("pyscale::quantize_int8", mutates_args=())
def _quantize_int8_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("quantize_int8", x.device, _INT8, x)


@_quantize_int8_op.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1), dtype=torch.float32)


def _check_2d_float(name: str, x: object) -> torch.Tensor:
    return check_tensor(name, x, dtypes=FLOAT_DTYPES, ndim=2)


def quantize_fp8(x: torch.Tensor, granularity: str = "row", *,
                 fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> QuantizedTensor:
    """Quantise x to FP8 with fp32 scales.

    Args:
        x: (M, K) float32/float16/bfloat16. Rows are tokens for activations, output channels for
           (N, K) weights. NaN/Inf propagate (not checked, to avoid a device sync).
        granularity: "tensor" (scale ()), "row" ((M, 1)), "block1x128" ((M, ceil(K/128)), activations)
           or "block128x128" ((ceil(M/128), ceil(K/128)), weights).
        fp8_dtype: torch.float8_e4m3fn (default, QMAX 448) or torch.float8_e5m2 (QMAX 57344).
    Returns:
        QuantizedTensor(data (M, K) fp8_dtype, scale fp32); x ~ data * scale group by group.
    FLOPs: 0 (elementwise). Bytes: M K (itemsize of x + 1) + 4 x numel(scale).
    """
    _check_2d_float("x", x)
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("fp8_dtype", fp8_dtype, FP8_DTYPES)
    return QuantizedTensor(*_quantize_fp8_op(x, granularity, fp8_dtype))


def quantize_int8(x: torch.Tensor) -> QuantizedTensor:
    """Quantise x to int8 in [-127, 127] with one fp32 scale per row.

    Args:
        x: (M, K) float32/float16/bfloat16: activations (per-token scales) or (N, K) weights
           (per-output-channel scales).
    Returns:
        QuantizedTensor(data int8 (M, K), scale fp32 (M, 1)); x ~ data * scale.
    FLOPs: 0 (elementwise). Bytes: M K (itemsize of x + 1) + 4 M.
    """
    _check_2d_float("x", x)
    return QuantizedTensor(*_quantize_int8_op(x))


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str = "row",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (M, K) float8 or int8 and its fp32 scale (shape per `granularity`) -> (M, K) q * scale in dtype."""
    check_tensor("q", q, dtypes=(*FP8_DTYPES, torch.int8), ndim=2)
    check_choice("granularity", granularity, GRANULARITIES)
    expected = ref.scale_shape(granularity, *q.shape)
    if tuple(scale.shape) != expected:
        raise ValueError(f"scale must have shape {expected} for {granularity} granularity: got {tuple(scale.shape)}")
    return ref.dequantize(q, scale, granularity).to(dtype)
