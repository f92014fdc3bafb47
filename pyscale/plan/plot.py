"""Plan plots: iso-loss contours over (N, D) with the budget line and chosen points; time-energy front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def iso_loss(plan: Any, law: Any, path: str | Path, *, others: dict[str, Any] | None = None) -> Path:
    """Loss contours over (N, D), the budget's line C = k·N·D, and the point each plan picks."""
    plt = _pyplot()
    n0, d0 = plan.n_params, plan.tokens
    ns = np.logspace(math.log10(n0) - 2, math.log10(n0) + 2, 160)
    ds = np.logspace(math.log10(d0) - 2, math.log10(d0) + 2, 160)
    NN, DD = np.meshgrid(ns, ds)
    L = law.predict(NN.ravel(), DD.ravel()).reshape(NN.shape)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    cs = ax.contour(NN, DD, L, levels=14, cmap="viridis")
    ax.clabel(cs, fmt="%.2f", fontsize=7)
    k = law.flops_per_param_token
    ax.plot(ns, plan.training_flops / (k * ns), "k--", lw=1, label=f"C = {plan.training_flops:.3g} FLOPs")
    ax.scatter([n0], [d0], color="red", zorder=5, label=f"{plan.objective}-optimal plan")
    if plan.flops_optimal:
        ax.scatter([plan.flops_optimal["N"]], [plan.flops_optimal["D"]], color="black", marker="x", zorder=5,
                   label="FLOPs-optimal at the same compute")
    for name, other in (others or {}).items():
        ax.scatter([other.n_params], [other.tokens], marker="^", zorder=5, label=name)
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="tokens D",
           title=f"iso-loss contours of {plan.law}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def pareto(points: list[dict[str, float]], path: str | Path) -> Path:
    """Time-energy trade-off of plans that reach the same loss (points: time_s, energy_kwh, n_params)."""
    plt = _pyplot()
    pts = sorted((p for p in points if p.get("time_s") and p.get("energy_kwh")), key=lambda p: p["time_s"])
    front, best = [], math.inf
    for p in pts:
        if p["energy_kwh"] < best:
            front.append(p)
            best = p["energy_kwh"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([p["time_s"] / 3600 for p in pts], [p["energy_kwh"] for p in pts], s=12, color="0.6",
               label="candidate sizes")
    ax.plot([p["time_s"] / 3600 for p in front], [p["energy_kwh"] for p in front], "r.-", label="Pareto front")
    ax.set(xscale="log", yscale="log", xlabel="training time (h)", ylabel="GPU energy (kWh)",
           title="time vs energy at equal loss (one point per model size)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
