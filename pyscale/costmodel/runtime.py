"""Runtime model of one (device, op, dtype, backend): a learned roofline with wave quantisation.

    T = smax( F / (η_c · P · w^α),  B / (η_m · W) ) + t₀

* F executed FLOPs, B DRAM bytes of one call; P the dense peak FLOP/s of the dtype and W the DRAM
  bandwidth from `pyscale.hw`. When the device has no peak in `hw` (a CPU, an unknown GPU, a dtype
  the GPU has no peak for), P or W is 1 and η_c/η_m are absolute throughputs (FLOP/s, bytes/s);
  the model's `compute_units`/`memory_units` say which.
* smax(a, b) = (a^p + b^p)^(1/p), a smooth maximum (p = `smooth_p`, default 4): differentiable, and the
  ridge-point bend real kernels show instead of a sharp corner.
* w = tiles / (waves · SMs) is the wave efficiency (see `pyscale.costmodel.data`); α ∈ [0, 1] is
  learned (0: quantisation does not matter, 1: each partial wave costs a full one). Fixed at 0 when no
  row knows its tile count or the device has no SM count.
* t₀ ≥ 0 is the fixed per-call cost (launch, prologue, host overhead).
* Fitted by `scipy.optimize.least_squares` on log(T_pred / T_measured) (relative error; a robust
  soft-L1 loss so one disturbed measurement does not drag the fit), from a small grid of starts.
  With a known peak 0 < η ≤ 1.2 (above 1 only to absorb a peak quoted a little low).
* Optional residual: gradient-boosted trees (scikit-learn, the `pyscale[costmodel]` extra, imported
  only when asked) on log(T_measured / T_roofline). The trees are exported as plain arrays, so a
  saved model predicts without scikit-learn.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyscale import hw
from pyscale.costmodel.data import DEFAULT_TILE_M, DEFAULT_TILE_N, Rows, wave_efficiency

ETA_MAX_WITH_PEAK = 1.2
ETA_MIN_WITH_PEAK = 1e-4
# Absolute throughputs are searched within this factor of the best throughput the data shows.
_ABS_RANGE = 1e4


def smooth_max(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """(a^p + b^p)^(1/p) for a, b ≥ 0, computed without overflow."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m = np.maximum(a, b)
    safe = np.where(m > 0, m, 1.0)
    return np.where(m > 0, safe * ((a / safe) ** p + (b / safe) ** p) ** (1.0 / p), 0.0)


def roofline_time_s(flops: np.ndarray, bytes_: np.ndarray, wave_eff: np.ndarray, *, compute_rate: float,
                    memory_rate: float, t0_s: float, wave_alpha: float, smooth_p: float) -> np.ndarray:
    """The roofline core, vectorised; rates in FLOP/s and bytes/s."""
    t_compute = np.asarray(flops, dtype=float) / compute_rate / np.asarray(wave_eff, dtype=float) ** wave_alpha
    t_memory = np.asarray(bytes_, dtype=float) / memory_rate
    return smooth_max(t_compute, t_memory, smooth_p) + t0_s


# ---------------------------------------------------------------------------------------- residual


def residual_features(flops: np.ndarray, bytes_: np.ndarray, tiles: np.ndarray, wave_eff: np.ndarray) -> np.ndarray:
    """Op-agnostic features of the tree residual: log sizes, log intensity, tiles and wave efficiency."""
    f = np.log1p(np.asarray(flops, dtype=float))
    b = np.log1p(np.asarray(bytes_, dtype=float))
    t = np.asarray(tiles, dtype=float)
    log_tiles = np.where(np.isfinite(t), np.log1p(np.where(np.isfinite(t), t, 0.0)), -1.0)
    return np.column_stack([f, b, f - b, log_tiles, np.asarray(wave_eff, dtype=float)])


@dataclass
class TreeResidual:
    """Gradient-boosted regression trees exported as arrays (prediction needs numpy only)."""

    offset: float
    learning_rate: float
    trees: list[dict[str, list[float]]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        # scikit-learn compares float32 features against its thresholds; do the same to match it.
        x32 = np.asarray(x, dtype=np.float32)
        total = np.full(len(x32), self.offset, dtype=float)
        rows = np.arange(len(x32))
        for tree in self.trees:
            left = np.asarray(tree["left"], dtype=int)
            right = np.asarray(tree["right"], dtype=int)
            feature = np.asarray(tree["feature"], dtype=int)
            threshold = np.asarray(tree["threshold"], dtype=float)
            value = np.asarray(tree["value"], dtype=float)
            node = np.zeros(len(x32), dtype=int)
            while True:
                inner = left[node] >= 0
                if not inner.any():
                    break
                go_left = x32[rows, np.maximum(feature[node], 0)] <= threshold[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            total += self.learning_rate * value[node]
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "gradient_boosting", "offset": self.offset, "learning_rate": self.learning_rate,
                "trees": self.trees}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeResidual:
        return cls(offset=float(d["offset"]), learning_rate=float(d["learning_rate"]), trees=list(d["trees"]))


def fit_tree_residual(x: np.ndarray, target: np.ndarray, *, n_estimators: int = 60, max_depth: int = 3,
                      learning_rate: float = 0.1, random_state: int = 0) -> TreeResidual:
    """Fit GradientBoostingRegressor on the log-ratio residual and export its trees."""
    try:
        from sklearn.ensemble import GradientBoostingRegressor
    except ImportError as exc:  # optional extra
        raise ImportError("the tree residual needs scikit-learn: pip install 'pyscale[costmodel]'") from exc
    offset = float(np.mean(target))
    gbr = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                    init="zero", random_state=random_state, min_samples_leaf=2)
    gbr.fit(x, target - offset)
    trees = []
    for est in gbr.estimators_[:, 0]:
        t = est.tree_
        trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                      "value": t.value[:, 0, 0].tolist()})
    return TreeResidual(offset=offset, learning_rate=learning_rate, trees=trees)


# ---------------------------------------------------------------------------------------- model


@dataclass
class RuntimeModel:
    """Fitted runtime model; see the module docstring for the formula and units."""

    eta_compute: float
    eta_memory: float
    t0_s: float
    wave_alpha: float
    peak_flops_per_s: float | None
    bandwidth_bytes_per_s: float | None
    sm_count: int | None
    smooth_p: float = 4.0
    tile_m: int = DEFAULT_TILE_M
    tile_n: int = DEFAULT_TILE_N
    residual: TreeResidual | None = None
    n_rows: int = 0
    cost: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def compute_units(self) -> str:
        return "fraction_of_peak" if self.peak_flops_per_s else "flop_per_s"

    @property
    def memory_units(self) -> str:
        return "fraction_of_bandwidth" if self.bandwidth_bytes_per_s else "bytes_per_s"

    @property
    def compute_rate_flops_per_s(self) -> float:
        return self.eta_compute * (self.peak_flops_per_s or 1.0)

    @property
    def memory_rate_bytes_per_s(self) -> float:
        return self.eta_memory * (self.bandwidth_bytes_per_s or 1.0)

    def roofline_time_s(self, flops: Any, bytes_: Any, tiles: Any = None) -> np.ndarray:
        f = np.atleast_1d(np.asarray(flops, dtype=float))
        b = np.atleast_1d(np.asarray(bytes_, dtype=float))
        t = np.full(f.shape, np.nan) if tiles is None else np.atleast_1d(np.asarray(tiles, dtype=float))
        w = wave_efficiency(t, self.sm_count)
        return roofline_time_s(f, b, w, compute_rate=self.compute_rate_flops_per_s,
                               memory_rate=self.memory_rate_bytes_per_s, t0_s=self.t0_s,
                               wave_alpha=self.wave_alpha, smooth_p=self.smooth_p)

    def predict_time_s(self, flops: Any, bytes_: Any, tiles: Any = None) -> np.ndarray:
        """Predicted seconds per call (array); `tiles` NaN/None where unknown."""
        f = np.atleast_1d(np.asarray(flops, dtype=float))
        b = np.atleast_1d(np.asarray(bytes_, dtype=float))
        if f.shape != b.shape:
            raise ValueError(f"flops and bytes must have the same shape: got {f.shape} vs {b.shape}")
        if (f < 0).any() or (b < 0).any() or not (np.isfinite(f).all() and np.isfinite(b).all()):
            raise ValueError("flops and bytes must be finite and ≥ 0")
        t = np.full(f.shape, np.nan) if tiles is None else np.atleast_1d(np.asarray(tiles, dtype=float))
        base = self.roofline_time_s(f, b, t)
        if self.residual is None:
            return base
        w = wave_efficiency(t, self.sm_count)
        return base * np.exp(self.residual.predict(residual_features(f, b, t, w)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "roofline",
            "formula": "T = smax(F/(eta_compute*P*w^wave_alpha), B/(eta_memory*W)) + t0_s; "
                       "smax(a,b)=(a^p+b^p)^(1/p), w = wave efficiency",
            "eta_compute": self.eta_compute, "compute_units": self.compute_units,
            "eta_memory": self.eta_memory, "memory_units": self.memory_units,
            "t0_s": self.t0_s, "wave_alpha": self.wave_alpha,
            "peak_flops_per_s": self.peak_flops_per_s, "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "sm_count": self.sm_count, "smooth_p": self.smooth_p, "tile_m": self.tile_m, "tile_n": self.tile_n,
            "residual": None if self.residual is None else self.residual.to_dict(),
            "n_rows": self.n_rows, "cost": self.cost, "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuntimeModel:
        if d.get("kind") != "roofline":
            raise ValueError(f"runtime model kind must be 'roofline': got {d.get('kind')!r}")
        return cls(eta_compute=float(d["eta_compute"]), eta_memory=float(d["eta_memory"]), t0_s=float(d["t0_s"]),
                   wave_alpha=float(d["wave_alpha"]), peak_flops_per_s=d.get("peak_flops_per_s"),
                   bandwidth_bytes_per_s=d.get("bandwidth_bytes_per_s"), sm_count=d.get("sm_count"),
                   smooth_p=float(d.get("smooth_p", 4.0)), tile_m=int(d.get("tile_m", DEFAULT_TILE_M)),
                   tile_n=int(d.get("tile_n", DEFAULT_TILE_N)),
                   residual=None if d.get("residual") is None else TreeResidual.from_dict(d["residual"]),
                   n_rows=int(d.get("n_rows", 0)), cost=d.get("cost"), notes=list(d.get("notes", [])))


def device_rates(spec: hw.GPUSpec | hw.UnknownGPU | None, dtype: str) -> tuple[float | None, float | None,
                                                                                int | None, list[str]]:
    """(peak FLOP/s, bandwidth bytes/s, SM count, notes) of a device for `dtype`; None where unknown."""
    notes: list[str] = []
    if spec is None or isinstance(spec, hw.UnknownGPU):
        why = "CPU or device without a spec" if spec is None else spec.reason
        notes.append(f"no peak or bandwidth ({why}): efficiencies are absolute throughputs (FLOP/s, bytes/s)")
        return None, None, None, notes
    try:
        peak = hw.peak_flops(spec, dtype)
    except ValueError:
        peak = None
    if peak is None:
        notes.append(f"{spec.name} has no peak for dtype {dtype!r} in pyscale.hw: eta_compute is absolute FLOP/s")
    return peak, spec.memory_bandwidth_bytes_per_s, spec.sm_count, notes


def fit_runtime(rows: Rows, spec: hw.GPUSpec | hw.UnknownGPU | None, *, smooth_p: float = 4.0,
                loss: str = "soft_l1", f_scale: float = 0.05, residual: bool = False,
                tile_m: int = DEFAULT_TILE_M, tile_n: int = DEFAULT_TILE_N) -> RuntimeModel:
    """Fit the roofline (and optionally the tree residual) to `rows`; see the module docstring."""
    from scipy.optimize import least_squares

    if len(rows) < 3:
        raise ValueError(f"rows: need at least 3 usable measurements of {rows.op}/{rows.dtype} to fit a runtime "
                         f"model, got {len(rows)} (skipped: {rows.skipped or 'none'})")
    peak, bandwidth, sm_count, notes = device_rates(spec, rows.dtype)
    F, B, T = rows.flops, rows.bytes, rows.time_s
    w = wave_efficiency(rows.tiles, sm_count)
    ref_c, ref_m = peak or 1.0, bandwidth or 1.0
    log_t = np.log(T)
    t_scale = float(np.median(T))

    def bounds_for(amount: np.ndarray, ref: float, known: bool) -> tuple[float, float, list[float]]:
        if known:
            lo, hi = math.log(ETA_MIN_WITH_PEAK), math.log(ETA_MAX_WITH_PEAK)
            return lo, hi, [math.log(v) for v in (0.02, 0.1, 0.3, 0.7, 1.0)]
        best = float(np.max(amount / T)) / ref
        centre = math.log(max(best, 1e-300))
        return (centre - math.log(_ABS_RANGE), centre + math.log(_ABS_RANGE),
                [centre + math.log(f) for f in (1.0, 2.0, 5.0, 20.0, 100.0)])

    lo_c, hi_c, starts_c = bounds_for(F, ref_c, peak is not None)
    lo_m, hi_m, starts_m = bounds_for(B, ref_m, bandwidth is not None)
    free_c, free_m = bool((F > 0).any()), bool((B > 0).any())
    free_alpha = bool(sm_count) and bool(np.isfinite(rows.tiles).any()) and bool((w < 1).any())
    if not free_alpha:
        notes.append("wave_alpha fixed at 0: no row has both a tile count and an SM count with a partial wave")
    t0_hi = float(np.min(T)) / t_scale

    def unpack(x: np.ndarray) -> tuple[float, float, float, float]:
        return (math.exp(x[0]) * ref_c, math.exp(x[1]) * ref_m, x[2] * t_scale, x[3] if free_alpha else 0.0)

    def residuals(x: np.ndarray) -> np.ndarray:
        rate_c, rate_m, t0, alpha = unpack(x)
        pred = roofline_time_s(F, B, w, compute_rate=rate_c, memory_rate=rate_m, t0_s=t0, wave_alpha=alpha,
                               smooth_p=smooth_p)
        return np.log(np.maximum(pred, 1e-300)) - log_t

    lower = np.array([lo_c, lo_m, 0.0, 0.0])
    upper = np.array([hi_c, hi_m, max(t0_hi, 1e-12), 1.0])
    free = np.array([free_c, free_m, True, free_alpha])
    # Cheap pass over a grid of starts, then a full solve from the best few: local minima exist where
    # one term explains the data and the other is pushed to its bound.
    grid = []
    for c0, m0, t00, a0 in itertools.product(starts_c if free_c else [hi_c], starts_m if free_m else [hi_m],
                                             (0.0, 0.3 * t0_hi, 0.8 * t0_hi), (0.2, 0.8) if free_alpha else (0.0,)):
        x0 = np.clip(np.array([c0, m0, t00, a0]), lower, upper)
        grid.append((float(np.sum(residuals(x0) ** 2)), x0))
    grid.sort(key=lambda item: item[0])
    # Parameters without information (no FLOPs, no bytes, no partial waves) stay at their start value
    # and are left out of the solve.
    x_scale = np.array([1.0, 1.0, max(t0_hi, 1e-6), 1.0])
    best, best_x = None, None
    for _, x0 in grid[:3]:
        def sub_residuals(z: np.ndarray, x0: np.ndarray = x0) -> np.ndarray:
            x = x0.copy()
            x[free] = z
            return residuals(x)

        res = least_squares(sub_residuals, x0[free], bounds=(lower[free], upper[free]), loss=loss, f_scale=f_scale,
                            x_scale=x_scale[free], max_nfev=300)
        if best is None or res.cost < best.cost:
            best = res
            best_x = x0.copy()
            best_x[free] = res.x
    assert best is not None
    rate_c, rate_m, t0, alpha = unpack(best_x)
    model = RuntimeModel(eta_compute=float(rate_c / ref_c), eta_memory=float(rate_m / ref_m), t0_s=float(t0),
                         wave_alpha=float(alpha),
                         peak_flops_per_s=peak, bandwidth_bytes_per_s=bandwidth, sm_count=sm_count,
                         smooth_p=smooth_p, tile_m=tile_m, tile_n=tile_n, n_rows=len(rows),
                         cost=float(best.cost), notes=notes)
    _add_identifiability_notes(model, rows, best_x, (lower, upper), (free_c, free_m))
    if residual:
        base = model.roofline_time_s(F, B, rows.tiles)
        model.residual = fit_tree_residual(residual_features(F, B, rows.tiles, w), log_t - np.log(base))
        model.notes.append("tree residual (gradient boosting on log(T_measured/T_roofline)) applied on top")
    return model


def _add_identifiability_notes(model: RuntimeModel, rows: Rows, x: np.ndarray,
                               bounds: tuple[np.ndarray, np.ndarray], free: tuple[bool, bool]) -> None:
    lower, upper = bounds
    w = wave_efficiency(rows.tiles, model.sm_count)
    t_c = rows.flops / model.compute_rate_flops_per_s / w ** model.wave_alpha
    t_m = rows.bytes / model.memory_rate_bytes_per_s
    n_compute = int((t_c > t_m).sum())
    n_memory = len(rows) - n_compute
    for i, (name, units_known) in enumerate((("eta_compute", model.peak_flops_per_s), ("eta_memory",
                                                                                      model.bandwidth_bytes_per_s))):
        if not free[i]:
            model.notes.append(f"{name} not fitted: every row has zero {'flops' if i == 0 else 'bytes'}")
        elif x[i] >= upper[i] - 1e-6:
            why = (" (measured throughput above 1.2× the spec peak: check the peak used for this dtype)"
                   if units_known else "")
            model.notes.append(f"{name} at its upper bound{why}")
        elif x[i] <= lower[i] + 1e-6:
            model.notes.append(f"{name} at its lower bound")
    if n_memory == 0 and free[1]:
        model.notes.append("no row is memory-bound under the fit: eta_memory is only bounded, not measured")
    if n_compute == 0 and free[0]:
        model.notes.append("no row is compute-bound under the fit: eta_compute is only bounded, not measured")
