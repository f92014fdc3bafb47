"""Honest evaluation: leave-shape-out cross-validation of the runtime and energy models.

Rows are grouped by shape (`pyscale.costmodel.data.shape_key`: the op plus its params minus the
non-shape keys), and whole groups are dealt into k folds — never a random row split, so a shape
measured twice can never be in train and test at once (`group_kfold` checks this and raises if it
were ever violated). Each fold fits on the other folds and predicts its own rows; the metrics are
computed over the pooled out-of-fold predictions:

* runtime: MAPE (%), R² on seconds and R² on log seconds (times span decades, so the raw R² is
  dominated by the largest shapes);
* energy: the energy model given each row's measured energy-window time (`energy`) and end to end with the
  predicted time (`energy_e2e`, what a planner gets), next to the constant-power baseline
  E = P̄·T (`energy_baseline`);
* power P = E/T: the model's (`power`) next to the constant P̄ (`power_baseline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyscale import hw
from pyscale.costmodel.data import Rows
from pyscale.costmodel.energy import fit_energy
from pyscale.costmodel.runtime import fit_runtime


def group_kfold(groups: Sequence[str], k: int = 5, *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs with every group wholly on one side; k is capped at the group count."""
    if k < 2:
        raise ValueError(f"k must be at least 2: got {k}")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError(f"groups: leave-shape-out cross-validation needs at least 2 distinct shapes, "
                         f"got {len(unique)}")
    k = min(k, len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = {unique[g]: i % k for i, g in enumerate(order)}
    fold = np.array([fold_of_group[g] for g in groups])
    splits = []
    for i in range(k):
        test = np.flatnonzero(fold == i)
        train = np.flatnonzero(fold != i)
        overlap = {groups[j] for j in train} & {groups[j] for j in test}
        if overlap:  # cannot happen by construction; a guard against future edits
            raise RuntimeError(f"leave-shape-out split put {len(overlap)} shape(s) in both train and test")
        splits.append((train, test))
    return splits


def mape_pct(y: np.ndarray, y_hat: np.ndarray) -> float:
    y, y_hat = np.asarray(y, dtype=float), np.asarray(y_hat, dtype=float)
    return float(np.mean(np.abs(y_hat - y) / np.abs(y)) * 100.0)


def r2(y: np.ndarray, y_hat: np.ndarray) -> float:
    y, y_hat = np.asarray(y, dtype=float), np.asarray(y_hat, dtype=float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - y_hat) ** 2))
    return float("nan") if ss_tot == 0 else 1.0 - ss_res / ss_tot


def _metrics(y: np.ndarray, y_hat: np.ndarray, *, log_r2: bool) -> dict[str, float]:
    out = {"n": int(len(y)), "mape_pct": mape_pct(y, y_hat), "r2": r2(y, y_hat)}
    if log_r2:
        out["r2_log"] = r2(np.log(y), np.log(y_hat))
    return out


@dataclass
class CVResult:
    """Pooled out-of-fold metrics; `metrics[name]` has n, mape_pct, r2 (and r2_log for times/energies)."""

    n_folds: int
    n_groups: int
    metrics: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "leave-shape-out group k-fold", "n_folds": self.n_folds, "n_groups": self.n_groups,
                "metrics": self.metrics, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CVResult:
        return cls(n_folds=int(d["n_folds"]), n_groups=int(d["n_groups"]), metrics=dict(d["metrics"]),
                   notes=list(d.get("notes", [])))


def cross_validate(rows: Rows, spec: hw.GPUSpec | hw.UnknownGPU | None, *, k: int = 5, seed: int = 0,
                   residual: bool = False, **fit_kwargs: Any) -> CVResult:
    """Leave-shape-out CV of the runtime model, and of the energy model where rows have energy."""
    splits = group_kfold(rows.groups, k, seed=seed)
    n = len(rows)
    t_hat = np.full(n, np.nan)
    e_hat = np.full(n, np.nan)
    e2e_hat = np.full(n, np.nan)
    e_base = np.full(n, np.nan)
    notes: list[str] = []
    for i, (train, test) in enumerate(splits):
        tr, te = rows.subset(train), rows.subset(test)
        try:
            runtime = fit_runtime(tr, spec, residual=residual, **fit_kwargs)
        except ValueError as exc:
            notes.append(f"fold {i}: runtime not fitted ({exc})")
            continue
        t_hat[test] = runtime.predict_time_s(te.flops, te.bytes, te.tiles)
        if int((tr.has_energy & (tr.energy_j > 0)).sum()) >= 3 and te.has_energy.any():
            energy = fit_energy(tr)
            e_hat[test] = energy.predict_energy_j(te.flops, te.bytes, te.energy_time_s)
            e2e_hat[test] = energy.predict_energy_j(te.flops, te.bytes, t_hat[test])
            e_base[test] = energy.baseline_energy_j(te.energy_time_s)
    metrics: dict[str, dict[str, float]] = {}
    ok = np.isfinite(t_hat)
    if ok.any():
        metrics["runtime"] = _metrics(rows.time_s[ok], t_hat[ok], log_r2=True)
    has_e = np.isfinite(e_hat) & rows.has_energy
    n_no_energy = int((~rows.has_energy).sum())
    if n_no_energy:
        notes.append(f"{n_no_energy} row(s) without a measured energy excluded from the energy metrics")
    if has_e.any():
        E, T = rows.energy_j[has_e], rows.energy_time_s[has_e]
        metrics["energy"] = _metrics(E, e_hat[has_e], log_r2=True)
        metrics["energy_e2e"] = _metrics(E, e2e_hat[has_e], log_r2=True)
        metrics["energy_baseline"] = _metrics(E, e_base[has_e], log_r2=True)
        metrics["power"] = _metrics(E / T, e_hat[has_e] / T, log_r2=False)
        metrics["power_baseline"] = _metrics(E / T, e_base[has_e] / T, log_r2=False)
    return CVResult(n_folds=len(splits), n_groups=len(set(rows.groups)), metrics=metrics, notes=notes)
