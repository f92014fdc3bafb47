"""QuantLinear: an inference nn.Linear replacement with quantised weights (`quantize_model` converts a model).

Schemes (weights quantised once at construction, activations on the fly in forward):
  "fp8-tensor"    e4m3 weights and activations, one scale each (tensor-wise)           gemm_fp8
  "fp8-row"       e4m3, per-output-channel weight and per-token activation scales      gemm_fp8
  "fp8-block128"  e4m3, 128x128 weight blocks and 1x128 activation groups             gemm_fp8
  "int8"          W8A8: int8 per-channel weights, int8 per-token activations           gemm_int8
  "w4a16-g32" / "w4a16-g64" / "w4a16-g128" (+ "-asym")  int4 group-wise weights, 16-bit activations
Buffers (all in state_dict): fp8/int8 `weight` (N, K) + `weight_scale` fp32; w4a16 `qweight` uint8
(N, K/2) + `scales` (N, K/g) in the module dtype (+ `zeros` uint8 for -asym); `bias` (N,) or None.
Module dtype casts (`.half()`, `.to(dtype)`) leave these buffers alone; device moves and `to_empty` apply
(so a layer built on the meta device materialises with `to_empty` + `load_state_dict`).
The weights are frozen, but the input has a gradient, dx = dy . dequant(W) (QLoRA-style adapters train
on a quantised base); the fp8/int8 activation quantisation is passed straight through.
"""

from __future__ import annotations

import torch
from torch import nn

from pyscale import ops
from pyscale.ops.quantize import scale_shape

W4A16_SCHEMES = tuple(f"w4a16-g{g}{a}" for g in (32, 64, 128) for a in ("", "-asym"))
SCHEMES = ("fp8-tensor", "fp8-row", "fp8-block128", "int8", *W4A16_SCHEMES)
_FP8_ACT = {"fp8-tensor": "tensor", "fp8-row": "row", "fp8-block128": "block1x128"}
_FP8_WEIGHT = {"fp8-tensor": "tensor", "fp8-row": "row", "fp8-block128": "block128x128"}


def _w4a16_params(scheme: str) -> tuple[int, bool]:
    parts = scheme.split("-")
    return int(parts[1][1:]), len(parts) == 2


def check_scheme(scheme: str, in_features: int) -> None:
    """ValueError naming the argument when `scheme` is unknown or cannot hold `in_features`."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}: got {scheme!r}")
    if scheme.startswith("w4a16"):
        g, _ = _w4a16_params(scheme)
        if in_features % g:
            raise ValueError(f"in_features must be a multiple of the group size {g} for {scheme!r}: "
                             f"got {in_features}")


def is_conv1d_style(module: nn.Module) -> bool:
    """True for a Conv1D-style linear (transformers' GPT-2 Conv1D): y = x @ weight + bias, with the
    weight stored transposed, (in_features, out_features = module.nf)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(module, "nf", None) == w.shape[1])


def linear_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out_features, in_features), bias or None) of an nn.Linear or a Conv1D-style linear.

    The Conv1D weight is returned as a transposed view. Anything else raises ValueError naming its type.
    """
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if is_conv1d_style(module):
        return module.weight.t(), module.bias
    raise ValueError(f"linear must be an nn.Linear or a Conv1D-style linear (weight stored (in, out) with "
                     f"an `nf` attribute): got {type(module).__module__}.{type(module).__qualname__}")


class QuantLinear(nn.Module):
    """y = x W^T + b with W stored quantised.

    Args:
        in_features (K), out_features (N): as nn.Linear.
        scheme: one of SCHEMES.
        bias: whether there is a bias (stored in `dtype`).
        dtype: the activation dtype: bias and int4 scales are stored in it and W4A16 runs in it
               (float16 or bfloat16 for W4A16; FP8 and int8 also accept float32).
    forward(x: (..., K) float) -> (..., N) in x.dtype.
    FLOPs: 2 M N K per forward (M = tokens), plus the activation quantisation (3 M K).
    """

    def __init__(self, in_features: int, out_features: int, scheme: str, bias: bool = True, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None) -> None:
        super().__init__()
        check_scheme(scheme, in_features)
        if scheme.startswith("w4a16") and dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float16 or bfloat16 for {scheme!r}: got {dtype}")
        self.in_features, self.out_features, self.scheme, self.dtype = in_features, out_features, scheme, dtype
        n, k = out_features, in_features
        if scheme.startswith("fp8"):
            self.register_buffer("weight", torch.zeros((n, k), dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("weight_scale", torch.ones(scale_shape(_FP8_WEIGHT[scheme], n, k), device=device))
        elif scheme == "int8":
            self.register_buffer("weight", torch.zeros((n, k), dtype=torch.int8, device=device))
            self.register_buffer("weight_scale", torch.ones((n, 1), device=device))
        else:
            g, symmetric = _w4a16_params(scheme)
            self.group_size = g
            self.register_buffer("qweight", torch.full((n, k // 2), 0x88, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.zeros((n, k // g), dtype=dtype, device=device))
            zeros = None if symmetric else torch.full((n, k // g), 8, dtype=torch.uint8, device=device)
            self.register_buffer("zeros", zeros)
        self.register_buffer("bias", torch.zeros(n, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Module, scheme: str, *, dtype: torch.dtype | None = None) -> QuantLinear:
        """Quantise the weights of an nn.Linear, or of a Conv1D-style linear (GPT-2's, weight stored
        (in, out)), with `scheme`. dtype defaults to the weight's dtype when that is float16/bfloat16,
        else bfloat16. Any other module raises ValueError."""
        weight, bias = linear_parts(linear)
        w = weight.detach()
        if dtype is None:
            dtype = w.dtype if w.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        mod = cls(w.shape[1], w.shape[0], scheme, bias is not None, dtype=dtype, device=w.device)
        mod.load_quantized_weight(w)
        if bias is not None:
            mod.bias.copy_(bias.detach().to(dtype))
        return mod

    @torch.no_grad()
    def load_quantized_weight(self, weight: torch.Tensor) -> None:
        """Quantise a float (out_features, in_features) weight into this module's buffers."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must have shape {(self.out_features, self.in_features)}: "
                             f"got {tuple(weight.shape)}")
        if self.scheme.startswith("fp8"):
            q, s = ops.quantize_fp8(weight.float().contiguous(), _FP8_WEIGHT[self.scheme])
            self.weight.copy_(q)
            self.weight_scale.copy_(s)
        elif self.scheme == "int8":
            q, s = ops.quantize_int8(weight.float().contiguous())
            self.weight.copy_(q)
            self.weight_scale.copy_(s)
        else:
            g, symmetric = _w4a16_params(self.scheme)
            # the weight keeps its own precision: the codes are chosen against scales in self.dtype, as
            # fake_quantize(..., scale_dtype=self.dtype) chooses them during QAT
            w = weight if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else weight.float()
            packed = ops.int4_quantize(w.contiguous(), g, symmetric=symmetric, scale_dtype=self.dtype)
            self.qweight.copy_(packed.qweight)
            self.scales.copy_(packed.scales)
            if not symmetric:
                self.zeros.copy_(packed.zeros)

    def _quantized_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(weight codes, weight scales, zero points or None, bias or None), whatever the scheme."""
        if self.scheme.startswith("w4a16"):
            return self.qweight, self.scales, self.zeros, self.bias
        return self.weight, self.weight_scale, None, self.bias

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this module multiplies by, (out_features, in_features) fp32."""
        codes, scale, zeros, _ = self._quantized_tensors()
        return _dequantized(self.scheme, getattr(self, "group_size", 0), codes, scale, zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        args = (self.scheme, getattr(self, "group_size", 0), self.dtype, *self._quantized_tensors())
        if torch.is_grad_enabled() and x2.requires_grad:
            y = _FrozenQuantLinear.apply(x2, *args)
        else:
            y = _quantized_matmul(x2, *args)
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        # Device moves and to_empty apply; dtype casts (.half(), .to(torch.float32), ...) do not: fp8 codes,
        # fp32 scales and the int4 format would be corrupted, and torch counts float8 as floating point.
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            out = fn(buf)
            if out.dtype != buf.dtype:  # a cast: keep the dtype, take only the device
                out = (torch.empty_like(buf, device=out.device) if buf.is_meta else buf.to(device=out.device))
            self._buffers[name] = out
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme!r}, "
                f"bias={self.bias is not None}, dtype={self.dtype}")


def _quantized_matmul(x2: torch.Tensor, scheme: str, group_size: int, dtype: torch.dtype, codes: torch.Tensor,
                      scale: torch.Tensor, zeros: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """x2 (M, K) -> (M, N) in x2.dtype through the scheme's quantised GEMM."""
    if scheme.startswith("fp8"):
        qx, sx = ops.quantize_fp8(x2, _FP8_ACT[scheme])
        bias = bias.to(x2.dtype) if bias is not None else None
        return ops.gemm_fp8(qx, codes, sx, scale, out_dtype=x2.dtype, bias=bias)
    if scheme == "int8":
        qx, sx = ops.quantize_int8(x2)
        bias = bias.to(x2.dtype) if bias is not None else None
        return ops.gemm_int8(qx, codes, sx, scale, out_dtype=x2.dtype, bias=bias)
    return ops.gemm_w4a16(x2.to(dtype), codes, scale, zeros, group_size=group_size, bias=bias).to(x2.dtype)


def _dequantized(scheme: str, group_size: int, codes: torch.Tensor, scale: torch.Tensor,
                 zeros: torch.Tensor | None) -> torch.Tensor:
    """The (N, K) weight the scheme's GEMM multiplies by, fp32 (int4: rounded to the scale dtype first,
    as the W4A16 kernel rounds it)."""
    if scheme.startswith("fp8"):
        return ops.dequantize(codes, scale, _FP8_WEIGHT[scheme])
    if scheme == "int8":
        return ops.dequantize(codes, scale, "row")
    return ops.int4_dequantize(codes, scale, zeros, group_size=group_size).float()


class _FrozenQuantLinear(torch.autograd.Function):
    """Forward through the quantised GEMM; backward dx = dy . dequant(W) only.

    The weights are frozen buffers (no gradient), and the activation quantisation of fp8/int8 is passed
    straight through, so adapters (LoRA-style) train on a quantised base model. The backward GEMM runs in
    dy's dtype on the dequantised weight: no kernel multiplies by a transposed int4/fp8/int8 weight.
    """

    @staticmethod
    def forward(ctx, x2, scheme, group_size, dtype, codes, scale, zeros, bias):
        ctx.scheme, ctx.group_size = scheme, group_size
        ctx.save_for_backward(codes, scale, zeros)
        return _quantized_matmul(x2, scheme, group_size, dtype, codes, scale, zeros, bias)

    @staticmethod
    def backward(ctx, grad_out):
        codes, scale, zeros = ctx.saved_tensors
        w = _dequantized(ctx.scheme, ctx.group_size, codes, scale, zeros)
        grad_x = grad_out @ w.to(grad_out.dtype)
        return grad_x, None, None, None, None, None, None, None
