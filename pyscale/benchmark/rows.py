"""Derived figures and tables for measured rows: TFLOP/s, % of peak, GB/s, J/TFLOP, ratio to baselines."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyscale import hw


def _compute_dtype(fmt: str) -> str | None:
    """The tensor-core dtype a benchmark format computes in: its peak is the one a row is held against.

    Quantized formats name their storage (`fp8-row`, `w4a16-g128`); W4A16 dequantises into its 16-bit
    activations, so its matmuls run at the bf16 rate. None for a name hw.py has no peak for."""
    if fmt.startswith("fp8"):
        return "fp8"
    if fmt.startswith("w4a16"):
        return "bf16"
    return fmt if fmt in hw.DTYPES or fmt in ("bfloat16", "float16", "float32") else None


def _spec(device_kind: str, device_name: str) -> hw.GPUSpec | None:
    if device_kind != "cuda":
        return None
    spec = hw.lookup(device_name)
    return spec if isinstance(spec, hw.GPUSpec) else None


def _peak(spec: hw.GPUSpec | None, fmt: str) -> float | None:
    dtype = _compute_dtype(fmt)
    return None if spec is None or dtype is None else hw.peak_flops(spec, dtype)


def bench_rows(raw: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten sweep rows ({case, device, record}) into table rows with derived figures and ratios."""
    rows = []
    for item in raw:
        case, device, rec = item["case"], item["device"], item["record"]
        t = rec.time_s
        row: dict[str, Any] = {
            "op": rec.op, "impl": rec.backend, "dtype": rec.dtype, "params": case.params_dict,
            "device": device.name, "status": rec.status, "error": rec.error, "time_ms": None if t is None else t * 1e3,
            "tflops": None, "pct_peak": None, "bytes": rec.bytes, "gb_s": None, "pct_bandwidth": None,
            "energy_j": rec.energy_j, "j_per_tflop": None,
            "energy_unavailable_reason": rec.unavailable_reasons().get("energy_j"),
        }
        spec = _spec(device.kind, device.name)
        if t:
            if rec.flops:
                row["tflops"] = rec.flops / t / 1e12
                peak = _peak(spec, rec.dtype)
                row["pct_peak"] = None if peak is None else 100 * rec.flops / t / peak
                if rec.energy_j:
                    row["j_per_tflop"] = rec.energy_j / (rec.flops / 1e12)
            if rec.bytes:
                row["gb_s"] = rec.bytes / t / 1e9
                if spec is not None:
                    row["pct_bandwidth"] = 100 * rec.bytes / t / spec.memory_bandwidth_bytes_per_s
        rows.append(row)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """For pyscale rows: speedup over each baseline of the same op and shape, measured in the same run.

    Baselines of another dtype count too (a quantized GEMM against the bf16 layer it replaces); they are
    named `impl[dtype]` then. A variant's row (`pyscale:<variant>`) is also compared with the default
    `pyscale` row of its dtype (the A/B). `ideal_speedup` is the baseline's bytes over the row's: the
    speedup a bandwidth-bound op (W4A16 decode) would reach if both ran at the same GB/s."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r["op"], r["params"]], sort_keys=True), []).append(r)
    for members in groups.values():
        for r in (m for m in members if _is_pyscale(m["impl"]) and m["time_ms"]):
            baselines = {(b["impl"] if b["dtype"] == r["dtype"] else f"{b['impl']}[{b['dtype']}]"): b
                         for b in members if b["time_ms"] and (not _is_pyscale(b["impl"]) or (
                             b["impl"] == "pyscale" and r["impl"] != "pyscale" and b["dtype"] == r["dtype"]))}
            r["speedup"] = {name: b["time_ms"] / r["time_ms"] for name, b in baselines.items()}
            r["ideal_speedup"] = {name: b["bytes"] / r["bytes"] for name, b in baselines.items()
                                  if b["bytes"] and r["bytes"] and b["dtype"] != r["dtype"]}


def _is_pyscale(impl: str) -> bool:
    return impl == "pyscale" or impl.startswith("pyscale:")


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _speedups(row: dict[str, Any]) -> str:
    ideal = row.get("ideal_speedup") or {}
    return ", ".join(f"{k} {v:.2f}×" + (f" ({ideal[k]:.2f}×)" if k in ideal else "")
                     for k, v in (row.get("speedup") or {}).items())


def print_bench_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col in ("op", "impl", "dtype", "shape", "ms", "TFLOP/s", "% peak", "GB/s", "% BW", "J", "J/TFLOP",
                "speedup (ideal)"):
        table.add_column(col, justify="right" if col not in ("op", "impl", "dtype", "shape") else "left")
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["params"].items())
        if r["status"] != "ok":
            table.add_row(r["op"], r["impl"], r["dtype"], shape, f"[red]{r['status']}[/]", "", "", "", "", "", "",
                          escape((r["error"] or "").splitlines()[0][:60]))
            continue
        energy = _fmt(r["energy_j"]) if r["energy_j"] is not None else "n/a"
        table.add_row(r["op"], r["impl"], r["dtype"], escape(shape), _fmt(r["time_ms"]), _fmt(r["tflops"]),
                      _fmt(r["pct_peak"], ".1f"), _fmt(r["gb_s"]), _fmt(r["pct_bandwidth"], ".1f"), energy,
                      _fmt(r["j_per_tflop"]), escape(_speedups(r)))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    console.print(table)


DICT_COLUMNS = ("params", "speedup", "ideal_speedup")  # JSON-encoded in flat exports


def _encoded(row: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(row.get(k) or {}, sort_keys=True) for k in DICT_COLUMNS}


def export(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(list(rows), indent=2, default=str))
    elif path.suffix == ".csv":
        flat = [{**{k: v for k, v in r.items() if k not in DICT_COLUMNS}, **_encoded(r)} for r in rows]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["op"])
            writer.writeheader()
            writer.writerows(flat)
    elif path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame([{**r, **_encoded(r)} for r in rows]).to_parquet(path, index=False)
    else:
        raise ValueError(f"export must end in .json, .csv or .parquet: got {path}")
    return path
