"""Extrapolation check: fit on the smaller-compute runs, predict the largest, report the errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pyscale.scaling.data import load
from pyscale.scaling.fit import FitResult, fit
from pyscale.scaling.laws import Law, get_law


@dataclass
class ValidationResult:
    """A fit on rows with C < threshold and its predictions for the held-out rows (C >= threshold)."""

    fit: FitResult
    threshold: float
    n_train: int
    n_test: int
    flops: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray

    @property
    def rel_error(self) -> np.ndarray:
        return (self.predicted - self.observed) / self.observed

    @property
    def log_residuals(self) -> np.ndarray:
        return np.log(self.predicted) - np.log(self.observed)

    def summary(self) -> dict[str, float]:
        rel = np.abs(self.rel_error)
        return {"mape": float(np.mean(rel)), "max_rel_error": float(np.max(rel)),
                "mae": float(np.mean(np.abs(self.predicted - self.observed))),
                "rmse_log": float(np.sqrt(np.mean(self.log_residuals ** 2))),
                "bias_log": float(np.mean(self.log_residuals))}

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "n_train": self.n_train, "n_test": self.n_test, **self.summary(),
                "flops": self.flops.tolist(), "observed": self.observed.tolist(),
                "predicted": self.predicted.tolist()}


def leave_largest_out(law: Law | str, data: object, *, threshold: float | None = None, n_largest: int = 1,
                      budget_rtol: float = 1e-6, columns: Mapping[str, str] | None = None,
                      nan_policy: str = "raise", flops_per_param_token: float = 6.0,
                      **fit_kwargs: object) -> ValidationResult:
    """Fit below a compute threshold and predict above it.

    threshold: FLOPs; rows with C >= threshold are held out. Default: hold out the `n_largest` largest
    distinct compute values (within `budget_rtol`). Other keyword arguments go to `fit`.
    """
    law = get_law(law)
    sd = load(data, columns=columns, target=law.target, nan_policy=nan_policy,
              flops_per_param_token=flops_per_param_token, law=law, extra=("C",))
    if "C" not in sd.columns:
        raise ValueError("data: leave-largest-out needs compute per row (a C column, or N and D)")
    C = sd.columns["C"]
    if threshold is None:
        if n_largest < 1:
            raise ValueError(f"n_largest must be >= 1: got {n_largest}")
        levels = np.sort(np.unique(C))[::-1]
        distinct = [levels[0]]
        for v in levels[1:]:
            if v < distinct[-1] * (1 - budget_rtol):
                distinct.append(v)
        if len(distinct) <= n_largest:
            raise ValueError(f"data: only {len(distinct)} distinct compute values; cannot hold out {n_largest}")
        threshold = float(distinct[n_largest - 1] * (1 - budget_rtol))
    test = threshold <= C
    if not test.any() or test.all():
        raise ValueError(f"threshold={threshold:g} leaves {int((~test).sum())} training and {int(test.sum())} test rows")
    result = fit(law, sd.subset(~test), flops_per_param_token=sd.flops_per_param_token, **fit_kwargs)  # type: ignore[arg-type]
    held = sd.subset(test)
    used = [c for c in law.required(set(held.columns)) if c in held.columns]
    pred = law.predict(result.params, **{c: held.columns[c] for c in used})
    return ValidationResult(result, float(threshold), int((~test).sum()), int(test.sum()), held.columns["C"],
                            held.columns[law.target], np.asarray(pred, dtype=float))


__all__ = ["ValidationResult", "leave_largest_out"]
