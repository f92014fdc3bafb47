"""Public pyscale ops: torch.library custom ops with input checks, autograd and backend choice.

Importing this module imports torch (never creates a CUDA context). Backends are chosen per call;
see pyscale.ops._dispatch and `pyscale.backend(...)`.
"""

from __future__ import annotations

from pyscale.ops._autotune import autotuning
from pyscale.ops._dispatch import BackendError, select_backend
from pyscale.ops._gemm_variants import gemm_variants
from pyscale.ops.attention import attention, attention_varlen
from pyscale.ops.fake_quant import fake_quantize
from pyscale.ops.gemm_fp8 import fp8_linear, gemm_fp8
from pyscale.ops.gemm_int8 import gemm_int8
from pyscale.ops.gemm_w4a16 import gemm_w4a16
from pyscale.ops.grouped_gemm import grouped_gemm
from pyscale.ops.int4 import Int4Weight, int4_dequantize, int4_pack, int4_quantize, int4_unpack
from pyscale.ops.moe_align import MoEAlignment, moe_align, moe_block_size
from pyscale.ops.moe_aux import load_balancing_loss, router_z_loss, update_expert_bias
from pyscale.ops.moe_combine import moe_combine
from pyscale.ops.moe_route import moe_route
from pyscale.ops.quantize import QuantizedTensor, dequantize, quantize_fp8, quantize_int8
from pyscale.ops.sdpa import scaled_dot_product_attention

__all__ = [
    "BackendError",
    "attention",
    "autotuning",
    "attention_varlen",
    "Int4Weight",
    "MoEAlignment",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "fp8_linear",
    "gemm_fp8",
    "gemm_int8",
    "gemm_variants",
    "gemm_w4a16",
    "grouped_gemm",
    "int4_dequantize",
    "int4_pack",
    "int4_quantize",
    "int4_unpack",
    "load_balancing_loss",
    "moe_align",
    "moe_block_size",
    "moe_combine",
    "moe_route",
    "quantize_fp8",
    "quantize_int8",
    "router_z_loss",
    "scaled_dot_product_attention",
    "select_backend",
    "update_expert_bias",
]
