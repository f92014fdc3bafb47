"""Quantised GEMM kernels for the compile report and the AOT tests (tests/ops/test_gemm_*.py).

Configs come from the ops' tunables (`TUNING` of pyscale.ops.gemm_fp8, gemm_int8, gemm_w4a16: their config
functions, autotuning off), one entry per structural variant (pyscale.ops._gemm_variants): FP8 and int8 at
M = N = K = 4096; W4A16 for decode (M = 1) and prefill (M = 512, below the dense path's threshold) at
N = K = 8192, with the SM count of the arch's representative GPU (split-K follows from it), and the
dequantising kernel of the dense path. Strides that are 1 at run time are constexpr 1, as Triton specialises them.
"""

from __future__ import annotations

import importlib
from typing import Any

from pyscale.testing.aot import DEFAULT_ARCHS, KernelSpec
from pyscale.testing.aot_specs import CAPABILITIES, ReportEntry

M = N = K = 4096
_MODES = {"tensor": 0, "row": 1, "block": 2}
# SMs of one representative GPU per arch (pyscale.hw): A100 SXM4, L40S, H100 SXM.
_GPU = {"sm_80": "A100 SXM4 80GB", "sm_89": "L40S", "sm_90a": "H100 SXM"}
FP8_ARCHS = ("sm_89", "sm_90a")  # FP8 tensor cores; the op refuses sm_80
TMA_ARCHS = ("sm_90a",)  # the ops take the TMA variants on sm_90+ only


def _sm_count(arch: str) -> int:
    from pyscale import hw

    return hw.lookup(_GPU[arch]).sm_count


def fp8_config(granularity: str, arch: str, m: int = M, n: int = N, k: int = K, *, promote: str = "step",
               tma: bool = False, persistent: bool = False) -> dict[str, Any]:
    import torch

    gemm_fp8 = importlib.import_module("pyscale.ops.gemm_fp8")  # the module, not the function of that name
    key = gemm_fp8.tuning_key(m, n, k, granularity, torch.bfloat16, True, CAPABILITIES[arch], promote=promote,
                              tma=tma, persistent=persistent)
    return gemm_fp8.TUNING.default(key, False)


def int8_config(arch: str, m: int = M, n: int = N, k: int = K, *, tma: bool = False,
                persistent: bool = False) -> dict[str, Any]:
    import torch

    gemm_int8 = importlib.import_module("pyscale.ops.gemm_int8")
    key = gemm_int8.tuning_key(m, n, k, torch.bfloat16, True, CAPABILITIES[arch], tma=tma, persistent=persistent)
    return gemm_int8.TUNING.default(key, False)


def w4a16_config(m: int, arch: str, n: int = 8192, k: int = 8192, group_size: int = 128, *,
                 swap: bool = False) -> dict[str, Any]:
    import torch

    from pyscale.ops._device import DeviceInfo

    gemm_w4a16 = importlib.import_module("pyscale.ops.gemm_w4a16")
    info = DeviceInfo(_GPU[arch], CAPABILITIES[arch], _sm_count(arch))
    key = gemm_w4a16.tuning_key(m, n, k, group_size, torch.bfloat16, True, True, info, swap=swap)
    return gemm_w4a16.TUNING.default(key, False)


def fp8_gemm_spec(scale_mode: int, cfg: dict, out: str = "bf16") -> KernelSpec:
    sig = {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": f"*{out}", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
           "bias_ptr": f"*{out}", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_ak": "constexpr",
           "stride_bn": "i32", "stride_bk": "constexpr", "stride_cm": "i32", "stride_cn": "constexpr",
           "stride_sam": "i32", "stride_sak": "i32", "stride_sbn": "i32", "stride_sbk": "i32",
           "SCALE_MODE": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "PROMOTE": "constexpr", "TMA": "constexpr",
           "PERSISTENT": "constexpr"}
    promote = 1 if scale_mode == 2 and cfg.get("PROMOTE") == "group" else 0
    tma, persistent = bool(cfg.get("TMA", False)), bool(cfg.get("PERSISTENT", False))
    ce = {"stride_ak": 1, "stride_bk": 1, "stride_cn": 1, "SCALE_MODE": scale_mode, "HAS_BIAS": True,
          "PROMOTE": promote, "TMA": tma, "PERSISTENT": persistent,
          **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
    return KernelSpec("pyscale.kernels.gemm_fp8:_fp8_gemm_kernel", sig, ce, num_warps=cfg["num_warps"],
                      num_stages=cfg["num_stages"],
                      label=f"mode{scale_mode}{' group' if promote else ''}{' tma' if tma else ''}"
                            f"{' persistent' if persistent else ''} "
                            f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} s{cfg['num_stages']}",
                      divisible_by_16=("a_ptr", "b_ptr", "c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "K",
                                       "stride_am", "stride_bn", "stride_cm"))


def int8_gemm_spec(cfg: dict) -> KernelSpec:
    sig = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
           "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_ak": "constexpr",
           "stride_bn": "i32", "stride_bk": "constexpr", "stride_cm": "i32", "stride_cn": "constexpr",
           "stride_sam": "i32", "stride_sbn": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr",
           "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "TMA": "constexpr",
           "PERSISTENT": "constexpr"}
    tma, persistent = bool(cfg.get("TMA", False)), bool(cfg.get("PERSISTENT", False))
    ce = {"stride_ak": 1, "stride_bk": 1, "stride_cn": 1, "HAS_BIAS": True, "TMA": tma, "PERSISTENT": persistent,
          **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
    return KernelSpec("pyscale.kernels.gemm_int8:_int8_gemm_kernel", sig, ce, num_warps=cfg["num_warps"],
                      num_stages=cfg["num_stages"],
                      label=f"{'tma ' if tma else ''}{'persistent ' if persistent else ''}{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} "
                            f"s{cfg['num_stages']}",
                      divisible_by_16=("a_ptr", "b_ptr", "c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "K",
                                       "stride_am", "stride_bn", "stride_cm"))


def w4a16_spec(cfg: dict, act: str, has_zeros: bool, group_size: int = 128) -> KernelSpec:
    sig = {"x_ptr": f"*{act}", "qw_ptr": "*u8", "s_ptr": f"*{act}", "z_ptr": "*u8", "bias_ptr": f"*{act}",
           "out_ptr": f"*{act}", "ws_ptr": "*fp32", "count_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
           "k_per_split": "i32", "stride_xm": "i32", "stride_xk": "constexpr", "stride_qn": "i32",
           "stride_qk": "constexpr", "stride_sn": "i32", "stride_sg": "constexpr", "stride_zn": "i32",
           "stride_zg": "constexpr", "stride_om": "i32", "stride_on": "constexpr",
           **{name: "constexpr" for name in ("GROUP_SIZE", "GROUPS_PER_TILE", "HAS_ZEROS", "HAS_BIAS", "SPLIT_K",
                                              "UPCAST", "SWAP_AB", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
    swap = bool(cfg.get("SWAP_AB", False))
    ce = {"stride_xk": 1, "stride_qk": 1, "stride_sg": 1, "stride_zg": 1, "stride_on": 1,
          "GROUP_SIZE": group_size, "GROUPS_PER_TILE": max(1, cfg["BLOCK_K"] // group_size),
          "HAS_ZEROS": has_zeros, "HAS_BIAS": True, "SPLIT_K": cfg["SPLIT_K"], "UPCAST": False, "SWAP_AB": swap,
          **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}}
    return KernelSpec("pyscale.kernels.gemm_w4a16:_w4a16_gemm_kernel", sig, ce, num_warps=cfg["num_warps"],
                      num_stages=cfg["num_stages"],
                      label=f"{act} zeros={has_zeros} g{group_size}{' swap' if swap else ''} "
                            f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} split{cfg['SPLIT_K']} s{cfg['num_stages']}",
                      divisible_by_16=("x_ptr", "qw_ptr", "s_ptr", "z_ptr", "bias_ptr", "out_ptr", "ws_ptr",
                                       "count_ptr", "N", "K", "k_per_split", "stride_xm", "stride_qn", "stride_om"))


def w4a16_dequant_spec(cfg: dict, act: str, has_zeros: bool, group_size: int = 128) -> KernelSpec:
    sig = {"qw_ptr": "*u8", "s_ptr": f"*{act}", "z_ptr": "*u8", "w_ptr": f"*{act}", "N": "i32", "K": "i32",
           "stride_qn": "i32", "stride_qk": "constexpr", "stride_sn": "i32", "stride_sg": "constexpr",
           "stride_zn": "i32", "stride_zg": "constexpr", "stride_wn": "i32", "stride_wk": "constexpr",
           **{name: "constexpr" for name in ("GROUP_SIZE", "GROUPS_PER_TILE", "HAS_ZEROS", "UPCAST", "BLOCK_N",
                                              "BLOCK_K")}}
    ce = {"stride_qk": 1, "stride_sg": 1, "stride_zg": 1, "stride_wk": 1, "GROUP_SIZE": group_size,
          "GROUPS_PER_TILE": max(1, cfg["BLOCK_K"] // group_size), "HAS_ZEROS": has_zeros, "UPCAST": False,
          "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]}
    return KernelSpec("pyscale.kernels.gemm_w4a16:_w4a16_dequant_kernel", sig, ce, num_warps=cfg["num_warps"],
                      label=f"dequant {act} zeros={has_zeros} g{group_size} {cfg['BLOCK_N']}x{cfg['BLOCK_K']}",
                      divisible_by_16=("qw_ptr", "s_ptr", "z_ptr", "w_ptr", "K", "stride_qn", "stride_wn"))


def _fp8_entry(granularity: str, promote: str = "step", tma: bool = False, persistent: bool = False) -> ReportEntry:
    def build(arch: str):
        cfg = fp8_config(granularity, arch, promote=promote, tma=tma, persistent=persistent)
        return fp8_gemm_spec(_MODES[granularity], cfg), cfg

    params = {"M": M, "N": N, "K": K, "out": "bf16", **({"promote": promote} if granularity == "block" else {}),
              "tma": tma, "persistent": persistent}
    return ReportEntry(f"gemm_fp8.{granularity}", params, build, TMA_ARCHS if tma else FP8_ARCHS)


def _int8_entry(tma: bool = False, persistent: bool = False) -> ReportEntry:
    def build(arch: str):
        cfg = int8_config(arch, tma=tma, persistent=persistent)
        return int8_gemm_spec(cfg), cfg

    params = {"M": M, "N": N, "K": K, "out": "bf16", "tma": tma, "persistent": persistent}
    return ReportEntry("gemm_int8", params, build, TMA_ARCHS if tma else DEFAULT_ARCHS)


def _w4a16_entry(phase: str, act: str, zeros: bool, group_size: int = 128, swap: bool = False) -> ReportEntry:
    m = 1 if phase == "decode" else 512

    def build(arch: str):
        cfg = w4a16_config(m, arch, group_size=group_size, swap=swap)
        return w4a16_spec(cfg, act, zeros, group_size), cfg

    params = {"M": m, "N": 8192, "K": 8192, "act": act, "zeros": zeros, "group_size": group_size, "swap": swap}
    return ReportEntry(f"gemm_w4a16.{phase}", params, build)


def _w4a16_dequant_entry(act: str, zeros: bool, group_size: int = 128) -> ReportEntry:
    def build(arch: str):
        from pyscale.kernels import gemm_w4a16

        cfg = gemm_w4a16.dequant_config(group_size, interpret=False)
        return w4a16_dequant_spec(cfg, act, zeros, group_size), cfg

    return ReportEntry("gemm_w4a16.dequant", {"N": 8192, "K": 8192, "act": act, "zeros": zeros,
                                              "group_size": group_size}, build)


ENTRIES: list[ReportEntry] = [
    _fp8_entry("tensor"), _fp8_entry("row"), _fp8_entry("block"), _fp8_entry("block", "group"),
    _fp8_entry("row", tma=True), _fp8_entry("block", tma=True), _fp8_entry("block", "group", tma=True),
    _fp8_entry("row", tma=True, persistent=True), _fp8_entry("block", "group", tma=True, persistent=True),
    _int8_entry(), _int8_entry(tma=True), _int8_entry(tma=True, persistent=True),
    _w4a16_entry("decode", "bf16", False), _w4a16_entry("decode", "fp16", True, 32),
    _w4a16_entry("decode", "bf16", False, swap=True),
    _w4a16_entry("prefill", "bf16", True), _w4a16_entry("prefill", "fp16", False),
    _w4a16_entry("prefill", "bf16", True, swap=True), _w4a16_dequant_entry("bf16", True),
]
