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
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyscale.nn.quant_linear import QuantLinear
from pyscale.ops import fake_quantize
from pyscale.ops.fake_quant import SCHEMES

_DEPLOY = {("int8-channel", "int8-token"): "int8", ("fp8-row", "fp8-row"): "fp8-row",
           ("fp8-tensor", "fp8-tensor"): "fp8-tensor"}


class QATLinear(nn.Module):
    """Linear layer with fake-quantised weights (and activations, when act_scheme is given).

    Args:
        in_features (K), out_features (N), bias: as nn.Linear.
        weight_scheme: a fake_quantize scheme for the (N, K) weight (default "int4-g128").
        act_scheme: a fake_quantize scheme for the input (..., K), or None for 16-bit activations.
        device, dtype: of the parameters.
    forward(x: (..., K)) -> (..., N). FLOPs: 2 M N K (+ 5 N K and 5 M K for the fake quantisation).
    """

    def __init__(self, in_features: int, out_features: int, weight_scheme: str = "int4-g128",
                 act_scheme: str | None = None, bias: bool = True, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
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
        self.in_features, self.out_features = in_features, out_features
        self.weight_scheme, self.act_scheme = weight_scheme, act_scheme
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
    def from_linear(cls, linear: nn.Linear, weight_scheme: str = "int4-g128",
                    act_scheme: str | None = None) -> QATLinear:
        """A QATLinear starting from an nn.Linear's parameters (copied)."""
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, weight_scheme, act_scheme, linear.bias is not None,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mod.weight.copy_(w)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scheme is not None:
            x = fake_quantize(x, self.act_scheme)
        return F.linear(x, fake_quantize(self.weight, self.weight_scheme), self.bias)

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
        """Convert to the QuantLinear holding the same quantised weights this layer trained with."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return QuantLinear.from_linear(linear, self.quant_scheme(), dtype=dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_scheme={self.weight_scheme!r}, act_scheme={self.act_scheme!r}, bias={self.bias is not None}")
