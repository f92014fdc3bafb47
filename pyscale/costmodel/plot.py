"""Roofline plot per op: measured throughput against the fitted model (PNG, matplotlib's Agg backend).

x: arithmetic intensity F/B (FLOP/byte); y: achieved FLOP/s = F/T. Measured rows are filled dots, the
model's prediction for the same rows hollow circles, the fitted asymptotes (η_c·P flat, η_m·W·I
sloped) solid lines, and the spec roofline (P, W·I) dashed when the device has one.
matplotlib is imported here only, so the rest of the cost model never needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyscale.costmodel.data import Rows
from pyscale.costmodel.runtime import RuntimeModel


def plot_roofline(rows: Rows, model: RuntimeModel, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write the roofline PNG of `rows` and `model` to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keep = (rows.flops > 0) & (rows.bytes > 0)
    if not keep.any():
        raise ValueError(f"rows: no row of {rows.op} has both flops and bytes > 0, nothing to place on a roofline")
    F, B, T = rows.flops[keep], rows.bytes[keep], rows.time_s[keep]
    intensity = F / B
    measured = F / T
    predicted = F / model.predict_time_s(F, B, rows.tiles[keep])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter(intensity, measured, s=14, label="measured", zorder=3)
    ax.scatter(intensity, predicted, s=28, facecolors="none", edgecolors="C1", label="model", zorder=3)
    grid = np.logspace(np.log10(intensity.min()) - 0.5, np.log10(intensity.max()) + 0.5, 200)
    ax.plot(grid, np.minimum(model.compute_rate_flops_per_s, model.memory_rate_bytes_per_s * grid), "C2-",
            label="fitted roofline (η·peak)")
    if model.peak_flops_per_s and model.bandwidth_bytes_per_s:
        ax.plot(grid, np.minimum(model.peak_flops_per_s, model.bandwidth_bytes_per_s * grid), "k--", lw=0.8,
                label="spec roofline")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("throughput (FLOP/s)")
    ax.set_title(title or f"{rows.op} {rows.dtype} {rows.backend} on {rows.device_name}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", lw=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
