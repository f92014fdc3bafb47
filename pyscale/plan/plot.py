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


def iso_loss_figure(plan: Any, law: Any, *, others: dict[str, Any] | None = None, n_levels: int = 12) -> Any:
    """The iso-loss figure: loss contours over (N, D) with a colorbar, the budget's line C = k·N·D, and the
    point each plan picks, filled with its predicted loss on the contours' colour scale (one Normalize)."""
    from pyscale.scaling.plot import DPI, _legend_below, label_contours, nice_levels, shared_norm

    plt = _pyplot()
    n0, d0 = plan.n_params, plan.tokens
    ns = np.logspace(math.log10(n0) - 2, math.log10(n0) + 2, 160)
    ds = np.logspace(math.log10(d0) - 2, math.log10(d0) + 2, 160)
    NN, DD = np.meshgrid(ns, ds)
    L = law.predict(NN.ravel(), DD.ravel()).reshape(NN.shape)
    picked = {f"{plan.objective}-optimal plan (loss {plan.predicted_loss:.3f})": (n0, d0, plan.predicted_loss, "o", "red")}
    if plan.flops_optimal:
        fo = plan.flops_optimal
        picked[f"FLOPs-optimal at the same compute (loss {fo['loss']:.3f})"] = (fo["N"], fo["D"], fo["loss"], "X",
                                                                               "black")
    for name, other in (others or {}).items():
        picked[name] = (other.n_params, other.tokens, other.predicted_loss, "^", "black")
    levels = nice_levels(L, n_levels)
    norm = shared_norm(levels, [v[2] for v in picked.values()])
    fig, ax = plt.subplots(figsize=(7.5, 6.2), dpi=DPI)
    cs = ax.contour(NN, DD, L, levels=levels, cmap="viridis", norm=norm, linewidths=1.0)
    k = law.flops_per_param_token
    ax.plot(ns, plan.training_flops / (k * ns), "k--", lw=1,
            label=f"C = {plan.training_flops:.3g} FLOPs (the plan's compute)")
    for name, (n, d, loss, marker, edge) in picked.items():
        ax.scatter([n], [d], c=[loss], cmap="viridis", norm=norm, marker=marker, s=90, edgecolors=edge,
                   linewidths=2, zorder=5, label=name)
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cs.cmap), ax=ax, label=f"predicted loss ({plan.law})")
    ax.set(xscale="log", yscale="log", xlabel="N (parameters)", ylabel="D (tokens)", xlim=(ns[0], ns[-1]),
           ylim=(ds[0], ds[-1]), title=f"iso-loss contours of {plan.law}")
    _legend_below(ax, ncol=1)
    fig.tight_layout()
    label_contours(ax, cs)
    return fig


def iso_loss(plan: Any, law: Any, path: str | Path, *, others: dict[str, Any] | None = None) -> Path:
    """Write the iso-loss figure (`iso_loss_figure`) to `path`."""
    from pyscale.scaling.plot import DPI

    plt = _pyplot()
    fig = iso_loss_figure(plan, law, others=others)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


ZOOM = 3.0  # the time-energy axes reach this many times the Pareto front's largest time and energy


def pareto_figure(points: list[dict[str, float]]) -> Any:
    """Time-energy trade-off of plans that reach the same loss (points: time_s, energy_kwh, n_params, and
    power_limit_w when a power-limit model priced them): the candidates, coloured by power limit when they
    have one, and their Pareto front (`pareto_front`) over every (size, limit) point."""
    from pyscale.plan.pareto import pareto_front

    plt = _pyplot()
    pts = sorted((p for p in points if p.get("time_s") and p.get("energy_kwh")), key=lambda p: p["time_s"])
    front = pareto_front(pts, energy_key="energy_kwh")
    # The equal-loss candidates span decades of size; the trade-off lives near the front, so the axes show
    # the candidates within ZOOM x the front's extent on both axes, and the title counts the rest.
    if front:
        t_max, e_max = (ZOOM * max(p[k] for p in front) for k in ("time_s", "energy_kwh"))
        shown = [p for p in pts if p["time_s"] <= t_max and p["energy_kwh"] <= e_max]
        hidden, pts = len(pts) - len(shown), shown
    else:
        hidden = 0
    limits = sorted({p["power_limit_w"] for p in pts if p.get("power_limit_w") is not None})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if limits:
        colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(limits)))
        for limit, colour in zip(limits, colours):
            at = [p for p in pts if p.get("power_limit_w") == limit]
            ax.scatter([p["time_s"] / 3600 for p in at], [p["energy_kwh"] for p in at], s=12, color=colour,
                       label=f"candidate sizes at {limit:g} W")
        title = "time vs energy at equal loss (one point per model size and power limit)"
    else:
        ax.scatter([p["time_s"] / 3600 for p in pts], [p["energy_kwh"] for p in pts], s=12, color="0.6",
                   label="candidate sizes")
        title = "time vs energy at equal loss (one point per model size)"
    ax.plot([p["time_s"] / 3600 for p in front], [p["energy_kwh"] for p in front], "r.-", label="Pareto front")
    if hidden:
        title += f"\n{hidden} candidates more than {ZOOM:g}x the front's time or energy are off the axes"
    ax.set(xscale="log", yscale="log", xlabel="training time (h)", ylabel="GPU energy (kWh)", title=title)
    if limits or hidden:
        ax.title.set_fontsize(9)  # the longer title fits the figure
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto(points: list[dict[str, float]], path: str | Path) -> Path:
    """Write the time-energy figure (`pareto_figure`) to `path`."""
    plt = _pyplot()
    fig = pareto_figure(points)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
