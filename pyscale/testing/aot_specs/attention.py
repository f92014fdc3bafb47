"""Attention kernels for the compile report and the AOT tests (tests/ops/test_attention_aot.py,
tests/testing/test_compile_report.py): one home for every attention KernelSpec.

Configs are the op's (`pyscale.ops.attention.FWD_TUNING` / `BWD_TUNING` with autotuning off, keyed like
a launch: bf16 by default, causal, 4096 tokens, the load path and the backward variant). Each spec is
what the JIT builds for aligned torch tensors: pointers and the batch/sequence/head strides divisible by
16 (not the row-statistic strides, which can be 1). Signatures are read from the kernels' parameters, so
they follow the kernels.

    from pyscale.testing import aot
    from pyscale.testing.aot_specs import attention as specs
    aot.assert_compiles(specs.default_specs("sm_90a"), archs=("sm_90a",))
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from typing import Any

from pyscale.testing.aot import KernelSpec
from pyscale.testing.aot_specs import CAPABILITIES, ReportEntry

FWD_MODULE = "pyscale.kernels.attention"
BWD_MODULE = "pyscale.kernels.attention_bwd"
SEQ = 4096  # representative tokens per sequence (configs are chosen per power-of-two bucket)
# Every supported head dim, and CI's: one per BLOCK_D bucket (16, 32, 64, 128, 256) plus 80 and 96.
ALL_HEAD_DIMS = tuple(range(8, 257, 8))
CI_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
BWD_VARIANTS = ("split", "fused")

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_FP32_POINTERS = {"LSE", "DLSE", "STATS"}
_I32_POINTERS = {"cu_seqlens_q", "cu_seqlens_k"}


def capability(arch: str) -> tuple[int, int]:
    """(major, minor) of an arch name, e.g. sm_90a -> (9, 0)."""
    if arch not in CAPABILITIES:
        raise ValueError(f"arch: unknown architecture {arch!r} (known: {', '.join(CAPABILITIES)})")
    return CAPABILITIES[arch]


# ----------------------------------------------------------------------------- the op's configs

def _ops():
    # the module, not the function `pyscale.ops.attention` that shadows it as an attribute
    return importlib.import_module("pyscale.ops.attention")


def _key(arch: str, head_dim: int, dtype: str, varlen: bool, tma: bool, variant: str | None) -> dict[str, Any]:
    import torch

    return _ops().tuning_key(getattr(torch, _TORCH_DTYPES[dtype]), head_dim, True, False, varlen, SEQ, SEQ,
                             capability(arch), tma=tma, variant=variant)


def fwd_config(arch: str, head_dim: int, dtype: str = "bf16", *, varlen: bool = False, tma: bool = False):
    """The forward config the op chooses on `arch` without autotuning."""
    return _ops().FWD_TUNING.default(_key(arch, head_dim, dtype, varlen, tma, None), False)


def bwd_config(arch: str, head_dim: int, dtype: str = "bf16", *, variant: str = "split", varlen: bool = False,
               tma: bool = False):
    """The backward config the op chooses on `arch` for `variant` without autotuning."""
    if variant not in BWD_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(BWD_VARIANTS)}: got {variant!r}")
    return _ops().BWD_TUNING.default(_key(arch, head_dim, dtype, varlen, tma, variant), False)


# ----------------------------------------------------------------------------- specs

def _spec(module: str, name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int,
          label: str) -> KernelSpec:
    """A spec for kernel `name`: tensors of `dtype` except the fp32 row statistics and int32 cu_seqlens,
    ints i32, sm_scale fp32; pointers and tensor strides (not the row-statistic strides) divisible by 16."""
    kernel = getattr(importlib.import_module(module), name)
    signature, aligned = {}, []
    # The Python function under @triton.jit (compiled or interpreted): its parameters, constexprs annotated.
    for n, param in inspect.signature(kernel.fn).parameters.items():
        if "constexpr" in str(param.annotation):
            signature[n] = "constexpr"
        elif n in _FP32_POINTERS or n in _I32_POINTERS or n[0].isupper():
            signature[n] = "*fp32" if n in _FP32_POINTERS else "*i32" if n in _I32_POINTERS else f"*{dtype}"
            aligned.append(n)
        elif n == "sm_scale":
            signature[n] = "fp32"
        else:
            signature[n] = "i32"
            if n.startswith("stride_") and not n.startswith("stride_l"):
                aligned.append(n)
    mismatch = set(constexprs) ^ {n for n, t in signature.items() if t == "constexpr"}
    if mismatch:
        raise ValueError(f"constexprs of {name} do not match its parameters: {sorted(mismatch)}")
    return KernelSpec(f"{module}:{name}", signature, dict(constexprs), num_warps, num_stages, label, tuple(aligned))


def _block_d(head_dim: int) -> int:
    from pyscale.kernels import attention_common

    return attention_common.block_d(head_dim)


def _flags(head_dim: int, dtype: str, varlen: bool) -> dict:
    return {"HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim), "VARLEN": varlen, "UPCAST": False,
            "ROUND_BF16": False, "PRECISION": "ieee" if dtype == "fp32" else "tf32"}


def fwd_spec(arch: str, head_dim: int, dtype: str = "bf16", *, varlen: bool = False, tma: bool = False,
             config=None) -> KernelSpec:
    """The forward `_attn_fwd` at `config` (default: the op's for the arch)."""
    cfg = config or fwd_config(arch, head_dim, dtype, varlen=varlen, tma=tma)
    const = {**_flags(head_dim, dtype, varlen), "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "TMA": tma}
    label = (f"fwd{'-tma' if tma else ''}{' varlen' if varlen else ''} {dtype} d{head_dim} {arch} "
             f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}")
    return _spec(FWD_MODULE, "_attn_fwd", dtype, const, cfg.num_warps, cfg.num_stages, label)


def preprocess_spec(head_dim: int, dtype: str = "bf16", *, has_dlse: bool = False, varlen: bool = False) -> KernelSpec:
    """The backward's preprocess (the interleaved row statistics); 4 warps, no loop to pipeline."""
    from pyscale.kernels import attention_bwd as k

    const = {"HEAD_DIM": head_dim, "BLOCK_D": _block_d(head_dim), "BLOCK_M": k.preprocess_block_m(head_dim),
             "VARLEN": varlen, "HAS_DLSE": has_dlse, "LSE_LO": dtype == "fp32"}
    label = f"bwd-pre {dtype} d{head_dim}{' dlse' if has_dlse else ''}{' varlen' if varlen else ''}"
    return _spec(BWD_MODULE, "_attn_bwd_preprocess", dtype, const, 4, 1, label)


def bwd_specs(arch: str, head_dim: int, dtype: str = "bf16", *, variant: str = "split", varlen: bool = False,
              tma: bool = False, config=None) -> list[KernelSpec]:
    """The backward's main kernels at `config` (default: the op's for the arch and variant): split gives
    [`_attn_bwd_dkdv`, `_attn_bwd_dq`] (streaming through tensor descriptors with tma), fused gives
    [`_attn_bwd`] (pointers only)."""
    if variant == "fused" and tma:
        raise ValueError("tma: the fused backward has no tensor-descriptor path")
    cfg = config or bwd_config(arch, head_dim, dtype, variant=variant, varlen=varlen, tma=tma)
    flags = {**_flags(head_dim, dtype, varlen), "LSE_LO": dtype == "fp32"}
    tail = f"{' varlen' if varlen else ''} {dtype} d{head_dim} {arch}"
    if variant == "fused":
        const = {**flags, "BLOCK_M1": cfg.block_m1, "BLOCK_N1": cfg.block_n1, "BLOCK_M2": cfg.block_m2,
                 "BLOCK_N2": cfg.block_n2}
        label = (f"bwd-fused{tail} {cfg.block_m1}/{cfg.block_n1}/{cfg.block_m2}/{cfg.block_n2} "
                 f"w{cfg.num_warps} s{cfg.num_stages}")
        return [_spec(BWD_MODULE, "_attn_bwd", dtype, const, cfg.num_warps, cfg.num_stages, label)]
    dq_warps, dq_stages = cfg.dq_launch
    flags["TMA"] = tma
    kind = "-tma" if tma else ""
    return [
        _spec(BWD_MODULE, "_attn_bwd_dkdv", dtype, {**flags, "BLOCK_M1": cfg.block_m1, "BLOCK_N1": cfg.block_n1},
              cfg.num_warps, cfg.num_stages,
              f"bwd-dkdv{kind}{tail} {cfg.block_m1}x{cfg.block_n1} w{cfg.num_warps} s{cfg.num_stages}"),
        _spec(BWD_MODULE, "_attn_bwd_dq", dtype, {**flags, "BLOCK_M2": cfg.block_m2, "BLOCK_N2": cfg.block_n2},
              dq_warps, dq_stages, f"bwd-dq{kind}{tail} {cfg.block_m2}x{cfg.block_n2} w{dq_warps} s{dq_stages}"),
    ]


def default_specs(arch: str, head_dims: Iterable[int] = CI_HEAD_DIMS, dtype: str = "bf16") -> list[KernelSpec]:
    """What CI holds to no spills per BLOCK_D bucket on `arch`: the forward and the split backward (the
    default) at every head dim given. The other variants (fused, TMA, varlen, the preprocess) are
    `ENTRIES` of the compile report, which the same CI run holds to no spills."""
    specs = []
    for d in head_dims:
        specs += [fwd_spec(arch, d, dtype), *bwd_specs(arch, d, dtype)]
    return specs


def fp32_specs(arch: str, head_dim: int = 16) -> list[KernelSpec]:
    """fp32 inputs (IEEE dots: FMA, no tensor cores) at a small head dim, so the fp32-only paths compile:
    the preprocess's fp64 split of the row statistic and the kernels' LSE_LO subtraction."""
    return [fwd_spec(arch, head_dim, "fp32"), *bwd_specs(arch, head_dim, "fp32"),
            preprocess_spec(head_dim, "fp32")]


# ----------------------------------------------------------------------------- the compile report's rows

def _params(head_dim: int, dtype: str, varlen: bool, tma: bool, variant: str | None = None) -> dict[str, Any]:
    params = {"head_dim": head_dim, "dtype": dtype, "causal": True, "varlen": varlen, "tma": tma, "seq": SEQ}
    return params if variant is None else {**params, "variant": variant}


def _fwd_entry(head_dim: int, varlen: bool = False, tma: bool = False, ci: bool = True,
               dtype: str = "bf16") -> ReportEntry:
    def build(arch: str):
        return fwd_spec(arch, head_dim, dtype, varlen=varlen, tma=tma), fwd_config(arch, head_dim, dtype,
                                                                                   varlen=varlen, tma=tma)

    return ReportEntry("attention.fwd", _params(head_dim, dtype, varlen, tma), build,
                       ("sm_90a",) if tma else tuple(CAPABILITIES), ci)


def _bwd_entries(head_dim: int, variant: str = "split", varlen: bool = False, tma: bool = False, ci: bool = True,
                 dtype: str = "bf16") -> list[ReportEntry]:
    """One entry per kernel of the variant (split: dk/dv, then dq; fused: one)."""
    def build(index: int):
        def spec_and_config(arch: str):
            spec = bwd_specs(arch, head_dim, dtype, variant=variant, varlen=varlen, tma=tma)[index]
            return spec, bwd_config(arch, head_dim, dtype, variant=variant, varlen=varlen, tma=tma)
        return spec_and_config

    n_kernels = 2 if variant == "split" else 1
    return [ReportEntry("attention.bwd", _params(head_dim, dtype, varlen, tma, variant), build(i),
                        ("sm_90a",) if tma else tuple(CAPABILITIES), ci) for i in range(n_kernels)]


def _pre_entry(head_dim: int, ci: bool = True, dtype: str = "bf16") -> ReportEntry:
    def build(arch: str):
        from pyscale.kernels import attention_bwd as k

        return preprocess_spec(head_dim, dtype), {"BLOCK_M": k.preprocess_block_m(head_dim), "num_warps": 4,
                                                  "num_stages": 1}

    return ReportEntry("attention.bwd_preprocess", {"head_dim": head_dim, "dtype": dtype}, build,
                       tuple(CAPABILITIES), ci)


# CI: d64 and d128 (the common head dims) and d256 (the largest tiles), varlen at d128, the TMA forward and
# split backward on sm_90a, the fused backward beside the split one; the rest is `report --full`.
ENTRIES: list[ReportEntry] = [
    _fwd_entry(64), _fwd_entry(64, varlen=True, ci=False), _fwd_entry(128), _fwd_entry(128, varlen=True),
    _fwd_entry(256),
    _fwd_entry(64, tma=True), _fwd_entry(64, varlen=True, tma=True, ci=False), _fwd_entry(128, tma=True),
    _fwd_entry(128, varlen=True, tma=True),
    _pre_entry(128), _pre_entry(64, ci=False),
    *_bwd_entries(64), *_bwd_entries(64, varlen=True, ci=False), *_bwd_entries(128),
    *_bwd_entries(128, varlen=True), *_bwd_entries(256),
    *_bwd_entries(64, "fused"), *_bwd_entries(128, "fused"), *_bwd_entries(128, "fused", varlen=True),
    *_bwd_entries(256, "fused", ci=False),
    *_bwd_entries(64, tma=True), *_bwd_entries(128, tma=True),
]
