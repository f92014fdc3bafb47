"""FP8 GEMM (`gemm_fp8`) and the FP8 linear used for training (`fp8_linear`, Float8Linear's three GEMMs).

gemm_fp8: c = (a * scale_a) @ (b * scale_b)^T (+ bias), fp32 accumulation, scales applied in fp32
(DESIGN.md section 8). The scale shapes pick the granularity:
  tensor-wise  scale_a ()             scale_b ()
  row-wise     scale_a (M, 1)         scale_b (N, 1)
  block-wise   scale_a (M, ceil(K/128))  scale_b (ceil(N/128), ceil(K/128))   (1x128 and 128x128 groups)
(when K <= 128 and N > 1, a (N, 1) scale_b means row-wise and a (ceil(N/128), 1) one block-wise).
Backends: `triton` (CUDA with compute capability >= 8.9, or CPU in the interpreter) and `reference`.

FLOPs (executed and model; `pyscale.formulas.gemm_flops`): 2 M N K, the products only. The scaling (2 M N,
or 3 M N ceil(K/128) block-wise) and a bias are elementwise and, as for aten's `_scaled_mm` in
pyscale.profile.flops, not counted, so TFLOP/s compare directly with cuBLAS.
Bytes (`pyscale.formulas.gemm_fp8_bytes`): a and b (1 byte per element), the scales (4 bytes each), the
bias, and c.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from pyscale._backend import triton_interpreting
from pyscale.ops import _gemm_variants
from pyscale.ops._autotune import Tunable, bucket
from pyscale.ops._checks import check_bias, check_choice, check_same_device, check_tensor
from pyscale.ops._device import device_info
from pyscale.ops._dispatch import dispatch
from pyscale.ops.quantize import quantize_fp8
from pyscale.reference import gemm_fp8 as ref

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8_MIN_CAPABILITY = (8, 9)
_MODES = {"tensor": 0, "row": 1, "block": 2}


def check_fp8_device(name: str, device: torch.device) -> None:
    """FP8 tensor-core GEMMs need compute capability 8.9 (Ada) or newer; raise naming `name` otherwise."""
    if device.type != "cuda":
        return
    cap = device_info(device).capability
    if tuple(cap) < FP8_MIN_CAPABILITY:
        raise RuntimeError(f"{name} is on a GPU of compute capability {cap[0]}.{cap[1]}: FP8 GEMMs need "
                           f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell)")


def scale_granularity(m: int, n: int, k: int, scale_a: torch.Tensor, scale_b: torch.Tensor) -> str:
    """"tensor", "row" or "block" from the scale shapes; ValueError naming the scale that fits none."""
    sa, sb = tuple(scale_a.shape), tuple(scale_b.shape)
    kb, nb = math.ceil(k / 128), math.ceil(n / 128)
    if sa == () and sb == ():
        return "tensor"
    if sa == (m, 1) and sb == (n, 1):
        return "row"
    if sa == (m, kb) and sb == (nb, kb):
        return "block"
    allowed = f"tensor-wise () and (); row-wise {(m, 1)} and {(n, 1)}; block-wise {(m, kb)} and {(nb, kb)}"
    name = "scale_a" if sa not in ((), (m, 1), (m, kb)) else "scale_b"
    raise ValueError(f"{name} has a shape that fits no scale granularity: got scale_a {sa}, scale_b {sb}; "
                     f"expected {allowed}")


# ---------------------------------------------------------------- backends

def _kernels():
    from pyscale.kernels import gemm_fp8 as kernels  # lazily: importing pyscale.ops imports no triton

    return kernels


def tuning_key(m: int, n: int, k: int, granularity: str, out_dtype: torch.dtype, has_bias: bool,
               capability: tuple[int, int], *, promote: str = "step", tma: bool = False,
               persistent: bool = False) -> dict[str, Any]:
    """The autotuning key of one GEMM: M bucketed to a power of two; N and K (layer sizes) exact; the
    structural variant (block-scale promotion, TMA, persistent), whose configs are tuned apart."""
    return {"capability": list(capability), "granularity": granularity, "out": str(out_dtype).removeprefix("torch."),
            "bias": has_bias, "m": bucket(m), "n": n, "k": k,
            "promote": promote if granularity == "block" else "step", "tma": tma, "persistent": persistent}


def _variant_args(key) -> dict[str, Any]:
    return {"granularity": key["granularity"], "promote": key.get("promote", "step"), "tma": key.get("tma", False),
            "persistent": key.get("persistent", False)}


TUNING = Tunable(
    "gemm_fp8", ("pyscale.kernels.gemm_fp8", "pyscale.kernels.common"),
    default=lambda key, interpret: _kernels().fp8_gemm_config(
        key["m"], key["n"], key["k"], capability=tuple(key["capability"]), interpret=interpret, **_variant_args(key)),
    space=lambda key: _kernels().gpu_configs(**_variant_args(key)))


def _triton(a, b, scale_a, scale_b, granularity, out_dtype, bias):
    kernels = _kernels()
    m, n, k = a.shape[0], b.shape[0], a.shape[1]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    info = device_info(a.device)
    cap = info.capability
    variants = _gemm_variants.current()
    # tensor descriptors: Hopper's TMA on GPU (the interpreter emulates them); inputs it cannot read do without
    tma = variants.tma and (cap >= (9, 0) or triton_interpreting()) and kernels.tma_compatible(a, b, c)
    launch = functools.partial(kernels.launch_fp8_gemm, a, b, c, scale_a, scale_b, bias, _MODES[granularity],
                               capability=cap, num_sms=info.sm_count or _gemm_variants.INTERPRETER_SMS)
    # persistent with TMA only: with per-element pointers the flattened loop spills (compile report)
    key = tuning_key(m, n, k, granularity, out_dtype, bias is not None, cap, promote=variants.fp8_block, tma=tma,
                     persistent=variants.persistent and tma)
    launch(config=TUNING.choose(a.device, key, lambda cfg: launch(config=cfg), interpret=triton_interpreting()))
    return c


_IMPLS = {"triton": _triton, "reference": ref.gemm_fp8}


@torch.library.custom_op("pyscale::gemm_fp8", mutates_args=())
def _gemm_fp8_op(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                 granularity: str, out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    return dispatch("gemm_fp8", a.device, _IMPLS, a, b, scale_a, scale_b, granularity, out_dtype, bias)


@_gemm_fp8_op.register_fake
def _(a, b, scale_a, scale_b, granularity, out_dtype, bias):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def gemm_fp8(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, *,
             out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled FP8 GEMM.

    Args:
        a: (M, K) torch.float8_e4m3fn activations (any strides).
        b: (N, K) torch.float8_e4m3fn weights, (out_features, in_features) as nn.Linear.
        scale_a, scale_b: fp32 scales; their shapes choose tensor-, row- or block-wise (module docstring).
        out_dtype: bfloat16 (default), float16 or float32.
        bias: optional (N,) float tensor, added in fp32 before the cast.
    Returns:
        (M, N) out_dtype = dequant(a) @ dequant(b)^T (+ bias).
    FLOPs: 2 M N K.
    """
    check_tensor("a", a, dtypes=(torch.float8_e4m3fn,), ndim=2)
    check_tensor("b", b, dtypes=(torch.float8_e4m3fn,), ndim=2)
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b must have the same K (columns) as a: got {b.shape[1]} vs {a.shape[1]}")
    check_tensor("scale_a", scale_a, dtypes=(torch.float32,))
    check_tensor("scale_b", scale_b, dtypes=(torch.float32,))
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    m, k = a.shape
    n = b.shape[0]
    granularity = scale_granularity(m, n, k, scale_a, scale_b)
    check_bias(bias, n, OUT_DTYPES)
    check_same_device(a=a, b=b, scale_a=scale_a, scale_b=scale_b, bias=bias)
    check_fp8_device("a", a.device)
    if bias is not None:
        bias = bias.contiguous()  # the kernels index the bias with unit stride
    return _gemm_fp8_op(a, b, scale_a, scale_b, granularity, out_dtype, bias)


# ---------------------------------------------------------------- FP8 training linear

class _Fp8Linear(torch.autograd.Function):
    """y = x W^T + b with all three GEMMs in FP8 e4m3 and row-wise scales.

    forward  y  (M, N) = x  (M, K) . W   (N, K)^T   x per token, W per output channel
    dgrad    dx (M, K) = dy (M, N) . W^T (K, N)^T   dy per token, W per input channel
    wgrad    dW (N, K) = dy^T (N, M) . x^T (K, M)^T dy per output channel, x per input channel
    Each operand is scaled along the dimension its GEMM reduces over, so every GEMM is row-wise.
    Gradients use e4m3 too (one scale per row keeps them inside its range; torchao's row-wise recipe
    does the same). x and W are saved in their own precision and re-quantised along the other axis:
    W^T, dy^T and x^T are quantised from their transposed views, which the quantiser reads in column-major
    tiles (coalesced along the contiguous dimension) and writes transposed, with no copy in between.
    """

    @staticmethod
    def forward(ctx, x2, weight, bias):
        qx, sx = quantize_fp8(x2, "row")
        qw, sw = quantize_fp8(weight, "row")
        ctx.save_for_backward(x2, weight)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        out_bias = bias.to(x2.dtype) if bias is not None else None
        return gemm_fp8(qx, qw, sx, sw, out_dtype=x2.dtype, bias=out_bias)

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            qg, sg = quantize_fp8(g, "row")
            qwt, swt = quantize_fp8(weight.t(), "row")
            grad_x = gemm_fp8(qg, qwt, sg, swt, out_dtype=x2.dtype)
        if ctx.needs_input_grad[1]:
            qgt, sgt = quantize_fp8(g.t(), "row")
            qxt, sxt = quantize_fp8(x2.t(), "row")
            grad_w = gemm_fp8(qgt, qxt, sgt, sxt, out_dtype=weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = g.float().sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """nn.functional.linear with the forward, dgrad and wgrad GEMMs in FP8 (e4m3, row-wise scales).

    Args:
        x: (..., K) float32/float16/bfloat16 activations.
        weight: (N, K) float weights; bias: optional (N,).
    Returns:
        (..., N) in x.dtype. FLOPs: 2 M N K forward, 4 M N K backward (M = tokens), plus quantisation.
    """
    check_tensor("x", x, dtypes=(torch.float32, torch.float16, torch.bfloat16))
    check_tensor("weight", weight, dtypes=(torch.float32, torch.float16, torch.bfloat16), ndim=2)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must have in_features = {weight.shape[1]} as its last dimension: got {x.shape[-1]}")
    lead = x.shape[:-1]
    y = _Fp8Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])
