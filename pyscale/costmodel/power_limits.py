"""Time and power of one (device, op, dtype, backend) as functions of the GPU power limit.

With rows measured at two or more enforced power limits (`pyscale bench ... --power-limits 200,300,max`), the
limit is a *feature* of the model, not a new shape group. Every shape measured both at the largest limit
L_max and at a limit L gives two ratios,

    s(L) = T(shape, L) / T(shape, L_max)      slowdown (>= 1)
    p(L) = P(shape, L) / P(shape, L_max)      average power P = E / T of the energy window (<= 1)

and the model keeps, at each measured limit, their geometric means over the shapes. With T_max and E_max the
runtime and energy models fitted at the largest limit (`pyscale.costmodel.profile`):

    T(L) = T_max · s(L),    P(L) = P_max · p(L),    E(L) = E_max · s(L) · p(L).

The form, and why. Under a power cap the GPU lowers its clock until the board power fits. A kernel that draws
less than the cap is not slowed: s = 1, the curve saturates above the kernel's knee. Below the knee it runs
at a lower clock f, with time ∝ 1/f and power ∝ f^k (k of 2 to 3, voltage falling with the clock): a power
law, s ∝ L^(-1/k). So between measured limits the factors are interpolated linearly in (log L, log s) and
(log L, log p): exact on such a power-law segment, flat where the data are flat, and with no knee or
exponent to fit from three or four limits. Monotone by construction: a lower limit is never faster, and
never draws more power, than a higher one (where noise says otherwise the higher limit's factor is kept, and
a note says so). Nothing outside the measured limits is predicted: that would be extrapolation, and asking
for it is an error.

Validation is leave-one-power-limit-out: each interior limit is held out, the factors are refitted from the
others, and its rows' time and energy are predicted from their measurement at the largest limit by
interpolation (MAPE per limit). The lowest and the largest limit are the ends: predicting them from the
others would be extrapolation, which this model never does, so they are not held out; at every measured
limit `fit_*_mape_pct` says how well the one pooled factor fits each shape measured there. Energy needs
counter-measured rows at both limits; without them the model has times only (`power_ratio` None, with a
note), never a power of 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyscale.costmodel.data import Rows

END = "end: not held out (predicting it would be extrapolation)"
INTERPOLATED = "interpolated from the other limits"
_SAME_LIMIT_RTOL = 1e-9  # a limit asked for is a measured one when it agrees to this (readback is in mW)


@dataclass
class LimitPoint:
    """The model at one measured power limit."""

    power_limit_w: float
    slowdown: float  # time / time at the largest limit
    power_ratio: float | None  # average power / that at the largest limit; None without energy at both
    power_w: float | None  # median measured average power of the shapes here (shown, never used to predict)
    n_shapes: int  # shapes measured both here and at the largest limit
    fit_time_mape_pct: float  # per-shape error of the pooled slowdown here
    fit_energy_mape_pct: float | None
    loo_time_mape_pct: float | None = None  # leave-this-limit-out error; None at the ends
    loo_energy_mape_pct: float | None = None
    loo: str = END

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LimitPoint:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


@dataclass
class PowerLimitModel:
    """Slowdown and power ratio per measured limit (ascending; the last is the reference); see the module."""

    points: list[LimitPoint]
    n_rows: int = 0
    n_excluded_no_limit: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def limits_w(self) -> list[float]:
        return [p.power_limit_w for p in self.points]

    @property
    def reference_w(self) -> float:
        return self.points[-1].power_limit_w

    @property
    def has_energy(self) -> bool:
        return all(p.power_ratio is not None for p in self.points)

    def measured_limit(self, power_limit_w: float) -> float | None:
        """The measured limit equal to `power_limit_w`, or None."""
        for limit in self.limits_w:
            if math.isclose(limit, power_limit_w, rel_tol=_SAME_LIMIT_RTOL):
                return limit
        return None

    def slowdown(self, power_limit_w: float) -> float:
        """Time at `power_limit_w` / time at the largest measured limit."""
        return _loglog(self.limits_w, [p.slowdown for p in self.points], power_limit_w)

    def power_ratio(self, power_limit_w: float) -> float | None:
        """Average power at `power_limit_w` / that at the largest limit; None when energy was not measured."""
        if self.measured_limit(power_limit_w) == self.reference_w:
            return 1.0  # the reference, by definition, also where energy was not measured
        if not self.has_energy:
            return None
        return _loglog(self.limits_w, [p.power_ratio for p in self.points], power_limit_w)

    def energy_ratio(self, power_limit_w: float) -> float | None:
        """Energy at `power_limit_w` / energy at the largest limit (slowdown x power ratio), or None."""
        p = self.power_ratio(power_limit_w)
        return None if p is None else self.slowdown(power_limit_w) * p

    def loo_mape_pct(self, what: str = "time") -> float | None:
        """The largest leave-one-limit-out MAPE over the interior limits (None: no interior limit)."""
        values = [getattr(p, f"loo_{what}_mape_pct") for p in self.points]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "power_limit_factors",
                "formula": "T(L) = T_max*slowdown(L); P(L) = P_max*power_ratio(L); E(L) = E_max*slowdown(L)*"
                           "power_ratio(L); piecewise linear in log-log between measured limits, none outside",
                "reference_w": self.reference_w, "points": [p.to_dict() for p in self.points],
                "n_rows": self.n_rows, "n_excluded_no_limit": self.n_excluded_no_limit, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PowerLimitModel:
        if d.get("kind") != "power_limit_factors":
            raise ValueError(f"power-limit model kind must be 'power_limit_factors': got {d.get('kind')!r}")
        return cls(points=[LimitPoint.from_dict(p) for p in d["points"]], n_rows=int(d.get("n_rows", 0)),
                   n_excluded_no_limit=int(d.get("n_excluded_no_limit", 0)), notes=list(d.get("notes", [])))


def _loglog(limits: Sequence[float], values: Sequence[float], at: float) -> float:
    """Piecewise-linear interpolation of log(values) in log(limits); measured limits give their value."""
    if not (isinstance(at, (int, float)) and math.isfinite(at) and at > 0):
        raise ValueError(f"power_limit_w must be a positive number of watts: got {at!r}")
    for limit, value in zip(limits, values):
        if math.isclose(limit, at, rel_tol=_SAME_LIMIT_RTOL):
            return float(value)
    if not limits[0] < at < limits[-1]:
        raise ValueError(f"power_limit_w {at:g} W is outside the measured limits ({limits[0]:g} to {limits[-1]:g} W): "
                         "the power-limit model interpolates only; measure that limit")
    return float(np.exp(np.interp(math.log(at), np.log(limits), np.log(values))))


# ---------------------------------------------------------------------------------------- fitting

# shape group -> limit -> (time s, energy J, average power W); energy and power NaN where unmeasured
Table = dict[str, dict[float, tuple[float, float, float]]]


def _table(rows: Rows, use: np.ndarray) -> Table:
    """Median time, energy and power of every (shape, limit) among the rows `use` selects."""
    cells: dict[tuple[str, float], list[int]] = {}
    for i in np.flatnonzero(use):
        cells.setdefault((rows.groups[i], float(rows.limits_w[i])), []).append(int(i))
    out: Table = {}
    for (group, limit), idx in cells.items():
        e = rows.energy_j[idx]
        measured = np.isfinite(e) & (e > 0)
        energy = float(np.median(e[measured])) if measured.any() else math.nan
        power = float(np.median(e[measured] / rows.energy_time_s[idx][measured])) if measured.any() else math.nan
        out.setdefault(group, {})[limit] = (float(np.median(rows.time_s[idx])), energy, power)
    return out


def _pairs(table: Table, limit: float, ref: float) -> list[tuple[tuple[float, float, float], ...]]:
    """(at `limit`, at `ref`) of every shape measured at both."""
    return [(by[limit], by[ref]) for by in table.values() if limit in by and ref in by]


def _geomean(x: list[float]) -> float:
    return float(np.exp(np.mean(np.log(x))))


def _factors(table: Table, limits: list[float]) -> tuple[list[dict[str, Any]], list[str]]:
    """Pooled slowdown and power ratio at each of `limits` against the largest, made monotone; with notes."""
    ref = limits[-1]
    points, notes = [], []
    for limit in limits:
        pairs = _pairs(table, limit, ref)
        if not pairs:
            notes.append(f"{limit:g} W left out: no shape measured both there and at {ref:g} W")
            continue
        powers = [(a[2], b[2]) for a, b in pairs if math.isfinite(a[2]) and math.isfinite(b[2])]
        points.append({"power_limit_w": limit, "n_shapes": len(pairs),
                       "slowdown": 1.0 if limit == ref else _geomean([a[0] / b[0] for a, b in pairs]),
                       "power_ratio": (1.0 if limit == ref else _geomean([a / b for a, b in powers])) if powers
                       else None,
                       "power_w": float(np.median([a[2] for a, _ in pairs if math.isfinite(a[2])]))
                       if any(math.isfinite(a[2]) for a, _ in pairs) else None})
    for lower, higher in zip(points[-2::-1], points[::-1]):  # from the top down
        if lower["slowdown"] < higher["slowdown"]:
            notes.append(f"{lower['power_limit_w']:g} W measured {1 - lower['slowdown'] / higher['slowdown']:.2%} "
                         f"faster than {higher['power_limit_w']:g} W (noise): held at that limit's slowdown")
            lower["slowdown"] = higher["slowdown"]
        if lower["power_ratio"] is not None and higher["power_ratio"] is not None \
                and lower["power_ratio"] > higher["power_ratio"]:
            notes.append(f"{lower['power_limit_w']:g} W measured drawing more power than {higher['power_limit_w']:g} "
                         "W (noise): held at that limit's power ratio")
            lower["power_ratio"] = higher["power_ratio"]
    return points, notes


def _errors(table: Table, limit: float, ref: float, slowdown: float,
            energy_ratio: float | None) -> tuple[float | None, float | None]:
    """MAPE (%) of time and energy at `limit` predicted from each shape's measurement at `ref`."""
    pairs = _pairs(table, limit, ref)
    if not pairs:
        return None, None
    t = [abs(b[0] * slowdown / a[0] - 1) for a, b in pairs]
    e = [abs(b[1] * energy_ratio / a[1] - 1) for a, b in pairs
         if energy_ratio is not None and math.isfinite(a[1]) and math.isfinite(b[1])]
    return 100 * float(np.mean(t)), (100 * float(np.mean(e)) if e else None)


def fit_power_limits(rows: Rows) -> tuple[PowerLimitModel | None, str | None]:
    """(the power-limit model of `rows`, None), or (None, why there is none): see the module docstring."""
    limits_w = rows.limits_w
    known = np.isfinite(limits_w) & (limits_w > 0)
    distinct = sorted({float(v) for v in limits_w[known]})
    if not distinct:
        return None, ("no power limit recorded in these rows (a CPU, or rows stored before the store recorded "
                      "limits)")
    if len(distinct) < 2:
        return None, (f"measured at one power limit only ({distinct[0]:g} W): a model across limits needs rows at "
                      "two or more (pyscale bench ... --power-limits)")
    table = _table(rows, known)
    raw, notes = _factors(table, distinct)
    if len(raw) < 2:
        return None, f"no two limits share a measured shape ({'; '.join(notes)})"
    kept = [p["power_limit_w"] for p in raw]
    ref = kept[-1]
    points = []
    for p in raw:
        ratio = None if p["power_ratio"] is None else p["slowdown"] * p["power_ratio"]
        fit_t, fit_e = _errors(table, p["power_limit_w"], ref, p["slowdown"], ratio)
        points.append(LimitPoint(power_limit_w=p["power_limit_w"], slowdown=p["slowdown"],
                                 power_ratio=p["power_ratio"], power_w=p["power_w"], n_shapes=p["n_shapes"],
                                 fit_time_mape_pct=float(fit_t), fit_energy_mape_pct=fit_e))
    model = PowerLimitModel(points=points, n_rows=int(known.sum()), n_excluded_no_limit=int((~known).sum()),
                            notes=notes)
    for i in range(1, len(kept) - 1):  # leave one interior limit out
        others = kept[:i] + kept[i + 1:]
        sub, _ = _factors(table, others)
        if [p["power_limit_w"] for p in sub] != others:
            continue
        held = PowerLimitModel(points=[LimitPoint(power_limit_w=p["power_limit_w"], slowdown=p["slowdown"],
                                                  power_ratio=p["power_ratio"], power_w=None, n_shapes=0,
                                                  fit_time_mape_pct=0.0, fit_energy_mape_pct=None) for p in sub])
        t, e = _errors(table, kept[i], ref, held.slowdown(kept[i]), held.energy_ratio(kept[i]))
        points[i].loo_time_mape_pct, points[i].loo_energy_mape_pct, points[i].loo = t, e, INTERPOLATED
    if len(kept) == 2:
        model.notes.append("two limits: no interior limit to hold out, so no leave-one-limit-out error")
    if not model.has_energy:
        model.notes.append("no energy measured at every limit: times only (no power ratio, never a power of 0)")
    if model.n_excluded_no_limit:
        model.notes.append(f"{model.n_excluded_no_limit} row(s) without a recorded power limit left out")
    return model, None
