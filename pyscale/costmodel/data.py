"""Rows for the cost models: store measurements turned into arrays, plus shape keys and wave features.

Conventions (DESIGN §5–§6):

* `flops` is the *executed* FLOP count of one call, `bytes` the bytes one call moves to and from
  DRAM, `time_s_median` the median time of one call, `energy_j` the energy of one call from the NVML
  counter (a window of many calls divided by their number). Everything is SI.
* A row is usable for runtime fits when it has status "ok", a time, `flops` and `bytes`; rows missing
  `flops` or `bytes` are skipped and counted, never guessed.
* The **shape** of a row is its `params` minus `NON_SHAPE_KEYS` (keys that say how a case was run,
  not how big it is). Cross-validation groups rows by (op, shape), so one problem size measured
  twice (another backend, another repeat, another dtype) never lands in both train and test.
* **Tiles and waves**: a kernel that splits its output into tiles runs `waves = ceil(tiles / SMs)`
  rounds, and the last one may be partly empty. `wave_efficiency = tiles / (waves * SMs)` is the
  fraction of SM slots doing work. Tiles come from `params["tiles"]` (or `extra["tiles"]`) when the
  benchmark recorded them, else from the documented default tile shapes in `tile_count`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: params keys that describe how a case was run rather than the problem size (excluded from shape keys).
NON_SHAPE_KEYS: frozenset[str] = frozenset({
    "backend", "baseline", "impl", "implementation", "dtype", "seed", "repeat", "repeats", "warmup",
    "iters", "iterations", "trial", "label", "tag", "name", "shape_set", "shapes", "cold_l2", "energy",
    "run", "rank", "layer", "model", "module",  # bench labels: one GEMM shape serves several layers/models
    "power_limit_w",  # how hard the GPU may run, not how big the problem is: a feature of the power-limit model
})

#: Default output tile (rows, cols) assumed when a row does not record its tile count. 128×128 is the
#: usual block of Triton/CUTLASS GEMM and flash-attention forward kernels on sm_80/sm_90; it is a
#: modelling assumption (stored in each fitted model), not a measured property of any kernel.
DEFAULT_TILE_M = 128
DEFAULT_TILE_N = 128


@dataclass
class Rows:
    """The usable rows of one (device, op, dtype, backend), as parallel arrays."""

    op: str
    dtype: str
    backend: str
    device_name: str
    device_kind: str
    time_s: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    energy_j: np.ndarray  # NaN where energy was not measured (never 0)
    energy_time_s: np.ndarray  # per-call time of the energy window (see module docstring); NaN without energy
    idle_power_w: np.ndarray  # NaN where not measured
    tiles: np.ndarray  # NaN where unknown
    groups: list[str]
    params: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    energy_time_sources: dict[str, int] = field(default_factory=dict)  # where energy_time_s came from
    power_limit_w: np.ndarray | None = None  # the enforced GPU power limit of each row; NaN (or None) unrecorded

    def __len__(self) -> int:
        return len(self.time_s)

    def subset(self, index: Sequence[int] | np.ndarray) -> Rows:
        idx = np.asarray(index, dtype=int)
        return Rows(op=self.op, dtype=self.dtype, backend=self.backend, device_name=self.device_name,
                    device_kind=self.device_kind, time_s=self.time_s[idx], flops=self.flops[idx],
                    bytes=self.bytes[idx], energy_j=self.energy_j[idx],
                    energy_time_s=self.energy_time_s[idx], idle_power_w=self.idle_power_w[idx],
                    tiles=self.tiles[idx], groups=[self.groups[i] for i in idx],
                    params=[self.params[i] for i in idx], skipped=dict(self.skipped),
                    energy_time_sources=dict(self.energy_time_sources),
                    power_limit_w=None if self.power_limit_w is None else self.power_limit_w[idx])

    @property
    def has_energy(self) -> np.ndarray:
        return np.isfinite(self.energy_j)

    @property
    def limits_w(self) -> np.ndarray:
        """The enforced power limit of each row, NaN where none was recorded (a CPU, rows before store v5)."""
        return np.full(len(self), np.nan) if self.power_limit_w is None else self.power_limit_w


def shape_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """The problem-size part of a params dict (see NON_SHAPE_KEYS)."""
    return {k: v for k, v in params.items() if k not in NON_SHAPE_KEYS}


def shape_key(op: str, params: Mapping[str, Any]) -> str:
    """Canonical group key of a row for leave-shape-out cross-validation."""
    return json.dumps({"op": op, "shape": shape_of(params)}, sort_keys=True, separators=(",", ":"), default=str)


def _first(params: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        value = params.get(name)
        if value is not None:
            return value
    return None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return int(value)


def tile_count(op: str, params: Mapping[str, Any], *, tile_m: int = DEFAULT_TILE_M,
               tile_n: int = DEFAULT_TILE_N) -> int | None:
    """Output tiles one call launches, or None when the shape does not say.

    * explicit: `params["tiles"]`;
    * GEMM-like (`m` and `n` in params): ceil(m / tile_m) · ceil(n / tile_n) · (batch or groups or 1);
    * attention (`seq_q`/`seq` and heads in params): batch · heads_q · ceil(seq_q / tile_m).
    """
    explicit = _positive_int(params.get("tiles"))
    if explicit is not None:
        return explicit
    mult = _positive_int(_first(params, ("batch", "groups", "experts_active"))) or 1
    m, n = _positive_int(params.get("m")), _positive_int(params.get("n"))
    if m is not None and n is not None:
        return math.ceil(m / tile_m) * math.ceil(n / tile_n) * mult
    seq_q = _positive_int(_first(params, ("seq_q", "seqlen_q", "seq")))
    heads = _positive_int(_first(params, ("heads_q", "heads", "nheads", "n_heads")))
    if seq_q is not None and heads is not None and ("attention" in op or "attn" in op):
        return mult * heads * math.ceil(seq_q / tile_m)
    return None


def wave_efficiency(tiles: np.ndarray | float, sm_count: int | None) -> np.ndarray:
    """tiles / (ceil(tiles / SMs) · SMs); 1 where tiles or the SM count is unknown."""
    t = np.atleast_1d(np.asarray(tiles, dtype=float))
    if not sm_count:
        return np.ones_like(t)
    out = np.ones_like(t)
    known = np.isfinite(t) & (t > 0)
    waves = np.ceil(t[known] / sm_count)
    out[known] = t[known] / (waves * sm_count)
    return out


def _float_or_nan(value: Any) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def energy_window_time_s(m: Mapping[str, Any]) -> tuple[float, str]:
    """(per-call time of the row's energy window, where it came from); NaN when energy is missing."""
    energy = _float_or_nan(m.get("energy_j"))
    if not np.isfinite(energy):
        return math.nan, "none"
    extra = m.get("extra") or {}
    window_s, calls = _float_or_nan(extra.get("window_s")), _positive_int(extra.get("window_calls"))
    if np.isfinite(window_s) and window_s > 0 and calls:
        return window_s / calls, "window"
    power = _float_or_nan(m.get("avg_power_w"))
    if np.isfinite(power) and power > 0:
        return energy / power, "energy/power"
    return float(m["time_s_median"]), "median"


def rows_from_measurements(measurements: Iterable[Mapping[str, Any]], *, tile_m: int = DEFAULT_TILE_M,
                           tile_n: int = DEFAULT_TILE_N) -> dict[tuple[str, str, str, str], Rows]:
    """Group store measurement dicts by (device name, op, dtype, backend) into `Rows`.

    Rows that are not "ok", or lack a positive time, or lack `flops`/`bytes`, are dropped and
    counted in `Rows.skipped` of their group (a group with no usable row is still returned, empty,
    so the count is reported).
    """
    buckets: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for m in measurements:
        key = (str(m["device_name"]), str(m["op"]), str(m["dtype"]), str(m["backend"]))
        b = buckets.setdefault(key, {"rows": [], "skipped": {}, "kind": str(m.get("device_kind") or "")})
        reason = None
        if m.get("status", "ok") != "ok":
            reason = f"status {m.get('status')}"
        elif m.get("time_s_median") is None or not float(m["time_s_median"]) > 0:
            reason = "no time"
        elif m.get("flops") is None:
            reason = "no flops"
        elif m.get("bytes") is None:
            reason = "no bytes"
        if reason is not None:
            b["skipped"][reason] = b["skipped"].get(reason, 0) + 1
            continue
        b["rows"].append(m)
    out: dict[tuple[str, str, str, str], Rows] = {}
    for key, b in buckets.items():
        device_name, op, dtype, backend = key
        rows = b["rows"]
        params = [dict(r.get("params") or {}) for r in rows]
        energy_times = [energy_window_time_s(r) for r in rows]
        tiles = []
        for r, p in zip(rows, params):
            extra_tiles = _positive_int((r.get("extra") or {}).get("tiles"))
            t = extra_tiles if extra_tiles is not None else tile_count(op, p, tile_m=tile_m, tile_n=tile_n)
            tiles.append(math.nan if t is None else float(t))
        out[key] = Rows(
            op=op, dtype=dtype, backend=backend, device_name=device_name, device_kind=b["kind"],
            time_s=np.array([float(r["time_s_median"]) for r in rows], dtype=float),
            flops=np.array([float(r["flops"]) for r in rows], dtype=float),
            bytes=np.array([float(r["bytes"]) for r in rows], dtype=float),
            energy_j=np.array([_float_or_nan(r.get("energy_j")) for r in rows], dtype=float),
            energy_time_s=np.array([e[0] for e in energy_times], dtype=float),
            idle_power_w=np.array([_float_or_nan(r.get("idle_power_w")) for r in rows], dtype=float),
            tiles=np.array(tiles, dtype=float),
            groups=[shape_key(op, p) for p in params],
            params=params,
            skipped=dict(b["skipped"]),
            energy_time_sources=dict(Counter(e[1] for e in energy_times if e[1] != "none")),
            power_limit_w=np.array([_float_or_nan(r.get("power_limit_w")) for r in rows], dtype=float),
        )
    return out
