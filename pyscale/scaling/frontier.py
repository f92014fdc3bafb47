"""Compute-optimal allocation: N*, D* minimising a law's loss at fixed compute C = k*N*D.

Each budget also carries how far it lies beyond the compute of the data the law was fitted on
(`extrapolation_factor`: C / the largest fitted C), and, for a fit with bootstrap replicates, percentile
intervals of N* and D*. Beyond EXTRAPOLATION_THRESHOLD the optimum rests on the law's form more than on data,
and reports say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pyscale.scaling.laws import Chinchilla, Law, get_law

# Budgets more than this many times the largest fitted compute are flagged as extrapolated (a warning line and
# the label "extrapolated xF" on intervals). Ten times is a decade beyond the data: the published fits already
# disagree there (e.g. Hoffmann's three approaches at Gopher's budget, ~100x their largest IsoFLOP budget).
EXTRAPOLATION_THRESHOLD = 10.0


def extrapolation_factor(flops: float | np.ndarray, data_flops_range: tuple[float, float] | None):
    """C / the largest C of the fitted data (None when the data's range is not known)."""
    if data_flops_range is None:
        return None
    return np.asarray(flops, dtype=float) / float(data_flops_range[1])


def extrapolation_label(factor: float | None) -> str:
    """ "extrapolated x1.2e+03" beyond the threshold, else "" (factor None: unknown, also "")."""
    return f"extrapolated x{factor:.3g}" if factor is not None and factor > EXTRAPOLATION_THRESHOLD else ""


@dataclass
class ComputeOptimal:
    """N*, D*, the loss there, and D*/N*, per compute budget (arrays, one entry per budget)."""

    flops: np.ndarray
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    method: str
    flops_per_param_token: float = 6.0
    extrapolation_factor: np.ndarray | None = None  # C / the largest fitted C, per budget (None: range unknown)
    N_ci: np.ndarray | None = None  # (budgets, 2) bootstrap percentile interval of N*, when the fit has replicates
    D_ci: np.ndarray | None = None
    ci_level: float | None = None
    n_bootstrap: int = 0  # replicates the intervals rest on

    @property
    def extrapolated(self) -> np.ndarray:
        """Budgets beyond EXTRAPOLATION_THRESHOLD times the fitted compute (all False when unknown)."""
        if self.extrapolation_factor is None:
            return np.zeros(len(self.flops), dtype=bool)
        return self.extrapolation_factor > EXTRAPOLATION_THRESHOLD

    def warnings(self) -> list[str]:
        """One line per extrapolated budget."""
        if self.extrapolation_factor is None:
            return []
        return [f"C = {c:.3g} FLOPs is {f:.3g}x the largest compute in the fitted data: N*, D* there rest on the "
                "law's form, not on data" for c, f in zip(self.flops, self.extrapolation_factor)
                if f > EXTRAPOLATION_THRESHOLD]

    @property
    def tokens_per_param(self) -> np.ndarray:
        return self.D / self.N

    @property
    def flops_convention(self) -> str:
        return f"C = {self.flops_per_param_token:g}*N*D"

    def to_dict(self) -> dict:
        def opt(a):
            return None if a is None else a.tolist()

        return {"flops": self.flops.tolist(), "N": self.N.tolist(), "D": self.D.tolist(),
                "loss": self.loss.tolist(), "method": self.method, "flops_convention": self.flops_convention,
                "extrapolation_factor": opt(self.extrapolation_factor), "extrapolated": self.extrapolated.tolist(),
                "N_ci": opt(self.N_ci), "D_ci": opt(self.D_ci), "ci_level": self.ci_level,
                "n_bootstrap": self.n_bootstrap}


def _resolve(fit_or_law: object, params: Mapping[str, float] | None,
             k: float | None) -> tuple[Law, dict[str, float], float]:
    law = getattr(fit_or_law, "law", None)
    if law is not None and hasattr(fit_or_law, "params"):  # a FitResult or a Preset
        p = dict(params or fit_or_law.params)
        kk = k if k is not None else float(getattr(fit_or_law, "flops_per_param_token", 6.0))
        return law, p, kk
    law = get_law(fit_or_law)  # type: ignore[arg-type]
    if params is None:
        raise ValueError("params: a law needs params= (or pass a FitResult or a preset)")
    return law, dict(params), 6.0 if k is None else float(k)


def chinchilla_optimal(params: Mapping[str, float], flops: np.ndarray | float, k: float = 6.0):
    """Closed form: N* = G (C/k)^(beta/(alpha+beta)), D* = (C/k)/N*, G = (alpha A/(beta B))^(1/(alpha+beta))."""
    A, B, al, be = (float(params[n]) for n in ("A", "B", "alpha", "beta"))
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    c = np.asarray(flops, dtype=float) / k
    N = G * c ** (be / (al + be))
    return N, c / N


def compute_optimal(fit_or_law: object, flops: float | np.ndarray, *, params: Mapping[str, float] | None = None,
                    flops_per_param_token: float | None = None, method: str = "auto",
                    **inputs: float) -> ComputeOptimal:
    """The compute-optimal N*, D* at each budget in `flops`.

    fit_or_law: a FitResult, a preset (pyscale.scaling.presets), or a law (name/object) with `params=`.
    method: "closed" (Chinchilla only), "numeric" (any law of N and D: minimise L(N, C/(kN)) over log N,
        a dense log grid then a bounded Brent refinement) or "auto" (closed form when available).
    inputs: extra fixed law inputs, e.g. U= unique tokens for the data-constrained law, G= for QAT.
    """
    law, p, k = _resolve(fit_or_law, params, flops_per_param_token)
    C = np.atleast_1d(np.asarray(flops, dtype=float))
    if not np.all(np.isfinite(C) & (C > 0)):
        raise ValueError("flops must be finite and > 0")
    if method not in ("auto", "closed", "numeric"):
        raise ValueError(f"method must be 'auto', 'closed' or 'numeric': got {method!r}")
    if not {"N", "D"} <= set(law.inputs):
        raise ValueError(f"law {law.name} is not a function of N and D; it has no compute-optimal split")
    closed = isinstance(law, Chinchilla) and method != "numeric"
    if method == "closed" and not isinstance(law, Chinchilla):
        raise ValueError(f"method='closed': no closed form for law {law.name}; use 'numeric'")
    N, D = _optimum(law, p, C, k, closed, inputs)
    loss = law.predict(p, N=N, D=D, **inputs)
    out = ComputeOptimal(C, N, D, np.asarray(loss, dtype=float), "closed" if closed else "numeric", k)
    out.extrapolation_factor = extrapolation_factor(C, getattr(fit_or_law, "data_flops_range", None))
    replicates = getattr(fit_or_law, "bootstrap", None) if params is None else None
    if replicates is not None:
        rows = [dict(zip(law.param_names, row)) for row in replicates if np.all(np.isfinite(row))]
        if len(rows) >= 2:
            level = float(getattr(fit_or_law, "ci_level", 0.95))
            q = 100 * (1 - level) / 2
            per = np.array([_optimum(law, r, C, k, closed, inputs) for r in rows])  # (replicates, 2, budgets)
            out.N_ci = np.nanpercentile(per[:, 0, :], [q, 100 - q], axis=0).T
            out.D_ci = np.nanpercentile(per[:, 1, :], [q, 100 - q], axis=0).T
            out.ci_level, out.n_bootstrap = level, len(rows)
    return out


def _optimum(law: Law, p: Mapping[str, float], C: np.ndarray, k: float, closed: bool,
             inputs: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """N*, D* at each budget: the closed form, or a dense log grid then a bounded Brent refinement."""
    if closed:
        return chinchilla_optimal(p, C, k)
    from scipy.optimize import minimize_scalar

    N, D = np.empty_like(C), np.empty_like(C)
    for i, c in enumerate(C):
        hi = math.log(c / k)  # D >= 1 token
        grid = np.linspace(0.0, hi, 401)
        losses = law.predict(p, N=np.exp(grid), D=(c / k) / np.exp(grid), **inputs)
        losses = np.where(np.isfinite(losses), losses, np.inf)
        j = int(np.argmin(losses))
        a, b = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]

        def f(u: float, c: float = c) -> float:
            return float(law.predict(p, N=math.exp(u), D=(c / k) / math.exp(u), **inputs)[0])

        res = minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
        u = float(res.x) if res.fun <= losses[j] else float(grid[j])
        N[i], D[i] = math.exp(u), (c / k) / math.exp(u)
    return N, D


__all__ = ["EXTRAPOLATION_THRESHOLD", "ComputeOptimal", "chinchilla_optimal", "compute_optimal", "extrapolation_factor",
           "extrapolation_label"]
