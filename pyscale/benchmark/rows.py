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
            "energy_j": rec.energy_j, "j_per_tflop": None, "power_limit_w": rec.power_limit_w,
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


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


class Footnotes:
    """Reasons said once, under a table: `mark(reason)` gives the marker of a reason (the same reason,
    the same marker), `lines()` the notes in order."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def mark(self, reason: str) -> str:
        if reason not in self._reasons:
            self._reasons[reason] = str(sum(1 for m in self._reasons.values() if m) + 1).translate(_SUPERSCRIPT)
        return self._reasons[reason]

    def note(self, text: str) -> None:
        """A note without a marker (said of the whole table)."""
        self._reasons.setdefault(text, "")

    def lines(self) -> list[str]:
        return [f"{marker} {reason}" if marker else reason for reason, marker in self._reasons.items()]


def table_console(width: int | None = None):
    """The console tables are printed on: the terminal's width; a file or pipe gets 160 columns unless
    COLUMNS says otherwise (so that a saved table is not cut to 80)."""
    import os

    from rich.console import Console

    if width is not None:
        return Console(width=width)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=max(console.width, 160))
    return console


def _scaled(values: Sequence[float | None], units: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The unit of `units` ((name, factor), largest first) that shows the largest value at >= 1."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    for name, factor in units:
        if top >= factor:
            return name, factor
    return units[-1]


def _num(value: float) -> str:
    """3 significant digits, without an exponent below a million."""
    return f"{value:.0f}" if 1e3 <= abs(value) < 1e6 else f"{value:.3g}"


# The number columns: (row key, units largest first, the % column folded into the cell or None).
_NUMBERS: tuple[tuple[str, tuple[tuple[str, float], ...], str | None], ...] = (
    ("time_ms", (("s", 1e3), ("ms", 1.0), ("µs", 1e-3)), None),
    ("tflops", (("TFLOP/s", 1.0), ("GFLOP/s", 1e-3), ("MFLOP/s", 1e-6)), "pct_peak"),
    ("gb_s", (("TB/s", 1e3), ("GB/s", 1.0), ("MB/s", 1e-3)), "pct_bandwidth"),
    ("energy_j", (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6)), None),
    ("j_per_tflop", (("J/TFLOP", 1.0),), None),
)
WIDE = 110  # columns from which J/TFLOP gets a column of its own (it is J over the FLOPs: derivable)
ERROR_CHARS = 160  # of a failure's error, in its footnote


def _shared_params(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shape parameters every row has with one value (said once, in the op's title)."""
    first = rows[0]["params"]
    return {k: v for k, v in first.items() if all(k in r["params"] and r["params"][k] == v for r in rows)}


def bench_tables(rows: Sequence[dict[str, Any]], width: int = 80) -> tuple[list[Any], list[str]]:
    """Rich Tables of benchmark rows, one per op, and their notes, legible at `width` columns: units are
    chosen per table (µs, GFLOP/s where numbers are small), % of peak and of bandwidth ride in the rate's
    cell, a column no row has a value for is left out (why is said once), shape parameters that every row
    of an op shares go in its title, numbers are never cut (shapes and speedups wrap instead), and each
    failure's error and absent value's reason is a footnote."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    notes = Footnotes()
    ok = [r for r in rows if r["status"] == "ok"]
    shown = [c for c in _NUMBERS if any(r[c[0]] is not None for r in ok)
             and (c[0] != "j_per_tflop" or width >= WIDE)]
    no_peak = [name for key, name in (("pct_peak", "% peak"), ("pct_bandwidth", "% BW"))
               if ok and all(r[key] is None for r in ok)]
    if no_peak:
        devices = ", ".join(sorted({r["device"] for r in ok}))
        notes.note(f"{' and '.join(no_peak)}: pyscale.hw has no peak for {devices}")
    if ok and not any(r["energy_j"] is not None for r in ok):
        why = sorted({r["energy_unavailable_reason"] or "not measured" for r in ok})
        notes.note(f"energy: {'; '.join(why)}")
    tables = []
    for op in dict.fromkeys(r["op"] for r in rows):
        group = [r for r in rows if r["op"] == op]
        done = [r for r in group if r["status"] == "ok"]
        units = {key: _scaled([r[key] for r in done], options) for key, options, _ in shown}
        shared = _shared_params(group)
        title = op + (f" (every row: {', '.join(f'{k}={v}' for k, v in shared.items())})" if shared else "")
        varying = any(set(r["params"]) - set(shared) for r in group)
        baselines = sorted({name for r in group for name in (r.get("speedup") or {})})
        if any(r.get("ideal_speedup") for r in group):
            notes.note("(ideal): the speedup if both ran at the same GB/s (the baseline's bytes over these)")
        headers = []
        for key, _, pct in shown:
            with_pct = pct is not None and any(r[pct] is not None for r in done)
            headers.append(units[key][0] + (f"\n({'% peak' if pct == 'pct_peak' else '% BW'})" if with_pct else ""))
        cells = []
        for r in group:
            shape = [escape(", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in shared))] if varying else []
            if r["status"] != "ok":
                error = (r["error"] or "no error message").strip().splitlines()[0]
                if len(error) > ERROR_CHARS:
                    error = error[:ERROR_CHARS].rstrip() + "... (the whole error is in the store)"
                marker = notes.mark(f"{r['status']}: {error}")
                values = [f"{r['status']}{marker}"] + [""] * (len(shown) - 1)
            else:
                values = []
                for key, _, pct in shown:
                    value = "—" if r[key] is None else _num(r[key] / units[key][1])
                    if pct is not None and r[pct] is not None:
                        value += f" ({r[pct]:.0f}%)" if r[pct] >= 10 else f" ({r[pct]:.2g}%)"
                    if key == "energy_j" and r[key] is None:
                        value += notes.mark(f"energy: {r['energy_unavailable_reason'] or 'not measured'}")
                    values.append(value)
            speedup = _speedups(r)
            if len(baselines) == 1:
                speedup = speedup.removeprefix(f"{baselines[0]} ")
            cells.append([escape(r["impl"]), escape(r["dtype"]), *shape, *values,
                          *([escape(speedup)] if baselines else [])])
        table = Table(title=f"[bold]{escape(title)}[/]", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      padding=(0, 1), collapse_padding=True)
        table.add_column("impl", no_wrap=True)
        table.add_column("dtype", no_wrap=True)
        if varying:
            table.add_column("shape", overflow="fold", ratio=1, min_width=8)
        offset = 3 if varying else 2
        for i, header in enumerate(headers):
            table.add_column(header, justify="right", no_wrap=True,
                             min_width=max(len(c[offset + i]) for c in cells) if cells else None)
        if baselines:
            header = f"speedup vs\n{baselines[0]}" if len(baselines) == 1 else "speedup vs"
            table.add_column(escape(header), overflow="fold", min_width=10)
        for c in cells:
            table.add_row(*c)
        tables.append(table)
    return tables, notes.lines()


def print_bench_table(rows: Sequence[dict[str, Any]], title: str, *, console: Any = None) -> None:
    """`title`, one table per op (per call, medians), then the notes."""
    from rich.markup import escape

    console = console or table_console()
    tables, notes = bench_tables(rows, width=console.width)
    console.print(f"[bold]{escape(title)}[/] (per call: median time; rates from each op's FLOP and byte formulas)")
    for table in tables:
        title, table.title = table.title, None  # as a line of its own: it wraps at the console's width
        console.print(title)
        console.print(table)
    for line in notes:
        console.print(line, markup=False, highlight=False)


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
