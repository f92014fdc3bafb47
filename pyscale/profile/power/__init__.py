"""Power meters (NVML, RAPL, null), their exception tree and power samplers. Imports no torch.

`make_meter("auto", device=...)` picks NVML for a CUDA device and RAPL for the CPU; with "auto" a meter
that cannot work becomes a NullMeter carrying the reason, while a meter asked for by name raises.
"""

from __future__ import annotations

from pyscale.profile.power.base import (
    CounterReset,
    DeviceLost,
    EnergyWindow,
    MeterError,
    MeterPermissionError,
    MeterSnapshot,
    MeterUnavailable,
    MultiMeter,
    PowerMeter,
)
from pyscale.profile.power.null import NullMeter
from pyscale.profile.power.nvml import NvmlMeter
from pyscale.profile.power.rapl import RaplMeter
from pyscale.profile.power.sampler import NativeSampler, PowerTrace, PythonSampler, Sampler, make_sampler

__all__ = [
    "CounterReset", "DeviceLost", "EnergyWindow", "MeterError", "MeterPermissionError", "MeterSnapshot",
    "MeterUnavailable", "MultiMeter", "NativeSampler", "NullMeter", "NvmlMeter", "PowerMeter", "PowerTrace", "PythonSampler",
    "RaplMeter", "Sampler", "make_meter", "make_sampler",
]

METERS = ("auto", "nvml", "rapl", "null")


def make_meter(kind: str | PowerMeter = "auto", *, device_kind: str = "cpu",
               index: int | list[int] = 0) -> PowerMeter:
    """A meter for the device `device_kind` ("cuda" or "cpu") number `index` (a list: one reading per GPU).

    A PowerMeter instance is returned as is. "null" measures nothing (reason: asked for).
    """
    if isinstance(kind, PowerMeter):
        return kind
    if isinstance(index, (list, tuple)):
        return MultiMeter([make_meter(kind, device_kind=device_kind, index=i) for i in index])
    if kind not in METERS:
        raise ValueError(f"meter must be one of {', '.join(METERS)} or a PowerMeter: got {kind!r}")
    if kind == "null":
        return NullMeter("no meter requested (meter='null')")
    if kind == "nvml":
        return NvmlMeter(index)
    if kind == "rapl":
        return RaplMeter()
    try:
        return NvmlMeter(index) if device_kind == "cuda" else RaplMeter()
    except MeterPermissionError as exc:
        return NullMeter(f"permission denied: {exc}")
    except MeterUnavailable as exc:
        return NullMeter(str(exc))
