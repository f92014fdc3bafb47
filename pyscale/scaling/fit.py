"""Robust multi-start fitting of loss laws, with run-level bootstrap confidence intervals.

The objective follows Hoffmann et al. 2022 (App. D.2): a Huber loss (delta = 1e-3) on log-space residuals
r = log(prediction) - log(observed), *summed* over runs. `space="linear"` (with loss="mse") is least squares on
the loss itself, r = prediction - observed, as `scipy.optimize.curve_fit` fits (Gadre et al. 2024). The sum matters: with the mean the objective and its
gradient shrink by 1/n and L-BFGS's gradient test (at default tolerances) stops it early, far from the
minimum; the tolerances here are also tight enough that `reduction="mean"` is only a rescaling.

Speed: every start is evaluated in one numpy call (arrays of shape (starts, rows)), and a batched L-BFGS
with projected bounds and a per-start Armijo line search runs all of them in lock-step. The grid is
screened for a few iterations, the best few continue to convergence, and the best of those are polished
with scipy's L-BFGS-B. Bootstrap replicates reuse the same machinery: a replicate is a weight vector
over rows (how often each run was drawn), every replicate starts from the best few solutions of the full
fit, and all replicates x starts run as one batch (split over threads when asked).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyscale.scaling.data import ScalingData, load
from pyscale.scaling.laws import Law, get_law

LOSSES = ("huber", "mse", "asymmetric", "huber_nll")
SPACES = ("log", "linear")
# Relative-decrease stop for bootstrap refits (no scipy polish there); tighter than the screening default.
BOOT_FTOL = 1e-13


# ---------------------------------------------------------------------------------------------------
class Objective:
    """Batched objective over the free internal parameters: f (S,) and its gradient (S, P_free).

    For loss="huber_nll" the last column is ln(sigma), the free scale of a Huber likelihood.
    """

    def __init__(self, law: Law, X: Mapping[str, np.ndarray], logy: np.ndarray, free: np.ndarray,
                 theta_fixed: np.ndarray, loss: str = "huber", delta: float = 1e-3, reduction: str = "sum",
                 asymmetry: float = 0.5, space: str = "log") -> None:
        self.law, self.X, self.logy, self.space = law, X, logy, space
        self.y = np.exp(logy) if space == "linear" else None
        self.free, self.theta_fixed = np.asarray(free), np.asarray(theta_fixed, dtype=float)
        self.loss, self.delta, self.reduction, self.asymmetry = loss, float(delta), reduction, float(asymmetry)
        self.n = len(logy)
        self.scale = loss == "huber_nll"
        if self.scale:
            d = self.delta
            # Normaliser of the Huber density exp(-rho(z)): Gaussian core plus two exponential tails.
            core = math.sqrt(2 * math.pi) * math.erf(d / math.sqrt(2))
            self.log_z = math.log(core + 2.0 * math.exp(-0.5 * d * d) / d)

    def full(self, xf: np.ndarray) -> np.ndarray:
        theta = np.broadcast_to(self.theta_fixed, (xf.shape[0], len(self.theta_fixed))).copy()
        theta[:, self.free] = xf[:, : len(self.free)]
        return theta

    def residuals(self, xf: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Residuals (S, n) in the fit's space and their derivatives by each free parameter."""
        logp, jac = self.law.log_model(self.full(xf), self.X)
        if self.space == "linear":
            pred = np.exp(logp)
            return pred - self.y, [pred * jac[k] for k in self.free]
        return logp - self.logy, [jac[k] for k in self.free]

    def _rho_psi(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.loss in ("huber", "huber_nll"):
            d = self.delta
            a = np.abs(r)
            inner = a <= d
            return np.where(inner, 0.5 * r * r, d * (a - 0.5 * d)), np.where(inner, r, d * np.sign(r))
        if self.loss == "mse":
            return r * r, 2.0 * r
        # Asymmetric squared loss: weight tau on over-prediction (r > 0), 1 - tau on under-prediction.
        wt = np.where(r > 0, self.asymmetry, 1.0 - self.asymmetry)
        return wt * r * r, 2.0 * wt * r

    def __call__(self, xf: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(all="ignore"):
            r, jac = self.residuals(xf)
            if self.scale:
                sigma = np.exp(xf[:, -1:])
                z = r / sigma
            else:
                z = r
            rho, psi = self._rho_psi(z)
            if w is not None:
                rho, psi = rho * w, psi * w
            f = rho.sum(axis=1)
            g = np.empty(xf.shape)
            for k, J in enumerate(jac):
                # einsum, not BLAS: a row's sum must not depend on how many rows share the batch.
                g[:, k] = np.einsum("sn,n->s", psi, J) if np.ndim(J) == 1 else (psi * J).sum(axis=1)
            total = np.full(len(f), float(self.n)) if w is None else w.sum(axis=1)
            if self.scale:
                g[:, : len(jac)] /= sigma
                f = f + total * (xf[:, -1] + self.log_z)
                g[:, -1] = total - (psi * z).sum(axis=1)
            if self.reduction == "mean":
                f, g = f / total, g / total[:, None]
            bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
        f[bad] = np.inf
        g[bad] = 0.0
        return f, g


def lbfgs_batch(obj: Objective, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray | None = None,
                max_iter: int = 300, m: int = 8, ftol: float = 1e-10, gtol: float = 1e-12,
                c1: float = 1e-4) -> dict[str, np.ndarray]:
    """Minimise obj from every row of x0 at once (projected L-BFGS, per-row Armijo backtracking).

    Rows never interact: each has its own history, step and stopping test, so a row's result does not
    depend on which other rows share the batch (what makes chunked, parallel bootstraps deterministic).
    """
    S, P = x0.shape
    x = np.clip(x0, lo, hi)
    f, g = obj(x, w)
    nfev = np.ones(S, dtype=np.int64)
    nit = np.zeros(S, dtype=np.int64)
    active = np.isfinite(f)
    converged = np.zeros(S, dtype=bool)
    hs, hy = np.zeros((m, S, P)), np.zeros((m, S, P))
    hrho = np.zeros((m, S))
    gamma = np.ones(S)
    has_hist = np.zeros(S, dtype=bool)
    head = 0
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xa, ga, fa = x[idx], g[idx], f[idx]
        pg = xa - np.clip(xa - ga, lo, hi)
        done = np.max(np.abs(pg), axis=1) <= gtol
        if done.any():
            converged[idx[done]] = True
            active[idx[done]] = False
            keep = ~done
            idx, xa, ga, fa = idx[keep], xa[keep], ga[keep], fa[keep]
            if idx.size == 0:
                break
        # Two-loop recursion, newest pair first; empty slots have rho = 0 and drop out.
        q = ga.copy()
        order = [(head - 1 - j) % m for j in range(m)]
        alphas = []
        for k in order:
            a_k = hrho[k, idx] * np.einsum("ij,ij->i", hs[k, idx], q)
            q -= a_k[:, None] * hy[k, idx]
            alphas.append(a_k)
        r = gamma[idx, None] * q
        for k, a_k in zip(reversed(order), reversed(alphas)):
            b_k = hrho[k, idx] * np.einsum("ij,ij->i", hy[k, idx], r)
            r += hs[k, idx] * (a_k - b_k)[:, None]
        d = -r
        blocked = ((xa <= lo) & (d < 0)) | ((xa >= hi) & (d > 0))
        d[blocked] = 0.0
        slope = np.einsum("ij,ij->i", ga, d)
        reset = ~(slope < 0)
        if reset.any():
            dg = -ga[reset]
            xr = xa[reset]
            dg[((xr <= lo) & (dg < 0)) | ((xr >= hi) & (dg > 0))] = 0.0
            d[reset] = dg
            hrho[:, idx[reset]] = 0.0
            gamma[idx[reset]] = 1.0
            has_hist[idx[reset]] = False
        t = np.ones(idx.size)
        fresh = ~has_hist[idx]
        if fresh.any():
            t[fresh] = np.minimum(1.0, 1.0 / np.maximum(np.max(np.abs(d[fresh]), axis=1), 1e-300))
        x_new, f_new, g_new = xa.copy(), fa.copy(), ga.copy()
        pending = np.arange(idx.size)
        for _ls in range(40):
            xt = np.clip(xa[pending] + t[pending, None] * d[pending], lo, hi)
            ft, gt = obj(xt, None if w is None else w[idx[pending]])
            nfev[idx[pending]] += 1
            dec = np.einsum("ij,ij->i", ga[pending], xt - xa[pending])
            ok = np.isfinite(ft) & (ft <= fa[pending] + c1 * dec)
            good = pending[ok]
            x_new[good], f_new[good], g_new[good] = xt[ok], ft[ok], gt[ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            t[pending] *= 0.5
        stalled = np.zeros(idx.size, dtype=bool)
        stalled[pending] = True
        s_vec, y_vec = x_new - xa, g_new - ga
        sy = np.einsum("ij,ij->i", s_vec, y_vec)
        yy = np.einsum("ij,ij->i", y_vec, y_vec)
        valid = (sy > 1e-12 * np.maximum(yy, 1e-300)) & ~stalled
        hs[head, idx], hy[head, idx] = s_vec, y_vec
        hrho[head, idx] = np.where(valid, 1.0 / np.where(valid, sy, 1.0), 0.0)
        gamma[idx[valid]] = sy[valid] / yy[valid]
        has_hist[idx[valid]] = True
        head = (head + 1) % m
        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        nit[idx] += 1
        small = (fa - f_new) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(f_new)), 1e-300)
        stop = stalled | small
        converged[idx[small & ~stalled]] = True
        active[idx[stop]] = False
    return {"x": x, "f": f, "nfev": nfev, "nit": nit, "converged": converged}


# ---------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """The outcome of `fit`. Parameters are public values (A, not ln A); residuals are log-space."""

    law: Law
    params: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    objective: float
    nfev: int
    nit: int
    success: bool
    message: str
    residuals: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    aic: float
    bic: float
    n: int
    n_runs: int
    n_free: int
    loss: str
    delta: float
    reduction: str
    flops_per_param_token: float = 6.0
    fixed: dict[str, float] = field(default_factory=dict)
    ci_level: float = 0.95
    n_starts: int = 0
    n_dropped: int = 0
    scale: float | None = None
    bootstrap: np.ndarray | None = None
    bootstrap_failed: int = 0
    theta: np.ndarray | None = None
    top_starts: np.ndarray | None = None
    time_s: float = 0.0
    bootstrap_time_s: float = 0.0
    data: ScalingData | None = field(default=None, repr=False)
    space: str = "log"  # where the residuals of the objective live; `residuals` above are log-space always
    stderr_asymptotic: dict[str, float] = field(default_factory=dict)  # Gauss-Newton, whatever `stderr` is
    stderr_method: str = "asymptotic"  # what `stderr` holds: "asymptotic" or "bootstrap"
    log_likelihood: float | None = None  # loss="huber_nll" only: the maximised Huber log-likelihood
    data_fingerprint: str = ""  # of the rows fitted (the law's columns): `compare` checks two fits share them
    data_flops_range: tuple[float, float] | None = None  # compute of the fitted rows (C, or k*N*D)

    @property
    def flops_convention(self) -> str:
        return f"C = {self.flops_per_param_token:g}*N*D"

    def predict(self, **inputs: Any) -> np.ndarray:
        return self.law.predict(self.params, **inputs)

    def ci_of(self, fn: Callable[[dict[str, float]], float], level: float | None = None) -> tuple[float, float]:
        """Bootstrap percentile interval of any function of the parameters (e.g. N* at a budget)."""
        if self.bootstrap is None:
            raise ValueError("ci_of: this fit has no bootstrap replicates (fit(..., bootstrap=B))")
        level = self.ci_level if level is None else level
        names = self.law.param_names
        vals = np.array([fn(dict(zip(names, row))) for row in self.bootstrap if np.all(np.isfinite(row))],
                        dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            raise ValueError("ci_of: no replicate gave a finite value")
        q = 100 * (1 - level) / 2
        return float(np.percentile(vals, q)), float(np.percentile(vals, 100 - q))

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return float(v) if v is not None and math.isfinite(v) else None

        return {
            "law": self.law.name, "formula": self.law.formula, "params": {k: num(v) for k, v in self.params.items()},
            "stderr": {k: num(v) for k, v in self.stderr.items()}, "stderr_method": self.stderr_method,
            "stderr_asymptotic": {k: num(v) for k, v in self.stderr_asymptotic.items()},
            "ci": {k: [num(lo), num(hi)] for k, (lo, hi) in self.ci.items()}, "ci_level": self.ci_level,
            "fixed": self.fixed, "objective": num(self.objective), "nfev": self.nfev, "nit": self.nit,
            "success": self.success, "message": self.message, "aic": num(self.aic), "bic": num(self.bic),
            "n": self.n, "n_runs": self.n_runs, "n_free": self.n_free, "n_dropped": self.n_dropped,
            "loss": self.loss, "delta": self.delta, "reduction": self.reduction, "space": self.space,
            "scale": self.scale, "log_likelihood": num(self.log_likelihood),
            "data_fingerprint": self.data_fingerprint,
            "data_flops_range": None if self.data_flops_range is None else list(self.data_flops_range),
            "flops_convention": self.flops_convention, "n_starts": self.n_starts,
            "bootstrap": 0 if self.bootstrap is None else len(self.bootstrap),
            "bootstrap_failed": self.bootstrap_failed,
            "rmse_log": num(float(np.sqrt(np.mean(self.residuals ** 2)))),
            "time_s": self.time_s, "bootstrap_time_s": self.bootstrap_time_s,
        }

    @property
    def stderr_label(self) -> str:
        """What `stderr` is, in words a report prints next to it."""
        if self.stderr_method == "bootstrap":
            ok = 0 if self.bootstrap is None else len(self.bootstrap) - self.bootstrap_failed
            return f"bootstrap standard deviation over {ok} replicates"
        return "asymptotic (Gauss-Newton) estimate"

    def report(self) -> str:
        """A plain-text summary (the CLI renders the same content as a rich table)."""
        lines = [f"{self.law.name}: {self.law.formula}",
                 f"  {'success' if self.success else 'FAILED'}: {self.message}",
                 f"  loss={self.loss} delta={self.delta:g} reduction={self.reduction} space={self.space}; "
                 f"{self.flops_convention}",
                 f"  n={self.n} rows, {self.n_runs} runs, {self.n_dropped} dropped; {self.n_starts} starts, "
                 f"nfev={self.nfev}",
                 f"  objective={self.objective:.6g}  AIC={self.aic:.4g}  BIC={self.bic:.4g}  "
                 f"RMSE(log)={float(np.sqrt(np.mean(self.residuals ** 2))):.3g}"]
        if self.log_likelihood is not None:
            lines.append(f"  log-likelihood={self.log_likelihood:.6g} (Huber likelihood, scale {self.scale:.4g})")
        pct = f"{100 * self.ci_level:g}% CI"
        boot = self.stderr_method == "bootstrap"
        lines.append(f"  stderr: {self.stderr_label}" + ("; asymptotic alongside" if boot else ""))
        lines.append(f"  {'param':<10}{'value':>14}{'stderr':>12}" + (f"{'asymptotic':>12}" if boot else "")
                     + f"  {pct}")
        for name, v in self.params.items():
            se = "fixed" if name in self.fixed else f"{self.stderr.get(name, float('nan')):.3g}"
            asym = "" if not boot else ("fixed" if name in self.fixed
                                        else f"{self.stderr_asymptotic.get(name, float('nan')):.3g}")
            lo_hi = self.ci.get(name)
            c = f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else ""
            lines.append(f"  {name:<10}{v:>14.6g}{se:>12}" + (f"{asym:>12}" if boot else "") + f"  {c}")
        if self.bootstrap is not None:
            lines.append(f"  bootstrap: {len(self.bootstrap)} replicates over runs, {self.bootstrap_failed} failed")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# ---------------------------------------------------------------------------------------------------
def _distinct_best(x: np.ndarray, f: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest finite f whose x differ (duplicates of a minimum add nothing)."""
    order = np.argsort(f, kind="stable")
    chosen: list[int] = []
    for i in order:
        if not np.isfinite(f[i]):
            break
        if all(np.max(np.abs(x[i] - x[j]) / (1.0 + np.abs(x[j]))) > 1e-6 for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return np.array(chosen, dtype=np.int64)


def _bootstrap_chunk(obj: Objective, W: np.ndarray, warm: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refit each replicate (a row-weight vector) from every warm start; keep each replicate's best."""
    B, k = len(W), len(warm)
    x0 = np.tile(warm, (B, 1))
    out = lbfgs_batch(obj, x0, lo, hi, w=np.repeat(W, k, axis=0), max_iter=max_iter, ftol=BOOT_FTOL)
    f = out["f"].reshape(B, k)
    best = np.argmin(f, axis=1)
    rows = np.arange(B) * k + best
    return out["x"][rows], f[np.arange(B), best], out["nfev"].reshape(B, k).sum(axis=1)


def _scipy_polish(obj: Objective, x0: np.ndarray, bounds: list[tuple[float, float]]):
    from scipy.optimize import minimize

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = obj(v[None, :])
        return float(f[0]), g[0]

    return minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                    options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12, "maxls": 50})


def _resolve_n_jobs(n_jobs: int | None, bootstrap: int) -> int:
    """Threads for the bootstrap: one unless asked. On a 2-core machine two threads (or, before, two
    processes) were no reliably faster than one for 1,000 refits (bench/RESULTS.md), so one is the default."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive int or None: got {n_jobs!r}")
    return min(n_jobs, bootstrap)


def fit(law: Law | str, data: object, *, loss: str = "huber", delta: float | None = None,
        reduction: str = "sum", starts: str | np.ndarray | Sequence[Mapping[str, float]] = "grid",
        bootstrap: int = 0, seed: int = 0, columns: Mapping[str, str] | None = None,
        nan_policy: str = "raise", fixed: Mapping[str, float] | None = None,
        flops_per_param_token: float = 6.0, asymmetry: float = 0.5, n_jobs: int | None = None,
        ci_level: float = 0.95, keep: int = 16, screen_iter: int = 25, max_iter: int = 500,
        warm_starts: int = 4, prune: int | None = 512, space: str = "log") -> FitResult:
    """Fit `law` to `data` from a grid of starts; optionally bootstrap over runs.

    law: a Law, its class or its name ("chinchilla", "kaplan", "kaplan_compute", "overtraining",
        "data_constrained", "qat", "lr_annealing", "downstream").
    data: path (CSV/Parquet), DataFrame, mapping or ScalingData; `columns`, `nan_policy` and
        `flops_per_param_token` go to `pyscale.scaling.data.load`.
    loss: "huber" (Hoffmann's; delta default 1e-3 on log residuals), "mse", "asymmetric" (weight
        `asymmetry` on over-prediction, 1 - asymmetry on under-prediction) or "huber_nll" (Huber likelihood
        with a free scale sigma; delta is then in units of sigma, default 1.345).
    reduction: "sum" (default, as Hoffmann) or "mean" (kept to show the trap: L-BFGS stops early).
    space: "log" (residuals log(prediction) - log(observed), the default) or "linear" (prediction - observed:
        with loss="mse" the least squares of `scipy.optimize.curve_fit`, as Gadre et al. 2024 fit).
    starts: "grid" (the law's full grid; Chinchilla: Hoffmann's 4,500), "quick", an (S, P) array of
        internal values, or a list of dicts of public values.
    bootstrap: number of replicates resampling runs (`run` column; rows when absent) with replacement,
        each refitted from the `warm_starts` best solutions of the full fit, over `n_jobs` threads (default 1).
        After a bootstrap `stderr` is the replicates' standard deviation; `stderr_asymptotic` keeps the
        Gauss-Newton estimate (`stderr_method` says which `stderr` is).
    fixed: public parameter values held fixed (default: the law's `default_fixed`). Every parameter may be
        fixed: the objective is then evaluated, not optimised (with loss="huber_nll" the likelihood's scale is
        still fitted), which tests a published fit against data (`pyscale.scaling.compare`).
    Search schedule: every start takes 5 L-BFGS steps; the best `prune` (None: all) take `screen_iter`;
    the best `keep` distinct ones run to convergence (`max_iter`); the best 3 are polished by scipy.
    A failed optimisation is reported in `success`/`message`; invalid input raises ValueError.
    """
    t_start = time.perf_counter()
    law = get_law(law)
    delta = _check_options(loss, delta, reduction, asymmetry, bootstrap, ci_level, space)
    sd = load(data, columns=columns, target=law.target, nan_policy=nan_policy,
              flops_per_param_token=flops_per_param_token, law=law)
    problem = _problem(law, sd, fixed, loss, delta, reduction, asymmetry, space)
    if bootstrap and problem.free.size == 0:
        raise ValueError("bootstrap: every parameter of the law is fixed, so there is nothing to resample; "
                         "give bootstrap=0 (or free a parameter)")
    x0 = _start_points(problem, starts)
    search = _optimise(problem, x0, keep=keep, screen_iter=screen_iter, max_iter=max_iter,
                       warm_starts=warm_starts, prune=prune)
    result = _statistics(problem, search, sd, ci_level=ci_level, t_start=t_start)
    if bootstrap and search.best_x is not None:
        _bootstrap(result, problem, sd, bootstrap, seed, n_jobs, max_iter)
    return result


def _check_options(loss: str, delta: float | None, reduction: str, asymmetry: float, bootstrap: int,
                   ci_level: float, space: str = "log") -> float:
    """Raise on an invalid option; return delta (its default depends on the loss)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}: got {loss!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}: got {space!r}")
    if space == "linear" and loss != "mse":
        raise ValueError(f"space='linear' is least squares on the loss itself and needs loss='mse': got "
                         f"loss={loss!r} (the Huber, asymmetric and likelihood losses are defined on log "
                         "residuals; use space='log' with them)")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean': got {reduction!r}")
    if delta is None:
        delta = 1.345 if loss == "huber_nll" else 1e-3
    if not delta > 0:
        raise ValueError(f"delta must be > 0: got {delta}")
    if not 0.0 < asymmetry < 1.0:
        raise ValueError(f"asymmetry must be in (0, 1): got {asymmetry}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0: got {bootstrap}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1): got {ci_level}")
    return float(delta)


@dataclass
class _Problem:
    """What one fit minimises: the objective over the free internal parameters, and their box.

    With loss="huber_nll" the last free coordinate is ln(sigma), which no law parameter owns.
    """

    law: Law
    obj: Objective
    free: np.ndarray  # indices into law.params of the parameters being fitted
    theta_fixed: np.ndarray  # internal values of all parameters; the free ones are overwritten
    fixed: dict[str, float]  # public values held fixed
    observed: np.ndarray  # the target column (loss), one value per row
    bounds: list[tuple[float, float]]  # of each free coordinate
    n_free: int  # free coordinates, ln(sigma) included

    @property
    def lo(self) -> np.ndarray:
        return np.array([b[0] for b in self.bounds])

    @property
    def hi(self) -> np.ndarray:
        return np.array([b[1] for b in self.bounds])


def _problem(law: Law, sd: ScalingData, fixed: Mapping[str, float] | None, loss: str, delta: float,
             reduction: str, asymmetry: float, space: str = "log") -> _Problem:
    """The objective of `law` on `sd` with `fixed` parameters held (default: the law's own)."""
    fixed = dict(law.default_fixed if fixed is None else fixed)
    unknown = sorted(set(fixed) - set(law.param_names))
    if unknown:
        raise ValueError(f"fixed: unknown parameter(s) {unknown} for law {law.name} ({list(law.param_names)})")
    free = np.array([i for i, p in enumerate(law.params) if p.name not in fixed], dtype=np.int64)
    theta_fixed = np.zeros(len(law.params))
    for i, p in enumerate(law.params):
        if p.name in fixed:
            theta_fixed[i] = p.to_internal(float(fixed[p.name]))
    n_free = int(free.size) + (1 if loss == "huber_nll" else 0)
    if sd.n <= n_free:
        raise ValueError(f"data: {sd.n} usable rows cannot determine {n_free} free parameters")
    X = law.prepare(sd.columns)
    y = sd.columns[law.target]
    obj = Objective(law, X, np.log(y), free, theta_fixed, loss, delta, reduction, asymmetry, space)
    bounds = [law.params[i].bounds for i in free]
    if loss == "huber_nll":
        bounds.append((-30.0, 5.0))  # ln(sigma)
    return _Problem(law=law, obj=obj, free=free, theta_fixed=theta_fixed, fixed=fixed, observed=y, bounds=bounds,
                    n_free=n_free)


def _start_points(problem: _Problem, starts: str | np.ndarray | Sequence[Mapping[str, float]]) -> np.ndarray:
    """Distinct starts (S, free coordinates) in internal values: the law's grid plus its guess, or the user's."""
    law, obj, free, y = problem.law, problem.obj, problem.free, problem.observed
    if free.size == 0:
        grid = np.zeros((1, len(law.params)))  # nothing to start: only the likelihood's scale, if any, is free
    elif isinstance(starts, str):
        if starts not in ("grid", "quick"):
            raise ValueError(f"starts must be 'grid', 'quick', an array or a list of dicts: got {starts!r}")
        grid = law.start_grid(starts, obj.X, y)
        grid = np.vstack([grid, law.guess(obj.X, y)[None, :]])
    elif len(starts) and isinstance(starts[0], Mapping):
        grid = np.array([law.to_internal({**law.to_public(problem.theta_fixed), **s}) for s in starts])
    else:
        grid = np.atleast_2d(np.asarray(starts, dtype=float))
        if grid.shape[1] != len(law.params):
            raise ValueError(f"starts: expected {len(law.params)} columns {list(law.param_names)}, got {grid.shape[1]}")
    x0 = np.unique(grid[:, free], axis=0)
    if obj.scale:
        # Start sigma at a robust scale of each start's residuals.
        r0, _ = obj.residuals(np.hstack([x0, np.zeros((len(x0), 1))]))
        with np.errstate(all="ignore"):
            s0 = 1.4826 * np.nanmedian(np.abs(r0), axis=1)
        x0 = np.hstack([x0, np.log(np.clip(np.nan_to_num(s0, nan=1.0, posinf=1.0), 1e-8, 1e3))[:, None]])
    return x0


@dataclass
class _Search:
    """What the optimisation found: the best free coordinates (None if no start was finite) and effort."""

    best_x: np.ndarray | None
    best_f: float
    success: bool
    message: str
    nfev: int
    nit: int
    n_starts: int
    top: np.ndarray  # the best distinct solutions, warm starts of the bootstrap refits


def _optimise(problem: _Problem, x0: np.ndarray, *, keep: int, screen_iter: int, max_iter: int,
              warm_starts: int, prune: int | None) -> _Search:
    """Screen all starts briefly, prune to the best `prune`, screen those further, continue the best `keep`
    distinct ones to convergence, and polish the best few with scipy."""
    obj, lo, hi = problem.obj, problem.lo, problem.hi
    if x0.shape[1] == 0:  # every coordinate fixed: evaluate the objective, optimise nothing
        f0 = float(obj(x0)[0][0])
        ok = math.isfinite(f0)
        return _Search(best_x=x0[0] if ok else None, best_f=f0 if ok else np.inf, success=ok,
                       message="every parameter fixed: the objective evaluated, nothing optimised" if ok
                       else "every parameter fixed and the objective is not finite at them",
                       nfev=1, nit=0, n_starts=1, top=x0 if ok else np.empty((0, 0)))
    first = lbfgs_batch(obj, x0, lo, hi, max_iter=min(5, screen_iter))
    nfev = int(first["nfev"].sum())
    if prune and len(x0) > prune:
        order = np.argsort(first["f"], kind="stable")[:prune]
        order = order[np.isfinite(first["f"][order])]
        first = lbfgs_batch(obj, first["x"][order], lo, hi, max_iter=screen_iter)
        nfev += int(first["nfev"].sum())
    sel = _distinct_best(first["x"], first["f"], keep)
    search = _Search(best_x=None, best_f=np.inf, success=False, message="no start gave a finite objective",
                     nfev=nfev, nit=int(first["nit"].max(initial=0)), n_starts=len(x0), top=np.empty((0, len(lo))))
    if not sel.size:
        return search
    second = lbfgs_batch(obj, first["x"][sel], lo, hi, max_iter=max_iter)
    search.nfev += int(second["nfev"].sum())
    search.nit += int(second["nit"].max(initial=0))
    cand = _distinct_best(second["x"], second["f"], max(3, warm_starts))
    polished = []
    for i in cand[:3]:
        res = _scipy_polish(obj, second["x"][i], problem.bounds)
        search.nfev += int(res.nfev)
        polished.append((float(res.fun), res, bool(second["converged"][i])))
    for fval, res, batch_ok in sorted(polished, key=lambda t: t[0]):
        if np.isfinite(fval):
            search.best_x, search.best_f = np.asarray(res.x), fval
            # scipy's line search can give up at a kink of the Huber loss right at the minimum; the
            # batched L-BFGS having met its own stopping test from the same point counts as converged.
            search.success = bool(res.success) or batch_ok
            search.message = str(res.message)
            if not res.success and batch_ok:
                search.message = f"converged (batched L-BFGS); scipy polish: {search.message}"
            search.nit += int(res.nit)
            break
    if search.best_x is not None:
        pool = np.vstack([search.best_x[None, :], second["x"][cand]])
        pool_f = np.concatenate([[search.best_f], second["f"][cand]])
        search.top = pool[_distinct_best(pool, pool_f, warm_starts)]
    return search


def _statistics(problem: _Problem, search: _Search, sd: ScalingData, *, ci_level: float,
                t_start: float) -> FitResult:
    """The FitResult of a search: public parameters, residuals, asymptotic standard errors and AIC/BIC
    (bootstrap intervals are added later by `_bootstrap`)."""
    law, obj = problem.law, problem.obj
    setup = {"law": law, "observed": problem.observed, "n": sd.n, "n_runs": sd.n_runs, "n_free": problem.n_free,
             "loss": obj.loss, "delta": obj.delta, "reduction": obj.reduction, "space": obj.space,
             "flops_per_param_token": sd.flops_per_param_token, "fixed": problem.fixed, "ci_level": ci_level,
             "n_starts": search.n_starts, "n_dropped": sd.n_dropped, "nfev": search.nfev, "nit": search.nit,
             "data_fingerprint": data_fingerprint(law, sd), "data_flops_range": _flops_range(sd)}
    best_x = search.best_x
    if best_x is None:
        nan = {p.name: float("nan") for p in law.params}
        return FitResult(**setup, params=nan, stderr=dict(nan), ci={}, objective=float("inf"), success=False,
                         message=search.message, residuals=np.full(sd.n, np.nan), predicted=np.full(sd.n, np.nan),
                         aic=float("nan"), bic=float("nan"), time_s=time.perf_counter() - t_start)
    theta = obj.full(best_x[None, :])[0]
    params = law.to_public(theta)
    r, jac = obj.residuals(best_x[None, :])
    r = r[0]
    log_pred = law.log_model(theta[None, :], obj.X)[0][0]
    scale = float(math.exp(best_x[-1])) if obj.scale else None
    aic, bic, log_likelihood = _information_criteria(problem, best_x, r)
    stderr = _asymptotic_stderr(problem, params, r, jac, scale)
    return FitResult(**setup, params=params, stderr=stderr, stderr_asymptotic=dict(stderr), ci={},
                     objective=search.best_f, success=search.success,
                     message=search.message + _at_bound_note(problem, best_x), residuals=log_pred - obj.logy,
                     predicted=np.exp(log_pred), aic=aic, bic=bic, scale=scale, theta=theta,
                     top_starts=search.top, time_s=time.perf_counter() - t_start, data=sd,
                     log_likelihood=log_likelihood)


def _flops_range(sd: ScalingData) -> tuple[float, float] | None:
    """(smallest, largest) training compute among the rows: C, or k*N*D; None when the data has neither."""
    cols = sd.columns
    if "C" in cols:
        c = cols["C"]
    elif "N" in cols and "D" in cols:
        c = sd.flops_per_param_token * cols["N"] * cols["D"]
    else:
        return None
    return float(np.min(c)), float(np.max(c))


def data_fingerprint(law: Law, sd: ScalingData) -> str:
    """A digest of the rows a fit used (the law's columns, in order): two fits on the same rows share it."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(set(law.required(set(sd.columns))) | {law.target}):
        col = sd.columns[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(col, dtype=float).tobytes() if col.dtype.kind in "biuf"
                      else "\x1f".join(map(str, col)).encode())
    return digest.hexdigest()[:16]


def _at_bound_note(problem: _Problem, x: np.ndarray) -> str:
    """A message suffix naming the parameters the optimum sits on a bound of ("" when none)."""
    lo, hi = problem.lo, problem.hi
    at_bound = [problem.law.params[i].name for k, i in enumerate(problem.free)
                if min(abs(x[k] - lo[k]), abs(x[k] - hi[k])) <= 1e-8 * (1 + abs(x[k]))]
    return f"; at a bound: {', '.join(at_bound)}" if at_bound else ""


def _asymptotic_stderr(problem: _Problem, params: dict[str, float], r: np.ndarray, jac: list[np.ndarray],
                       scale: float | None) -> dict[str, float]:
    """Gauss-Newton covariance s^2 (J'J)^-1 with a scale s that suits the loss (robust MAD for Huber), as
    standard errors of the public parameters (0 for fixed ones). The bootstrap CIs are the better
    uncertainty; these are the quick ones."""
    law, free, loss, n = problem.law, problem.free, problem.obj.loss, len(r)
    if free.size == 0:
        return {p.name: 0.0 for p in law.params}
    J = np.column_stack([np.broadcast_to(np.asarray(j)[0] if np.ndim(j) == 2 else j, (n,)) for j in jac])
    if loss == "huber":
        s = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    elif loss == "huber_nll":
        s = scale
    else:
        s = math.sqrt(float(np.sum(r * r)) / max(n - free.size, 1))
    with np.errstate(all="ignore"):
        cov = s * s * np.linalg.pinv(J.T @ J)
        se_int = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    stderr = {}
    for p in law.params:
        stderr[p.name] = 0.0 if p.name in problem.fixed else float("nan")
    for k, i in enumerate(free):
        p = law.params[i]
        stderr[p.name] = float(params[p.name] * se_int[k] if p.log else se_int[k])
    return stderr


def _information_criteria(problem: _Problem, best_x: np.ndarray, r: np.ndarray
                          ) -> tuple[float, float, float | None]:
    """(AIC, BIC, log-likelihood): the exact Huber likelihood for huber_nll (its log-likelihood returned), a
    Gaussian one on the fit's residuals otherwise (log-likelihood None: the loss is not a likelihood)."""
    obj, n, n_free = problem.obj, len(r), problem.n_free
    rss = float(np.sum(r * r))
    if obj.loss == "huber_nll":
        summed = Objective(problem.law, obj.X, obj.logy, problem.free, problem.theta_fixed, obj.loss, obj.delta,
                           "sum")
        nll = float(summed(best_x[None, :])[0][0])
        return 2 * nll + 2 * n_free, 2 * nll + n_free * math.log(n), -nll
    ll_term = n * math.log(max(rss / n, 1e-300))
    return ll_term + 2 * (n_free + 1), ll_term + (n_free + 1) * math.log(n), None


def bootstrap_weights(codes: np.ndarray, B: int, seed: int = 0) -> np.ndarray:
    """Row weights (B, rows) of B bootstrap replicates that draw whole groups (runs) with replacement.

    A replicate's weight on a row is how many times its run was drawn, so every checkpoint of a run moves
    together and correlated rows of one run are never split.
    """
    codes = np.asarray(codes)
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(B, n_groups))
    counts = np.zeros((B, n_groups))
    np.add.at(counts, (np.repeat(np.arange(B), n_groups), draws.ravel()), 1.0)
    return counts[:, codes]


def _bootstrap(result: FitResult, problem: _Problem, sd: ScalingData, B: int, seed: int, n_jobs: int | None,
               max_iter: int) -> None:
    """Refit B run-resampled replicates and store them, their failures and percentile CIs in `result`."""
    t0 = time.perf_counter()
    W = bootstrap_weights(sd.groups(), B, seed)
    xb, fb, nfev = _refit_replicates(problem, W, result.top_starts, n_jobs, max_iter)
    result.nfev += nfev
    law = result.law
    ok = np.isfinite(fb)
    values = np.array([[law.params[i].to_public(v) for i, v in enumerate(row)] for row in problem.obj.full(xb)])
    values[~ok] = np.nan
    result.bootstrap = values
    result.bootstrap_failed = int((~ok).sum())
    q = 100 * (1 - result.ci_level) / 2
    for i in problem.free:
        col = values[ok, i]
        if col.size:
            result.ci[law.param_names[i]] = (float(np.percentile(col, q)), float(np.percentile(col, 100 - q)))
        if col.size >= 2:
            # the replicates' spread is the standard error the intervals imply; the asymptotic one stays in
            # stderr_asymptotic (often 2-3x smaller when runs are few or the optimum is flat)
            result.stderr[law.param_names[i]] = float(np.std(col, ddof=1))
    if ok.sum() >= 2:
        result.stderr_method = "bootstrap"
    result.bootstrap_time_s = time.perf_counter() - t0


def _refit_replicates(problem: _Problem, W: np.ndarray, warm: np.ndarray, n_jobs: int | None,
                      max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Each replicate's best free coordinates (B, P) and objective (B,), and the evaluations spent, split
    over `n_jobs` threads (results do not depend on the split: `lbfgs_batch` rows never interact).

    Threads, not processes: numpy releases the GIL inside the batched objective's array operations, a thread
    needs no pickling or start-up, and a script without an `if __name__ == "__main__":` guard works.
    """
    obj, lo, hi = problem.obj, problem.lo, problem.hi
    B = len(W)
    jobs = _resolve_n_jobs(n_jobs, B)
    if jobs == 1:
        parts = [_bootstrap_chunk(obj, W, warm, lo, hi, max_iter)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            parts = list(pool.map(lambda c: _bootstrap_chunk(obj, W[c], warm, lo, hi, max_iter),
                                  np.array_split(np.arange(B), jobs)))
    xb = np.vstack([p[0] for p in parts])
    fb = np.concatenate([p[1] for p in parts])
    return xb, fb, int(sum(int(p[2].sum()) for p in parts))


__all__ = ["LOSSES", "SPACES", "FitResult", "Objective", "bootstrap_weights", "data_fingerprint", "fit", "lbfgs_batch"]
