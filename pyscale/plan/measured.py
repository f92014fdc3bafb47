"""Hardware for a plan from measured built-in-model training steps in the store.

`pyscale profile --model gpt ...` stores one row per profiled configuration (op `gpt_step`, params with
the config and its exact `n_params`, model FLOPs and time per step, energy and power when a meter ran).
Their achieved model FLOP/s and average power, interpolated in model size, become the plan's costs.
"""

from __future__ import annotations

from pathlib import Path

from pyscale import hw
from pyscale.plan.hardware import Hardware, ParameterError, from_measurements
from pyscale.store import Store

STEP_OP = "gpt_step"  # what `pyscale profile --model gpt` stores


def measured_points(store: Store, device_name: str | None = None) -> tuple[str, list[dict]]:
    """(device, points) of the measured steps of `device_name` (matched as shipped profiles are:
    `costmodel.same_device`), or of the store's only device."""
    from pyscale.costmodel import same_device

    measured = [r for r in store.measurements(op=STEP_OP) if r.get("model_flops") and r.get("time_s_median")]
    rows = [r for r in measured if same_device(r["device_name"], device_name)] if device_name else measured
    if not rows:
        others = sorted({r["device_name"] for r in measured})
        if others:
            raise ParameterError(f"gpu={device_name!r} and store= name different devices: store= holds {STEP_OP} "
                                 f"steps of {', '.join(map(repr, others))} only; drop gpu= to plan on the measured "
                                 f"device, or drop store= to plan on {device_name!r}", "gpu", "store")
        where = f" on {device_name!r}" if device_name else ""
        raise ParameterError(f"store: no measured {STEP_OP} rows{where}; run `pyscale profile --model gpt ...` first",
                             "store")
    names = {r["device_name"] for r in rows}
    if len(names) > 1:
        raise ParameterError(f"store: steps from several devices ({', '.join(sorted(names))}): pass gpu= to pick one",
                             "gpu")
    points = [{"n_params": float(r["params"]["n_params"]),
               "model_flops_per_s": r["model_flops"] / r["time_s_median"],
               "avg_power_w": r.get("avg_power_w")} for r in rows if "n_params" in r["params"]]
    return names.pop(), points


def hardware_from_store(path: str | Path, *, device_name: str | None = None, n_devices: int = 1,
                        dp_efficiency: float | None = None, dtype: str = "bf16",
                        price_per_device_hour: float | None = None, pue: float | None = None) -> Hardware:
    with Store(path, read_only=True) as store:  # a plan reads the store, never writes it
        name, points = measured_points(store, device_name)
    spec = hw.lookup(name)
    known = not isinstance(spec, hw.UnknownGPU)
    return from_measurements(points, device_name=name, peak_flops_per_s=hw.peak_flops(spec, dtype) if known else None,
                             memory_bytes=spec.memory_bytes if known else None, n_devices=n_devices,
                             dp_efficiency=dp_efficiency, dtype=dtype, price_per_device_hour=price_per_device_hour,
                             pue=pue)
