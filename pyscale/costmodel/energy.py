"""Energy model of one (device, op, dtype, backend): the energy roofline of Choi et al. (IPDPS 2013).

    E = e_flop · F + e_byte · B + P₀ · T

* e_flop (J/FLOP) and e_byte (J/byte) are the dynamic energy per operation and per DRAM byte, P₀ (W)
  the power drawn for as long as the call lasts (static + idle + whatever does not scale with work).
* Fitted from counter-measured rows only (NVML total-energy windows, DESIGN §6), each row with its own
  measured time T: the per-call time of its energy window (`Rows.energy_time_s`, see
  `pyscale.costmodel.data`). Rows without an energy reading are excluded and counted — an
  unmeasured energy is never a 0.
* Non-negative least squares on the *relative* error: minimise Σ ((Ê_i − E_i) / E_i)², so a 10 µs
  kernel weighs as much as a 10 ms one.
* Average power is P = E / T. The baseline it must beat is a constant power, E = P̄ · T with P̄ the
  mean measured power of the training rows.
* The idle power the profiler recorded is kept for comparison (`idle_power_w_mean`), never subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyscale.costmodel.data import Rows

# Above this condition number of the scaled design the three coefficients trade off against each other.
COLLINEAR_CONDITION = 1e3


@dataclass
class EnergyModel:
    e_flop_j: float
    e_byte_j: float
    p0_w: float
    n_rows: int = 0
    n_excluded_no_energy: int = 0
    idle_power_w_mean: float | None = None
    constant_power_w: float | None = None  # the baseline's P̄, from the same training rows
    condition_number: float | None = None  # of the column-scaled relative design; large = coefficients trade off
    notes: list[str] = field(default_factory=list)

    def predict_energy_j(self, flops: Any, bytes_: Any, time_s: Any) -> np.ndarray:
        f = np.atleast_1d(np.asarray(flops, dtype=float))
        b = np.atleast_1d(np.asarray(bytes_, dtype=float))
        t = np.atleast_1d(np.asarray(time_s, dtype=float))
        return self.e_flop_j * f + self.e_byte_j * b + self.p0_w * t

    def predict_power_w(self, flops: Any, bytes_: Any, time_s: Any) -> np.ndarray:
        return self.predict_energy_j(flops, bytes_, time_s) / np.atleast_1d(np.asarray(time_s, dtype=float))

    def baseline_energy_j(self, time_s: Any) -> np.ndarray:
        if self.constant_power_w is None:
            raise ValueError("this energy model has no constant-power baseline")
        return self.constant_power_w * np.atleast_1d(np.asarray(time_s, dtype=float))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "energy_roofline", "formula": "E = e_flop_j*F + e_byte_j*B + p0_w*T",
                "e_flop_j": self.e_flop_j, "e_byte_j": self.e_byte_j, "p0_w": self.p0_w, "n_rows": self.n_rows,
                "n_excluded_no_energy": self.n_excluded_no_energy, "idle_power_w_mean": self.idle_power_w_mean,
                "constant_power_w": self.constant_power_w, "condition_number": self.condition_number,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnergyModel:
        if d.get("kind") != "energy_roofline":
            raise ValueError(f"energy model kind must be 'energy_roofline': got {d.get('kind')!r}")
        return cls(e_flop_j=float(d["e_flop_j"]), e_byte_j=float(d["e_byte_j"]), p0_w=float(d["p0_w"]),
                   n_rows=int(d.get("n_rows", 0)), n_excluded_no_energy=int(d.get("n_excluded_no_energy", 0)),
                   idle_power_w_mean=d.get("idle_power_w_mean"), constant_power_w=d.get("constant_power_w"),
                   condition_number=d.get("condition_number"), notes=list(d.get("notes", [])))


def fit_energy(rows: Rows) -> EnergyModel:
    """Fit the energy roofline to the rows of `rows` that have a measured energy."""
    from scipy.optimize import nnls

    has = rows.has_energy & (rows.energy_j > 0)
    excluded = int(len(rows) - has.sum())
    if has.sum() < 3:
        raise ValueError(f"rows: need at least 3 measurements with energy_j to fit an energy model of "
                         f"{rows.op}/{rows.dtype}, got {int(has.sum())} ({excluded} without energy excluded)")
    F, B, T, E = rows.flops[has], rows.bytes[has], rows.energy_time_s[has], rows.energy_j[has]
    design = np.column_stack([F, B, T]) / E[:, None]
    # Column scaling only for conditioning: FLOPs (~1e12), bytes (~1e9) and seconds (~1e-3) differ wildly.
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    singular = np.linalg.svd(design / scale, compute_uv=False)
    condition = float(singular[0] / singular[-1]) if singular[-1] > 0 else float("inf")
    coef, _ = nnls(design / scale, np.ones(len(E)))
    coef = coef / scale
    idle = rows.idle_power_w[has]
    power = E / T
    model = EnergyModel(e_flop_j=float(coef[0]), e_byte_j=float(coef[1]), p0_w=float(coef[2]),
                        n_rows=int(has.sum()), n_excluded_no_energy=excluded,
                        idle_power_w_mean=float(np.nanmean(idle)) if np.isfinite(idle).any() else None,
                        constant_power_w=float(np.mean(power)), condition_number=condition)
    if condition > COLLINEAR_CONDITION:
        # E.g. every row compute-bound with T ∝ F: e_flop and P0 then explain the same joules.
        model.notes.append(f"F, B and T are nearly collinear in these rows (condition number {condition:.3g}): "
                           "e_flop, e_byte and P0 are not separately identifiable; predictions hold only "
                           "within the measured range")
    if rows.energy_time_sources:
        model.notes.append(f"energy-window time per call from: {rows.energy_time_sources}")
    if excluded:
        model.notes.append(f"{excluded} row(s) without a measured energy excluded (not treated as 0)")
    for name, value in (("e_flop_j", coef[0]), ("e_byte_j", coef[1]), ("p0_w", coef[2])):
        if value == 0:
            model.notes.append(f"{name} is 0 at the non-negativity bound: the data do not support a positive value")
    return model
