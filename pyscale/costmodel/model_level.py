"""Model-level prediction: a training step's time, energy and MFU from per-op models.

`predict_step(profile, op_breakdown)` takes the per-op breakdown the profiler produces — one entry per
distinct op call, (op, dtype, flops, bytes, count) with executed FLOPs and bytes of ONE call — and sums
the per-op predictions, count times each. Assumptions, stated so they can be checked:

* ops run one after another on one stream, and nothing outside the listed ops costs time (optimizer, host
  gaps, data loading are only included if listed);
* communication is not an op the profile measures: `communication_s` adds a user-given time per step that
  nothing overlaps (it is listed in `per_op` as user-given, and without an energy model of it the step's
  energy is unavailable rather than short);
* energy is the sum of per-op energies at their predicted times (the energy model's P₀·T term
  carries the static power for exactly that long);
* the step is priced at the largest power limit its ops were measured at; `at_power_limits` gives it at
  each limit at which every op of the step has a power-limit model (measured limits they share, with the
  same largest limit; each op's time and energy scaled by `DeviceProfile.power_limit_factors`), or is empty
  with `power_limits_reason`.

MFU follows DESIGN §6: model FLOPs (PaLM convention) / (step time · peak). Without `model_flops` only
the hardware FLOPs utilisation (executed FLOPs) is given. The built-in model's step is listed by
`pyscale.plan.step_model` and checked against measured steps by `pyscale costmodel validate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyscale import hw


@dataclass(frozen=True)
class OpCall:
    """One line of a step's op breakdown: `count` calls, each with these executed FLOPs and bytes."""

    op: str
    dtype: str
    flops: float
    bytes: float
    count: int = 1
    backend: str | None = None
    features: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StepPrediction:
    time_s: float
    energy_j: float | None
    flops: float  # executed FLOPs of the step
    model_flops: float | None
    peak_flops_per_s: float | None
    mfu: float | None  # model FLOPs utilisation; None without model_flops or a peak
    hfu: float | None  # executed ("hardware") FLOPs utilisation; None without a peak
    tokens: int | None
    energy_j_per_token: float | None
    per_op: list[dict[str, Any]]
    unavailable_reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the step at each measured limit every op has a power-limit model at: power_limit_w, time_s, energy_j (None
    # where not measured across limits); empty with the reason in power_limits_reason
    at_power_limits: list[dict[str, Any]] = field(default_factory=list)
    power_limits_reason: str | None = None


def _as_call(item: Any, i: int) -> OpCall:
    if isinstance(item, OpCall):
        call = item
    elif isinstance(item, Mapping):
        call = OpCall(**item)
    elif isinstance(item, (tuple, list)) and len(item) in (5, 6):
        call = OpCall(*item[:5], features=item[5] if len(item) == 6 else {})
    else:
        raise ValueError(f"op_breakdown[{i}] must be an OpCall, a mapping or (op, dtype, flops, bytes, count"
                         f"[, features]): got {item!r}")
    if not (isinstance(call.count, int) and call.count >= 0):
        raise ValueError(f"op_breakdown[{i}].count must be an int ≥ 0: got {call.count!r}")
    if call.flops < 0 or call.bytes < 0:
        raise ValueError(f"op_breakdown[{i}]: flops and bytes must be ≥ 0: got {call.flops}, {call.bytes}")
    return call


def step_power_limits(profile: Any, calls: Iterable[OpCall]) -> tuple[list[float], str | None]:
    """(the measured power limits at which every call's op has a power-limit model, why that list is empty)."""
    common: set[float] | None = None
    references: set[float] = set()
    for call in calls:
        m = profile.model(call.op, call.dtype, call.backend)
        pl = getattr(m, "power_limits", None)
        if pl is None:
            why = getattr(m, "power_limits_unavailable_reason", None) or "no power-limit model"
            return [], f"{m.op}/{m.dtype}/{m.backend} has no power-limit model: {why}"
        common = set(pl.limits_w) if common is None else common & set(pl.limits_w)
        references.add(pl.reference_w)
    if len(references) > 1:
        return [], (f"the step's ops were measured up to different largest power limits "
                    f"({', '.join(f'{w:g}' for w in sorted(references))} W)")
    if common is None or len(common) < 2:
        return [], f"the step's ops share {len(common or ())} measured power limit(s); a choice needs two or more"
    return sorted(common), None


def predict_step(profile: Any, op_breakdown: Iterable[Any], *, model_flops: float | None = None,
                 peak_flops_per_s: float | None = None, tokens: int | None = None,
                 communication_s: float = 0.0) -> StepPrediction:
    """Predicted step time (s), energy (J), MFU and J/token of a step given its op breakdown.

    `peak_flops_per_s` defaults to the `hw` peak of the profile's device in the dtype carrying the most
    FLOPs. An op missing from the profile is an error naming it (a silent 0 would flatter the step).
    `communication_s`: user-given seconds per step added to the time (module docstring).
    """
    calls = [_as_call(item, i) for i, item in enumerate(op_breakdown)]
    if not calls:
        raise ValueError("op_breakdown is empty")
    if not (isinstance(communication_s, (int, float)) and communication_s >= 0 and communication_s < float("inf")):
        raise ValueError(f"communication_s must be a finite number of seconds >= 0: got {communication_s!r}")
    reasons: dict[str, str] = {}
    notes: list[str] = []
    per_op: list[dict[str, Any]] = []
    time_s, energy_j, flops = 0.0, 0.0, 0.0
    energy_ok = True
    flops_by_dtype: dict[str, float] = {}
    limits, limits_reason = step_power_limits(profile, calls) if hasattr(profile, "power_limit_factors") else (
        [], "the profile has no power-limit models")
    at_limits = {w: [0.0, 0.0, True] for w in limits}  # limit -> [time, energy, energy known]
    cache: dict[tuple[Any, ...], tuple[float, float | None]] = {}

    def factors(call: OpCall, limit: float) -> tuple[float, float | None]:
        key = (call.op, call.dtype, call.backend, limit)
        if key not in cache:
            cache[key] = profile.power_limit_factors(call.op, call.dtype, limit, backend=call.backend)
        return cache[key]

    for call in calls:
        t = float(profile.predict_time_s(call.op, call.dtype, call.flops, call.bytes, backend=call.backend,
                                         **dict(call.features)))
        entry: dict[str, Any] = {"op": call.op, "dtype": call.dtype, "count": call.count,
                                 "time_s": t * call.count, "energy_j": None}
        e = None  # both at the largest limit
        try:
            e = float(profile.predict_energy_j(call.op, call.dtype, call.flops, call.bytes, time_s=t,
                                               backend=call.backend))
            entry["energy_j"] = e * call.count
            energy_j += e * call.count
        except ValueError as exc:
            energy_ok = False
            reasons.setdefault("energy_j", str(exc))
        for limit, acc in at_limits.items():
            slowdown, ratio = factors(call, limit)
            acc[0] += t * slowdown * call.count
            if e is None or ratio is None:
                acc[2] = False
            else:
                acc[1] += e * ratio * call.count
        per_op.append(entry)
        time_s += t * call.count
        flops += call.flops * call.count
        flops_by_dtype[call.dtype] = flops_by_dtype.get(call.dtype, 0.0) + call.flops * call.count
    if communication_s:
        per_op.append({"op": "communication", "dtype": None, "count": 1, "time_s": float(communication_s),
                       "energy_j": None, "source": "user-given"})
        time_s += float(communication_s)
        energy_ok = False
        reasons.setdefault("energy_j", "the step includes user-given communication time, whose energy is not "
                                       "modelled")
        for acc in at_limits.values():  # communication does not scale with the GPU's limit, nor has an energy
            acc[0] += float(communication_s)
            acc[2] = False
    if peak_flops_per_s is None:
        spec = hw.lookup(profile.device_name) if profile.device_kind != "cpu" else None
        main_dtype = max(flops_by_dtype, key=flops_by_dtype.get)
        try:
            peak_flops_per_s = hw.peak_flops(spec, main_dtype) if spec is not None else None
        except ValueError:
            peak_flops_per_s = None
        if peak_flops_per_s is None:
            reasons["peak_flops_per_s"] = f"no hw peak for {profile.device_name!r} in {main_dtype}; pass one"
        else:
            notes.append(f"peak: pyscale.hw dense {main_dtype} peak of {profile.device_name!r}")
    hfu = flops / (time_s * peak_flops_per_s) if peak_flops_per_s and time_s > 0 else None
    mfu = None
    if model_flops is None:
        reasons["mfu"] = "model_flops not given (MFU counts model FLOPs, not executed ones); see hfu"
    elif peak_flops_per_s and time_s > 0:
        mfu = model_flops / (time_s * peak_flops_per_s)
    energy = energy_j if energy_ok else None
    per_token = energy / tokens if energy is not None and tokens else None
    return StepPrediction(time_s=time_s, energy_j=energy, flops=flops, model_flops=model_flops,
                          peak_flops_per_s=peak_flops_per_s, mfu=mfu, hfu=hfu, tokens=tokens,
                          energy_j_per_token=per_token, per_op=per_op, unavailable_reasons=reasons, notes=notes,
                          power_limits_reason=limits_reason,
                          at_power_limits=[{"power_limit_w": w, "time_s": acc[0], "energy_j": acc[1] if acc[2] else None}
                                           for w, acc in at_limits.items()])
