"""What a FLOP costs on the chosen hardware: achieved throughput and power, each with its source.

Sources, in the order a plan prefers them: a cost model fitted from measurements (this machine's store or
a shipped profile), measured built-in-model steps in the store, or values the user gives (MFU and power).
Nothing is assumed silently: a missing input that the objective needs is an error naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyscale import hw


@dataclass
class Hardware:
    """Throughput and power of one accelerator for a given architecture, plus the fleet around it.

    flops_per_s(config) -> (achieved model FLOP/s per device, source); power_w(config) -> (average W per
    device while training, source) or (None, reason).
    """

    device_name: str
    n_devices: int = 1
    dp_efficiency: float | None = None  # data-parallel scaling efficiency for n_devices > 1
    dp_efficiency_source: str = ""
    peak_flops_per_s: float | None = None
    dtype: str = "bf16"
    memory_bytes: int | None = None
    price_per_device_hour: float | None = None
    pue: float | None = None
    flops_source: Callable[[Any], tuple[float, str]] | None = None
    power_source: Callable[[Any], tuple[float | None, str]] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be >= 1: got {self.n_devices}")
        if self.n_devices == 1:
            if self.dp_efficiency is None:
                self.dp_efficiency, self.dp_efficiency_source = 1.0, "one device: no data-parallel loss"
        elif self.dp_efficiency is None:
            raise ValueError(f"dp_efficiency is required for n_devices={self.n_devices}: give a measured "
                             "multi-GPU scaling efficiency (e.g. --dp-efficiency 0.9); it is never assumed 1.0")
        if not 0 < self.dp_efficiency <= 1:
            raise ValueError(f"dp_efficiency must be in (0, 1]: got {self.dp_efficiency}")
        for name in ("price_per_device_hour", "pue"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number: got {v}")
        if self.pue is not None and self.pue < 1:
            raise ValueError(f"pue must be >= 1 (facility energy / IT energy): got {self.pue}")

    def throughput(self, config: Any) -> tuple[float, str]:
        """Achieved model FLOP/s of the whole fleet (per-device rate x n x dp efficiency), with its source."""
        if self.flops_source is None:
            raise ValueError("no throughput source: give --mfu (with a known GPU) or measure the device first")
        per_device, source = self.flops_source(config)
        return per_device * self.n_devices * float(self.dp_efficiency), source

    def mfu(self, config: Any) -> float | None:
        if not self.peak_flops_per_s or self.flops_source is None:
            return None
        return self.flops_source(config)[0] / self.peak_flops_per_s

    def power(self, config: Any) -> tuple[float | None, str]:
        if self.power_source is None:
            return None, "no power source: give --power-w or measure energy (pyscale bench --energy)"
        return self.power_source(config)


def from_user(gpu: str, *, mfu: float | None = None, power_w: float | None = None, n_devices: int = 1,
              dp_efficiency: float | None = None, dtype: str = "bf16", price_per_device_hour: float | None = None,
              pue: float | None = None) -> Hardware:
    """Hardware from a known GPU name plus user-given MFU and power (both stated as user inputs)."""
    spec = hw.lookup(gpu)
    if isinstance(spec, hw.UnknownGPU):
        raise ValueError(f"gpu: {spec.reason}")
    peak = hw.peak_flops(spec, dtype)
    if peak is None:
        raise ValueError(f"dtype: {spec.name} has no dense {dtype} peak in pyscale.hw (unsupported format)")
    if mfu is not None and not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1]: got {mfu}")
    if power_w is not None and not power_w > 0:
        raise ValueError(f"power_w must be > 0: got {power_w}")
    flops = None if mfu is None else (lambda cfg, v=peak * mfu: (v, f"user-given MFU {mfu:g} x {spec.name} "
                                                                     f"dense {dtype} peak {peak / 1e12:.4g} TFLOP/s"))
    power = None if power_w is None else (lambda cfg, v=power_w: (v, f"user-given average power {v:g} W per GPU"))
    return Hardware(spec.name, n_devices, dp_efficiency, "user-given" if dp_efficiency is not None else "",
                    peak, dtype, spec.memory_bytes, price_per_device_hour, pue, flops, power)


def from_measurements(points: list[dict[str, Any]], *, device_name: str, peak_flops_per_s: float | None,
                      memory_bytes: int | None, n_devices: int = 1, dp_efficiency: float | None = None,
                      dtype: str = "bf16", price_per_device_hour: float | None = None,
                      pue: float | None = None) -> Hardware:
    """Hardware from measured training steps: points with n_params, model_flops_per_s and avg_power_w.

    Throughput and power for another size are interpolated linearly in log(n_params) between measured
    sizes and held constant beyond them (stated in the source string).
    """
    pts = sorted((p for p in points if p.get("model_flops_per_s")), key=lambda p: p["n_params"])
    if not pts:
        raise ValueError("points: no measured step with model FLOP/s")

    def interp(key: str, cfg: Any) -> tuple[float | None, str]:
        usable = [p for p in pts if p.get(key)]
        if not usable:
            return None, f"no measured {key}"
        n = cfg.n_params() if hasattr(cfg, "n_params") else float(cfg)
        xs = [math.log(p["n_params"]) for p in usable]
        x = math.log(n)
        if x <= xs[0] or len(usable) == 1:
            p = usable[0] if x <= xs[0] else usable[-1]
            how = "nearest measured size" if len(usable) == 1 or x < xs[0] else "measured"
            return float(p[key]), f"{how} ({p['n_params']:.3g} params) on {device_name}"
        if x >= xs[-1]:
            return float(usable[-1][key]), f"largest measured size ({usable[-1]['n_params']:.3g} params), held constant"
        for (x0, p0), (x1, p1) in zip(zip(xs, usable), zip(xs[1:], usable[1:])):
            if x0 <= x <= x1:
                w = (x - x0) / (x1 - x0)
                return (1 - w) * p0[key] + w * p1[key], (f"interpolated between measured sizes "
                                                         f"{p0['n_params']:.3g} and {p1['n_params']:.3g}")
        raise AssertionError("unreachable")

    return Hardware(device_name, n_devices, dp_efficiency, "user-given" if dp_efficiency is not None else "",
                    peak_flops_per_s, dtype, memory_bytes, price_per_device_hour, pue,
                    lambda cfg: interp("model_flops_per_s", cfg), lambda cfg: interp("avg_power_w", cfg))
