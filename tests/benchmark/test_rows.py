"""pyscale.benchmark.rows: derived figures against the device's peaks, speedups over baselines, exports."""

from __future__ import annotations

import pytest

from pyscale.benchmark.rows import bench_rows, export, print_bench_table


def test_rows_on_a_gpu_use_each_formats_compute_peak_and_the_memory_bandwidth():
    """No GPU needed: measured rows as a sweep on an H100 would return them (no real run is implied)."""
    from types import SimpleNamespace

    from pyscale import hw
    from pyscale.store import DeviceRecord, MeasurementRecord

    spec = hw.lookup("NVIDIA H100 80GB HBM3")
    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    m, n, k = 16, 4096, 4096
    flops = 2.0 * m * n * k
    formats = {("torch.mm", "bf16"): 2.0 * (m * k + n * k + m * n),
               ("pyscale", "fp8-row"): m * k + n * k + 2.0 * m * n + 4 * (m + n),
               ("pyscale", "int8"): m * k + n * k + 2.0 * m * n + 4 * (m + n),
               ("pyscale", "w4a16-g128"): 2.0 * m * k + n * k / 2 + 2.0 * n * k / 128 + 2.0 * m * n}
    raw = [{"case": SimpleNamespace(params_dict={"m": m, "n": n, "k": k}), "device": device,
            "record": MeasurementRecord(op="gemm", backend=impl, params={}, dtype=fmt, time_s=1e-4,
                                        flops=flops, bytes=nbytes).explain_missing("synthetic row")}
           for (impl, fmt), nbytes in formats.items()]
    rows = {r["dtype"]: r for r in bench_rows(raw)}
    for fmt, dtype in (("bf16", "bf16"), ("fp8-row", "fp8"), ("int8", "int8"), ("w4a16-g128", "bf16")):
        assert rows[fmt]["pct_peak"] == pytest.approx(100 * flops / 1e-4 / hw.peak_flops(spec, dtype)), fmt
        assert rows[fmt]["pct_bandwidth"] == pytest.approx(
            100 * formats[(rows[fmt]["impl"], fmt)] / 1e-4 / spec.memory_bandwidth_bytes_per_s)
    # W4A16's ideal against the bf16 layer is the bytes it does not have to read: ~3.9x at decode.
    ideal = rows["w4a16-g128"]["ideal_speedup"]["torch.mm[bf16]"]
    assert 3.5 < ideal < 3.9 and ideal == pytest.approx(formats[("torch.mm", "bf16")]
                                                         / formats[("pyscale", "w4a16-g128")])
    assert rows["w4a16-g128"]["speedup"]["torch.mm[bf16]"] == pytest.approx(1.0)  # same time given to all
    print_bench_table(list(rows.values()), title="synthetic H100 rows")  # formats every column


def test_export_flattens_the_dict_columns_as_json(tmp_path):
    import csv
    import json
    from types import SimpleNamespace

    from pyscale.store import DeviceRecord, MeasurementRecord

    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    raw = [{"case": SimpleNamespace(params_dict={"k": 64, "m": 16, "n": 32}), "device": device,
            "record": MeasurementRecord(op="gemm", backend=impl, params={}, dtype=fmt, time_s=t, flops=1e6,
                                        bytes=nbytes).explain_missing("synthetic row")}
           for impl, fmt, t, nbytes in (("torch.mm", "bf16", 2e-4, 4e3), ("pyscale", "w4a16-g128", 1e-4, 1e3))]
    rows = bench_rows(raw)
    with open(export(rows, tmp_path / "rows.csv"), newline="") as f:
        flat = {r["impl"]: r for r in csv.DictReader(f)}
    assert json.loads(flat["pyscale"]["params"]) == {"k": 64, "m": 16, "n": 32}
    assert json.loads(flat["pyscale"]["speedup"]) == {"torch.mm[bf16]": pytest.approx(2.0)}
    assert json.loads(flat["pyscale"]["ideal_speedup"]) == {"torch.mm[bf16]": pytest.approx(4.0)}
    assert json.loads(flat["torch.mm"]["speedup"]) == {}
    back = json.loads(export(rows, tmp_path / "rows.json").read_text())
    assert back[1]["ideal_speedup"] == {"torch.mm[bf16]": 4.0}
    with pytest.raises(ValueError, match="export must end in"):
        export(rows, tmp_path / "rows.txt")


def _rendered(rows, width=80):
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True)
    print_bench_table(rows, title="pyscale bench gemm [llama3-8b] on cuda", console=console)
    return console.export_text()


def test_the_table_is_legible_at_80_columns():
    """Before, at 80 columns every number was cut to "0.…" and each failure's error filled its row."""
    from types import SimpleNamespace

    from pyscale.store import DeviceRecord, MeasurementRecord

    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    raw = []
    for m in (1, 16, 4096):
        for impl, fmt, speed in (("torch.mm", "bf16", 1.0), ("pyscale", "fp8-row", 1.7), ("pyscale", "w4a16-g128", 2.9)):
            nbytes = 2.0 * (m * 4096 + 4096 * 14336) / speed ** 0.5
            t = max(2.0 * m * 4096 * 14336 / 700e12, nbytes / 3e12) + 4e-6  # made up, not measured
            energy = None if fmt == "fp8-row" else 450.0 * t
            raw.append({"case": SimpleNamespace(params_dict={"m": m, "n": 14336, "k": 4096, "layer": "mlp_up"}),
                        "device": device, "record": MeasurementRecord(
                            op="gemm", backend=impl, params={}, dtype=fmt, time_s=t, flops=2.0 * m * 4096 * 14336,
                            bytes=nbytes, energy_j=energy,
                            energy_j_unavailable_reason=None if energy else "NVML energy counter did not advance",
                            avg_power_w=450.0 if energy else None).explain_missing("synthetic row")})
    raw.append({"case": SimpleNamespace(params_dict={"m": 8192, "n": 14336, "k": 4096, "layer": "mlp_up"}),
                "device": device, "record": MeasurementRecord(
                    op="gemm", backend="pyscale", params={}, dtype="fp8-row", status="oom",
                    error="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.50 GiB. GPU 0 has a "
                          "total capacity of 79.19 GiB of which 1.2 GiB is free. " * 3)})
    rows = bench_rows(raw)
    text = _rendered(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:  # every number in full: times in µs here, rates in TFLOP/s with their % of the peak
        pct = f"{r['pct_peak']:.0f}" if r["pct_peak"] >= 10 else f"{r['pct_peak']:.2g}"
        assert f"{r['time_ms'] * 1e3:.3g}" in text and f"{r['tflops']:.3g} ({pct}%)" in text
    import re

    assert len(re.findall("oom[¹²]", text)) == 1 and len(re.findall("[¹²] oom: torch.OutOfMemoryError", text)) == 1
    assert "... (the whole error is in the store)" in text
    assert text.count("NVML energy counter did not advance") == 1
    assert "every row: n=14336, k=4096, layer=mlp_up" in text  # shared parameters said once
    assert len(lines) < 40
