from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyscale import benchmark
from pyscale import benchmark as pyscale_benchmark  # the fixture takes the name `benchmark`
from pyscale.benchmark_cases import gemm
from pyscale.store import Store


def _quick_gemm(impls=("torch.mm",)):
    return benchmark.plan_cases(["gemm"], "quick", device="cpu", impls=impls)


def test_quick_sweep_end_to_end_and_resume(tmp_path):
    cases = _quick_gemm()
    assert cases and all(c.impl == "torch.mm" and c.dtype == "fp32" for c in cases)
    with Store(tmp_path / "s.db") as store:
        summary = benchmark.sweep(cases, store=store, progress=False)
        assert summary.measured == len(cases) and summary.failed == 0
        rows = store.measurements()
        assert len(rows) == len(cases)
        for r in rows:
            assert r["device_kind"] == "cpu" and r["time_s_median"] > 0
            p = r["params"]
            assert r["flops"] == 2 * p["m"] * p["n"] * p["k"]
            assert r["energy_j"] is None and "energy not requested" in r["unavailable_reasons"]["energy_j"]
            assert r["extra"]["cpu_threads"] >= 1
        again = benchmark.sweep(cases, store=store, resume=True, progress=False)
        assert again.skipped == len(cases) and again.measured == 0
        assert len(store.measurements(include_superseded=True)) == len(cases)


def test_oom_and_kernel_failure_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    cases = _quick_gemm()
    real = gemm.workload

    def flaky(case, device):
        if case.params_dict["m"] == 16 and case.params_dict["layer"] == "a":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if case.params_dict["m"] == 64 and case.params_dict["layer"] == "a":
            raise RuntimeError("triton kernel failed to launch")
        return real(case, device)

    monkeypatch.setattr(gemm, "workload", flaky)
    with Store(tmp_path / "s.db") as store:
        summary = benchmark.sweep(cases, store=store, progress=False)
        assert summary.failed == 2 and summary.measured == len(cases) - 2
        statuses = {(r["params"]["layer"], r["params"]["m"]): r for r in store.measurements(status=None)}
        assert statuses[("a", 16)]["status"] == "oom" and "out of memory" in statuses[("a", 16)]["error"]
        assert statuses[("a", 64)]["status"] == "error" and "failed to launch" in statuses[("a", 64)]["error"]
        monkeypatch.setattr(gemm, "workload", real)
        retry = benchmark.sweep(cases, store=store, resume=True, progress=False)
        assert retry.measured == 2 and retry.skipped == len(cases) - 2  # failed cases are retried


def test_killed_sweep_resumes_without_losing_or_duplicating(tmp_path):
    db = tmp_path / "k.db"
    env = {**os.environ, "PYSCALE_BENCH_CPU_THREADS": "1"}
    cmd = [sys.executable, "-m", "pyscale", "bench", "gemm", "--quick", "--store", str(db), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    seen = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            with Store(db) as s:
                seen = len(s.measurements())
            if seen >= 1:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    with Store(db) as s:
        before = {tuple(sorted(r["params"].items())) for r in s.measurements()}
    assert len(before) >= 1
    done = subprocess.run([*cmd[:-1], "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Store(db) as s:
        rows = s.measurements()
        assert len(rows) == len(_quick_gemm(None))  # every case once, none lost
        assert before <= {tuple(sorted(r["params"].items())) for r in rows}


def test_bad_shape_set_and_family():
    with pytest.raises(ValueError, match="shapes must be one of"):
        benchmark.plan_cases(["gemm"], "gpt5")
    with pytest.raises(ValueError, match="family must be one of"):
        benchmark.plan_cases(["conv"], "quick")


def test_quantized_gemm_cases_compare_against_the_unquantized_layer(tmp_path):
    from pyscale import report_rows

    cases = [c for c in _quick_gemm(None) if c.params_dict["m"] == 16 and c.params_dict["layer"] == "a"]
    assert {(c.impl, c.dtype) for c in cases} == {("torch.mm", "fp32"), ("pyscale", "int8"),
                                                   ("pyscale", "w4a16-g128")}
    with Store(tmp_path / "s.db") as store:
        summary = benchmark.sweep(cases, store=store, progress=False)
    assert summary.failed == 0
    rows = {r["dtype"]: r for r in report_rows.bench_rows(summary.rows)}
    for fmt in ("int8", "w4a16-g128"):
        assert set(rows[fmt]["speedup"]) == {"torch.mm[fp32]"} and rows[fmt]["speedup"]["torch.mm[fp32]"] > 0
    assert rows["w4a16-g128"]["gb_s"] > 0 and rows["int8"]["tflops"] > 0


def test_pytest_benchmark_group_runs_every_implementation(benchmark):
    group = next(g for g in _groups() if len(g) == 3)
    info = pyscale_benchmark.run_group_for_pytest(benchmark, group, device="cpu")
    assert {"torch.mm[fp32]", "pyscale[int8]", "pyscale[w4a16-g128]"} <= set(info)
    assert info["pyscale[int8]"]["status"] == "ok" and info["pyscale[int8]"]["speedup"]["torch.mm[fp32]"] > 0
    assert benchmark.extra_info["op"] == "gemm"


def _groups():
    return pyscale_benchmark.case_groups(_quick_gemm(None))


def test_rows_on_a_gpu_use_each_formats_compute_peak_and_the_memory_bandwidth():
    """No GPU needed: measured rows as a sweep on an H100 would return them (no real run is implied)."""
    from types import SimpleNamespace

    from pyscale import hw, report_rows
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
            "record": MeasurementRecord(op="gemm", backend=impl, params={}, dtype=fmt, time_s_median=1e-4,
                                        flops=flops, bytes=nbytes).explain_missing("synthetic row")}
           for (impl, fmt), nbytes in formats.items()]
    rows = {r["dtype"]: r for r in report_rows.bench_rows(raw)}
    for fmt, dtype in (("bf16", "bf16"), ("fp8-row", "fp8"), ("int8", "int8"), ("w4a16-g128", "bf16")):
        assert rows[fmt]["pct_peak"] == pytest.approx(100 * flops / 1e-4 / hw.peak_flops(spec, dtype)), fmt
        assert rows[fmt]["pct_bandwidth"] == pytest.approx(
            100 * formats[(rows[fmt]["impl"], fmt)] / 1e-4 / spec.memory_bandwidth_bytes_per_s)
    # W4A16's ideal against the bf16 layer is the bytes it does not have to read: ~3.9x at decode.
    ideal = rows["w4a16-g128"]["ideal_speedup"]["torch.mm[bf16]"]
    assert 3.5 < ideal < 3.9 and ideal == pytest.approx(formats[("torch.mm", "bf16")]
                                                         / formats[("pyscale", "w4a16-g128")])
    assert rows["w4a16-g128"]["speedup"]["torch.mm[bf16]"] == pytest.approx(1.0)  # same time given to all
    report_rows.print_bench_table(list(rows.values()), title="synthetic H100 rows")  # formats every column


def test_gpu_gemm_cases_leave_out_what_the_baselines_refuse(monkeypatch):
    import torch

    from pyscale.benchmark_cases import gemm

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cases = gemm.cases("llama3-8b", "cuda")
    int_mm = {c.params_dict["m"] for c in cases if c.impl == "torch._int_mm"}
    pyscale_int8 = {c.params_dict["m"] for c in cases if c.impl == "pyscale" and c.dtype == "int8"}
    assert int_mm and min(int_mm) > 16 and min(pyscale_int8) <= 16  # decode M still measured for pyscale
    assert {c.dtype for c in cases if c.impl == "pyscale"} >= {"fp8-tensor", "fp8-row", "fp8-block", "int8"}


def test_export_flattens_the_dict_columns_as_json(tmp_path):
    import csv
    import json
    from types import SimpleNamespace

    from pyscale import report_rows
    from pyscale.store import DeviceRecord, MeasurementRecord

    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    raw = [{"case": SimpleNamespace(params_dict={"k": 64, "m": 16, "n": 32}), "device": device,
            "record": MeasurementRecord(op="gemm", backend=impl, params={}, dtype=fmt, time_s_median=t, flops=1e6,
                                        bytes=nbytes).explain_missing("synthetic row")}
           for impl, fmt, t, nbytes in (("torch.mm", "bf16", 2e-4, 4e3), ("pyscale", "w4a16-g128", 1e-4, 1e3))]
    rows = report_rows.bench_rows(raw)
    with open(report_rows.export(rows, tmp_path / "rows.csv"), newline="") as f:
        flat = {r["impl"]: r for r in csv.DictReader(f)}
    assert json.loads(flat["pyscale"]["params"]) == {"k": 64, "m": 16, "n": 32}
    assert json.loads(flat["pyscale"]["speedup"]) == {"torch.mm[bf16]": pytest.approx(2.0)}
    assert json.loads(flat["pyscale"]["ideal_speedup"]) == {"torch.mm[bf16]": pytest.approx(4.0)}
    assert json.loads(flat["torch.mm"]["speedup"]) == {}
    back = json.loads(report_rows.export(rows, tmp_path / "rows.json").read_text())
    assert back[1]["ideal_speedup"] == {"torch.mm[bf16]": 4.0}
    with pytest.raises(ValueError, match="export must end in"):
        report_rows.export(rows, tmp_path / "rows.txt")
