"""GPU spec table: peak FLOP/s per dtype, memory, bandwidth, power, each number with its source.

Layer 1: standard library only. torch is imported lazily, inside `current_device_spec`.

Conventions (every entry follows them; the tests hold them):

* Units are SI: FLOP/s (int8 in OP/s), bytes/s, bytes, W.
* Peaks are DENSE tensor-core figures with FP32 ACCUMULATE. NVIDIA datasheets often print only the
  2:4-sparse figure ("with sparsity"); the dense figure is half of it and the comment says so.
  GeForce cards run fp16/bf16/fp8 with fp32 accumulate at half their fp16-accumulate rate; that
  halved figure is the one stored. "fp32" is the non-tensor (CUDA core) rate; a matmul in fp32 that
  TF32 may serve is "tf32". int8 is tensor-core int8 with int32 accumulate.
* A format a GPU cannot run is `None`, never 0 (fp8 on Ampere). A field that NVIDIA does not
  publish and that no measurement we trust gives is `None` with a comment saying so.
* Memory capacity: NVIDIA's "80GB" on HBM/GDDR parts is binary (80 GiB of DRAM;
  `torch.cuda.get_device_properties().total_memory` reports a little less, the rest being
  reserved), so capacities are stored as N * 2**30. Bandwidth "GB/s" and "TB/s" are decimal.
* Shared memory per block is the opt-in maximum from the CUDA C++ Programming Guide, "Technical
  Specifications per Compute Capability" (it depends only on the compute capability).

Lookup: `lookup(torch.cuda.get_device_name())`. A name that is not in the table gives an
`UnknownGPU` with a reason, never the figures of a similar GPU (an "RTX 4070 Ti" is not an
"RTX 4070"). Register your own with `register(GPUSpec(...))` or `register_from_json(path)`.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DTYPES",
    "GPUSpec",
    "UnknownGPU",
    "all_specs",
    "current_device_spec",
    "lookup",
    "peak_flops",
    "register",
    "register_from_json",
    "spec_from_dict",
    "spec_to_dict",
]

#: The keys of `GPUSpec.peak_flops_per_s`, exactly.
DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")

_T = 1e12  # TFLOP/s -> FLOP/s
_GIB = 2**30
_KIB = 2**10
_MIB = 2**20


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model. See the module docstring for units and conventions."""

    name: str
    match: tuple[str, ...]
    architecture: str
    compute_capability: tuple[int, int]
    peak_flops_per_s: Mapping[str, float | None] = field(hash=False)
    memory_bandwidth_bytes_per_s: float
    memory_bytes: int
    tdp_w: float
    sm_count: int
    max_shared_memory_per_block_bytes: int
    l2_cache_bytes: int | None
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string: got {self.name!r}")
        if isinstance(self.match, str):
            raise ValueError(f"match must be a sequence of patterns, not a string: got {self.match!r}")
        object.__setattr__(self, "match", tuple(str(m).lower() for m in self.match))
        cc = tuple(self.compute_capability)
        if len(cc) != 2 or not all(isinstance(c, int) and c >= 0 for c in cc):
            raise ValueError(f"compute_capability must be (major, minor) ints: got {self.compute_capability!r}")
        object.__setattr__(self, "compute_capability", cc)

        peaks = dict(self.peak_flops_per_s)
        if set(peaks) != set(DTYPES):
            raise ValueError(
                f"peak_flops_per_s must have exactly the keys {list(DTYPES)}: got {sorted(peaks)}"
            )
        for key, value in peaks.items():
            if value is not None:
                _check_positive(f"peak_flops_per_s[{key!r}]", value)
                peaks[key] = float(value)
        # Read-only views: a spec is shared by every caller of lookup().
        object.__setattr__(self, "peak_flops_per_s", types.MappingProxyType({k: peaks[k] for k in DTYPES}))
        object.__setattr__(self, "sources", types.MappingProxyType(dict(self.sources)))

        for attr in ("memory_bandwidth_bytes_per_s", "memory_bytes", "tdp_w", "sm_count",
                     "max_shared_memory_per_block_bytes"):
            _check_positive(attr, getattr(self, attr))
        # None where unpublished (see B200); never 0.
        if self.l2_cache_bytes is not None:
            _check_positive("l2_cache_bytes", self.l2_cache_bytes)


@dataclass(frozen=True)
class UnknownGPU:
    """A device with no spec in the table: an explicit "unknown", never guessed figures."""

    name: str
    reason: str
    known: bool = False


def _check_positive(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number (None where unavailable, never 0): got {value!r}")


# --------------------------------------------------------------------------------------------
# Sources. Short names for the documents cited field by field below.
# --------------------------------------------------------------------------------------------
_CUDA_GUIDE = "CUDA C++ Programming Guide, Technical Specifications per Compute Capability"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet, specifications table"
_A100_WP = "NVIDIA A100 Tensor Core GPU Architecture whitepaper, Table 1 (A100 SXM4)"
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet, specifications table"
_H100_WP = "NVIDIA H100 Tensor Core GPU Architecture whitepaper, Table (H100 SXM5 / PCIe vs A100)"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet, specifications table"
_HGX_B200 = "NVIDIA HGX platform page, 'Individual Blackwell GPU Specifications', HGX B200 column"
_L4_DS = "NVIDIA L4 Tensor Core GPU datasheet, specifications table"
_L40S_DS = "NVIDIA L40S GPU datasheet, specifications table"
_ADA_WP = "NVIDIA Ada GPU Architecture whitepaper, Appendix A, GeForce RTX 4090 table"
_RTX4070 = "NVIDIA GeForce RTX 4070 family product page, full specs"

_SPARSE_HALF = " (datasheet quotes the 2:4-sparse figure; dense = half)"


def _peaks(fp32: float, tf32: float | None, bf16: float | None, fp16: float | None,
           fp8: float | None, int8: float | None) -> dict[str, float | None]:
    """Peaks in TFLOP/s (TOP/s for int8) -> FLOP/s, keyed as `DTYPES`."""
    raw = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16, "fp8": fp8, "int8": int8}
    return {k: (None if v is None else v * _T) for k, v in raw.items()}


# Opt-in shared memory per block by compute capability (CUDA guide table): sm_80 163 KB,
# sm_89 99 KB, sm_90 and sm_100 227 KB.
_SMEM_SM80 = 163 * _KIB
_SMEM_SM89 = 99 * _KIB
_SMEM_SM90 = 227 * _KIB
_SMEM_SM100 = 227 * _KIB


def _a100(name: str, match: tuple[str, ...], bandwidth_gb_s: float, tdp_w: float, form: str) -> GPUSpec:
    # Every A100 variant has the same SMs, clocks and tensor rates; memory and power differ.
    return GPUSpec(
        name=name,
        match=match,
        architecture="sm_80",
        compute_capability=(8, 0),
        # A100 datasheet: FP32 19.5 TF; TF32 156 | 312*; BF16 312 | 624*; FP16 312 | 624*;
        # INT8 624 | 1248* TOPS (* = with sparsity). No FP8 on Ampere -> None.
        peak_flops_per_s=_peaks(fp32=19.5, tf32=156, bf16=312, fp16=312, fp8=None, int8=624),
        memory_bandwidth_bytes_per_s=bandwidth_gb_s * 1e9,
        memory_bytes=(80 if "80GB" in name else 40) * _GIB,
        tdp_w=tdp_w,
        sm_count=108,  # A100 whitepaper, Table 1: 108 SMs
        max_shared_memory_per_block_bytes=_SMEM_SM80,
        l2_cache_bytes=40 * _MIB,  # A100 whitepaper, Table 1: 40 MB L2
        sources={
            "peak_flops_per_s": _A100_DS + " (dense column; FP8 not supported)",
            "memory_bandwidth_bytes_per_s": f"{_A100_DS}, {form} column",
            "memory_bytes": f"{_A100_DS}, {form} column",
            "tdp_w": f"{_A100_DS}, {form} column (max TDP)",
            "sm_count": _A100_WP,
            "l2_cache_bytes": _A100_WP,
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 8.0: 163 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    )


_BUILTIN_SPECS: tuple[GPUSpec, ...] = (
    # ---------------------------------------------------------------- Ampere (sm_80)
    # A100 datasheet: SXM4 80GB 2,039 GB/s 400 W; SXM4 40GB 1,555 GB/s 400 W;
    # PCIe 80GB 1,935 GB/s 300 W; PCIe 40GB 1,555 GB/s 250 W. Bandwidth differs between the
    # 40 GB and 80 GB parts, hence one entry each.
    _a100("A100 SXM4 80GB", ("a100-sxm4-80gb", "a100 sxm4 80gb", "a100 sxm 80gb"), 2039, 400, "80GB SXM"),
    _a100("A100 SXM4 40GB", ("a100-sxm4-40gb", "a100 sxm4 40gb", "a100 sxm 40gb"), 1555, 400, "40GB SXM"),
    _a100("A100 PCIe 80GB", ("a100 80gb pcie", "a100-pcie-80gb", "a100 pcie 80gb"), 1935, 300, "80GB PCIe"),
    _a100("A100 PCIe 40GB", ("a100-pcie-40gb", "a100 pcie 40gb", "a100 40gb pcie"), 1555, 250, "40GB PCIe"),
    # ---------------------------------------------------------------- Hopper (sm_90)
    GPUSpec(
        name="H100 SXM",
        match=("h100 80gb hbm3", "h100 sxm", "h100 sxm5", "h100 sxm5 80gb"),
        architecture="sm_90",
        compute_capability=(9, 0),
        # H100 datasheet, SXM column: FP32 67 TF; TF32 989*; BF16 1,979*; FP16 1,979*; FP8 3,958*;
        # INT8 3,958* TOPS; all tensor figures with sparsity -> dense = half.
        peak_flops_per_s=_peaks(fp32=67, tf32=989 / 2, bf16=1979 / 2, fp16=1979 / 2, fp8=3958 / 2,
                                int8=3958 / 2),
        memory_bandwidth_bytes_per_s=3.35e12,  # H100 datasheet, SXM: 3.35 TB/s
        memory_bytes=80 * _GIB,  # H100 datasheet, SXM: 80 GB
        tdp_w=700,  # H100 datasheet, SXM: up to 700 W (configurable)
        sm_count=132,  # H100 whitepaper: H100 SXM5 has 132 SMs
        max_shared_memory_per_block_bytes=_SMEM_SM90,
        l2_cache_bytes=50 * _MIB,  # H100 whitepaper: 50 MB L2
        sources={
            "peak_flops_per_s": _H100_DS + ", SXM column" + _SPARSE_HALF,
            "memory_bandwidth_bytes_per_s": _H100_DS + ", SXM column",
            "memory_bytes": _H100_DS + ", SXM column",
            "tdp_w": _H100_DS + ", SXM column (max TDP, configurable)",
            "sm_count": _H100_WP,
            "l2_cache_bytes": _H100_WP,
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 9.0: 227 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    GPUSpec(
        name="H100 PCIe",
        match=("h100 pcie", "h100 80gb pcie", "h100 pcie 80gb"),
        architecture="sm_90",
        compute_capability=(9, 0),
        # H100 datasheet, PCIe column: FP32 51 TF; TF32 756*; BF16 1,513*; FP16 1,513*; FP8 3,026*;
        # INT8 3,026* TOPS (* with sparsity -> dense = half).
        peak_flops_per_s=_peaks(fp32=51, tf32=756 / 2, bf16=1513 / 2, fp16=1513 / 2, fp8=3026 / 2,
                                int8=3026 / 2),
        memory_bandwidth_bytes_per_s=2.0e12,  # H100 datasheet, PCIe: 2 TB/s
        memory_bytes=80 * _GIB,  # H100 datasheet, PCIe: 80 GB
        tdp_w=350,  # H100 datasheet, PCIe: 300-350 W (configurable); the maximum is stored
        sm_count=114,  # H100 whitepaper: H100 PCIe has 114 SMs
        max_shared_memory_per_block_bytes=_SMEM_SM90,
        l2_cache_bytes=50 * _MIB,  # H100 whitepaper: 50 MB L2
        sources={
            "peak_flops_per_s": _H100_DS + ", PCIe column" + _SPARSE_HALF,
            "memory_bandwidth_bytes_per_s": _H100_DS + ", PCIe column",
            "memory_bytes": _H100_DS + ", PCIe column",
            "tdp_w": _H100_DS + ", PCIe column (300-350 W; max stored)",
            "sm_count": _H100_WP,
            "l2_cache_bytes": _H100_WP,
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 9.0: 227 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    GPUSpec(
        name="H200 SXM",
        match=("h200", "h200 sxm", "h200 141gb hbm3e"),
        architecture="sm_90",
        compute_capability=(9, 0),
        # H200 datasheet, SXM column: same tensor rates as H100 SXM (same GH100 die and clocks):
        # FP32 67 TF; TF32 989*; BF16 1,979*; FP16 1,979*; FP8 3,958*; INT8 3,958* TOPS (* sparse).
        peak_flops_per_s=_peaks(fp32=67, tf32=989 / 2, bf16=1979 / 2, fp16=1979 / 2, fp8=3958 / 2,
                                int8=3958 / 2),
        memory_bandwidth_bytes_per_s=4.8e12,  # H200 datasheet, SXM: 4.8 TB/s
        memory_bytes=141 * _GIB,  # H200 datasheet, SXM: 141 GB HBM3e
        tdp_w=700,  # H200 datasheet, SXM: up to 700 W (configurable)
        sm_count=132,  # same GH100 configuration as H100 SXM (H100 whitepaper: 132 SMs)
        max_shared_memory_per_block_bytes=_SMEM_SM90,
        l2_cache_bytes=50 * _MIB,  # same GH100 configuration as H100 SXM (H100 whitepaper: 50 MB)
        sources={
            "peak_flops_per_s": _H200_DS + ", SXM column" + _SPARSE_HALF,
            "memory_bandwidth_bytes_per_s": _H200_DS + ", SXM column",
            "memory_bytes": _H200_DS + ", SXM column",
            "tdp_w": _H200_DS + ", SXM column (max TDP, configurable)",
            "sm_count": _H100_WP + " (H200 uses the H100 SXM5 GH100 configuration)",
            "l2_cache_bytes": _H100_WP + " (H200 uses the H100 SXM5 GH100 configuration)",
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 9.0: 227 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    # ---------------------------------------------------------------- Blackwell (sm_100)
    GPUSpec(
        name="B200",
        match=("b200", "b200 sxm"),
        architecture="sm_100",
        compute_capability=(10, 0),
        # HGX B200 per-GPU figures (at up to 1,000 W): FP32 75 TF; TF32 2.2 PF*; FP16/BF16 4.5 PF*;
        # FP8 9 PF*; INT8 9 POPS* (* with sparsity -> dense = half). TF32 2.2 is NVIDIA's rounding
        # of 2.25, so tf32 is 2.2% below bf16/2 here.
        peak_flops_per_s=_peaks(fp32=75, tf32=2200 / 2, bf16=4500 / 2, fp16=4500 / 2, fp8=9000 / 2,
                                int8=9000 / 2),
        memory_bandwidth_bytes_per_s=7.7e12,  # HGX B200 per GPU: 7.7 TB/s
        memory_bytes=180 * _GIB,  # HGX B200 per GPU: 180 GB HBM3e
        tdp_w=1000,  # HGX B200: configurable up to 1,000 W
        # NVIDIA publishes no SM count for B200. 148 (74 enabled per die x 2) is what the CUDA
        # device query reports, as measured by Chips and Cheese, "Nvidia's B200: Keeping the CUDA
        # Juggernaut Rolling".
        sm_count=148,
        max_shared_memory_per_block_bytes=_SMEM_SM100,
        # Unsourced: NVIDIA publishes no L2 size for B200 and third-party figures disagree
        # (65.5 / 96 / 126 MB); None rather than a guess.
        l2_cache_bytes=None,
        sources={
            "peak_flops_per_s": _HGX_B200 + _SPARSE_HALF,
            "memory_bandwidth_bytes_per_s": _HGX_B200,
            "memory_bytes": _HGX_B200,
            "tdp_w": _HGX_B200 + " (configurable up to 1,000 W)",
            "sm_count": "Chips and Cheese, 'Nvidia's B200: Keeping the CUDA Juggernaut Rolling' "
                        "(device query; not in NVIDIA documents)",
            "l2_cache_bytes": "unavailable: not published by NVIDIA",
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 10.0: 227 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    # ---------------------------------------------------------------- Ada Lovelace (sm_89)
    GPUSpec(
        name="L4",
        match=("l4",),
        architecture="sm_89",
        compute_capability=(8, 9),
        # L4 datasheet: FP32 30.3 TF; TF32 120*; FP16 242*; BF16 242*; FP8 485*; INT8 485* TOPS
        # (* with sparsity -> dense = half). Datacenter Ada runs fp32-accumulate at full rate.
        peak_flops_per_s=_peaks(fp32=30.3, tf32=120 / 2, bf16=242 / 2, fp16=242 / 2, fp8=485 / 2,
                                int8=485 / 2),
        memory_bandwidth_bytes_per_s=300e9,  # L4 datasheet: 300 GB/s
        memory_bytes=24 * _GIB,  # L4 datasheet: 24 GB GDDR6
        tdp_w=72,  # L4 datasheet: max thermal design power 72 W
        # Not in the L4 datasheet: 58 SMs / 48 MB L2 are the AD104 configuration reported by the
        # CUDA device query (TechPowerUp GPU database, NVIDIA L4 entry).
        sm_count=58,
        max_shared_memory_per_block_bytes=_SMEM_SM89,
        l2_cache_bytes=48 * _MIB,
        sources={
            "peak_flops_per_s": _L4_DS + _SPARSE_HALF,
            "memory_bandwidth_bytes_per_s": _L4_DS,
            "memory_bytes": _L4_DS,
            "tdp_w": _L4_DS,
            "sm_count": "TechPowerUp GPU database, NVIDIA L4 (not in NVIDIA's datasheet)",
            "l2_cache_bytes": "TechPowerUp GPU database, NVIDIA L4 (not in NVIDIA's datasheet)",
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 8.9: 99 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    GPUSpec(
        name="L40S",
        match=("l40s",),
        architecture="sm_89",
        compute_capability=(8, 9),
        # L40S datasheet gives dense and sparse: FP32 91.6 TF; TF32 183 | 366*; BF16 362.05 | 733*;
        # FP16 362.05 | 733*; FP8 733 | 1,466*; INT8 733 | 1,466* TOPS. The datasheet's dense FP8
        # (733) is 1.2% above 2 x BF16 (724.1): its own rounding, kept as printed.
        peak_flops_per_s=_peaks(fp32=91.6, tf32=183, bf16=362.05, fp16=362.05, fp8=733, int8=733),
        memory_bandwidth_bytes_per_s=864e9,  # L40S datasheet: 864 GB/s
        memory_bytes=48 * _GIB,  # L40S datasheet: 48 GB GDDR6
        tdp_w=350,  # L40S datasheet: max power consumption 350 W
        # L40S datasheet: 18,176 CUDA cores; an Ada SM has 128 (Ada whitepaper) -> 142 SMs.
        sm_count=142,
        max_shared_memory_per_block_bytes=_SMEM_SM89,
        # Not in the L40S datasheet: 96 MB is the full AD102 L2 (Ada whitepaper), which the L40S
        # keeps per the CUDA device query (TechPowerUp GPU database, NVIDIA L40S).
        l2_cache_bytes=96 * _MIB,
        sources={
            "peak_flops_per_s": _L40S_DS + " (dense figures as printed)",
            "memory_bandwidth_bytes_per_s": _L40S_DS,
            "memory_bytes": _L40S_DS,
            "tdp_w": _L40S_DS,
            "sm_count": _L40S_DS + ": 18,176 CUDA cores / 128 per SM (Ada whitepaper)",
            "l2_cache_bytes": "TechPowerUp GPU database, NVIDIA L40S (full AD102 L2, Ada whitepaper)",
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 8.9: 99 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    GPUSpec(
        name="GeForce RTX 4090",
        match=("rtx 4090",),
        architecture="sm_89",
        compute_capability=(8, 9),
        # Ada whitepaper, RTX 4090 table (dense | sparse): FP32 82.6 TF; TF32 82.6 | 165.2;
        # FP16 and BF16 with FP32 accumulate 165.2 | 330.4 (FP16 accumulate is 330.3, not used);
        # FP8 with FP32 accumulate 330.3 | 660.6; INT8 660.6 | 1,321.2 TOPS.
        peak_flops_per_s=_peaks(fp32=82.6, tf32=82.6, bf16=165.2, fp16=165.2, fp8=330.3, int8=660.6),
        memory_bandwidth_bytes_per_s=1008e9,  # Ada whitepaper, RTX 4090: 1,008 GB/s
        memory_bytes=24 * _GIB,  # Ada whitepaper, RTX 4090: 24 GB GDDR6X
        tdp_w=450,  # Ada whitepaper, RTX 4090: total graphics power 450 W
        sm_count=128,  # Ada whitepaper, RTX 4090: 128 SMs
        max_shared_memory_per_block_bytes=_SMEM_SM89,
        l2_cache_bytes=72 * _MIB,  # Ada whitepaper, RTX 4090: 73,728 KB L2
        sources={
            "peak_flops_per_s": _ADA_WP + " (dense, FP32-accumulate columns)",
            "memory_bandwidth_bytes_per_s": _ADA_WP,
            "memory_bytes": _ADA_WP,
            "tdp_w": _ADA_WP + " (total graphics power)",
            "sm_count": _ADA_WP,
            "l2_cache_bytes": _ADA_WP,
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 8.9: 99 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
    # RTX 4070: the GPU of "Understanding GEMM Performance and Energy on NVIDIA Ada Lovelace"
    # (Liu & Halim, arXiv:2411.16954). NVIDIA's product page gives cores, clock, memory and power
    # but only "29 shader TFLOPS" and "466 AI TOPS" for compute, so the tensor peaks are DERIVED:
    # per-SM-per-clock rates of the Ada whitepaper's RTX 4090 table (165.2e12 / (128 SM x 2.52 GHz)
    # = 512 FLOP/clk/SM for FP16/BF16 with FP32 accumulate; 2,048 for INT8) x 46 SMs x 2.475 GHz.
    # Check: 46 x 2,048 x 2 (sparse) x 2.475 GHz = 466 TOPS, NVIDIA's "AI TOPS" (sparse FP8 with
    # FP16 accumulate, the same rate as INT8).
    GPUSpec(
        name="GeForce RTX 4070",
        match=("rtx 4070",),
        architecture="sm_89",
        compute_capability=(8, 9),
        peak_flops_per_s=_peaks(
            fp32=5888 * 2 * 2.475e9 / _T,  # 5,888 CUDA cores x 2 FLOP (FMA) x 2.475 GHz = 29.1 TF
            tf32=46 * 256 * 2.475e9 / _T,  # half the FP16/FP32-acc rate, as on the RTX 4090
            bf16=46 * 512 * 2.475e9 / _T,  # 58.3 TF with FP32 accumulate
            fp16=46 * 512 * 2.475e9 / _T,
            fp8=46 * 1024 * 2.475e9 / _T,  # 116.6 TF with FP32 accumulate
            int8=46 * 2048 * 2.475e9 / _T,  # 233.1 TOPS
        ),
        memory_bandwidth_bytes_per_s=21e9 * 192 / 8,  # product page: 21 Gbps x 192-bit = 504 GB/s
        memory_bytes=12 * _GIB,  # product page: 12 GB GDDR6X
        tdp_w=200,  # product page: total graphics power 200 W
        sm_count=46,  # product page: 5,888 CUDA cores / 128 per Ada SM (Ada whitepaper)
        max_shared_memory_per_block_bytes=_SMEM_SM89,
        # Not on NVIDIA's product page: 36 MB (of AD104's 48 MB) is the CUDA device query figure
        # (TechPowerUp GPU database, GeForce RTX 4070).
        l2_cache_bytes=36 * _MIB,
        sources={
            "peak_flops_per_s": "derived: " + _ADA_WP + " per-SM rates x 46 SMs x 2.475 GHz boost ("
                                + _RTX4070 + "); cross-checked against its 466 AI TOPS",
            "memory_bandwidth_bytes_per_s": _RTX4070 + " (21 Gbps, 192-bit)",
            "memory_bytes": _RTX4070,
            "tdp_w": _RTX4070 + " (total graphics power)",
            "sm_count": _RTX4070 + ": 5,888 CUDA cores / 128 per SM (Ada whitepaper)",
            "l2_cache_bytes": "TechPowerUp GPU database, GeForce RTX 4070 (not on NVIDIA's page)",
            "max_shared_memory_per_block_bytes": _CUDA_GUIDE + ", CC 8.9: 99 KB",
            "compute_capability": _CUDA_GUIDE,
        },
    ),
)

# User-registered specs, by lower-cased name; they take precedence over the built-in table.
_USER_SPECS: dict[str, GPUSpec] = {}

# Words that vary between drivers and tools but never tell two GPUs apart.
_VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla"})


def _normalize(name: str) -> str:
    words = re.split(r"[\s\-_]+", name.strip().lower())
    return " ".join(w for w in words if w and w not in _VENDOR_WORDS)


def _match_score(pattern: str, device: str) -> int | None:
    """Specificity of `pattern` for the normalised `device`, or None if it does not match.

    A pattern matches when it equals the whole normalised name, so near neighbours with other
    figures ("rtx 4070 ti", "h100 nvl", "rtx 4090 laptop gpu") stay unknown. A pattern ending in
    "*" is a prefix match, for users who want a looser rule; exact matches outrank prefixes.
    """
    if pattern.endswith("*"):
        prefix = _normalize(pattern[:-1])
        return len(prefix) if prefix and device.startswith(prefix) else None
    norm = _normalize(pattern)
    return 10_000 + len(norm) if norm and norm == device else None


def all_specs() -> list[GPUSpec]:
    """Every spec, user-registered first, then the built-in table (minus ones a user replaced)."""
    shadowed = set(_USER_SPECS)
    # Newest registration first, so it wins ties in lookup().
    user = list(reversed(_USER_SPECS.values()))
    return [*user, *(s for s in _BUILTIN_SPECS if s.name.lower() not in shadowed)]


def matching_specs(device_name: str) -> list[GPUSpec]:
    """Every spec whose name or patterns match `device_name` (as `lookup` matches), most specific first.
    A name that maps to one row has exactly one; `lookup` picks the first."""
    if not isinstance(device_name, str):
        raise ValueError(f"device_name must be a string: got {type(device_name).__name__}")
    device = _normalize(device_name)
    scored: dict[str, tuple[int, GPUSpec]] = {}
    for spec in all_specs():
        for pattern in (*spec.match, spec.name.lower()):
            score = _match_score(pattern, device)
            if score is not None and (spec.name not in scored or score > scored[spec.name][0]):
                scored[spec.name] = (score, spec)
    return [spec for _, spec in sorted(scored.values(), key=lambda item: -item[0])]


def lookup(device_name: str) -> GPUSpec | UnknownGPU:
    """The spec for a device name as `torch.cuda.get_device_name()` reports it.

    Case-insensitive; '-', '_' and spaces are equivalent and "NVIDIA"/"GeForce"/"Tesla" are
    ignored. A spec's canonical name also matches. The most specific match wins; on a tie a
    user-registered spec wins over a built-in one.
    """
    if not isinstance(device_name, str):
        raise ValueError(f"device_name must be a string: got {type(device_name).__name__}")
    device = _normalize(device_name)
    best: tuple[int, GPUSpec] | None = None
    for spec in all_specs():  # user specs come first, so '>' keeps them on ties
        for pattern in (*spec.match, spec.name.lower()):
            score = _match_score(pattern, device)
            if score is not None and (best is None or score > best[0]):
                best = (score, spec)
    if best is not None:
        return best[1]
    return UnknownGPU(
        name=device_name,
        reason=(f"no spec for {device_name!r} in pyscale.hw; register one with "
                "pyscale.hw.register(GPUSpec(...)) or pyscale.hw.register_from_json(path)"),
    )


def register(spec: GPUSpec, *, replace: bool = False) -> None:
    """Add a spec; it takes precedence over the built-in table in `lookup`.

    A name already in the table (built-in or registered, case-insensitive) raises ValueError
    unless `replace=True`, which shadows the existing entry.
    """
    if not isinstance(spec, GPUSpec):
        raise ValueError(f"spec must be a GPUSpec: got {type(spec).__name__}")
    key = spec.name.lower()
    taken = key in _USER_SPECS or any(s.name.lower() == key for s in _BUILTIN_SPECS)
    if taken and not replace:
        raise ValueError(f"a GPU spec named {spec.name!r} is already registered; pass replace=True to override it")
    _USER_SPECS.pop(key, None)  # re-insert so the newest registration is searched first
    _USER_SPECS[key] = spec


def _unregister(name: str) -> None:
    """Drop a user-registered spec (for tests)."""
    _USER_SPECS.pop(name.lower(), None)


def spec_from_dict(data: Mapping[str, Any]) -> GPUSpec:
    """Build a spec from a dict with `GPUSpec`'s field names (what `spec_to_dict` writes).

    Peaks may be given as "peak_flops_per_s" (FLOP/s) or, for convenience, "peak_tflops"
    (TFLOP/s, TOP/s for int8); not both. `sources` is optional; a "known" key is ignored.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"each spec must be a JSON object: got {type(data).__name__}")
    d = {k: v for k, v in data.items() if k != "known"}
    if "peak_tflops" in d:
        if "peak_flops_per_s" in d:
            raise ValueError(f"spec {d.get('name')!r}: give peak_flops_per_s or peak_tflops, not both")
        tflops = d.pop("peak_tflops")
        if not isinstance(tflops, Mapping):
            raise ValueError(f"spec {d.get('name')!r}: peak_tflops must be an object")
        d["peak_flops_per_s"] = {k: (None if v is None else _scaled(k, v)) for k, v in tflops.items()}
    known_fields = set(GPUSpec.__dataclass_fields__)
    unknown = sorted(set(d) - known_fields)
    if unknown:
        raise ValueError(f"spec {d.get('name')!r}: unknown field(s) {unknown}")
    missing = sorted(f for f in known_fields - set(d) if f != "sources")
    if missing:
        raise ValueError(f"spec {d.get('name')!r}: missing field(s) {missing}")
    d["match"] = tuple(d["match"]) if not isinstance(d["match"], str) else d["match"]
    d["compute_capability"] = tuple(d["compute_capability"])
    return GPUSpec(**d)


def _scaled(key: str, tflops: Any) -> float:
    _check_positive(f"peak_tflops[{key!r}]", tflops)
    return float(tflops) * _T


def register_from_json(path: str | os.PathLike[str], *, replace: bool = False) -> list[GPUSpec]:
    """Register every spec in a JSON file: a list of spec objects (see `spec_from_dict`).

    All specs are validated before any is registered, so a bad file registers nothing.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{os.fspath(path)}: expected a JSON list of GPU specs, got {type(data).__name__}")
    specs = [spec_from_dict(item) for item in data]
    names = [s.name.lower() for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{os.fspath(path)}: duplicate spec names in the file")
    if not replace:
        taken = {s.name.lower() for s in all_specs()}
        clash = [s.name for s in specs if s.name.lower() in taken]
        if clash:
            raise ValueError(f"GPU spec(s) {clash} already registered; pass replace=True to override")
    for spec in specs:
        register(spec, replace=replace)
    return specs


# Every accepted spelling of a dtype, after lower-casing and dropping a "torch." prefix.
_DTYPE_ALIASES: dict[str, str] = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "float8_e4m3fnuz": "fp8",
    "float8_e5m2fnuz": "fp8", "e4m3": "fp8", "e5m2": "fp8",
    "int8": "int8", "i8": "int8",
}


def _canonical_dtype(dtype: Any) -> str:
    # str(torch.bfloat16) == "torch.bfloat16": compared by name so torch is never imported.
    text = str(dtype).strip().lower()
    text = text.removeprefix("torch.")
    if text not in _DTYPE_ALIASES:
        raise ValueError(
            f"dtype must be one of {sorted(set(_DTYPE_ALIASES))} or the matching torch.dtype: got {dtype!r}"
        )
    return _DTYPE_ALIASES[text]


def peak_flops(spec: GPUSpec | UnknownGPU, dtype: Any) -> float | None:
    """Dense peak FLOP/s (OP/s for int8) of `spec` in `dtype`; None if unknown or unsupported.

    "fp32"/torch.float32 is the non-tensor rate; ask for "tf32" when TF32 tensor cores may serve
    an fp32 matmul. A bad dtype raises ValueError even for an unknown GPU.
    """
    key = _canonical_dtype(dtype)
    if isinstance(spec, UnknownGPU):
        return None
    if not isinstance(spec, GPUSpec):
        raise ValueError(f"spec must be a GPUSpec or UnknownGPU: got {type(spec).__name__}")
    return spec.peak_flops_per_s[key]


def spec_to_dict(spec: GPUSpec | UnknownGPU) -> dict[str, Any]:
    """A JSON-ready dict: `spec_from_dict` reads it back; {"known": False, ...} for UnknownGPU."""
    if isinstance(spec, UnknownGPU):
        return {"known": False, "name": spec.name, "reason": spec.reason}
    if not isinstance(spec, GPUSpec):
        raise ValueError(f"spec must be a GPUSpec or UnknownGPU: got {type(spec).__name__}")
    return {
        "known": True,
        "name": spec.name,
        "match": list(spec.match),
        "architecture": spec.architecture,
        "compute_capability": list(spec.compute_capability),
        "peak_flops_per_s": dict(spec.peak_flops_per_s),
        "memory_bandwidth_bytes_per_s": spec.memory_bandwidth_bytes_per_s,
        "memory_bytes": spec.memory_bytes,
        "tdp_w": spec.tdp_w,
        "sm_count": spec.sm_count,
        "max_shared_memory_per_block_bytes": spec.max_shared_memory_per_block_bytes,
        "l2_cache_bytes": spec.l2_cache_bytes,
        "sources": dict(spec.sources),
    }


def current_device_spec(index: int = 0) -> GPUSpec | UnknownGPU:
    """The spec of CUDA device `index`, or UnknownGPU saying why there is none.

    Imports torch here, not at module import. A table entry whose compute capability disagrees
    with the device's is not trusted (it would mean a name collision).
    """
    try:
        import torch
    except ImportError:
        return UnknownGPU(name="cpu", reason="torch is not installed, so no CUDA device can be queried")
    if not torch.cuda.is_available():
        return UnknownGPU(name="cpu", reason="no CUDA device: torch.cuda.is_available() is False")
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        return UnknownGPU(name=f"cuda:{index}", reason=f"no CUDA device {index}: {count} device(s) present")
    name = torch.cuda.get_device_name(index)
    spec = lookup(name)
    if isinstance(spec, GPUSpec):
        capability = tuple(torch.cuda.get_device_capability(index))
        if capability != spec.compute_capability:
            return UnknownGPU(
                name=name,
                reason=(f"{name!r} matched the spec {spec.name!r}, but the device reports compute "
                        f"capability {capability}, not {spec.compute_capability}; register a spec for it"),
            )
    return spec
