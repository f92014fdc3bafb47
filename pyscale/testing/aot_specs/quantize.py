"""Quantisation kernels for the compile report and the AOT test (tests/ops/test_quantize.py), at the
largest tiles `kernels/quantize.py`'s `quantize_config` picks on a GPU (bf16 input, K = 4096)."""

from __future__ import annotations

from pyscale.testing.aot import KernelSpec
from pyscale.testing.aot_specs import CAPABILITIES, ReportEntry

FP8_ARCHS = ("sm_89", "sm_90a")  # Triton stores FP8 from compute capability 8.9


def quant_spec(out: str, column_major: bool = False, **constexprs) -> KernelSpec:
    """column_major: x is a transposed view (unit stride along M), as the FP8 training linear passes W^T."""
    warps = constexprs.pop("warps", 4)
    unit, strided = ("stride_xm", "stride_xk") if column_major else ("stride_xk", "stride_xm")
    sig = {"x_ptr": "*bf16", "q_ptr": f"*{out}", "s_ptr": "*fp32", "M": "i32", "K": "i32", "group_k": "i32",
           "stride_xm": "i32", "stride_xk": "i32", "stride_qm": "i32", "stride_qk": "constexpr",
           "stride_sm": "i32", "stride_sk": "i32", "QMAX": "constexpr", "IS_INT": "constexpr",
           "STATIC_SCALE": "constexpr", "SHARE_ROWS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    sig[unit] = "constexpr"
    ce = {unit: 1, "stride_qk": 1, **constexprs}
    return KernelSpec("pyscale.kernels.quantize:_quantize_kernel", sig, ce, num_warps=warps,
                      label=f"{out}{' column-major' if column_major else ''} {constexprs}",
                      # the JIT also sees M and group_k (= K) as multiples of 16 at K = 4096; the column-major
                      # tile's loads are vectorised along M only if it knows
                      divisible_by_16=("x_ptr", "q_ptr", "s_ptr", "K", strided, "stride_qm",
                                       *(("M", "group_k") if column_major else ())))


ABSMAX = KernelSpec("pyscale.kernels.quantize:_absmax_kernel",
                    {"x_ptr": "*bf16", "out_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32",
                     "stride_xk": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"},
                    {"stride_xk": 1, "BLOCK_M": 16, "BLOCK_K": 1024}, label="absmax",
                    divisible_by_16=("x_ptr", "stride_xm"))


def _entry(op: str, spec: KernelSpec, params: dict, archs: tuple[str, ...]) -> ReportEntry:
    config = {k: v for k, v in spec.constexprs.items() if k.startswith("BLOCK_")} | {"num_warps": spec.num_warps,
                                                                                      "num_stages": spec.num_stages}
    return ReportEntry(op, params, lambda arch: (spec, config), archs)


_FP8 = {"QMAX": 448.0, "IS_INT": False}
ENTRIES: list[ReportEntry] = [
    _entry("quantize_fp8.block128x128", quant_spec("fp8e4nv", **_FP8, STATIC_SCALE=False, SHARE_ROWS=True,
                                                   BLOCK_M=128, BLOCK_K=32, warps=8), {"dtype": "bf16"}, FP8_ARCHS),
    _entry("quantize_fp8.row", quant_spec("fp8e4nv", **_FP8, STATIC_SCALE=False, SHARE_ROWS=False, BLOCK_M=4,
                                          BLOCK_K=512), {"dtype": "bf16", "K": 4096}, FP8_ARCHS),
    _entry("quantize_fp8.row", quant_spec("fp8e4nv", True, **_FP8, STATIC_SCALE=False, SHARE_ROWS=False, BLOCK_M=32,
                                          BLOCK_K=64), {"dtype": "bf16", "K": 4096, "layout": "column-major"},
           FP8_ARCHS),
    _entry("quantize_fp8.static", quant_spec("fp8e4nv", **_FP8, STATIC_SCALE=True, SHARE_ROWS=False, BLOCK_M=4,
                                             BLOCK_K=512), {"dtype": "bf16", "K": 4096}, FP8_ARCHS),
    _entry("quantize_int8", quant_spec("i8", QMAX=127.0, IS_INT=True, STATIC_SCALE=False, SHARE_ROWS=False,
                                       BLOCK_M=4, BLOCK_K=512), {"dtype": "bf16", "K": 4096}, tuple(CAPABILITIES)),
    _entry("quantize.absmax", ABSMAX, {"dtype": "bf16"}, tuple(CAPABILITIES)),
]
