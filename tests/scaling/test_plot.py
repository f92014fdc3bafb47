"""The fit's plot: contours and runs on one colour scale (one Normalize, the colorbar's), contour labels that
collide with nothing, axes that keep their units."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from pyscale.scaling import fit  # noqa: E402
from pyscale.scaling.plot import label_collisions, plot_fit  # noqa: E402
from pyscale.scaling.synthetic import chinchilla_runs  # noqa: E402


@pytest.fixture(scope="module")
def figure():
    import matplotlib.pyplot as plt

    result = fit("chinchilla", chinchilla_runs(120, seed=4), starts="quick")
    fig = plot_fit(result)
    yield fig, result
    plt.close(fig)


def _contours(ax):
    from matplotlib.contour import ContourSet

    return next(c for c in [*ax.collections, *getattr(ax, "_children", [])] if isinstance(c, ContourSet))


def test_contours_runs_and_colorbar_share_one_colour_scale(figure):
    from matplotlib.collections import PathCollection

    fig, result = figure
    ax = fig.axes[0]
    cs = _contours(ax)
    (runs,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert cs.norm is runs.norm and runs.colorbar is not None and runs.colorbar.mappable.norm is cs.norm
    assert cs.cmap.name == runs.cmap.name
    # the scale spans the contours' levels and the runs' losses (before: the contours normalised their own)
    assert cs.norm.vmin <= min(cs.levels.min(), result.observed.min())
    assert cs.norm.vmax >= max(cs.levels.max(), result.observed.max())
    assert np.allclose(runs.get_facecolors()[:, :3], cs.to_rgba(result.observed)[:, :3])


def test_every_level_labelled_once_without_collisions(figure):
    fig, _ = figure
    ax = fig.axes[0]
    cs = _contours(ax)
    assert label_collisions(ax, cs) == []
    labels = [t for t in ax.texts if str(t.get_gid()).startswith("contour-label")]
    assert len(labels) >= len(cs.levels) - 2  # (a level with no free place may go unlabelled)
    assert len({t.get_gid() for t in labels}) == len(labels)  # once per level


def test_axes_keep_their_units(figure):
    fig, result = figure
    iso, loss, residuals = fig.axes[0], fig.axes[1], fig.axes[2]
    assert "FLOPs" in iso.get_xlabel() and "parameters" in iso.get_ylabel()
    assert "FLOPs" in loss.get_xlabel() and "FLOPs" in residuals.get_xlabel()
    assert result.law.target in fig.axes[-1].get_ylabel()  # the colorbar names what its colours mean


def test_the_collision_check_sees_a_collision(figure):
    fig, _ = figure
    ax = fig.axes[0]
    cs = _contours(ax)
    label = next(t for t in ax.texts if str(t.get_gid()).startswith("contour-label"))
    x, y = label.get_position()
    ax.scatter([x], [y], zorder=7)  # a point under the label: the check must say so
    try:
        assert any("covers a point" in p for p in label_collisions(ax, cs))
    finally:
        ax.collections[-1].remove()
