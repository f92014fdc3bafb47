"""nn.Modules built on pyscale ops (state-dict friendly, `from_linear` constructors).

One export per line, so each module's owner adds its own.
"""

from __future__ import annotations

from pyscale.nn.attention import Attention
from pyscale.nn.float8_linear import Float8Linear
from pyscale.nn.moe import MoE, MoEAux
from pyscale.nn.qat_linear import QATLinear
from pyscale.nn.quant_linear import QuantLinear
from pyscale.nn.quantize_model import QuantizationSummary, quantize_model

__all__ = [
    "Attention",
    "Float8Linear",
    "MoE",
    "MoEAux",
    "QATLinear",
    "QuantLinear",
    "QuantizationSummary",
    "quantize_model",
]
