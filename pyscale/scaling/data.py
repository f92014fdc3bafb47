"""Scaling data: load runs from pandas, CSV, Parquet or a dict, rename, derive, validate.

CSV is read with the standard library (pandas is not needed); Parquet needs pyarrow.

Canonical columns (DESIGN.md §8): N (parameters), D (tokens), C (FLOPs), loss, optional run and step;
laws may also use U (unique tokens), G (quantization group size), error (downstream), S1/S2 (LR areas).
Two of N, D, C give the third through the FLOP convention C = k·N·D (k = 6 by default), and the
convention travels with the data into every result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

CANONICAL = ("N", "D", "C", "loss", "run", "step", "U", "G", "error", "S1", "S2")
# Columns that may be zero or negative, and those that may be zero (step 0 is the initial checkpoint);
# every other numeric column must be > 0.
_SIGNED = {"S2"}
_NONNEG = {"step"}


@dataclass
class ScalingData:
    """Validated columns (float arrays, `run` as labels) plus what was dropped and the FLOP convention."""

    columns: dict[str, np.ndarray]
    flops_per_param_token: float = 6.0
    n_dropped: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)
    index: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def run(self) -> np.ndarray | None:
        return self.columns.get("run")

    def groups(self) -> np.ndarray:
        """Integer group code per row: by `run` when present, else one group per row."""
        if self.run is None:
            return np.arange(self.n)
        _, codes = np.unique(self.run.astype(str), return_inverse=True)
        return codes

    @property
    def n_runs(self) -> int:
        return int(self.groups().max()) + 1 if self.n else 0

    @property
    def flops_convention(self) -> str:
        return f"C = {self.flops_per_param_token:g}*N*D"

    def subset(self, mask: np.ndarray) -> ScalingData:
        return ScalingData({k: v[mask] for k, v in self.columns.items()}, self.flops_per_param_token,
                           self.n_dropped, list(self.dropped),
                           None if self.index is None else self.index[mask])


EXPECTED = "a CSV or Parquet file of runs with columns N, D (or C), loss"
PARQUET_SUFFIXES = (".parquet", ".pq")
# cells that mean "no value" in a numeric column (as pandas reads them), read as NaN
_MISSING = {"", "na", "n/a", "nan", "null", "none", "-nan"}


def _column(cells: list[str]) -> np.ndarray:
    """A CSV column as floats (missing cells NaN) when every cell is a number or missing, else as text."""
    try:
        return np.array([np.nan if c.strip().lower() in _MISSING else float(c) for c in cells], dtype=float)
    except ValueError:
        return np.array(cells, dtype=object)


def _read_csv(path: str) -> dict[str, np.ndarray]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise ValueError(f"data: {path} is not a text file (not UTF-8); expected {EXPECTED}") from None
    except csv.Error as exc:
        raise ValueError(f"data: {path} is not a valid CSV file ({exc}); expected {EXPECTED}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"data: {path} is empty; expected {EXPECTED}, header line first")
    header = [h.strip() for h in rows[0]]
    if "\x00" in "".join(header) or len(set(header)) != len(header) or not all(header):
        raise ValueError(f"data: {path} has no usable header line (empty or repeated column names: {header[:8]}); "
                         f"expected {EXPECTED}")
    body = rows[1:]
    ragged = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if ragged:
        raise ValueError(f"data: {path} line(s) {ragged[:10]} have another number of cells than the header's "
                         f"{len(header)}; expected {EXPECTED}")
    return {name: _column([r[j] for r in body]) for j, name in enumerate(header)}


def _read_parquet(path: str) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"data: reading Parquet ({path}) needs pyarrow (pip install pyarrow, or "
                         "pip install 'pyscale[data]'); or save the runs as CSV") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid, ...)
        raise ValueError(f"data: {path} is not a readable Parquet file ({exc}); expected {EXPECTED}") from None
    return {str(name): np.asarray(values, dtype=object if any(isinstance(v, str) for v in values) else None)
            for name, values in table.to_pydict().items()}


def _read(data: object) -> dict[str, np.ndarray]:
    if isinstance(data, ScalingData):
        return dict(data.columns)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise ValueError(f"data: no such file {path!r}; expected {EXPECTED}")
        if os.path.isdir(path):
            raise ValueError(f"data: {path} is a folder; expected {EXPECTED}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"data: {path} is empty; expected {EXPECTED}")
        return _read_parquet(path) if path.lower().endswith(PARQUET_SUFFIXES) else _read_csv(path)
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a pandas DataFrame, without importing pandas
        return {str(c): data[c].to_numpy() for c in data.columns}
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    raise ValueError(f"data: expected a path, a pandas DataFrame or a mapping of columns, got {type(data).__name__}")


def _rename(cols: dict[str, np.ndarray], columns: Mapping[str, str] | None) -> dict[str, np.ndarray]:
    if not columns:
        return cols
    out = dict(cols)
    for key, value in columns.items():
        canonical, user = (key, value) if key in CANONICAL else (value, key)
        if canonical not in CANONICAL:
            raise ValueError(f"columns: {key!r}={value!r} names no canonical column (one of {list(CANONICAL)})")
        if user not in cols:
            raise ValueError(f"columns: the data has no column {user!r} (it has {sorted(cols)})")
        out[canonical] = out.pop(user) if user in out else cols[user]
    return out


def load(data: object, *, columns: Mapping[str, str] | None = None, required: Sequence[str] = ("N", "D"),
         target: str | None = "loss", nan_policy: str = "raise", flops_per_param_token: float = 6.0,
         law: object | None = None, extra: Sequence[str] = ()) -> ScalingData:
    """Load and validate scaling data.

    data: a CSV/Parquet path, a pandas DataFrame, a mapping of column -> array, or a ScalingData.
    columns: renames, canonical -> user's name (e.g. {"N": "params", "loss": "val_loss"}); either direction.
    required: columns the caller needs (a law's inputs); `law` (with a `required(available)` method) overrides.
    extra: further columns to keep (and validate) when the data has them, e.g. ("C",).
    nan_policy: "raise" lists bad rows (NaN/inf, non-positive, duplicates) in a ValueError; "omit" drops
        and counts them (ScalingData.n_dropped, .dropped with reasons).
    """
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit': got {nan_policy!r}")
    if not flops_per_param_token > 0:
        raise ValueError(f"flops_per_param_token must be > 0: got {flops_per_param_token}")
    k = float(flops_per_param_token)
    cols = _rename(_read(data), columns)
    lengths = {name: len(np.atleast_1d(v)) for name, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"data: columns have different lengths {lengths}")

    numeric: dict[str, np.ndarray] = {}
    for name, v in cols.items():
        if name == "run" or name not in CANONICAL:
            continue
        try:
            numeric[name] = np.asarray(v, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data: column {name!r} is not numeric ({exc})") from None
    # Two of N, D, C determine the third through the convention.
    if "C" not in numeric and "N" in numeric and "D" in numeric:
        numeric["C"] = k * numeric["N"] * numeric["D"]
    elif "D" not in numeric and "N" in numeric and "C" in numeric:
        numeric["D"] = numeric["C"] / (k * numeric["N"])
    elif "N" not in numeric and "D" in numeric and "C" in numeric:
        numeric["N"] = numeric["C"] / (k * numeric["D"])

    available = set(numeric) | ({"run"} if "run" in cols else set())
    req = list(law.required(available) if law is not None and hasattr(law, "required") else required)
    if target and target not in req:
        req.append(target)
    missing = [c for c in req if c not in available]
    if missing:
        raise ValueError(f"data: missing column(s) {missing}; its columns are {sorted(cols)} "
                         "(map your own names with columns=, e.g. columns={'N': 'params'})")
    n = lengths[next(iter(lengths))] if lengths else 0
    if n == 0:
        raise ValueError("data: no rows (column names but no runs); give at least one run per row")

    keep = [c for c in req if c != "run"]
    for c in ("step", *extra):
        if c in numeric and c not in keep:
            keep.append(c)
    out: dict[str, np.ndarray] = {c: numeric[c] for c in keep}
    if "run" in cols:
        out["run"] = np.asarray(cols["run"]).astype(str)

    reasons: dict[int, str] = {}
    for c in keep:
        v = out[c]
        for i in np.flatnonzero(~np.isfinite(v)):
            reasons.setdefault(int(i), f"{c} is {v[i]}")
        if c in _NONNEG:
            for i in np.flatnonzero(np.isfinite(v) & (v < 0)):
                reasons.setdefault(int(i), f"{c} = {v[i]:g} is negative")
        elif c not in _SIGNED:
            for i in np.flatnonzero(np.isfinite(v) & (v <= 0)):
                reasons.setdefault(int(i), f"{c} = {v[i]:g} is not > 0")
        if c == "G":
            for i in np.flatnonzero(np.isfinite(v) & (v > 0) & (v <= 1)):
                reasons.setdefault(int(i), f"G = {v[i]:g}: the group size must be > 1 (log2 G > 0)")
    # Exact duplicates of every used column (a run logged twice) would double its weight.
    key_cols = [out[c] for c in keep] + ([out["run"]] if "run" in out else [])
    seen: dict[tuple, int] = {}
    for i, key in enumerate(zip(*(c.tolist() for c in key_cols))):
        if key in seen:
            reasons.setdefault(i, f"duplicate of row {seen[key]}")
        else:
            seen[key] = i

    bad = sorted(reasons)
    dropped = [(i, reasons[i]) for i in bad]
    if bad and nan_policy == "raise":
        shown = "; ".join(f"row {i}: {r}" for i, r in dropped[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise ValueError(f"data: {len(bad)} bad row(s): {shown}{more}. Fix them or pass nan_policy='omit'")
    mask = np.ones(n, dtype=bool)
    mask[bad] = False
    if not mask.any():
        raise ValueError("data: every row was dropped as bad")
    return ScalingData({c: v[mask] for c, v in out.items()}, k, len(bad), dropped, np.flatnonzero(mask))


__all__ = ["CANONICAL", "ScalingData", "load"]
