"""What the compile report compiles: every Triton kernel at the configuration its op would choose.

Each op family has a module here (attention, gemm, moe, quantize) with `ENTRIES`, a list of
`ReportEntry`: the op ("attention.bwd"), the representative parameters, and a function giving, per
arch, the `KernelSpec` compiled as the JIT specialises aligned torch tensors (pointers and strides
divisible by 16) plus the op's config. The family's ahead-of-time tests compile the same specs, so CI
compiles each kernel once per arch and `python -m pyscale.testing.aot report` reads the AOT cache.

Adding a kernel is one entry: `ReportEntry("attention.bwd", {...}, lambda arch: (spec, config))`.
Entries with `ci=False` (autotune candidates, the full head-dim sweep) are compiled only by
`report --full` and slow tests.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyscale.testing.aot import DEFAULT_ARCHS, KernelSpec

FAMILIES = ("attention", "gemm", "moe", "quantize")
# The compute capability each arch name stands for, as the ops' config functions take it.
CAPABILITIES = {"sm_80": (8, 0), "sm_89": (8, 9), "sm_90a": (9, 0)}


@dataclass(frozen=True)
class ReportEntry:
    op: str  # "attention.fwd", "gemm_fp8.block", "moe.grouped_gemm", ...
    params: Mapping[str, Any]  # the representative problem: head_dim, dtype, causal, M, N, K, ...
    build: Callable[[str], tuple[KernelSpec, Mapping[str, Any]]]  # arch -> (spec, the op's config)
    archs: tuple[str, ...] = DEFAULT_ARCHS  # where the op runs this kernel (FP8: sm_89+, TMA: sm_90a)
    ci: bool = True  # in CI's compile set; False: `report --full` and slow tests only

    def spec(self, arch: str) -> KernelSpec:
        return self.build(arch)[0]

    def config(self, arch: str) -> dict[str, Any]:
        cfg = self.build(arch)[1]
        return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def family(name: str) -> list[ReportEntry]:
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}: got {name!r}")
    return list(importlib.import_module(f"pyscale.testing.aot_specs.{name}").ENTRIES)


def entries(families: Iterable[str] = FAMILIES, *, full: bool = False, op: str | None = None) -> list[ReportEntry]:
    """The entries of these families (CI's set unless `full`); `op` keeps ops equal to or under it
    ("attention" keeps attention.fwd and attention.bwd)."""
    out = [e for f in families for e in family(f) if full or e.ci]
    if op is not None:
        out = [e for e in out if e.op == op or e.op.startswith(op + ".")]
    return out


def specs_for(selected: Iterable[ReportEntry], arch: str) -> list[KernelSpec]:
    """The specs of the entries that run on `arch`, in order."""
    return [e.spec(arch) for e in selected if arch in e.archs]
