"""Attention kernels for the compile report and the AOT tests (tests/ops/test_attention.py).

Configs come from the op (`pyscale.ops.attention.FWD_TUNING` / `BWD_TUNING`, their config functions
with autotuning off) for a causal bf16 problem of 4096 tokens. Specs are aligned as the JIT
specialises torch tensors: pointers and the q/k/v/o strides divisible by 16 (lse strides and lengths
are not: they are arbitrary).
"""

from __future__ import annotations

import importlib
from typing import Any

from pyscale.testing.aot import KernelSpec
from pyscale.testing.aot_specs import CAPABILITIES, ReportEntry

MOD = "pyscale.kernels.attention"
SEQ = 4096  # representative tokens per sequence (configs are chosen per power-of-two bucket)
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _aligned(sig: dict[str, str]) -> tuple[str, ...]:
    return tuple(n for n, t in sig.items()
                 if t.startswith("*") or (n.startswith("stride_") and not n.startswith("stride_l")))


def _ops():
    # the module, not the function `pyscale.ops.attention` that shadows it as an attribute
    return importlib.import_module("pyscale.ops.attention")


def _key(dtype: str, head_dim: int, varlen: bool, arch: str, causal: bool = True) -> dict[str, Any]:
    import torch

    return _ops().tuning_key(getattr(torch, _TORCH_DTYPES[dtype]), head_dim, causal, False, varlen, SEQ, SEQ,
                             CAPABILITIES[arch])


def fwd_config(dtype: str, head_dim: int, arch: str, varlen: bool = False):
    """The forward config the op chooses on `arch` without autotuning."""
    return _ops().FWD_TUNING.default(_key(dtype, head_dim, varlen, arch), False)


def bwd_config(dtype: str, head_dim: int, arch: str, varlen: bool = False):
    return _ops().BWD_TUNING.default(_key(dtype, head_dim, varlen, arch), False)


def _block_d(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def fwd_spec(dtype: str, head_dim: int, cfg, label: str, varlen: bool = False, tma: bool = False,
             aligned: bool = True) -> KernelSpec:
    sig = {n: "*" + dtype for n in ("Q", "K", "V", "O")}
    sig.update({"LSE": "*fp32", "cu_seqlens_q": "*i32", "cu_seqlens_k": "*i32"})
    sig.update({n: "i32" for n in (
        "stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_vb", "stride_vs",
        "stride_vh", "stride_ob", "stride_os", "stride_oh", "stride_lb", "stride_lh", "seqlen_q", "seqlen_k",
        "heads_q", "group")})
    sig.update({"sm_scale": "fp32", "win_left": "i32", "win_right": "i32"})
    const = {"HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim), "BLOCK_M": cfg.block_m,
             "BLOCK_N": cfg.block_n, "VARLEN": varlen, "UPCAST": False, "PRECISION": "tf32", "TMA": tma}
    sig.update({n: "constexpr" for n in const})
    return KernelSpec(f"{MOD}:_attn_fwd", sig, const, cfg.num_warps, cfg.num_stages, label,
                      _aligned(sig) if aligned else ())


def pre_spec(dtype: str, head_dim: int, has_dlse: bool = False, aligned: bool = True) -> KernelSpec:
    from pyscale.kernels import attention as kernels

    sig = {"O": "*" + dtype, "DO": "*" + dtype, "DLSE": "*fp32", "DELTA": "*fp32", "cu_seqlens_q": "*i32"}
    sig.update({n: "i32" for n in ("stride_ob", "stride_os", "stride_oh", "stride_dob", "stride_dos", "stride_doh",
                                   "stride_lb", "stride_lh", "seqlen_q", "heads_q")})
    const = {"HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim), "BLOCK_M": kernels.preprocess_block_m(head_dim),
             "VARLEN": True, "HAS_DLSE": has_dlse}
    sig.update({n: "constexpr" for n in const})
    return KernelSpec(f"{MOD}:_attn_bwd_preprocess", sig, const, 4, 1,
                      f"bwd-pre {dtype} d{head_dim}{' dlse' if has_dlse else ''}", _aligned(sig) if aligned else ())


def bwd_spec(dtype: str, head_dim: int, cfg, label: str, varlen: bool = False, aligned: bool = True) -> KernelSpec:
    sig = {n: "*" + dtype for n in ("Q", "K", "V", "DO", "DQ", "DK", "DV")}
    sig.update({"LSE": "*fp32", "DELTA": "*fp32", "cu_seqlens_q": "*i32", "cu_seqlens_k": "*i32"})
    strides = [f"stride_{t}{a}" for t in ("q", "k", "v", "do", "dq", "dk", "dv") for a in ("b", "s", "h")]
    sig.update({n: "i32" for n in (*strides, "stride_lb", "stride_lh", "seqlen_q", "seqlen_k", "heads_kv", "group",
                                   "n_blocks_k", "n_blocks_q")})
    sig.update({"sm_scale": "fp32", "win_left": "i32", "win_right": "i32"})
    const = {"HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim), "BLOCK_M1": cfg.block_m1,
             "BLOCK_N1": cfg.block_n1, "BLOCK_M2": cfg.block_m2, "BLOCK_N2": cfg.block_n2, "VARLEN": varlen,
             "UPCAST": False, "PRECISION": "tf32"}
    sig.update({n: "constexpr" for n in const})
    return KernelSpec(f"{MOD}:_attn_bwd", sig, const, cfg.num_warps, cfg.num_stages, label,
                      _aligned(sig) if aligned else ())


def _label(kind: str, dtype: str, head_dim: int, varlen: bool, tma: bool = False) -> str:
    return f"{kind}{'-tma' if tma else ''} {dtype} d{head_dim}{' varlen' if varlen else ''}"


def _fwd_entry(head_dim: int, varlen: bool, tma: bool = False, ci: bool = True, dtype: str = "bf16"):
    def build(arch: str):
        cfg = fwd_config(dtype, head_dim, arch, varlen)
        return fwd_spec(dtype, head_dim, cfg, _label("fwd", dtype, head_dim, varlen, tma), varlen, tma), cfg

    params = {"head_dim": head_dim, "dtype": dtype, "causal": True, "varlen": varlen, "tma": tma, "seq": SEQ}
    return ReportEntry("attention.fwd", params, build, ("sm_90a",) if tma else tuple(CAPABILITIES), ci)


def _bwd_entry(head_dim: int, varlen: bool, ci: bool = True, dtype: str = "bf16"):
    def build(arch: str):
        cfg = bwd_config(dtype, head_dim, arch, varlen)
        return bwd_spec(dtype, head_dim, cfg, _label("bwd", dtype, head_dim, varlen), varlen), cfg

    params = {"head_dim": head_dim, "dtype": dtype, "causal": True, "varlen": varlen, "seq": SEQ}
    return ReportEntry("attention.bwd", params, build, tuple(CAPABILITIES), ci)


def _pre_entry(head_dim: int, ci: bool = True, dtype: str = "bf16"):
    def build(arch: str):
        from pyscale.kernels import attention as kernels

        return pre_spec(dtype, head_dim), {"BLOCK_M": kernels.preprocess_block_m(head_dim), "num_warps": 4,
                                           "num_stages": 1}

    return ReportEntry("attention.bwd_preprocess", {"head_dim": head_dim, "dtype": dtype}, build,
                       tuple(CAPABILITIES), ci)


# CI: d64 and d128 (the common head dims) and d256 (the largest tiles), varlen at d128, the TMA forward
# on sm_90a; the rest of the (head dim x varlen) grid is `report --full`.
ENTRIES: list[ReportEntry] = [
    _fwd_entry(64, False), _fwd_entry(64, True, ci=False), _fwd_entry(128, False), _fwd_entry(128, True),
    _fwd_entry(256, False),
    _fwd_entry(64, False, tma=True), _fwd_entry(64, True, tma=True, ci=False), _fwd_entry(128, False, tma=True),
    _fwd_entry(128, True, tma=True),
    _pre_entry(128), _pre_entry(64, ci=False),
    _bwd_entry(64, False), _bwd_entry(64, True, ci=False), _bwd_entry(128, False), _bwd_entry(128, True),
    _bwd_entry(256, False),
]
