"""Synthetic measurements for the cost-model tests, written through a real `Store`.

Every number here is SYNTHETIC: a fictional GPU ("pyscale synthetic test GPU") with round-number
peaks, and "true" efficiencies and energies chosen only so the fits have something to recover. None
of them describes a real device.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pyscale import hw
from pyscale import store as st
from pyscale.costmodel.data import wave_efficiency
from pyscale.costmodel.runtime import roofline_time_s

SYNTH_GPU = "pyscale synthetic test GPU"
SYNTH_PEAK_BF16 = 1.0e14  # fictional
SYNTH_BANDWIDTH = 1.0e12  # fictional
SYNTH_SMS = 64  # fictional


@dataclass(frozen=True)
class Truth:
    eta_compute: float = 0.7
    eta_memory: float = 0.8
    t0_s: float = 5e-6
    wave_alpha: float = 0.6
    smooth_p: float = 4.0
    e_flop_j: float = 4e-13
    e_byte_j: float = 6e-11
    p0_w: float = 80.0
    time_noise: float = 0.03  # log-normal sigma
    energy_noise: float = 0.02


def synth_spec() -> hw.GPUSpec:
    return hw.GPUSpec(name=SYNTH_GPU, match=("pyscale synthetic test gpu",), architecture="synthetic",
                      compute_capability=(0, 0),
                      peak_flops_per_s={"fp32": None, "tf32": None, "bf16": SYNTH_PEAK_BF16, "fp16": None,
                                        "fp8": None, "int8": None},
                      memory_bandwidth_bytes_per_s=SYNTH_BANDWIDTH, memory_bytes=2**34, tdp_w=300.0,
                      sm_count=SYNTH_SMS, max_shared_memory_per_block_bytes=2**16, l2_cache_bytes=None,
                      sources={"all": "synthetic test fixture; not a real GPU"})


def gemm_shapes(seed: int = 0, n_shapes: int = 60) -> list[dict[str, int]]:
    """Random GEMM shapes from GEMV-like (memory-bound) to large (compute-bound), some with partial waves."""
    rng = np.random.default_rng(seed)
    ms = [1, 4, 16, 64, 200, 512, 1000, 2048, 4096]
    nks = [256, 640, 1024, 2048, 3000, 4096, 8192]
    pool = list(itertools.product(ms, nks, nks))
    pick = rng.choice(len(pool), size=n_shapes, replace=False)
    return [{"m": pool[i][0], "n": pool[i][1], "k": pool[i][2]} for i in pick]


def gemm_cost(shape: dict[str, int]) -> tuple[float, float]:
    m, n, k = shape["m"], shape["n"], shape["k"]
    return 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n)  # bf16: 2 bytes per element


def true_time_s(truth: Truth, flops, bytes_, tiles, *, peak: float, bandwidth: float, sms: int | None):
    w = wave_efficiency(np.asarray(tiles, dtype=float), sms)
    return roofline_time_s(np.asarray(flops, dtype=float), np.asarray(bytes_, dtype=float), w,
                           compute_rate=truth.eta_compute * peak, memory_rate=truth.eta_memory * bandwidth,
                           t0_s=truth.t0_s, wave_alpha=truth.wave_alpha, smooth_p=truth.smooth_p)


def fill_store(path, truth: Truth, *, device_name: str = SYNTH_GPU, kind: str = "cuda", peak: float = SYNTH_PEAK_BF16,
               bandwidth: float = SYNTH_BANDWIDTH, sms: int | None = SYNTH_SMS, n_shapes: int = 60, repeats: int = 2,
               op: str = "gemm", backend: str = "triton", seed: int = 0, energy_missing_every: int = 0,
               no_bytes_every: int = 0) -> st.Store:
    """A store of `n_shapes` GEMM shapes, each measured `repeats` times (params differ only by `seed`)."""
    from pyscale.costmodel.data import tile_count

    rng = np.random.default_rng(seed + 1)
    store = st.Store(path)
    dev = store.register_device(st.DeviceRecord(kind=kind, name=device_name, uuid=f"{kind}-{device_name}",
                                                torch_version="synthetic"))
    i = 0
    for shape in gemm_shapes(seed, n_shapes):
        flops, bytes_ = gemm_cost(shape)
        tiles = tile_count(op, shape)
        t_true = float(true_time_s(truth, flops, bytes_, tiles, peak=peak, bandwidth=bandwidth, sms=sms)[0])
        for r in range(repeats):
            i += 1
            t = t_true * float(np.exp(rng.normal(0, truth.time_noise)))
            e = (truth.e_flop_j * flops + truth.e_byte_j * bytes_ + truth.p0_w * t) * float(
                np.exp(rng.normal(0, truth.energy_noise)))
            reasons = {}
            energy, power = e, e / t
            if energy_missing_every and i % energy_missing_every == 0:
                energy = power = None
                reasons = {"energy_j_unavailable_reason": "synthetic: no meter",
                           "avg_power_w_unavailable_reason": "synthetic: no meter"}
            store.record(st.MeasurementRecord(
                op=op, backend=backend, params={**shape, "seed": r}, dtype="bf16", time_s=t,
                flops=flops, bytes=None if (no_bytes_every and i % no_bytes_every == 0) else bytes_,
                energy_j=energy, avg_power_w=power, idle_power_w=50.0, **reasons,
                repeats=10,
                # The profiler's record of the energy window (calls filling ≥ 1 s at this time per call).
                extra={} if energy is None else {"window_s": t * max(1, round(1.0 / t)),
                                                 "window_calls": max(1, round(1.0 / t))}
            ).explain_missing("synthetic: not modelled"), device_id=dev)
    return store
