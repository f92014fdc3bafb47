"""Float8Linear: a drop-in nn.Linear for training whose three GEMMs run in FP8.

Forward y = x W^T, dgrad dx = dy W and wgrad dW = dy^T x all run `pyscale.ops.gemm_fp8` on e4m3 operands
with row-wise scales, each operand scaled along its GEMM's reduction dimension (pyscale.ops.fp8_linear).
Gradients are e4m3 as well: per-row scaling keeps them in range. The backward's transposed operands (W^T,
dy^T, x^T) are quantised straight from their transposed views by a transposing tile of the quantiser
(coalesced reads; pyscale.kernels.quantize). Master weights, bias and the optimizer stay in the parameter
dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from pyscale.ops import fp8_linear


class Float8Linear(nn.Linear):
    """nn.Linear(in_features, out_features, bias, device, dtype) with FP8 GEMMs in forward and backward.

    forward(x: (..., K)) -> (..., N) in x.dtype. FLOPs: 2 M N K forward + 4 M N K backward.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """A Float8Linear sharing nothing with `linear` but holding copies of its parameters."""
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            mod.weight.copy_(linear.weight)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias)
