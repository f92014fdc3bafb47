"""Plots of a fit: the (C, N) plane with iso-loss contours and the efficient frontier, loss against
compute, and residuals. matplotlib is imported here only (headless Agg backend when writing a file).

Contours and points of one quantity share one colour scale (one `Normalize`, the colorbar's), legends sit
outside the axes, and contour labels are placed where they collide with nothing (`label_contours`, also
used by the plan's plots).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyscale.scaling.fit import FitResult

DPI = 120
LABEL_GID = "contour-label"  # the gid of each label `label_contours` places, with ":<level index>"


def shared_norm(*values: Any) -> Any:
    """One matplotlib Normalize over the finite values of every array given (contour levels, point colours)."""
    from matplotlib.colors import Normalize

    finite = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in values])
    finite = finite[np.isfinite(finite)]
    return Normalize(vmin=float(finite.min()), vmax=float(finite.max()))


def nice_levels(z: np.ndarray, n: int, span: tuple[float, float] | None = None) -> np.ndarray:
    """About `n` contour levels over `span` (the values that matter: the runs' losses), else over the bulk
    of `z` (2nd to 90th percentile, so that a corner of huge values does not take every colour), rounded
    to 2 significant digits of their spacing."""
    finite = z[np.isfinite(z)]
    lo, hi = span if span is not None else np.quantile(finite, [0.02, 0.9])
    step = (hi - lo) / max(n - 1, 1)
    digits = max(0, 1 - int(np.floor(np.log10(step)))) if step > 0 else 2
    return np.unique(np.round(np.linspace(lo, hi, n), digits))


def _display_points(ax: Any, xy: np.ndarray, spacing_px: float = 3.0) -> np.ndarray:
    """Points of a polyline in display coordinates, at most `spacing_px` apart (so a label over the line
    between two vertices is seen too)."""
    pts = ax.transData.transform(np.asarray(xy, dtype=float))
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < 2:
        return pts
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = int(np.ceil(np.hypot(*(b - a)) / spacing_px))
        if n > 1:
            t = np.linspace(0, 1, n + 1)[1:, None]
            out.append(a + t * (b - a))
        else:
            out.append(b[None])
    return np.concatenate(out)


def label_contours(ax: Any, cs: Any, *, fmt: str = "{:.2f}", fontsize: float = 7, norm: Any = None,
                   cmap: Any = None) -> list[Any]:
    """Label each level of the contour set `cs` once, horizontally, framed in the level's colour, where the
    label's box overlaps no other label, no other contour, no line or point of `ax`, no legend, and stays
    inside the axes. A level without such a place stays unlabelled: the colorbar still names it.

    Call it last, after the layout is final (labels are placed in display coordinates)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer).padded(-2)
    blocked = [leg.get_window_extent(renderer) for leg in [ax.get_legend(), *fig.legends] if leg is not None]
    from matplotlib.collections import PathCollection

    lines = [_display_points(ax, line.get_xydata()) for line in ax.get_lines()]
    points = [ax.transData.transform(c.get_offsets()) for c in ax.collections
              if isinstance(c, PathCollection) and len(c.get_offsets())]  # scatter points
    levels = list(cs.levels)
    contours = [[_display_points(ax, seg) for seg in segs if len(seg) > 1] for segs in cs.allsegs]
    norm = norm or cs.norm
    cmap = cmap or cs.cmap
    placed: list[Any] = []
    boxes: list[Any] = []
    for i, level in enumerate(levels):
        others = [p for j, segs in enumerate(contours) if j != i for p in segs] + lines + points
        obstacles = np.concatenate(others) if others else np.empty((0, 2))
        candidates = []
        for seg in contours[i]:
            ok = seg[(seg[:, 0] >= inside.x0) & (seg[:, 0] <= inside.x1) & (seg[:, 1] >= inside.y0)
                     & (seg[:, 1] <= inside.y1)]
            if len(ok) == 0:
                continue
            order = np.argsort(np.abs(np.arange(len(ok)) - len(ok) / 2))  # from the middle outwards
            candidates.extend(ok[order[::8]])
        for x, y in candidates:
            data_xy = ax.transData.inverted().transform((x, y))
            text = ax.text(*data_xy, fmt.format(level), fontsize=fontsize, ha="center", va="center", zorder=6,
                           gid=f"{LABEL_GID}:{i}", bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                                "edgecolor": cmap(norm(level)), "linewidth": 0.8})
            box = text.get_window_extent(renderer).padded(2)
            clear = (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
                     and not any(box.overlaps(b) for b in boxes + blocked)
                     and not (len(obstacles) and np.any((obstacles[:, 0] >= box.x0) & (obstacles[:, 0] <= box.x1)
                                                        & (obstacles[:, 1] >= box.y0) & (obstacles[:, 1] <= box.y1))))
            if clear:
                placed.append(text)
                boxes.append(box)
                break
            text.remove()
    return placed


def label_collisions(ax: Any, cs: Any) -> list[str]:
    """What the contour labels of `ax` collide with (another label, a legend, the axes' edge, another level's
    contour, a line or a point of `ax`); [] when nothing. A check for tests and for new plots."""
    from matplotlib.collections import PathCollection

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if str(t.get_gid() or "").startswith(f"{LABEL_GID}:")]
    boxes = [t.get_window_extent(renderer) for t in texts]
    inside = ax.get_window_extent(renderer)
    legends = [leg.get_window_extent(renderer) for leg in [ax.get_legend(), *fig.legends] if leg is not None]
    lines = [_display_points(ax, line.get_xydata()) for line in ax.get_lines()]
    points = [ax.transData.transform(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
    contours = [[_display_points(ax, seg) for seg in segs if len(seg) > 1] for segs in cs.allsegs]
    problems = []
    for i, (text, box) in enumerate(zip(texts, boxes)):
        level = int(str(text.get_gid()).split(":")[1])
        name = f"label {text.get_text()!r}"
        if not (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)):
            problems.append(f"{name} leaves the axes")
        problems += [f"{name} overlaps label {texts[j].get_text()!r}" for j in range(i) if box.overlaps(boxes[j])]
        problems += [f"{name} overlaps a legend" for leg in legends if box.overlaps(leg)]
        others = [("another contour", p) for j, segs in enumerate(contours) if j != level for p in segs]
        for what, pts in [*others, *(("a line", p) for p in lines), *(("a point", p) for p in points)]:
            if len(pts) and np.any((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0)
                                   & (pts[:, 1] <= box.y1)):
                problems.append(f"{name} covers {what}")
    return problems


def _legend_below(ax: Any, ncol: int = 2) -> None:
    """The legend under the axes, where it covers no data and no label."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(ncol, len(handles)), fontsize=8,
                  frameon=False)


def plot_fit(result: FitResult, path: str | os.PathLike | None = None, *, n_levels: int = 10) -> Any:
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

    fig, axes = plt.subplots(1, 3 if has_nd else 2, figsize=(16 if has_nd else 11, 5.2), dpi=DPI)
    axes = np.atleast_1d(axes)
    ax_i = 0
    frontier = cs = None
    if has_nd:
        from pyscale.scaling.frontier import compute_optimal

        ax = axes[ax_i]
        ax_i += 1
        N = sd.columns["N"]
        c_lo, c_hi = np.log10(C.min()) - 0.5, np.log10(C.max()) + 1.0
        n_lo, n_hi = np.log10(N.min()) - 0.5, np.log10(N.max()) + 1.0
        cc, nn = np.meshgrid(np.logspace(c_lo, c_hi, 120), np.logspace(n_lo, n_hi, 120))
        levels = z = None
        try:
            z = law.predict(result.params, N=nn, D=cc / (k * nn), **_extra_inputs(result))
            levels = nice_levels(z, n_levels, span=(float(np.min(y)), float(np.max(y))))
        except (ValueError, FloatingPointError):
            z = None
        norm = shared_norm(y, *([levels] if levels is not None else []))
        if z is not None:
            cs = ax.contour(cc, nn, z, levels=levels, cmap="viridis", norm=norm, linewidths=0.8)
            try:
                budgets = np.logspace(c_lo, c_hi, 60)
                frontier = compute_optimal(result, budgets, **_extra_inputs(result))
                ax.plot(budgets, frontier.N, "r-", lw=2, label="efficient frontier N*(C)")
            except (ValueError, FloatingPointError):
                frontier = None
        sc = ax.scatter(C, N, c=y, cmap="viridis", norm=norm, s=14, edgecolors="k", linewidths=0.3, zorder=4,
                        label=f"runs (colour: observed {law.target})")
        fig.colorbar(sc, ax=ax, label=f"{law.target} (runs and contours)")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="N (parameters)",
               title="iso-loss contours", xlim=(10 ** c_lo, 10 ** c_hi), ylim=(10 ** n_lo, 10 ** n_hi))
        _legend_below(ax)

    ax = axes[ax_i]
    ax_i += 1
    ax.scatter(x, y, s=12, alpha=0.7, label="runs")
    if frontier is not None:
        ax.plot(frontier.flops, frontier.loss, "r-", lw=2, label="compute-optimal loss")
        ax.set_ylim(0.98 * min(y.min(), np.nanmin(frontier.loss)), 1.02 * y.max())
    ax.set(xscale="log" if C is not None else "linear", xlabel=xlabel, ylabel=law.target,
           title=f"{law.name}: {law.formula}")
    _legend_below(ax)

    ax = axes[ax_i]
    ax.axhline(0.0, color="k", lw=0.8)
    ax.scatter(x, result.residuals, s=12, alpha=0.7)
    ax.set(xscale="log" if C is not None else "linear", xlabel=xlabel,
           ylabel="log(predicted) - log(observed)", title="residuals")
    fig.tight_layout()
    if cs is not None:
        label_contours(axes[0], cs)
    if path is not None:
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
    return fig


def _extra_inputs(result: FitResult) -> dict[str, float]:
    """Inputs other than N and D (e.g. U, G) held at their median so the (C, N) plane can be drawn."""
    sd = result.data
    return {c: float(np.median(sd.columns[c])) for c in result.law.inputs if c not in ("N", "D")}


__all__: Sequence[str] = ["label_collisions", "label_contours", "nice_levels", "plot_fit", "shared_norm"]
