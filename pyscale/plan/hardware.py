"""What a FLOP costs on the chosen hardware: achieved throughput and power, each with its source.

Sources: values the user gives (MFU and power), a cost model fitted from measurements (a profile file, or
the one pyscale ships for a GPU), or measured built-in-model steps in a store; `choose_hardware` picks the
one the caller names. Nothing is assumed silently: a missing input that the objective needs is an error
naming the option, and a GPU named beside a profile or a store's steps of another device is an error
naming both. Errors about options are `ParameterError`s: they name Python parameters (`mfu=`), and the
command line (`pyscale.cli`) spells them as its flags (`--mfu`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyscale import hw


class ParameterError(ValueError):
    """A ValueError about the caller's options. The message names them as Python parameters (`mfu=`,
    `gpu=NAME`, or the bare name); `parameters` lists the bare names that an interface may respell as its
    own (the CLI: `pyscale.cli.in_flags`)."""

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message)
        self.parameters = parameters


@dataclass
class Hardware:
    """Throughput and power of one accelerator for a given architecture, plus the fleet around it.

    flops_per_s(config) -> (achieved model FLOP/s per device, source); power_w(config) -> (average W per
    device while training, source) or (None, reason). Both at the device's largest power limit; a cost model
    measured at several limits also gives power_limit_source(config) -> (one dict per measured limit:
    power_limit_w, time_ratio and energy_ratio against the largest, or None; the source, or why None where
    the profile has power-limit models but not for every op of the step, else "").
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
    power_limit_source: Callable[[Any], tuple[list[dict[str, Any]] | None, str]] | None = None
    notes: list[str] = field(default_factory=list)
    step_options: dict[str, Any] = field(default_factory=dict)  # how a cost model prices a step (dtype, backends)
    time_error: str | None = None  # a cost model's measured step-validation error, shown next to a plan's time

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ParameterError(f"n_devices must be >= 1: got {self.n_devices}", "n_devices")
        if self.n_devices == 1:
            if self.dp_efficiency is None:
                self.dp_efficiency, self.dp_efficiency_source = 1.0, "one device: no data-parallel loss"
        elif self.dp_efficiency is None:
            raise ParameterError(f"dp_efficiency is required for n_devices={self.n_devices}: give a measured "
                                 "multi-GPU scaling efficiency (e.g. dp_efficiency=0.9); it is never assumed 1.0",
                                 "dp_efficiency", "n_devices")
        if not 0 < self.dp_efficiency <= 1:
            raise ParameterError(f"dp_efficiency must be in (0, 1]: got {self.dp_efficiency}", "dp_efficiency")
        for name in ("price_per_device_hour", "pue"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ParameterError(f"{name} must be a positive number: got {v}", name)
        if self.pue is not None and self.pue < 1:
            raise ParameterError(f"pue must be >= 1 (facility energy / IT energy): got {self.pue}", "pue")

    def throughput(self, config: Any) -> tuple[float, str]:
        """Achieved model FLOP/s of the whole fleet (per-device rate x n x dp efficiency), with its source."""
        if self.flops_source is None:
            raise ParameterError("no throughput source: give mfu= (with a known GPU) or measure the device first",
                                 "mfu")
        per_device, source = self.flops_source(config)
        return per_device * self.n_devices * float(self.dp_efficiency), source

    def mfu(self, config: Any) -> float | None:
        if not self.peak_flops_per_s or self.flops_source is None:
            return None
        return self.flops_source(config)[0] / self.peak_flops_per_s

    def power(self, config: Any) -> tuple[float | None, str]:
        if self.power_source is None:
            return None, "no power source: give power_w= or measure energy (pyscale bench --energy)"
        return self.power_source(config)


def from_user(gpu: str, *, mfu: float | None = None, power_w: float | None = None, n_devices: int = 1,
              dp_efficiency: float | None = None, dtype: str = "bf16", price_per_device_hour: float | None = None,
              pue: float | None = None) -> Hardware:
    """Hardware from a known GPU name plus user-given MFU and power (both stated as user inputs)."""
    spec = hw.lookup(gpu)
    if isinstance(spec, hw.UnknownGPU):
        known = ", ".join(sorted(s.name for s in hw.all_specs()))
        raise ParameterError(f"gpu: no spec for {gpu!r} in pyscale.hw; name a GPU it knows ({known}), or register "
                             "the spec of yours (pyscale.hw.register)", "gpu")
    peak = hw.peak_flops(spec, dtype)
    if peak is None:
        raise ParameterError(f"dtype: {spec.name} has no dense {dtype} peak in pyscale.hw (unsupported format)",
                             "dtype")
    if mfu is not None and not 0 < mfu <= 1:
        raise ParameterError(f"mfu must be in (0, 1]: got {mfu}", "mfu")
    if power_w is not None and not power_w > 0:
        raise ParameterError(f"power_w must be > 0: got {power_w}", "power_w")
    flops = None if mfu is None else (lambda cfg, v=peak * mfu: (v, f"user-given MFU {mfu:g} x {spec.name} "
                                                                     f"dense {dtype} peak {peak / 1e12:.4g} TFLOP/s"))
    power = None if power_w is None else (lambda cfg, v=power_w: (v, f"user-given average power {v:g} W per GPU"))
    return Hardware(device_name=spec.name, n_devices=n_devices, dp_efficiency=dp_efficiency,
                    dp_efficiency_source=_user_given(dp_efficiency), peak_flops_per_s=peak, dtype=dtype,
                    memory_bytes=spec.memory_bytes, price_per_device_hour=price_per_device_hour, pue=pue,
                    flops_source=flops, power_source=power)


def _user_given(dp_efficiency: float | None) -> str:
    return "user-given" if dp_efficiency is not None else ""


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

    return Hardware(device_name=device_name, n_devices=n_devices, dp_efficiency=dp_efficiency,
                    dp_efficiency_source=_user_given(dp_efficiency), peak_flops_per_s=peak_flops_per_s, dtype=dtype,
                    memory_bytes=memory_bytes, price_per_device_hour=price_per_device_hour, pue=pue,
                    flops_source=lambda cfg: interp("model_flops_per_s", cfg),
                    power_source=lambda cfg: interp("avg_power_w", cfg))


def choose_hardware(gpu: str | None = None, *, mfu: float | None = None, power_w: float | None = None,
                    profile: Any = None, store: str | os.PathLike | None = None, n_devices: int = 1,
                    dp_efficiency: float | None = None, dtype: str | None = None,
                    price_per_device_hour: float | None = None, pue: float | None = None) -> Hardware | None:
    """The hardware a plan is priced on, from the one source the caller names:

    - `mfu=` and/or `power_w=`, with `gpu=` for the peak: user-given values, labelled so;
    - `profile=`: a fitted cost model (a DeviceProfile, or the path of its JSON) prices each architecture;
    - `store=`: measured `gpt_step` rows of `gpu=` (or of the store's only device);
    - `gpu=` alone: the cost model pyscale ships for that GPU, else its spec without a throughput (a time,
      energy or cost plan then fails naming what would give one);
    - nothing: None, which only a FLOPs or target-loss plan can use.
    `dtype` (default bf16; with a profile, the first it models), `n_devices`, `dp_efficiency`,
    `price_per_device_hour` and `pue` apply to any source; given without one they are an error, never
    ignored. Errors are ParameterErrors naming these parameters.
    """
    if n_devices < 1:
        raise ParameterError(f"n_devices must be >= 1: got {n_devices}", "n_devices")
    sources = [name for name, given in (("mfu=/power_w=", mfu is not None or power_w is not None),
                                        ("profile=", profile is not None), ("store=", store is not None)) if given]
    if len(sources) > 1:
        raise ParameterError(f"{' and '.join(sources)} are alternative hardware sources: give one",
                             "mfu", "power_w", "profile", "store")
    fleet = {"n_devices": n_devices, "dp_efficiency": dp_efficiency, "price_per_device_hour": price_per_device_hour,
             "pue": pue}
    if not sources and not gpu:
        unused = [name for name, given in (("n_devices", n_devices != 1), ("dp_efficiency", dp_efficiency is not None),
                                           ("price_per_device_hour", price_per_device_hour is not None),
                                           ("pue", pue is not None), ("dtype", dtype is not None)) if given]
        if unused:
            raise ParameterError(f"{', '.join(unused)} given without hardware to apply to: add gpu=NAME (with mfu= "
                                 "and power_w=), profile= or store=", *unused, "gpu", "mfu", "power_w", "profile",
                                 "store")
        return None
    if mfu is not None or power_w is not None:
        if not gpu:
            raise ParameterError("mfu=/power_w= need gpu=NAME (to know the peak)", "mfu", "power_w", "gpu")
        return from_user(gpu, mfu=mfu, power_w=power_w, dtype=dtype or "bf16", **fleet)
    if profile is not None:
        return _from_profile(profile, dtype, fleet, gpu=gpu)
    if store is not None:
        from pyscale.plan.measured import hardware_from_store

        return hardware_from_store(store, device_name=gpu, dtype=dtype or "bf16", **fleet)
    from pyscale.costmodel import load_shipped_profile

    shipped = load_shipped_profile(gpu)
    if shipped is not None:
        return _from_profile(shipped, dtype, fleet)
    return from_user(gpu, dtype=dtype or "bf16", **fleet)


def _from_profile(profile: Any, dtype: str | None, fleet: dict[str, Any], gpu: str | None = None) -> Hardware:
    """Hardware priced by a device profile (or the JSON file of one), which must be of `gpu` when one is named."""
    from pyscale.costmodel import DeviceProfile, same_device
    from pyscale.plan.step_model import hardware_for_profile

    if isinstance(profile, (str, os.PathLike)):
        profile = DeviceProfile.from_json(profile)
    if gpu and not same_device(gpu, profile.device_name):
        raise ParameterError(f"gpu={gpu!r} and profile= name different devices: profile= was measured on "
                             f"{profile.device_name!r}; drop gpu= to plan on that device, or drop profile= to plan "
                             f"on {gpu!r}", "gpu", "profile")
    return hardware_for_profile(profile, dtype, **fleet)
