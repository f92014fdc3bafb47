"""Fake quantisation for quantisation-aware training: `fake_quantize(x, scheme)`.

Forward: quantise and dequantise with the same quantisers (and formats) the inference kernels use, so a
QAT model sees exactly the weights QuantLinear will hold. int4 scales are rounded to `scale_dtype` (the
deployment dtype; default x's dtype) and the weights dequantised in it, as the W4A16 kernel does; int8 and
FP8 scales are fp32, as deployed. Backward: the straight-through
estimator, d fake_quantize(x) / dx = identity. (Every scheme scales by the group's absmax or min/max, so
nothing is clipped and the clipped-STE variant would be the same.)

Schemes (x (..., K), K the last dimension):
  "int4-g32", "int4-g64", "int4-g128" (+ "-asym" for zero points)  groups of g along K, via the `_C` op
  "int8-token"    per row of the (-1, K) view;  "int8-channel"  per index of dim 0 (weights (N, K))
  "fp8-tensor"    one e4m3 scale;               "fp8-row"       e4m3 per row of the (-1, K) view
int4 on activations is W4A4's activation side; "int8-token" and "int8-channel" agree on 2-D tensors.
Backends: int4 schemes run `int4_quantize`/`int4_dequantize` (cuda, cpp or reference); int8/FP8 schemes
the Triton quantisers (triton) or the reference.

FLOPs: 0 -- elementwise work is not counted (as for aten elementwise ops in pyscale.profile.flops).
Bytes: x read, the result written.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_choice, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.reference import fake_quant as ref

SCHEMES = ref.SCHEMES
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _composed(x: torch.Tensor, scheme: str, scale_dtype: torch.dtype | None) -> torch.Tensor:
    """The op built from pyscale's own quantisers, each choosing its backend."""
    from pyscale.ops import int4 as int4_ops
    from pyscale.ops import quantize as q_ops

    x2 = ref.rows_view(x, scheme).contiguous()
    if scheme.startswith("int4"):
        g, symmetric = ref.parse_int4(scheme)
        w = int4_ops._int4_quantize_op(x2, g, symmetric, scale_dtype)
        zeros = None if symmetric else w[2]
        out = int4_ops._int4_dequantize_op(w[0], w[1], zeros, g)
    elif scheme.startswith("int8"):
        q, s = q_ops._quantize_int8_op(x2)
        out = q.float() * s
    else:
        granularity = scheme.split("-")[1]
        q, s = q_ops._quantize_fp8_op(x2, granularity, torch.float8_e4m3fn)
        out = q.float() * s
    return out.to(x.dtype).reshape(x.shape)


_INT4_IMPLS = {"cuda": _composed, "cpp": _composed, "reference": ref.fake_quantize}
_OTHER_IMPLS = {"triton": _composed, "reference": ref.fake_quantize}


@torch.library.custom_op("pyscale::fake_quantize", mutates_args=())
def _fake_quantize_op(x: torch.Tensor, scheme: str, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    impls = _INT4_IMPLS if scheme.startswith("int4") else _OTHER_IMPLS
    return dispatch("fake_quantize", x.device, impls, x, scheme, scale_dtype)


@_fake_quantize_op.register_fake
def _(x, scheme, scale_dtype=None):
    return x.new_empty(x.shape)  # contiguous, as every backend returns


def _setup(ctx, inputs, output):
    pass


def _backward(ctx, grad):
    return grad, None, None  # straight-through estimator


_fake_quantize_op.register_autograd(_backward, setup_context=_setup)


def fake_quantize(x: torch.Tensor, scheme: str, *, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Quantise-dequantise x with a straight-through gradient.

    Args:
        x: float32/float16/bfloat16 tensor (..., K); int4 schemes need K divisible by the group size,
           "int8-channel" at least 1-D.
        scheme: one of SCHEMES (module docstring).
        scale_dtype: int4 schemes: float16/bfloat16/float32, the dtype the deployed scales are stored in
           (default x.dtype); other schemes have fp32 scales and take None or torch.float32.
    Returns:
        Tensor of x's shape and dtype holding dequant(quant(x)); its gradient passes straight through.
    FLOPs: 0 (elementwise); the matmul that consumes the result is counted by its own op.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_choice("scheme", scheme, SCHEMES)
    if scale_dtype is not None:
        allowed = FLOAT_DTYPES if scheme.startswith("int4") else (torch.float32,)
        if scale_dtype not in allowed:
            raise ValueError(f"scale_dtype must be one of {', '.join(map(str, allowed))} (or None) for "
                             f"{scheme!r}: got {scale_dtype}")
    if scheme.startswith("int4"):
        g, _ = ref.parse_int4(scheme)
        k = x.shape[-1] if x.dim() else 1
        if k % g:
            raise ValueError(f"x must have a last dimension divisible by the group size of {scheme!r}: "
                             f"got {k}, group size {g}")
    return _fake_quantize_op(x, scheme, scale_dtype)
