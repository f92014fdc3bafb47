"""IsoFLOP analysis: compute-optimal N and D as power laws of compute (Hoffmann et al. 2022).

Approach 2: for each compute budget, fit a parabola of loss against ln N through the points nearest the
minimum (points far from it bend the parabola and bias N_opt), take its vertex, then fit
N_opt = c_N C^a and D_opt = c_D C^b across budgets, with CIs from a residual bootstrap of the whole pipeline.
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
    n_points: int | None = None  # Approach 2's window (None: every point of a budget)
    bootstrap_failed: int = 0  # replicates that could not be refitted (excluded from the intervals)
    bootstrap_method: str = ""

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
                "bootstrap_failed": self.bootstrap_failed, "bootstrap_method": self.bootstrap_method,
                "n_points": self.n_points, "flops_convention": self.flops_convention, "skipped": self.skipped}


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


# The window's default, from the experiment in tests/scaling/test_isoflop_coverage.py: 9 budgets of synthetic
# IsoFLOP curves (Hoffmann's 6e18-3e21), three asymmetric samplings (9, 12, 15 sizes a budget), 0.1, 0.25 and
# 0.5 % noise, 100 seeds a cell. With 8 points the 95 % interval covered the true exponent in 88-98 % of seeds in
# every cell, with a median error of 0.0015-0.0127; every point of a budget (the curve's far ends bend the
# parabola) fell to 64-79 % coverage at 0.1 % noise, and 3 points had 2-4x the error at 0.5 % noise.
DEFAULT_POINTS = 8
_WINDOW_ITERATIONS = 5


def _window_operators(lnN: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For every block of k consecutive points (lnN sorted): the least-squares operator (3, k) that maps the
    block's losses to parabola coefficients (c2, c1, c0), and whether the block has 3 distinct N."""
    starts = len(lnN) - k + 1
    ops = np.empty((starts, 3, k))
    ok = np.empty(starts, dtype=bool)
    for s in range(starts):
        u = lnN[s : s + k]
        ops[s] = np.linalg.pinv(np.vander(u, 3))
        ok[s] = len(np.unique(u)) >= 3
    return ops, ok


def _vertices(lnN: np.ndarray, Y: np.ndarray, n_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The parabola vertex (ln N, loss) of each row of losses Y (replicates, points), lnN sorted ascending.

    The window is the n_points points nearest the minimum: it starts around the lowest loss and moves to the
    block nearest the fitted vertex until it stays put, so that it sits as evenly around the minimum as the
    data allow (an off-centre window bends the parabola). NaN where the parabola has no minimum.
    """
    n, rows = len(lnN), np.arange(len(Y))
    k = n if n_points is None else min(n_points, n)
    ops, block_ok = _window_operators(lnN, k)
    first, last = lnN[: n - k + 1], lnN[k - 1 :]
    start = np.clip(np.argmin(Y, axis=1) - k // 2, 0, n - k)

    def fit(start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        window = Y[rows[:, None], start[:, None] + np.arange(k)]
        c2, c1, c0 = np.einsum("rk,rjk->jr", window, ops[start])
        good = (c2 > 0) & block_ok[start]
        with np.errstate(all="ignore"):
            u = np.where(good, -c1 / (2.0 * c2), np.nan)
            return u, np.where(good, c0 - c1 * c1 / (4.0 * c2), np.nan), good

    for _ in range(_WINDOW_ITERATIONS):
        u, _, good = fit(start)
        with np.errstate(invalid="ignore"):
            nearest = np.argmin(np.maximum(np.abs(first - u[:, None]), np.abs(last - u[:, None])), axis=1)
        moved = np.where(good, nearest, start)
        if np.array_equal(moved, start):
            break
        start = moved
    u, loss, _ = fit(start)
    return u, loss


def _powerlaw(C: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(C), np.log(y), 1)
    return float(slope), float(math.exp(intercept))


def _ci(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    q = 100 * (1 - level) / 2
    return float(np.percentile(samples, q)), float(np.percentile(samples, 100 - q))


def _smooth(lnN: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, int]:
    """A budget's loss curve smoothed by a polynomial in ln N (degree up to 4, as the points allow), and the
    residual degrees of freedom it leaves: the mean of the residual bootstrap."""
    distinct = len(np.unique(lnN))
    degree = max(2, min(4, distinct - 2))
    fitted = np.polyval(np.polyfit(lnN, loss, degree), lnN)
    return fitted, max(len(lnN) - degree - 1, 0)


@dataclass
class _Curve:
    """One budget's IsoFLOP curve: its compute, ln N ascending and the losses in that order."""

    flops: float
    lnN: np.ndarray
    loss: np.ndarray


def _residual_bootstrap(curves: list[_Curve], n_points: int | None, B: int, seed: int
                        ) -> tuple[np.ndarray, str]:
    """Exponents a of B replicates of the whole pipeline (windows, parabolas, power law), NaN for a failed
    replicate, and how they were drawn.

    Every replicate keeps each budget's model sizes and draws its losses as the budget's smoothed curve times
    (1 + a relative residual drawn from all budgets' residuals), so every budget keeps >= 3 distinct sizes
    and can always be refitted (resampling points instead leaves too few distinct sizes in a small window).
    """
    smooth, residuals, dof = [], [], 0
    for c in curves:
        fitted, d = _smooth(c.lnN, c.loss)
        smooth.append(fitted)
        residuals.append(c.loss / fitted - 1.0)
        dof += d
    pool = np.concatenate(residuals)
    if dof == 0:
        return np.full(B, np.nan), "none: the curves leave no residual degrees of freedom (too few points per budget)"
    pool = (pool - pool.mean()) * math.sqrt(pool.size / dof)  # the residuals' spread, not the smoother's fit
    rng = np.random.default_rng(seed)
    x = np.log([c.flops for c in curves])
    vertices = np.empty((B, len(curves)))
    for j, (c, fitted) in enumerate(zip(curves, smooth)):
        draws = pool[rng.integers(0, pool.size, (B, len(c.lnN)))]
        vertices[:, j] = _vertices(c.lnN, fitted * (1.0 + draws), n_points)[0]
    # As in the fit itself, a budget whose parabola has no minimum is left out of that replicate's power
    # law; a replicate fails only when fewer than 2 budgets remain.
    m = np.isfinite(vertices)
    v = np.where(m, vertices, 0.0)
    count = m.sum(axis=1)
    with np.errstate(all="ignore"):
        xbar = (m * x).sum(axis=1) / count
        vbar = v.sum(axis=1) / count
        dx = np.where(m, x - xbar[:, None], 0.0)
        a = (dx * (v - vbar[:, None])).sum(axis=1) / (dx * dx).sum(axis=1)
    a[count < 2] = np.nan
    return a, ("residual bootstrap of each budget's smoothed curve (relative residuals pooled over budgets), "
               "the whole pipeline refitted per replicate")


def approach2(data: object, *, n_points: int | None = DEFAULT_POINTS, bootstrap: int = 200, seed: int = 0,
              ci_level: float = 0.95, budget_rtol: float = 0.05, columns: Mapping[str, str] | None = None,
              nan_policy: str = "raise", flops_per_param_token: float = 6.0) -> IsoFlopResult:
    """Chinchilla Approach 2 on IsoFLOP data (rows with N, loss and C, or N and D).

    n_points: how many points nearest each budget's minimum the parabola uses (None: all of them; default
        DEFAULT_POINTS, chosen by experiment: see its comment). `pyscale fit --isoflop-points K`.
    budget_rtol: C values within this relative distance are one budget (nominal budgets drift a little).
    bootstrap: replicates of a residual bootstrap that refits the whole pipeline (percentile CIs of a and b;
        `bootstrap_failed` counts replicates left with fewer than 2 budgets whose parabola has a minimum).
    """
    if n_points is not None and (isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 3):
        raise ValueError(f"n_points must be an int >= 3 (a parabola has 3 coefficients) or None: got {n_points!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0: got {bootstrap}")
    sd = load(data, columns=columns, required=("N", "C"), nan_policy=nan_policy,
              flops_per_param_token=flops_per_param_token)
    k = sd.flops_per_param_token
    C, lnN, loss = sd.columns["C"], np.log(sd.columns["N"]), sd.columns["loss"]
    labels = group_budgets(C, budget_rtol)
    curves, rows, skipped = [], [], []
    for g in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == g)
        idx = idx[np.argsort(lnN[idx], kind="stable")]
        c = float(np.exp(np.mean(np.log(C[idx]))))
        if len(np.unique(lnN[idx])) < 3:
            skipped.append((c, f"{len(idx)} points: fewer than 3 distinct N"))
            continue
        u, lmin = _vertices(lnN[idx], loss[idx][None, :], n_points)
        if not np.isfinite(u[0]):
            skipped.append((c, f"{len(idx)} points: the parabola has no minimum (curvature <= 0)"))
            continue
        curves.append(_Curve(c, lnN[idx], loss[idx]))
        rows.append((float(u[0]), float(lmin[0])))
    if len(curves) < 2:
        raise ValueError(f"data: need at least 2 budgets with a parabola minimum, found {len(curves)} "
                         f"(skipped: {skipped})")
    B_arr = np.array([c.flops for c in curves])
    N_opt = np.exp(np.array([r[0] for r in rows]))
    D_opt = B_arr / (k * N_opt)
    a, cN = _powerlaw(B_arr, N_opt)
    b, cD = _powerlaw(B_arr, D_opt)
    result = IsoFlopResult("approach2", B_arr, N_opt, D_opt, np.array([r[1] for r in rows]), a, b, cN, cD,
                           ci_level=ci_level, flops_per_param_token=k, skipped=skipped, n_points=n_points)
    if bootstrap:
        sa, how = _residual_bootstrap(curves, n_points, bootstrap, seed)
        result.ci_a = _ci(sa, ci_level)
        # D_opt = C/(k N_opt): b = 1 - a in every replicate
        result.ci_b = None if result.ci_a is None else (1.0 - result.ci_a[1], 1.0 - result.ci_a[0])
        result.n_bootstrap, result.bootstrap_failed = bootstrap, int(np.sum(~np.isfinite(sa)))
        result.bootstrap_method = how
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


__all__ = ["DEFAULT_POINTS", "IsoFlopResult", "approach1", "approach2", "group_budgets"]
