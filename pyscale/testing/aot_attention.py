"""KernelSpecs of the attention kernels as their launchers compile them, for `pyscale.testing.aot`.

Each spec is what the JIT builds for aligned torch tensors (pointers and the batch/sequence/head strides
divisible by 16, `divisible_by_16`) at the config the launcher picks on an arch without autotuning
(`fwd_config` / `bwd_config`), so a compile reports the registers, spills, shared memory and PTX that
would run. Signatures are read from the kernels' parameters, so they follow the kernels.

    from pyscale.testing import aot, aot_attention as specs
    aot.assert_compiles(specs.default_specs("sm_90a"), archs=("sm_90a",))
"""

from __future__ import annotations

from collections.abc import Iterable

from pyscale.testing.aot import ARCHS, KernelSpec

FWD_MODULE = "pyscale.kernels.attention"
BWD_MODULE = "pyscale.kernels.attention_bwd"
# Every supported head dim, and the CI subset: one per BLOCK_D bucket (16, 32, 64, 128, 256) plus 80 and 96.
ALL_HEAD_DIMS = tuple(range(8, 257, 8))
CI_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
BWD_VARIANTS = ("split", "fused")

_FP32_POINTERS = {"LSE", "DELTA", "DLSE"}
_I32_POINTERS = {"cu_seqlens_q", "cu_seqlens_k"}


def capability(arch: str) -> tuple[int, int]:
    """(major, minor) of an arch name in `pyscale.testing.aot.ARCHS`, e.g. sm_90a -> (9, 0)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    cc = ARCHS[arch][0]
    return (cc // 10, cc % 10)


def _spec(module: str, name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int,
          label: str) -> KernelSpec:
    """A spec for kernel `name`: tensors of `dtype` except the fp32 row statistics and int32 cu_seqlens,
    ints i32, sm_scale fp32; pointers and tensor strides (not the row-statistic strides, which can be 1)
    divisible by 16."""
    import importlib
    import inspect

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
    missing = set(constexprs) ^ {n for n, t in signature.items() if t == "constexpr"}
    if missing:
        raise ValueError(f"constexprs of {name} do not match its parameters: {sorted(missing)}")
    return KernelSpec(f"{module}:{name}", signature, dict(constexprs), num_warps, num_stages, label, tuple(aligned))


def _flags(head_dim: int, dtype: str, varlen: bool) -> dict:
    from pyscale.kernels import attention as k

    return {"HEAD_DIM": head_dim, "BLOCK_D": k.block_d(head_dim), "VARLEN": varlen, "UPCAST": False,
            "ROUND_BF16": False, "PRECISION": "ieee" if dtype == "fp32" else "tf32"}


def fwd_spec(arch: str, head_dim: int, dtype: str = "bf16", *, varlen: bool = False, tma: bool = False,
             config=None) -> KernelSpec:
    """The forward `_attn_fwd` at `config` (default: `fwd_config` for the arch)."""
    from pyscale.kernels import attention as k

    cfg = config or k.fwd_config(head_dim, capability(arch))
    const = {**_flags(head_dim, dtype, varlen), "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "TMA": tma}
    label = (f"fwd{'-tma' if tma else ''}{' varlen' if varlen else ''} {dtype} d{head_dim} {arch} "
             f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}")
    return _spec(FWD_MODULE, "_attn_fwd", dtype, const, cfg.num_warps, cfg.num_stages, label)


def preprocess_spec(head_dim: int, dtype: str = "bf16", *, has_dlse: bool = False, varlen: bool = False) -> KernelSpec:
    """The backward's preprocess (delta = rowsum(out * d_out) - d_lse); 4 warps, no loop to pipeline."""
    from pyscale.kernels import attention_bwd as k

    const = {"HEAD_DIM": head_dim, "BLOCK_D": k.block_d(head_dim), "BLOCK_M": k.preprocess_block_m(head_dim),
             "VARLEN": varlen, "HAS_DLSE": has_dlse, "LSE_LO": dtype == "fp32"}
    label = f"bwd-pre {dtype} d{head_dim}{' dlse' if has_dlse else ''}{' varlen' if varlen else ''}"
    return _spec(BWD_MODULE, "_attn_bwd_preprocess", dtype, const, 4, 1, label)


def bwd_specs(arch: str, head_dim: int, dtype: str = "bf16", *, variant: str = "split", varlen: bool = False,
              tma: bool = False, config=None) -> list[KernelSpec]:
    """The backward's main kernels at `config` (default: `bwd_config` for the arch and variant): split gives
    [`_attn_bwd_dkdv`, `_attn_bwd_dq`] (streaming through tensor descriptors with tma), fused gives
    [`_attn_bwd`]."""
    from pyscale.kernels import attention_bwd as k

    cfg = config or k.bwd_config(head_dim, capability(arch), variant=variant)
    flags = {**_flags(head_dim, dtype, varlen), "LSE_LO": dtype == "fp32"}
    tail = f"{' varlen' if varlen else ''} {dtype} d{head_dim} {arch}"
    if variant == "fused":
        const = {**flags, "BLOCK_M1": cfg.block_m1, "BLOCK_N1": cfg.block_n1, "BLOCK_M2": cfg.block_m2,
                 "BLOCK_N2": cfg.block_n2}
        label = (f"bwd-fused{tail} {cfg.block_m1}/{cfg.block_n1}/{cfg.block_m2}/{cfg.block_n2} "
                 f"w{cfg.num_warps} s{cfg.num_stages}")
        return [_spec(BWD_MODULE, "_attn_bwd", dtype, const, cfg.num_warps, cfg.num_stages, label)]
    if variant != "split":
        raise ValueError(f"variant must be one of {', '.join(BWD_VARIANTS)}: got {variant!r}")
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
    """What CI holds to no spills on `arch`: the forward at every head dim given; the split backward (the
    default) at every head dim given; the fused backward, the TMA forward (sm_90+) and varlen at head dims
    64 and 128; the preprocess once."""
    head_dims = tuple(head_dims)
    specs = [fwd_spec(arch, d, dtype) for d in head_dims]
    for d in head_dims:
        specs += bwd_specs(arch, d, dtype)
    for d in (64, 128):
        if capability(arch)[0] >= 9:
            specs.append(fwd_spec(arch, d, dtype, tma=True))
        specs += bwd_specs(arch, d, dtype, variant="fused")
    specs.append(fwd_spec(arch, 128, dtype, varlen=True))
    specs += bwd_specs(arch, 128, dtype, varlen=True)
    specs.append(preprocess_spec(128, dtype))
    return specs


def fp32_specs(arch: str, head_dim: int = 16) -> list[KernelSpec]:
    """fp32 inputs (IEEE dots: FMA, no tensor cores) at a small head dim, so the fp32-only paths compile:
    the preprocess's fp64 split of the row statistic and the kernels' LSE_LO subtraction."""
    return [fwd_spec(arch, head_dim, "fp32"), *bwd_specs(arch, head_dim, "fp32"),
            preprocess_spec(head_dim, "fp32")]


def report_specs(arch: str, dtype: str = "bf16") -> list[KernelSpec]:
    """What the compile report lists for attention on `arch`: `default_specs` at head dims 64 and 128 (so
    the report and CI share compiles) plus, on sm_90+, the split backward through tensor descriptors and,
    everywhere, varlen at 64 too — every variant a GPU run would compare."""
    spec_list = default_specs(arch, head_dims=(64, 128), dtype=dtype)
    if capability(arch)[0] >= 9:
        for d in (64, 128):
            spec_list += bwd_specs(arch, d, dtype, tma=True)
    spec_list.append(fwd_spec(arch, 64, dtype, varlen=True))
    spec_list += bwd_specs(arch, 64, dtype, varlen=True)
    return spec_list
