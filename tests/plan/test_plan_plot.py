"""The plan's iso-loss plot: contours, the chosen points and the colorbar on one colour scale; labels that
collide with nothing; axes with their units."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from pyscale.plan import Budget, choose_hardware, choose_law, plan  # noqa: E402
from pyscale.plan.plot import iso_loss, iso_loss_figure  # noqa: E402
from pyscale.scaling.plot import label_collisions  # noqa: E402


@pytest.mark.parametrize("budget", [Budget("flops", 1e21), Budget("gpu_hours", 5000)])
def test_iso_loss_one_colour_scale_and_no_collisions(budget, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection
    from matplotlib.contour import ContourSet

    hardware = choose_hardware("H100 SXM", mfu=0.4, power_w=650) if budget.kind != "flops" else None
    p = plan(budget, hardware=hardware)
    fig = iso_loss_figure(p, choose_law("epoch2024"))
    ax = fig.axes[0]
    (cs,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == (2 if p.flops_optimal else 1)
    colorbars = [a._colorbar for a in fig.axes if getattr(a, "_colorbar", None) is not None]
    assert len(colorbars) == 1 and colorbars[0].mappable.norm is cs.norm
    assert all(c.norm is cs.norm for c in points)  # each point filled with its loss on the contours' scale
    assert cs.norm.vmin <= p.predicted_loss <= cs.norm.vmax
    assert label_collisions(ax, cs) == []
    assert sum(str(t.get_gid()).startswith("contour-label") for t in ax.texts) >= len(cs.levels) - 2
    assert ax.get_xlabel() == "N (parameters)" and ax.get_ylabel() == "D (tokens)"
    assert "predicted loss" in colorbars[0].ax.get_ylabel()
    plt.close(fig)
    assert iso_loss(p, choose_law("epoch2024"), tmp_path / "iso.png").stat().st_size > 10_000
