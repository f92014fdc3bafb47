"""Device profiles: the fitted cost models of one device, as a small JSON file.

A `DeviceProfile` holds, per (op, dtype, backend), the runtime model, the energy model (when energy was
measured), the leave-shape-out CV errors, the row counts and notes, the measured time of every shape it was
fitted on, plus the device name, the date and the versions it was measured with. When the rows were measured
at two or more GPU power limits, each model also has a `power_limits` section (`pyscale.costmodel.power_limits`:
time and power across limits) and its runtime and energy models are those of the largest limit; otherwise
`power_limits` is null with `power_limits_unavailable_reason`. Profiles written before that section existed
load unchanged (no power-limit model, the reason saying so). `to_json`/`from_json`
round-trip it; `fit_device_profile` builds one from a store.

Prediction at a shape the profile measured (the shape params given as features, as the benchmark recorded
them) returns that measurement; anywhere else, the fitted model. The CV errors say how far the model is
from shapes it has not seen.

Profiles measured on real GPUs ship in `pyscale/data/profiles/*.json` (package data) so a planner can
use them on machines without that GPU: `load_shipped_profile(device_name)`, `list_shipped_profiles()`.
A profile is only ever written from measurements; none is invented.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyscale import hw
from pyscale.costmodel.data import Rows, rows_from_measurements, shape_key, tile_count
from pyscale.costmodel.energy import EnergyModel, fit_energy
from pyscale.costmodel.evaluate import CVResult, cross_validate
from pyscale.costmodel.power_limits import PowerLimitModel, fit_power_limits
from pyscale.costmodel.runtime import RuntimeModel, fit_runtime

FORMAT = "pyscale-device-profile"
TRAINING_STEP_BACKEND = "step"  # the backend of the profiler's training-step rows (profile_step)
FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"
# why a model read from a profile written before power-limit models has none
NO_POWER_LIMIT_SECTION = "the profile was written before pyscale fitted power-limit models: fit it again"


@dataclass
class OpModel:
    """The fitted models of one (op, dtype, backend)."""

    op: str
    dtype: str
    backend: str
    runtime: RuntimeModel
    energy: EnergyModel | None = None
    cv: CVResult | None = None
    n_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)  # shape key -> median measured seconds per call
    # time and power across GPU power limits (`pyscale.costmodel.power_limits`); None with the reason
    power_limits: PowerLimitModel | None = None
    power_limits_unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "dtype": self.dtype, "backend": self.backend, "n_rows": self.n_rows,
                "skipped": dict(self.skipped), "runtime": self.runtime.to_dict(),
                "energy": None if self.energy is None else self.energy.to_dict(),
                "cv": None if self.cv is None else self.cv.to_dict(), "notes": list(self.notes),
                "measured_time_s": dict(self.measured),
                "power_limits": None if self.power_limits is None else self.power_limits.to_dict(),
                "power_limits_unavailable_reason": self.power_limits_unavailable_reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpModel:
        return cls(op=str(d["op"]), dtype=str(d["dtype"]), backend=str(d["backend"]),
                   runtime=RuntimeModel.from_dict(d["runtime"]),
                   energy=None if d.get("energy") is None else EnergyModel.from_dict(d["energy"]),
                   cv=None if d.get("cv") is None else CVResult.from_dict(d["cv"]), n_rows=int(d.get("n_rows", 0)),
                   skipped=dict(d.get("skipped", {})), notes=list(d.get("notes", [])),
                   measured={str(k): float(v) for k, v in (d.get("measured_time_s") or {}).items()},
                   power_limits=None if d.get("power_limits") is None else PowerLimitModel.from_dict(d["power_limits"]),
                   power_limits_unavailable_reason=d.get("power_limits_unavailable_reason",
                                                         None if "power_limits" in d else NO_POWER_LIMIT_SECTION))

    def measured_time_s(self, features: Mapping[str, Any]) -> float | None:
        """The measured seconds per call at the shape `features` names (the benchmark's params), or None."""
        return self.measured.get(shape_key(self.op, features)) if features and self.measured else None


def _same_dtype(a: str, b: str) -> bool:
    if a == b:
        return True
    try:  # "bf16" and "torch.bfloat16" are the same dtype
        return hw._canonical_dtype(a) == hw._canonical_dtype(b)
    except ValueError:
        return False


def _finite(obj: Any) -> Any:
    """NaN/inf → None, so the file is strict JSON (an undefined metric, e.g. R² of one row, is null)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _scalar_or_array(x: np.ndarray, *like: Any) -> Any:
    return float(x[0]) if all(np.ndim(v) == 0 for v in like) else x


@dataclass
class DeviceProfile:
    device_name: str
    device_kind: str
    created: str
    versions: dict[str, Any]
    models: list[OpModel]
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    # the measured steps this profile was checked against (`pyscale costmodel validate --record`): created,
    # store, command, steps (config, measured_s, predicted_s, rel_error, ...), summary; None until validated
    validation: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lookup

    def ops(self) -> list[tuple[str, str, str]]:
        return [(m.op, m.dtype, m.backend) for m in self.models]

    def model(self, op: str, dtype: str, backend: str | None = None) -> OpModel:
        """The model of (op, dtype[, backend]); errors name the argument and list what exists."""
        of_op = [m for m in self.models if m.op == op]
        if not of_op:
            raise ValueError(f"op {op!r} is not in the profile of {self.device_name!r}; "
                             f"ops: {sorted({m.op for m in self.models})}")
        of_dtype = [m for m in of_op if _same_dtype(m.dtype, str(dtype))]
        if not of_dtype:
            raise ValueError(f"dtype {dtype!r} of op {op!r} is not in the profile of {self.device_name!r}; "
                             f"dtypes: {sorted({m.dtype for m in of_op})}")
        if backend is not None:
            chosen = [m for m in of_dtype if m.backend == backend]
            if not chosen:
                raise ValueError(f"backend {backend!r} of {op}/{dtype} is not in the profile; "
                                 f"backends: {sorted(m.backend for m in of_dtype)}")
            return chosen[0]
        if len(of_dtype) > 1:
            raise ValueError(f"backend: {op}/{dtype} has several backends in the profile "
                             f"({sorted(m.backend for m in of_dtype)}); pass backend=")
        return of_dtype[0]

    def _tiles(self, m: OpModel, tiles: Any, features: Mapping[str, Any]) -> Any:
        if tiles is not None or not features:
            return tiles
        return tile_count(m.op, features, tile_m=m.runtime.tile_m, tile_n=m.runtime.tile_n)

    def predict_time_s(self, op: str, dtype: str, flops: Any, bytes: Any, *, backend: str | None = None,
                       tiles: Any = None, **features: Any) -> Any:
        """Seconds per call. `features` are shape params (m=, n=, batch=, seq_q=, heads_q=, ...) used to
        count tiles for the wave-quantisation term; `tiles=` gives the count directly. Features naming a
        shape the profile measured (all its benchmark params) get that measurement."""
        m = self.model(op, dtype, backend)
        if np.ndim(flops) == 0 and np.ndim(bytes) == 0:
            measured = m.measured_time_s(features)
            if measured is not None:
                return measured
        t = self._tiles(m, tiles, features)
        return _scalar_or_array(m.runtime.predict_time_s(flops, bytes, t), flops, bytes)

    def power_limit_factors(self, op: str, dtype: str, power_limit_w: float, *,
                            backend: str | None = None) -> tuple[float, float | None]:
        """(time, energy) at `power_limit_w` relative to the largest measured limit, where `predict_time_s` and
        `predict_energy_j` answer; the energy factor is None when energy was not measured across limits. A
        ValueError says why there is no power-limit model, or that the limit is outside the measured ones."""
        m = self.model(op, dtype, backend)
        if m.power_limits is None:
            raise ValueError(f"op {op!r} ({m.dtype}, {m.backend}) has no power-limit model in the profile of "
                             f"{self.device_name!r}: {m.power_limits_unavailable_reason}")
        return m.power_limits.slowdown(power_limit_w), m.power_limits.energy_ratio(power_limit_w)

    def predict_energy_j(self, op: str, dtype: str, flops: Any, bytes: Any, *, time_s: Any = None,
                         backend: str | None = None, tiles: Any = None, **features: Any) -> Any:
        """Joules per call; with `time_s=None` the runtime model's predicted time is used. Both models are of
        the largest power limit the rows were measured at (`power_limit_factors` for the others)."""
        m = self.model(op, dtype, backend)
        if m.energy is None:
            raise ValueError(f"op {op!r} ({dtype}, {m.backend}) has no energy model in the profile of "
                             f"{self.device_name!r}: no energy was measured for it")
        if time_s is None:
            t = self._tiles(m, tiles, features)
            time_s = m.runtime.predict_time_s(flops, bytes, t)
        return _scalar_or_array(m.energy.predict_energy_j(flops, bytes, time_s), flops, bytes, time_s)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "format_version": FORMAT_VERSION, "device": {"name": self.device_name,
               "kind": self.device_kind}, "created": self.created, "versions": dict(self.versions),
               "source": dict(self.source), "notes": list(self.notes),
               "models": [m.to_dict() for m in self.models]}
        if self.validation is not None:
            out["validation"] = dict(self.validation)
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The profile as JSON text; also written to `path` when given."""
        text = json.dumps(_finite(self.to_dict()), indent=1, sort_keys=True, allow_nan=False) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceProfile:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"profile: not a pyscale device profile (format must be {FORMAT!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"profile: format_version {d.get('format_version')} is newer than this pyscale's "
                             f"{FORMAT_VERSION}: upgrade pyscale")
        try:
            return cls(device_name=str(d["device"]["name"]), device_kind=str(d["device"].get("kind", "")),
                       created=str(d["created"]), versions=dict(d.get("versions", {})),
                       models=[OpModel.from_dict(m) for m in d["models"]], notes=list(d.get("notes", [])),
                       source=dict(d.get("source", {})),
                       validation=None if d.get("validation") is None else dict(d["validation"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"profile: a pyscale device profile, but incomplete or damaged ({type(exc).__name__}: "
                             f"{exc}); write it again with `pyscale costmodel fit --out`") from None

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> DeviceProfile:
        """Read a profile from JSON text or from a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ValueError(f"profile: no such file {os.fspath(path)!r}")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"profile: {os.fspath(path)} is not a text file; expected a device profile "
                                 "JSON (pyscale costmodel fit --out)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"profile: invalid JSON ({exc})") from exc
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------- shipped


def _norm_name(name: str) -> str:
    return " ".join(w for w in re.split(r"[\s\-_]+", name.strip().lower()) if w and w not in {"nvidia", "geforce"})


def same_device(a: str, b: str) -> bool:
    """Whether two device names name one device: alike once case, separators and vendor words are ignored,
    or both the same row of pyscale.hw ("NVIDIA H100 80GB HBM3" is "H100 SXM"; H100 PCIe and H200 are not)."""
    if _norm_name(a) == _norm_name(b):
        return True
    spec_a, spec_b = hw.lookup(a), hw.lookup(b)
    return isinstance(spec_a, hw.GPUSpec) and isinstance(spec_b, hw.GPUSpec) and spec_a.name == spec_b.name


def list_shipped_profiles(directory: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Device name → path of every profile shipped in `pyscale/data/profiles` (or `directory`)."""
    root = Path(directory) if directory is not None else SHIPPED_DIR
    out: dict[str, Path] = {}
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out[str(data["device"]["name"])] = path
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a profile; never fail a lookup because of a stray file
    return out


def load_shipped_profile(device_name: str, directory: str | os.PathLike[str] | None = None) -> DeviceProfile | None:
    """The shipped profile of `device_name` (case, separators and vendor words ignored, or any name of the
    same `hw` row: "H200 SXM" finds the profile the machine named "NVIDIA H200"), or None. Two shipped
    profiles of one device are an error, never a silent pick."""
    if not isinstance(device_name, str) or not device_name.strip():
        raise ValueError(f"device_name must be a non-empty string: got {device_name!r}")
    found = [path for name, path in list_shipped_profiles(directory).items() if same_device(name, device_name)]
    if len(found) > 1:
        raise ValueError(f"device_name {device_name!r}: several shipped profiles match "
                         f"({', '.join(p.name for p in found)}); one device ships one profile")
    return DeviceProfile.from_json(found[0]) if found else None


def shipped_profile_problems(path: str | os.PathLike[str]) -> list[str]:
    """Why the profile at `path` may not ship (empty when it may): it must be a measured GPU profile
    (`source.measured`, with its command, date and pyscale version, and cross-validation of every model),
    name a device that maps to exactly one `hw` row, and carry its step validation (a plan priced from it
    prints that error next to its time)."""
    try:
        p = DeviceProfile.from_json(path)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    if p.source.get("measured") is not True or not p.source.get("command"):
        problems.append("source.measured must be true, with the command that measured it")
    if not (p.created and p.versions.get("pyscale")):
        problems.append("the date and the pyscale version it was measured with are missing")
    if p.device_kind != "cuda":
        problems.append(f"device kind {p.device_kind!r}: only GPU profiles ship")
    rows = hw.matching_specs(p.device_name)
    if len(rows) != 1:
        problems.append(f"device {p.device_name!r} maps to {len(rows)} hw rows "
                        f"({', '.join(r.name for r in rows) or 'none'}), not exactly one")
    if any(m.cv is None for m in p.models):
        problems.append("a model without cross-validation")
    if not (p.validation and p.validation.get("steps")):
        problems.append("no recorded step validation (pyscale costmodel validate PROFILE --record)")
    return problems


# ---------------------------------------------------------------------------------------- fitting


def _library_versions() -> dict[str, str | None]:
    import scipy

    from pyscale import __version__

    return {"pyscale": __version__, "numpy": np.__version__, "scipy": scipy.__version__}


def spec_for(device_name: str, device_kind: str) -> hw.GPUSpec | hw.UnknownGPU | None:
    """The hw spec used for a device's rows: None for CPUs (no peak table), else `hw.lookup`."""
    return None if device_kind == "cpu" else hw.lookup(device_name)


def fit_device_profile(store: Any, *, device: str | None = None, op: str | None = None, dtype: str | None = None,
                       backend: str | None = None, folds: int = 5, residual: bool = False, seed: int = 0,
                       spec: hw.GPUSpec | hw.UnknownGPU | None = None, command: str | None = None) -> DeviceProfile:
    """Fit every (op, dtype, backend) of one device in `store` and cross-validate it by shape.

    `device` is a device name or uuid from the store (required when the store holds several).
    `spec` overrides the `hw` lookup (for devices not in the table). Errors name the argument.
    """
    all_rows = store.measurements(status=None)
    where = f"store {os.fspath(getattr(store, 'path', '?'))!s}"
    if not all_rows:
        raise ValueError(f"{where} has no measurements: run `pyscale bench` first")
    names = sorted({r["device_name"] for r in all_rows})
    if device is None:
        if len(names) > 1:
            raise ValueError(f"device: {where} holds measurements of several devices {names}; pick one")
        device = names[0]
    picked = [r for r in all_rows if r["device_name"].lower() == device.lower() or r["device_uuid"] == device]
    if not picked:
        raise ValueError(f"device {device!r} has no measurements in {where}; devices: {names}")
    if op is not None:
        ops = sorted({r["op"] for r in picked})
        picked = [r for r in picked if r["op"] == op]
        if not picked:
            raise ValueError(f"op {op!r} has no measurements of {device!r} in {where}; ops: {ops}")
    if dtype is not None:
        dtypes = sorted({r["dtype"] for r in picked})
        picked = [r for r in picked if _same_dtype(r["dtype"], dtype)]
        if not picked:
            raise ValueError(f"dtype {dtype!r} has no measurements in {where}; dtypes: {dtypes}")
    if backend is not None:
        backends = sorted({r["backend"] for r in picked})
        picked = [r for r in picked if r["backend"] == backend]
        if not picked:
            raise ValueError(f"backend {backend!r} has no measurements in {where}; backends: {backends}")
    steps = [r for r in picked if r["backend"] == TRAINING_STEP_BACKEND]
    picked = [r for r in picked if r["backend"] != TRAINING_STEP_BACKEND]
    if not picked:
        raise ValueError(f"{where} holds only training-step rows of {device!r}: benchmark its ops first "
                         "(`pyscale bench`)")
    device_name = picked[0]["device_name"]
    device_kind = str(picked[0].get("device_kind") or "")
    if spec is None:
        spec = spec_for(device_name, device_kind)
    device_versions = []
    for device_id in sorted({r["device_id"] for r in picked}):
        v = store.device(device_id).versions() if hasattr(store, "device") else {}
        if v not in device_versions:
            device_versions.append(v)
    notes: list[str] = []
    if steps:
        notes.append(f"{len(steps)} training-step row(s) (`pyscale profile`) left out: the models are fitted from "
                     "op benchmarks only, never from the steps they are validated on")
    if len(device_versions) > 1:
        notes.append(f"rows come from {len(device_versions)} driver/library version sets (all fitted together)")
    if isinstance(spec, hw.UnknownGPU) or spec is None:
        notes.append("no spec peak for this device: efficiencies are absolute throughputs (FLOP/s, bytes/s)")
    models: list[OpModel] = []
    for _, rows in sorted(rows_from_measurements(picked).items(), key=lambda kv: kv[0]):
        models_or_note = _fit_one(rows, spec, folds=folds, residual=residual, seed=seed)
        if isinstance(models_or_note, str):
            notes.append(models_or_note)
        else:
            models.append(models_or_note)
    if not models:
        raise ValueError(f"{where}: no (op, dtype, backend) of {device_name!r} has enough usable rows to fit: "
                         + "; ".join(notes))
    versions: dict[str, Any] = dict(_library_versions())
    versions["device"] = device_versions[0] if len(device_versions) == 1 else device_versions
    return DeviceProfile(device_name=device_name, device_kind=device_kind,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         versions=versions, models=models, notes=notes,
                         source={"store": os.fspath(getattr(store, "path", "")), "command": command,
                                 "measured": True})


def _fit_one(rows: Rows, spec: hw.GPUSpec | hw.UnknownGPU | None, *, folds: int, residual: bool,
             seed: int) -> OpModel | str:
    label = f"{rows.op}/{rows.dtype}/{rows.backend}"
    notes: list[str] = []
    limits, no_limits = fit_power_limits(rows)
    if limits is not None:
        # the limit is a feature of the model, not noise in it: the runtime and energy models are those of the
        # largest limit, and the power-limit model scales them to the others
        rows = rows.subset(np.flatnonzero(rows.limits_w == limits.reference_w))
        notes.append(f"runtime and energy models fitted on the {len(rows)} row(s) at the largest power limit "
                     f"({limits.reference_w:g} W); the limits {', '.join(f'{w:g}' for w in limits.limits_w)} W "
                     "enter through the power-limit model")
    if len(rows) < 3:
        return f"{label}: not fitted, {len(rows)} usable row(s) (skipped: {rows.skipped or 'none'})"
    runtime = fit_runtime(rows, spec, residual=residual)
    if rows.skipped:
        notes.append(f"skipped rows: {rows.skipped}")
    energy = None
    n_energy = int((rows.has_energy & (rows.energy_j > 0)).sum())
    if n_energy >= 3:
        energy = fit_energy(rows)
    else:
        notes.append(f"no energy model: {n_energy} row(s) with a measured energy")
    cv = None
    if len(set(rows.groups)) >= 2:
        cv = cross_validate(rows, spec, k=folds, seed=seed, residual=residual)
    else:
        notes.append("no cross-validation: a single shape")
    by_shape: dict[str, list[float]] = {}
    for group, t in zip(rows.groups, rows.time_s):
        by_shape.setdefault(group, []).append(float(t))
    measured = {group: float(np.median(ts)) for group, ts in by_shape.items()}
    return OpModel(op=rows.op, dtype=rows.dtype, backend=rows.backend, runtime=runtime, energy=energy, cv=cv,
                   n_rows=len(rows), skipped=dict(rows.skipped), notes=notes, measured=measured,
                   power_limits=limits, power_limits_unavailable_reason=no_limits)
