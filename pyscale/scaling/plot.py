"""Plots of a fit: the (C, N) plane with iso-loss contours and the efficient frontier, loss against
compute, and residuals. matplotlib is imported here only (headless Agg backend when writing a file)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyscale.scaling.fit import FitResult


def plot_fit(result: FitResult, path: str | os.PathLike | None = None, *, n_levels: int = 12) -> Any:
    """Draw `result`; save to `path` when given. Returns the matplotlib Figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sd = result.data
    if sd is None:
        raise ValueError("result: carries no data to plot (fit() records it)")
    law, k = result.law, result.flops_per_param_token
    y = result.observed
    has_nd = {"N", "D"} <= set(law.inputs) and {"N", "D"} <= set(sd.columns)
    C = sd.columns.get("C")
    if C is None and has_nd:
        C = k * sd.columns["N"] * sd.columns["D"]
    x = C if C is not None else result.predicted
    xlabel = f"compute C (FLOPs, {result.flops_convention})" if C is not None else f"predicted {law.target}"

    fig, axes = plt.subplots(1, 3 if has_nd else 2, figsize=(16 if has_nd else 11, 4.8))
    axes = np.atleast_1d(axes)
    ax_i = 0
    frontier = None
    if has_nd:
        from pyscale.scaling.frontier import compute_optimal

        ax = axes[ax_i]
        ax_i += 1
        N = sd.columns["N"]
        c_lo, c_hi = np.log10(C.min()) - 0.5, np.log10(C.max()) + 1.0
        n_lo, n_hi = np.log10(N.min()) - 0.5, np.log10(N.max()) + 1.0
        cc, nn = np.meshgrid(np.logspace(c_lo, c_hi, 120), np.logspace(n_lo, n_hi, 120))
        try:
            z = law.predict(result.params, N=nn, D=cc / (k * nn), **_extra_inputs(result))
            levels = np.quantile(z[np.isfinite(z)], np.linspace(0.02, 0.9, n_levels))
            cs = ax.contour(cc, nn, z, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
            ax.clabel(cs, fontsize=7, fmt="%.2f")
            budgets = np.logspace(c_lo, c_hi, 60)
            frontier = compute_optimal(result, budgets, **_extra_inputs(result))
            ax.plot(budgets, frontier.N, "r-", lw=2, label="efficient frontier N*(C)")
        except (ValueError, FloatingPointError):
            frontier = None
        sc = ax.scatter(C, N, c=y, cmap="viridis", s=14, edgecolors="k", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label=law.target)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="N (parameters)",
               title="iso-loss contours", xlim=(10 ** c_lo, 10 ** c_hi), ylim=(10 ** n_lo, 10 ** n_hi))
        ax.legend(loc="upper left", fontsize=8)

    ax = axes[ax_i]
    ax_i += 1
    ax.scatter(x, y, s=12, alpha=0.7, label="runs")
    if frontier is not None:
        ax.plot(frontier.flops, frontier.loss, "r-", lw=2, label="compute-optimal loss")
        ax.set_ylim(0.98 * min(y.min(), np.nanmin(frontier.loss)), 1.02 * y.max())
    ax.set(xscale="log" if C is not None else "linear", xlabel=xlabel, ylabel=law.target,
           title=f"{law.name}: {law.formula}")
    ax.legend(fontsize=8)

    ax = axes[ax_i]
    ax.axhline(0.0, color="k", lw=0.8)
    ax.scatter(x, result.residuals, s=12, alpha=0.7)
    ax.set(xscale="log" if C is not None else "linear", xlabel=xlabel,
           ylabel="log(predicted) - log(observed)", title="residuals")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def _extra_inputs(result: FitResult) -> dict[str, float]:
    """Inputs other than N and D (e.g. U, G) held at their median so the (C, N) plane can be drawn."""
    sd = result.data
    return {c: float(np.median(sd.columns[c])) for c in result.law.inputs if c not in ("N", "D")}


__all__ = ["plot_fit"]
