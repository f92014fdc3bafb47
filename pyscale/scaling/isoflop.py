"""IsoFLOP analysis: compute-optimal N and D as power laws of compute (Hoffmann et al. 2022).

Approach 2: for each compute budget, fit a parabola of loss against ln N through the points nearest the
minimum (points far from it bend the parabola and bias N_opt), take its vertex, then fit
N_opt = c_N C^a and D_opt = c_D C^b across budgets, with bootstrap CIs.
Approach 1: from step-level curves, the lower envelope of loss over compute picks the best N at each C.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pyscale.scaling.data import load


@dataclass
class IsoFlopResult:
    """Per-budget optima and the fitted power laws N_opt = coef_N C^a, D_opt = coef_D C^b."""

    method: str
    budgets: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    loss_opt: np.ndarray
    a: float
    b: float
    coef_N: float
    coef_D: float
    ci_a: tuple[float, float] | None = None
    ci_b: tuple[float, float] | None = None
    ci_level: float = 0.95
    n_bootstrap: int = 0
    flops_per_param_token: float = 6.0
    skipped: list[tuple[float, str]] = field(default_factory=list)

    def n_opt_at(self, flops: float | np.ndarray) -> np.ndarray:
        return self.coef_N * np.asarray(flops, dtype=float) ** self.a

    def d_opt_at(self, flops: float | np.ndarray) -> np.ndarray:
        return self.coef_D * np.asarray(flops, dtype=float) ** self.b

    @property
    def flops_convention(self) -> str:
        return f"C = {self.flops_per_param_token:g}*N*D"

    def to_dict(self) -> dict:
        return {"method": self.method, "budgets": self.budgets.tolist(), "N_opt": self.N_opt.tolist(),
                "D_opt": self.D_opt.tolist(), "loss_opt": self.loss_opt.tolist(), "a": self.a, "b": self.b,
                "coef_N": self.coef_N, "coef_D": self.coef_D, "ci_a": self.ci_a, "ci_b": self.ci_b,
                "ci_level": self.ci_level, "n_bootstrap": self.n_bootstrap,
                "flops_convention": self.flops_convention, "skipped": self.skipped}


def group_budgets(C: np.ndarray, rtol: float = 0.05) -> np.ndarray:
    """Integer budget label per row: sorted C values within a factor (1 + rtol) of their neighbour join."""
    order = np.argsort(C, kind="stable")
    labels = np.empty(len(C), dtype=np.int64)
    g = 0
    for j, i in enumerate(order):
        if j and C[i] > C[order[j - 1]] * (1.0 + rtol):
            g += 1
        labels[i] = g
    return labels


def _vertex(lnN: np.ndarray, loss: np.ndarray) -> tuple[float, float] | None:
    """(ln N at the parabola's minimum, loss there), or None when the fit has no minimum."""
    if len(np.unique(lnN)) < 3:
        return None
    c2, c1, c0 = np.polyfit(lnN, loss, 2)
    if not c2 > 0:
        return None
    u = -c1 / (2.0 * c2)
    return u, c0 - c1 * c1 / (4.0 * c2)


def _window(lnN: np.ndarray, loss: np.ndarray, n_points: int | None) -> np.ndarray:
    order = np.argsort(lnN, kind="stable")
    if n_points is None or n_points >= len(order):
        return order
    i = int(np.argmin(loss[order]))
    start = min(max(i - n_points // 2, 0), len(order) - n_points)
    return order[start : start + n_points]


def _powerlaw(C: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(C), np.log(y), 1)
    return float(slope), float(math.exp(intercept))


def _ci(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    q = 100 * (1 - level) / 2
    return float(np.percentile(samples, q)), float(np.percentile(samples, 100 - q))


def approach2(data: object, *, n_points: int | None = 5, bootstrap: int = 200, seed: int = 0,
              ci_level: float = 0.95, budget_rtol: float = 0.05, columns: Mapping[str, str] | None = None,
              nan_policy: str = "raise", flops_per_param_token: float = 6.0) -> IsoFlopResult:
    """Chinchilla Approach 2 on IsoFLOP data (rows with N, loss and C, or N and D).

    n_points: how many points nearest each budget's minimum the parabola uses (None: all of them).
    budget_rtol: C values within this relative distance are one budget (nominal budgets drift a little).
    bootstrap: replicates resampling each budget's window points with replacement (percentile CIs).
    """
    if n_points is not None and n_points < 3:
        raise ValueError(f"n_points must be >= 3 (a parabola has 3 coefficients): got {n_points}")
    sd = load(data, columns=columns, required=("N", "C"), nan_policy=nan_policy,
              flops_per_param_token=flops_per_param_token)
    k = sd.flops_per_param_token
    C, lnN, loss = sd.columns["C"], np.log(sd.columns["N"]), sd.columns["loss"]
    labels = group_budgets(C, budget_rtol)
    budgets, windows, skipped = [], [], []
    rows = []
    for g in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == g)
        c = float(np.exp(np.mean(np.log(C[idx]))))
        win = idx[_window(lnN[idx], loss[idx], n_points)]
        v = _vertex(lnN[win], loss[win])
        if v is None:
            skipped.append((c, f"{len(idx)} points: fewer than 3 distinct N or no minimum (curvature <= 0)"))
            continue
        budgets.append(c)
        windows.append(win)
        rows.append(v)
    if len(budgets) < 2:
        raise ValueError(f"data: need at least 2 budgets with a parabola minimum, found {len(budgets)} "
                         f"(skipped: {skipped})")
    B_arr = np.array(budgets)
    N_opt = np.exp(np.array([r[0] for r in rows]))
    D_opt = B_arr / (k * N_opt)
    a, cN = _powerlaw(B_arr, N_opt)
    b, cD = _powerlaw(B_arr, D_opt)
    result = IsoFlopResult("approach2", B_arr, N_opt, D_opt, np.array([r[1] for r in rows]), a, b, cN, cD,
                           ci_level=ci_level, flops_per_param_token=k, skipped=skipped)
    if bootstrap:
        rng = np.random.default_rng(seed)
        sa, sb = np.full(bootstrap, np.nan), np.full(bootstrap, np.nan)
        for r in range(bootstrap):
            nb = []
            for win in windows:
                pick = win[rng.integers(0, len(win), len(win))]
                v = _vertex(lnN[pick], loss[pick])
                nb.append(math.exp(v[0]) if v is not None else np.nan)
            nb = np.array(nb)
            ok = np.isfinite(nb)
            if ok.sum() >= 2:
                sa[r] = _powerlaw(B_arr[ok], nb[ok])[0]
                sb[r] = _powerlaw(B_arr[ok], B_arr[ok] / (k * nb[ok]))[0]
        result.ci_a, result.ci_b, result.n_bootstrap = _ci(sa, ci_level), _ci(sb, ci_level), bootstrap
    return result


def _envelope(C: np.ndarray, N: np.ndarray, loss: np.ndarray, codes: np.ndarray, runs: np.ndarray,
              grid: np.ndarray) -> np.ndarray:
    """N of the run with the lowest (log-C interpolated) loss at each grid C; NaN where < 2 runs cover C."""
    best = np.full(len(grid), np.inf)
    best_n = np.full(len(grid), np.nan)
    cover = np.zeros(len(grid), dtype=np.int64)
    lg = np.log(grid)
    for code in runs:
        rows = np.flatnonzero(codes == code)
        order = rows[np.argsort(C[rows], kind="stable")]
        lc = np.log(C[order])
        inside = (lg >= lc[0]) & (lg <= lc[-1])
        if not inside.any():
            continue
        interp = np.interp(lg[inside], lc, loss[order])
        cover[inside] += 1
        sel = np.flatnonzero(inside)
        better = interp < best[sel]
        best[sel[better]] = interp[better]
        best_n[sel[better]] = N[order[0]]
    best_n[cover < 2] = np.nan
    return best_n


def approach1(data: object, *, n_flops: int = 200, bootstrap: int = 200, seed: int = 0, ci_level: float = 0.95,
              columns: Mapping[str, str] | None = None, nan_policy: str = "raise",
              flops_per_param_token: float = 6.0) -> IsoFlopResult:
    """Chinchilla Approach 1: lower envelope of step-level loss curves over compute.

    data: one row per checkpoint with N, D (tokens seen so far), loss and run. At each of `n_flops`
    log-spaced budgets the run with the lowest interpolated loss gives N_opt; D_opt = C/(kN_opt).
    bootstrap resamples runs.
    """
    sd = load(data, columns=columns, required=("N", "D", "C", "run"), nan_policy=nan_policy,
              flops_per_param_token=flops_per_param_token)
    k = sd.flops_per_param_token
    C, N, loss = sd.columns["C"], sd.columns["N"], sd.columns["loss"]
    codes = sd.groups()
    n_runs = int(codes.max()) + 1
    if n_runs < 2:
        raise ValueError("data: Approach 1 needs at least 2 runs (a `run` column)")
    grid = np.exp(np.linspace(np.log(C.min()), np.log(C.max()), n_flops))
    best_n = _envelope(C, N, loss, codes, np.arange(n_runs), grid)
    ok = np.isfinite(best_n)
    if len(np.unique(best_n[ok])) < 2:
        raise ValueError("data: the lower envelope uses fewer than 2 distinct model sizes; cannot fit a power law")
    a, cN = _powerlaw(grid[ok], best_n[ok])
    b, cD = _powerlaw(grid[ok], grid[ok] / (k * best_n[ok]))
    loss_opt = np.full(ok.sum(), np.nan)
    result = IsoFlopResult("approach1", grid[ok], best_n[ok], grid[ok] / (k * best_n[ok]), loss_opt, a, b, cN, cD,
                           ci_level=ci_level, flops_per_param_token=k)
    if bootstrap:
        rng = np.random.default_rng(seed)
        sa = np.full(bootstrap, np.nan)
        for r in range(bootstrap):
            pick = rng.integers(0, n_runs, n_runs)
            # A run drawn twice adds nothing to a minimum, so the envelope of the distinct draws is the replicate.
            bn = _envelope(C, N, loss, codes, np.unique(pick), grid)
            good = np.isfinite(bn)
            if len(np.unique(bn[good])) >= 2:
                sa[r] = _powerlaw(grid[good], bn[good])[0]
        result.ci_a = _ci(sa, ci_level)
        result.ci_b = None if result.ci_a is None else (1.0 - result.ci_a[1], 1.0 - result.ci_a[0])
        result.n_bootstrap = bootstrap
    return result


__all__ = ["IsoFlopResult", "approach1", "approach2", "group_budgets"]
