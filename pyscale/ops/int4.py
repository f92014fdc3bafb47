"""int4 group-wise quantisation, packing and dequantisation (the W4A16 interchange format).

Format (DESIGN.md section 8): weights (N, K) = (out_features, in_features); groups of g in {32, 64, 128}
along K. Symmetric: q = clamp(rne(w / s), -8, 7) with s = absmax / 7, stored as q + 8. Asymmetric, over
the range extended to include 0 (min' = min(min, 0), max' = max(max, 0)): q = clamp(rne(w / s) + z, 0, 15)
with s = (max' - min') / 15 and z = clamp(rne(-min' / s), 0, 15). The scale is rounded up to its dtype
and the codes computed with it as stored, so |w - deq| <= s / 2; a constant group c (all-zero included)
is stored as s = |c|, q - z = sign(c), and dequantises to c exactly.
Packed as uint8 (N, K/2): low nibble = even k, high nibble = odd k. Scales (N, K/g) in the weight
dtype (or `scale_dtype`); zero points (N, K/g) uint8, or None when symmetric. Dequantised w = (q - z) * s.

Backends: `cuda` (CUDA tensors), `cpp` (CPU), `reference`; all three are bit-identical. The `cuda` kernels
come from `_C` when it was built with nvcc, else from the same header compiled by CuPy's NVRTC at first use.
Arrays with `__dlpack__` (CuPy, NumPy) are accepted wherever a tensor is, without a copy.
FLOPs: none counted (elementwise); bytes moved: quantize reads 4NK (fp32 staging) and writes NK/2 + 2·NK/g·(1 or 2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyscale import _ext, cuda_runtime
from pyscale.ops._checks import check_choice, check_group_scales, check_tensor
from pyscale.ops._dispatch import cuda_stream_of, dispatch, register_runtime_cuda
from pyscale.ops._interop import as_torch
from pyscale.reference import int4 as ref

GROUP_SIZES = (32, 64, 128)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ROUND_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # csrc/common.h RoundDtype


class Int4Weight(NamedTuple):
    qweight: torch.Tensor  # uint8 (N, K/2)
    scales: torch.Tensor  # (N, K/g), weight dtype
    zeros: torch.Tensor | None  # uint8 (N, K/g), None when symmetric


class _RuntimeLaunchers:
    """The `_C` CUDA launchers' signatures, launching the header's kernels through CuPy's NVRTC instead."""

    @staticmethod
    def _go(name: str, work: int, *args, stream: int) -> None:
        cuda_runtime.launch_1d(name, work, *args, stream=stream, device=torch.cuda.current_device())

    def int4_quantize_cuda(self, w, n, k, g, symmetric, scale_dtype, packed, scales, zeros, stream):
        self._go("pyscale_int4_quantize_kernel", n * (k // g), w, n, k, g, int(symmetric), scale_dtype, packed,
                 scales, zeros, stream=stream)

    def int4_pack_cuda(self, codes, n, k, packed, stream):
        self._go("pyscale_int4_pack_kernel", n * (k // 2), codes, n, k, packed, stream=stream)

    def int4_unpack_cuda(self, packed, n, k, codes, stream):
        self._go("pyscale_int4_unpack_kernel", n * (k // 2), packed, n, k, codes, stream=stream)

    def int4_dequantize_cuda(self, packed, scales, zeros, n, k, g, out, stream):
        self._go("pyscale_int4_dequantize_kernel", n * k, packed, scales, zeros, n, k, g, out, stream=stream)


_RUNTIME = _RuntimeLaunchers()
register_runtime_cuda("int4_quantize", "int4_pack", "int4_unpack", "int4_dequantize")


def _cuda_ext():
    """Where the CUDA launchers live: `_C` when it was built with nvcc, else the CuPy NVRTC runtime."""
    return _ext.extension() if _ext.has_cuda_build() else _RUNTIME


def _check_group(k: int, group_size: int, what: str) -> None:
    check_choice("group_size", group_size, GROUP_SIZES)
    if k % group_size != 0:
        raise ValueError(f"group_size must divide K ({what}): got K={k}, group_size={group_size}")


# ---------------------------------------------------------------- quantize

def _quantize_native(w: torch.Tensor, group_size: int, symmetric: bool, scale_dtype: torch.dtype,
                     device_kind: str):
    n, k = w.shape
    w32 = w.float().contiguous()
    packed = torch.empty((n, k // 2), dtype=torch.uint8, device=w.device)
    scales = torch.empty((n, k // group_size), dtype=torch.float32, device=w.device)
    zeros = torch.empty((n, 0 if symmetric else k // group_size), dtype=torch.uint8, device=w.device)
    zp = 0 if symmetric else zeros.data_ptr()
    args = (w32.data_ptr(), n, k, group_size, symmetric, _ROUND_CODE[scale_dtype], packed.data_ptr(),
            scales.data_ptr(), zp)
    if device_kind == "cuda":
        with cuda_stream_of(w) as stream:
            _cuda_ext().int4_quantize_cuda(*args, stream)
    else:
        _ext.extension().int4_quantize_cpu(*args)
    return packed, scales.to(scale_dtype), zeros


def _quantize_reference(w: torch.Tensor, group_size: int, symmetric: bool, scale_dtype: torch.dtype):
    packed, scales, zeros = ref.int4_quantize(w, group_size, symmetric, scale_dtype)
    if zeros is None:
        zeros = torch.empty((w.shape[0], 0), dtype=torch.uint8, device=w.device)
    return packed, scales, zeros


_QUANTIZE = {
    "cuda": lambda w, g, s, d: _quantize_native(w, g, s, d, "cuda"),
    "cpp": lambda w, g, s, d: _quantize_native(w, g, s, d, "cpu"),
    "reference": _quantize_reference,
}


@torch.library.custom_op("pyscale::int4_quantize", mutates_args=())
def _int4_quantize_op(w: torch.Tensor, group_size: int, symmetric: bool, scale_dtype: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale_dtype = w.dtype if scale_dtype is None else scale_dtype
    return dispatch("int4_quantize", w.device, _QUANTIZE, w, group_size, symmetric, scale_dtype)


@_int4_quantize_op.register_fake
def _(w, group_size, symmetric, scale_dtype=None):
    n, k = w.shape
    scale_dtype = w.dtype if scale_dtype is None else scale_dtype
    return (w.new_empty((n, k // 2), dtype=torch.uint8), w.new_empty((n, k // group_size), dtype=scale_dtype),
            w.new_empty((n, 0 if symmetric else k // group_size), dtype=torch.uint8))


def int4_quantize(w: torch.Tensor, group_size: int = 128, *, symmetric: bool = True,
                  scale_dtype: torch.dtype | None = None) -> Int4Weight:
    """Quantise weights group-wise to int4.

    Args:
        w: (N, K) float32/float16/bfloat16 weights, finite; K even and divisible by group_size.
        group_size: 32, 64 or 128 weights per scale, along K.
        symmetric: absmax scaling with codes stored as q + 8 (zeros None); else min/max (extended to
            include 0) with zero points.
        scale_dtype: dtype the scales are stored (and rounded) in, float32/float16/bfloat16; default w.dtype.
            The codes are chosen against the scales as stored, so quantising fp32 weights with the
            deployment dtype's scales gives exactly the codes a deployed layer holds.
    Returns:
        Int4Weight(qweight uint8 (N, K/2), scales (N, K/g) in scale_dtype, zeros uint8 (N, K/g) or None).
    """
    w = as_torch(w, "w")
    check_tensor("w", w, dtypes=FLOAT_DTYPES, ndim=2)
    if w.shape[1] % 2:
        raise ValueError(f"w must have an even number of columns K for int4 packing: got K={w.shape[1]}")
    _check_group(w.shape[1], group_size, "w")
    if scale_dtype is not None:
        check_choice("scale_dtype", scale_dtype, FLOAT_DTYPES)
    if w.numel() and w.device.type != "meta" and not bool(torch.isfinite(w).all()):
        raise ValueError("w must be finite: it contains NaN or Inf")
    packed, scales, zeros = _int4_quantize_op(w, group_size, symmetric, scale_dtype)
    if scales.numel() and scales.device.type != "meta" and not bool(torch.isfinite(scales).all()):
        raise ValueError(f"w has a range too large for {scales.dtype} scales (a scale overflowed): "
                         f"max |w| = {float(w.abs().max()):g}")
    return Int4Weight(packed, scales, None if symmetric else zeros)


# ---------------------------------------------------------------- pack / unpack

def _pack_native(codes: torch.Tensor, device_kind: str) -> torch.Tensor:
    n, k = codes.shape
    codes = codes.contiguous()
    out = torch.empty((n, k // 2), dtype=torch.uint8, device=codes.device)
    if device_kind == "cuda":
        with cuda_stream_of(codes) as stream:
            _cuda_ext().int4_pack_cuda(codes.data_ptr(), n, k, out.data_ptr(), stream)
    else:
        _ext.extension().int4_pack_cpu(codes.data_ptr(), n, k, out.data_ptr())
    return out


def _unpack_native(packed: torch.Tensor, device_kind: str) -> torch.Tensor:
    n, half = packed.shape
    packed = packed.contiguous()
    out = torch.empty((n, 2 * half), dtype=torch.uint8, device=packed.device)
    if device_kind == "cuda":
        with cuda_stream_of(packed) as stream:
            _cuda_ext().int4_unpack_cuda(packed.data_ptr(), n, 2 * half, out.data_ptr(), stream)
    else:
        _ext.extension().int4_unpack_cpu(packed.data_ptr(), n, 2 * half, out.data_ptr())
    return out


_PACK = {"cuda": lambda c: _pack_native(c, "cuda"), "cpp": lambda c: _pack_native(c, "cpu"),
         "reference": lambda c: ref.int4_pack(c).contiguous()}
_UNPACK = {"cuda": lambda p: _unpack_native(p, "cuda"), "cpp": lambda p: _unpack_native(p, "cpu"),
           "reference": lambda p: ref.int4_unpack(p).contiguous()}


@torch.library.custom_op("pyscale::int4_pack", mutates_args=())
def _int4_pack_op(codes: torch.Tensor) -> torch.Tensor:
    return dispatch("int4_pack", codes.device, _PACK, codes)


@_int4_pack_op.register_fake
def _(codes):
    return codes.new_empty((codes.shape[0], codes.shape[1] // 2))


@torch.library.custom_op("pyscale::int4_unpack", mutates_args=())
def _int4_unpack_op(packed: torch.Tensor) -> torch.Tensor:
    return dispatch("int4_unpack", packed.device, _UNPACK, packed)


@_int4_unpack_op.register_fake
def _(packed):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2))


def int4_pack(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes (N, K), each in 0..15, into uint8 (N, K/2): low nibble even k, high nibble odd k."""
    codes = as_torch(codes, "codes")
    check_tensor("codes", codes, dtypes=(torch.uint8,), ndim=2)
    if codes.shape[1] % 2:
        raise ValueError(f"codes must have an even number of columns K for int4 packing: got K={codes.shape[1]}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"codes must lie in 0..15 (4 bits): got a maximum of {int(codes.max())}")
    return _int4_pack_op(codes)


def int4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Unpack uint8 (N, K/2) into uint8 codes (N, K) in 0..15."""
    packed = as_torch(packed, "packed")
    check_tensor("packed", packed, dtypes=(torch.uint8,), ndim=2)
    return _int4_unpack_op(packed)


# ---------------------------------------------------------------- dequantize

def _dequantize_native(qweight, scales, zeros, group_size, device_kind):
    n, k = qweight.shape[0], qweight.shape[1] * 2
    q, s32 = qweight.contiguous(), scales.float().contiguous()
    z = zeros.contiguous() if zeros is not None else None
    out = torch.empty((n, k), dtype=torch.float32, device=qweight.device)
    args = (q.data_ptr(), s32.data_ptr(), 0 if z is None else z.data_ptr(), n, k, group_size, out.data_ptr())
    if device_kind == "cuda":
        with cuda_stream_of(qweight) as stream:
            _cuda_ext().int4_dequantize_cuda(*args, stream)
    else:
        _ext.extension().int4_dequantize_cpu(*args)
    return out.to(scales.dtype)


_DEQUANTIZE = {
    "cuda": lambda q, s, z, g: _dequantize_native(q, s, z, g, "cuda"),
    "cpp": lambda q, s, z, g: _dequantize_native(q, s, z, g, "cpu"),
    "reference": lambda q, s, z, g: ref.int4_dequantize(q, s, z, g),
}


@torch.library.custom_op("pyscale::int4_dequantize", mutates_args=())
def _int4_dequantize_op(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                        group_size: int) -> torch.Tensor:
    return dispatch("int4_dequantize", qweight.device, _DEQUANTIZE, qweight, scales, zeros, group_size)


@_int4_dequantize_op.register_fake
def _(qweight, scales, zeros, group_size):
    return scales.new_empty((qweight.shape[0], qweight.shape[1] * 2))


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None, *,
                    group_size: int) -> torch.Tensor:
    """Dequantise packed int4 weights to (N, K) in scales.dtype: w = (q - z) * s (z = 8 when symmetric)."""
    qweight, scales, zeros = as_torch(qweight, "qweight"), as_torch(scales, "scales"), as_torch(zeros, "zeros")
    check_tensor("qweight", qweight, dtypes=(torch.uint8,), ndim=2)
    check_tensor("scales", scales, dtypes=FLOAT_DTYPES, ndim=2)
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _check_group(k, group_size, "qweight holds K = 2 * qweight.shape[1]")
    check_group_scales(scales, zeros, n, k, group_size)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and t.device != qweight.device:
            raise ValueError(f"{name} must be on the device of qweight ({qweight.device}): got {t.device}")
    return _int4_dequantize_op(qweight, scales, zeros, group_size)
