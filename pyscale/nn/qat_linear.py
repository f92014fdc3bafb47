"""QATLinear: an nn.Linear that trains through fake quantisation and converts to QuantLinear.

Weights (and optionally activations) pass through `pyscale.ops.fake_quantize` in forward, with
straight-through gradients, so training sees the rounding the deployed kernel will apply. Pairs that
`to_quant_linear` can deploy:
  weight "int4-g{32,64,128}[-asym]", act None           -> "w4a16-g...[-asym]"
  weight "int8-channel",             act "int8-token"   -> "int8"
  weight "fp8-row",                  act "fp8-row"      -> "fp8-row"
  weight "fp8-tensor",               act "fp8-tensor"   -> "fp8-tensor"
Other pairs (W4A4 = int4 weights and "int4-g..." activations, for instance) train and measure the
quantisation error but have no kernel to convert to.

The deployment dtype is fixed at construction (`deploy_dtype`, default the one QuantLinear.from_linear
would choose: the parameters' dtype when float16/bfloat16, else bfloat16). int4 weights are fake-quantised
with their scales rounded to it, so `to_quant_linear()` holds bit for bit the codes and scales training
used, and its dequantised weights equal the fake-quantised ones (int8/FP8 scales are fp32 either way).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyscale.nn.quant_linear import QuantLinear, linear_parts
from pyscale.ops import fake_quantize
from pyscale.ops.fake_quant import SCHEMES

_DEPLOY = {("int8-channel", "int8-token"): "int8", ("fp8-row", "fp8-row"): "fp8-row",
           ("fp8-tensor", "fp8-tensor"): "fp8-tensor"}
_HALF = (torch.float16, torch.bfloat16)


def default_deploy_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype QuantLinear.from_linear picks for a layer whose parameters are `dtype`."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return dtype if dtype in _HALF else torch.bfloat16


class QATLinear(nn.Module):
    """Linear layer with fake-quantised weights (and activations, when act_scheme is given).

    Args:
        in_features (K), out_features (N), bias: as nn.Linear.
        weight_scheme: a fake_quantize scheme for the (N, K) weight (default "int4-g128").
        act_scheme: a fake_quantize scheme for the input (..., K), or None for 16-bit activations.
        device, dtype: of the parameters.
        deploy_dtype: the QuantLinear dtype this layer will deploy as (int4 scales are rounded to it in
            training): float16 or bfloat16 for int4 weights, also float32 otherwise. Default: `dtype`
            when float16/bfloat16, else bfloat16.
    forward(x: (..., K)) -> (..., N). FLOPs: 2 M N K (+ 5 N K and 5 M K for the fake quantisation).
    """

    def __init__(self, in_features: int, out_features: int, weight_scheme: str = "int4-g128",
                 act_scheme: str | None = None, bias: bool = True, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, deploy_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if weight_scheme not in SCHEMES:
            raise ValueError(f"weight_scheme must be one of {', '.join(SCHEMES)}: got {weight_scheme!r}")
        if act_scheme is not None and act_scheme not in SCHEMES:
            raise ValueError(f"act_scheme must be None or one of {', '.join(SCHEMES)}: got {act_scheme!r}")
        for name, scheme in (("weight_scheme", weight_scheme), ("act_scheme", act_scheme)):
            if scheme and scheme.startswith("int4"):
                g = int(scheme.split("-")[1][1:])
                if in_features % g:
                    raise ValueError(f"in_features must be a multiple of {g} for {name}={scheme!r}: got {in_features}")
        deploy_dtype = default_deploy_dtype(dtype) if deploy_dtype is None else deploy_dtype
        allowed = _HALF if weight_scheme.startswith("int4") else (*_HALF, torch.float32)
        if deploy_dtype not in allowed:
            raise ValueError(f"deploy_dtype must be one of {', '.join(map(str, allowed))} for "
                             f"weight_scheme={weight_scheme!r}: got {deploy_dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_scheme, self.act_scheme, self.deploy_dtype = weight_scheme, act_scheme, deploy_dtype
        self.weight = nn.Parameter(torch.empty((out_features, in_features), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Module, weight_scheme: str = "int4-g128",
                    act_scheme: str | None = None, *, deploy_dtype: torch.dtype | None = None) -> QATLinear:
        """A QATLinear starting from the parameters (copied) of an nn.Linear or a Conv1D-style linear."""
        w, bias = linear_parts(linear)
        mod = cls(w.shape[1], w.shape[0], weight_scheme, act_scheme, bias is not None,
                  device=w.device, dtype=w.dtype, deploy_dtype=deploy_dtype)
        with torch.no_grad():
            mod.weight.copy_(w)
            if bias is not None:
                mod.bias.copy_(bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scheme is not None:
            x = fake_quantize(x, self.act_scheme)
        return F.linear(x, self.fake_quantized_weight(), self.bias)

    def fake_quantized_weight(self) -> torch.Tensor:
        """The (N, K) weight forward multiplies by, in the parameter dtype (gradients pass straight through)."""
        scale_dtype = self.deploy_dtype if self.weight_scheme.startswith("int4") else None
        return fake_quantize(self.weight, self.weight_scheme, scale_dtype=scale_dtype)

    def quant_scheme(self) -> str:
        """The QuantLinear scheme this layer deploys as; NotImplementedError when there is none."""
        if self.weight_scheme.startswith("int4") and self.act_scheme is None:
            return "w4a16-" + self.weight_scheme.split("-", 1)[1]
        pair = (self.weight_scheme, self.act_scheme)
        if pair in _DEPLOY:
            return _DEPLOY[pair]
        supported = "; ".join(f"{w} + {a}" for w, a in _DEPLOY) + "; int4-g* + None"
        raise NotImplementedError(f"no quantised kernel for weight_scheme={self.weight_scheme!r} with "
                                  f"act_scheme={self.act_scheme!r} (deployable: {supported})")

    def to_quant_linear(self, *, dtype: torch.dtype | None = None) -> QuantLinear:
        """Convert to the QuantLinear holding the same quantised weights this layer trained with.

        dtype: None or the deploy_dtype given at construction; any other raises ValueError (the codes
        trained with would not be the ones deployed).
        """
        if dtype is not None and dtype != self.deploy_dtype:
            raise ValueError(f"dtype must be the deploy_dtype this layer was trained for ({self.deploy_dtype}): "
                             f"got {dtype}; build the QATLinear with deploy_dtype={dtype} to deploy in it")
        scheme = self.quant_scheme()
        mod = QuantLinear(self.in_features, self.out_features, scheme, self.bias is not None,
                          dtype=self.deploy_dtype, device=self.weight.device)
        mod.load_quantized_weight(self.weight.detach())
        if self.bias is not None:
            with torch.no_grad():
                mod.bias.copy_(self.bias.detach().to(self.deploy_dtype))
        return mod

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_scheme={self.weight_scheme!r}, act_scheme={self.act_scheme!r}, bias={self.bias is not None}, "
                f"deploy_dtype={self.deploy_dtype}")
