"""int8 W8A8 GEMM: c = (a @ b^T) * scale_a * scale_b^T (+ bias), int32 accumulation, fp32 epilogue.

Format (DESIGN.md section 8): a (M, K) int8 activations with per-token scales (M, 1) fp32; b (N, K) int8
weights with per-output-channel scales (N, 1) fp32; both symmetric (`pyscale.ops.quantize_int8`).
Backends: `triton` (CUDA, or CPU in the interpreter) and `reference`.

FLOPs (executed and model; `pyscale.formulas.gemm_flops`): 2 M N K integer operations; the scaling
epilogue and bias are elementwise and, as for aten's `_int_mm`/`addmm` in pyscale.profile.flops, not counted.
Bytes (`pyscale.formulas.gemm_int8_bytes`): a and b (1 byte per element), the scales, the bias, and c.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from pyscale._backend import triton_interpreting
from pyscale.ops import _gemm_variants
from pyscale.ops._autotune import Tunable, bucket
from pyscale.ops._checks import check_bias, check_choice, check_same_device, check_tensor
from pyscale.ops._device import device_info
from pyscale.ops._dispatch import dispatch
from pyscale.reference import gemm_int8 as ref

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _kernels():
    from pyscale.kernels import gemm_int8 as kernels  # lazily: importing pyscale.ops imports no triton

    return kernels


def tuning_key(m: int, n: int, k: int, out_dtype: torch.dtype, has_bias: bool,
               capability: tuple[int, int], *, tma: bool = False, persistent: bool = False) -> dict[str, Any]:
    """The autotuning key of one GEMM: M bucketed to a power of two; N and K (layer sizes) exact; the
    variant (TMA loads, persistent), whose configs are tuned apart."""
    return {"capability": list(capability), "out": str(out_dtype).removeprefix("torch."), "bias": has_bias,
            "m": bucket(m), "n": n, "k": k, "tma": tma, "persistent": persistent}


TUNING = Tunable(
    "gemm_int8", ("pyscale.kernels.gemm_int8", "pyscale.kernels.common"),
    default=lambda key, interpret: _kernels().int8_gemm_config(
        key["m"], key["n"], key["k"], tma=key.get("tma", False), persistent=key.get("persistent", False),
        capability=tuple(key["capability"]), interpret=interpret),
    space=lambda key: _kernels().gpu_configs(tma=key.get("tma", False), persistent=key.get("persistent", False)))


def _triton(a, b, scale_a, scale_b, out_dtype, bias):
    kernels = _kernels()
    m, n, k = a.shape[0], b.shape[0], a.shape[1]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    info = device_info(a.device)
    cap = info.capability
    variants = _gemm_variants.current()
    tma = variants.tma and (cap >= (9, 0) or triton_interpreting()) and kernels.tma_compatible(a, b, c)
    launch = functools.partial(kernels.launch_int8_gemm, a, b, c, scale_a, scale_b, bias, capability=cap,
                               num_sms=info.sm_count or _gemm_variants.INTERPRETER_SMS)
    # persistent with TMA only: with per-element pointers the flattened loop spills (compile report)
    key = tuning_key(m, n, k, out_dtype, bias is not None, cap, tma=tma, persistent=variants.persistent and tma)
    launch(config=TUNING.choose(a.device, key, lambda cfg: launch(config=cfg), interpret=triton_interpreting()))
    return c


_IMPLS = {"triton": _triton, "reference": ref.gemm_int8}


@torch.library.custom_op("pyscale::gemm_int8", mutates_args=())
def _gemm_int8_op(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                  out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    return dispatch("gemm_int8", a.device, _IMPLS, a, b, scale_a, scale_b, out_dtype, bias)


@_gemm_int8_op.register_fake
def _(a, b, scale_a, scale_b, out_dtype, bias):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def gemm_int8(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, *,
              out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """W8A8 GEMM with a fused dequantising epilogue.

    Args:
        a: (M, K) int8 activations (any strides); scale_a: (M, 1) fp32 per-token scales.
        b: (N, K) int8 weights, (out_features, in_features); scale_b: (N, 1) fp32 per-channel scales.
        out_dtype: bfloat16 (default), float16 or float32.
        bias: optional (N,) float, added in fp32.
    Returns:
        (M, N) out_dtype = (a @ b^T) * scale_a * scale_b^T (+ bias).
    FLOPs: 2 M N K.
    """
    check_tensor("a", a, dtypes=(torch.int8,), ndim=2)
    check_tensor("b", b, dtypes=(torch.int8,), ndim=2)
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b must have the same K (columns) as a: got {b.shape[1]} vs {a.shape[1]}")
    m, n = a.shape[0], b.shape[0]
    check_tensor("scale_a", scale_a, dtypes=(torch.float32,))
    check_tensor("scale_b", scale_b, dtypes=(torch.float32,))
    if tuple(scale_a.shape) != (m, 1):
        raise ValueError(f"scale_a must have shape (M, 1) = {(m, 1)} (per-token): got {tuple(scale_a.shape)}")
    if tuple(scale_b.shape) != (n, 1):
        raise ValueError(f"scale_b must have shape (N, 1) = {(n, 1)} (per-channel): got {tuple(scale_b.shape)}")
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    check_bias(bias, n, OUT_DTYPES)
    check_same_device(a=a, b=b, scale_a=scale_a, scale_b=scale_b, bias=bias)
    if bias is not None:
        bias = bias.contiguous()  # the kernels index the bias with unit stride
    return _gemm_int8_op(a, b, scale_a, scale_b, out_dtype, bias)
