"""MoE kernels for the compile report and the AOT tests (tests/ops/test_moe_aot.py).

Grouped GEMMs at the configuration `grouped_gemm_config` picks for large experts (4096 rows per
expert, N = K = 4096: 128-row tiles, the most shared memory; dW unsplit, as `dw_row_splits` gives
for experts this large, and split in `--full`); routing E = 256 top-8 with groups and combine at
D = 4096 (bwd D = 128 blocks), as the launchers size them. Ints that are 1 at run time are constexpr 1,
as Triton specialises them: forward GEMMs read w (E, N, K) with stride_bk = 1, the dX GEMMs read it
transposed with stride_bn = 1 and their A by slot (a_div = 1); A rows are contiguous (stride_ak = 1).
Aligned as the JIT specialises torch tensors: pointers, strides, N and K divisible by 16.
"""

from __future__ import annotations

from pyscale.testing.aot import KernelSpec
from pyscale.testing.aot_specs import CAPABILITIES, ReportEntry

ROUTE, GEMM, COMBINE = "pyscale.kernels.moe_route", "pyscale.kernels.grouped_gemm", "pyscale.kernels.moe_combine"
ROWS_PER_EXPERT = N = K = 4096
_MODE_NAMES = {0: "plain", 1: "swiglu", 2: "swiglu_bwd"}


def _aligned(sig: dict[str, str]) -> tuple[str, ...]:
    return tuple(n for n, t in sig.items()
                 if t != "constexpr" and (n.endswith("_ptr") or n.startswith("stride") or n in ("N", "K")))


def _torch_dtype(t: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[t]


def gemm_config(kind: str, mode: int, t: str, arch: str) -> dict:
    from pyscale.kernels import grouped_gemm

    return grouped_gemm.grouped_gemm_config(N, K, float(ROWS_PER_EXPERT), _torch_dtype(t), CAPABILITIES[arch], kind=kind,
                                   mode=mode, interpret=False)


def fwd_spec(mode: int, unit: str, t: str, cfg: dict) -> KernelSpec:
    """As nn.MoE launches them: the SwiGLU forward gathers token rows (a_div = top_k, a run-time int), the
    plain forward (w_down) and the dX GEMMs (unit stride_bn) read rows by slot (a_div = 1); all zero the rows
    of dropped slots except the SwiGLU dX, whose rows are summed per token with dropped slots skipped."""
    sig = {"a_ptr": f"*{t}", "b_ptr": f"*{t}", "b2_ptr": f"*{t}", "c_ptr": f"*{t}", "preact_ptr": f"*{t}",
           "sorted_ids_ptr": "*i32", "expert_ids_ptr": "*i32", "n_pad_ptr": "*i32", "slot_pos_ptr": "*i32"}
    sig.update({n: "i32" for n in ("N", "K", "num_slots", "a_div", "align", "stride_am", "stride_ak",
                                   "stride_be", "stride_bk", "stride_bn", "stride_cm", "stride_pm")})
    by_slot = unit == "stride_bn" or mode == 0
    consts = {"stride_ak": 1, unit: 1, **({"a_div": 1} if by_slot else {}), "MODE": mode, "SAVE_PREACT": mode == 1,
              "ZERO_DROPPED": mode != 2, "UPCAST": False, "DOT_PRECISION": "tf32", "BLOCK_M": cfg["BLOCK_M"],
              "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": cfg["GROUP_M"]}
    sig.update({n: "constexpr" for n in consts})
    return KernelSpec(f"{GEMM}:_grouped_gemm_kernel", sig, consts, cfg["num_warps"], cfg["num_stages"],
                      label=f"fwd mode{mode} {unit}=1 {t}", divisible_by_16=_aligned(sig))


def dw_spec(mode: int, t: str, cfg: dict) -> KernelSpec:
    """Gathering token rows (x_div = top_k); SPLITS > 1 writes fp32 partials."""
    splits = cfg.get("SPLITS", 1)
    out = "fp32" if splits > 1 else t
    sig = {"a_ptr": f"*{t}", "preact_ptr": f"*{t}", "x_ptr": f"*{t}", "dw_ptr": f"*{out}", "dw2_ptr": f"*{out}",
           "sorted_ids_ptr": "*i32", "offsets_ptr": "*i32"}
    sig.update({n: "i32" for n in ("N", "K", "num_slots", "x_div", "stride_am", "stride_pm", "stride_xm",
                                   "stride_ws", "stride_we", "stride_wn")})
    consts = {"MODE": mode, "SPLITS": splits, "UPCAST": False, "DOT_PRECISION": "tf32",
              "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]}
    sig.update({n: "constexpr" for n in consts})
    return KernelSpec(f"{GEMM}:_grouped_gemm_dw_kernel", sig, consts, cfg["num_warps"], cfg["num_stages"],
                      label=f"dw mode{mode} {t} splits{splits}", divisible_by_16=_aligned(sig))


def _fwd_entry(mode: int, unit: str, t: str, ci: bool) -> ReportEntry:
    def build(arch: str):
        cfg = gemm_config("fwd", mode, t, arch)
        return fwd_spec(mode, unit, t, cfg), cfg

    params = {"mode": _MODE_NAMES[mode], "unit_stride": unit, "dtype": t, "rows_per_expert": ROWS_PER_EXPERT,
              "N": N, "K": K}
    return ReportEntry("moe.grouped_gemm", params, build, tuple(CAPABILITIES), ci)


def _dw_entry(mode: int, t: str, ci: bool, splits: int = 1) -> ReportEntry:
    def build(arch: str):
        cfg = {**gemm_config("dw", mode, t, arch), "SPLITS": splits}
        return dw_spec(mode, t, cfg), cfg

    params = {"mode": _MODE_NAMES[mode], "dtype": t, "rows_per_expert": ROWS_PER_EXPERT, "N": N, "K": K,
              "splits": splits}
    return ReportEntry("moe.grouped_gemm_dw", params, build, tuple(CAPABILITIES), ci)


def _candidate_entries(kind: str, mode: int, unit: str, t: str) -> list[ReportEntry]:
    """The autotuning candidates of one launch (`config_space`, alignment block 128) for `report --full`:
    one entry per candidate tile shape, on the archs it is offered on, plus (dW) the default split 4 ways."""
    from pyscale.kernels import grouped_gemm

    dtype = _torch_dtype(t)
    out = []
    for shape in grouped_gemm.space_shapes(kind, mode):
        bm, bn, bk, warps, stages = shape

        def build(arch: str, bm=bm, bn=bn, bk=bk, warps=warps, stages=stages):
            cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
                   "num_stages": stages, **({"SPLITS": 1} if kind == "dw" else {})}
            return (fwd_spec(mode, unit, t, cfg) if kind == "fwd" else dw_spec(mode, t, cfg)), cfg

        archs = tuple(a for a in CAPABILITIES if grouped_gemm.offered(kind, mode, dtype, CAPABILITIES[a], shape, 128))
        params = {"mode": _MODE_NAMES[mode], "dtype": t, "candidate": "x".join(map(str, shape)),
                  **({"unit_stride": unit} if kind == "fwd" else {})}
        out.append(ReportEntry("moe.grouped_gemm" if kind == "fwd" else "moe.grouped_gemm_dw", params, build, archs,
                               ci=False))
    return out


def _small(op: str, module: str, kernel: str, sig: dict[str, str], consts: dict, label: str, params: dict) -> ReportEntry:
    sig = {**sig, **{n: "constexpr" for n in consts}}
    spec = KernelSpec(f"{module}:{kernel}", sig, consts, 4, 1, label, _aligned(sig))
    config = {k: v for k, v in consts.items() if k.startswith("BLOCK_")} | {"num_warps": 4, "num_stages": 1}
    return ReportEntry(op, params, lambda arch: (spec, config), tuple(CAPABILITIES))


_ROUTE = _small(
    "moe.route", ROUTE, "_route_kernel",
    {"logits_ptr": "*fp32", "bias_ptr": "*fp32", "weights_ptr": "*fp32", "ids_ptr": "*i32", "T": "i32", "E": "i32",
     "group_size": "i32", "stride_lt": "i32"},
    {"TOP_K": 8, "SCORING": 1, "RENORMALIZE": True, "HAS_BIAS": True, "N_GROUP": 8, "TOPK_GROUP": 4,
     "SELECT_ON_LOGITS": False, "BLOCK_T": 16, "BLOCK_E": 256, "BLOCK_G": 8, "BLOCK_K": 8},
    "route E256 k8 groups", {"E": 256, "top_k": 8, "n_group": 8, "topk_group": 4, "scoring": "sigmoid"})
_ROUTE_BWD = _small(
    "moe.route_bwd", ROUTE, "_route_bwd_kernel",
    {"grad_w_ptr": "*fp32", "logits_ptr": "*fp32", "weights_ptr": "*fp32", "ids_ptr": "*i32",
     "grad_logits_ptr": "*fp32", "T": "i32", "E": "i32", "stride_lt": "i32", "stride_gt": "i32"},
    {"TOP_K": 8, "SCORING": 0, "RENORMALIZE": True, "BLOCK_T": 16, "BLOCK_E": 256},
    "route bwd E256 k8", {"E": 256, "top_k": 8, "scoring": "softmax"})
_DW_REDUCE = _small(
    "moe.grouped_gemm_dw_reduce", GEMM, "_dw_reduce_kernel",
    {"ws_ptr": "*fp32", "dw_ptr": "*bf16", "offsets_ptr": "*i32", "NK": "i32", "stride_ws": "i32", "stride_we": "i32",
     "stride_de": "i32"},
    {"SPLITS": 4, "BLOCK_M": 64, "BLOCK": 1024}, "dw reduce bf16 splits4", {"dtype": "bf16", "splits": 4})
_COMBINE = _small(
    "moe.combine", COMBINE, "_combine_kernel",
    {"y_ptr": "*bf16", "w_ptr": "*fp32", "slot_pos_ptr": "*i32", "out_ptr": "*bf16", "T": "i32", "D": "i32",
     "stride_ym": "i32", "stride_om": "i32"},
    {"TOP_K": 8, "HAS_W": True, "BLOCK_T": 16, "BLOCK_D": 256}, "combine bf16 D256",
    {"D": 4096, "top_k": 8, "dtype": "bf16"})
_COMBINE_BWD = _small(
    "moe.combine_bwd", COMBINE, "_combine_bwd_kernel",
    {"grad_out_ptr": "*bf16", "y_ptr": "*bf16", "w_ptr": "*fp32", "slot_pos_ptr": "*i32", "grad_y_ptr": "*bf16",
     "grad_w_ptr": "*fp32", "num_slots": "i32", "D": "i32", "stride_gom": "i32", "stride_ym": "i32",
     "stride_gym": "i32"},
    {"TOP_K": 8, "BLOCK_M": 16, "BLOCK_D": 128}, "combine bwd bf16 D128", {"D": 4096, "top_k": 8, "dtype": "bf16"})

# CI: per kernel the largest configuration, the fused SwiGLU forward in bf16 and the fused SwiGLU
# backward in fp16, so both dtypes and every fused path compile; `report --full` compiles every launch.
ENTRIES: list[ReportEntry] = [
    _ROUTE, _ROUTE_BWD,
    _fwd_entry(0, "stride_bk", "bf16", False), _fwd_entry(0, "stride_bn", "bf16", False),
    _fwd_entry(1, "stride_bk", "bf16", True), _fwd_entry(2, "stride_bn", "bf16", False),
    _fwd_entry(1, "stride_bk", "fp16", False), _fwd_entry(2, "stride_bn", "fp16", True),
    _dw_entry(0, "bf16", False), _dw_entry(2, "bf16", True), _dw_entry(2, "fp16", False), _dw_entry(0, "fp16", True),
    _dw_entry(0, "bf16", False, splits=4), _dw_entry(2, "bf16", False, splits=4), _DW_REDUCE,
    _COMBINE, _COMBINE_BWD,
    *_candidate_entries("fwd", 0, "stride_bk", "bf16"), *_candidate_entries("fwd", 1, "stride_bk", "bf16"),
    *_candidate_entries("fwd", 2, "stride_bn", "bf16"), *_candidate_entries("dw", 0, "", "bf16"),
    *_candidate_entries("dw", 2, "", "bf16"),
]
