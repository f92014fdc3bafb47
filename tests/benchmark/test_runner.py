"""pyscale.benchmark.runner: sweeps into the store, failures recorded, resume (also on a store written
before v3 gave the profiler and the benchmark one device record)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyscale import benchmark
from pyscale.benchmark.cases import gemm
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


def test_resume_is_per_power_limit(tmp_path, monkeypatch):
    from pyscale.benchmark import runner
    from pyscale.store import MeasurementRecord

    cases = _quick_gemm()[:2]
    with Store(tmp_path / "s.db") as store:
        benchmark.sweep(cases, store=store, progress=False)
        assert benchmark.pending(cases, store=store, device="cpu") == []
        # the same rows seen from a GPU at 300 W: none of them was measured there, at that limit
        monkeypatch.setattr(runner, "_power_limit_now", lambda device: 300.0)
        assert benchmark.pending(cases, store=store, device="cpu") == cases
        row = store.measurements()[0]
        dev = store.register_device(benchmark.runner.sysinfo.device_record("cpu"))
        store.record(MeasurementRecord(op=row["op"], backend=row["backend"], params=row["params"],
                                       dtype=row["dtype"], time_s=1e-3, power_limit_w=300.0).explain_missing("test"),
                     device_id=dev)
        assert len(benchmark.pending(cases, store=store, device="cpu")) == 1


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
    with Store(db) as s:  # the first writer to open the store after the kill finds the run's process gone
        before = {tuple(sorted(r["params"].items())) for r in s.measurements()}
        (killed,) = s.runs()
        assert killed["status"] == "interrupted" and killed["pid"] == proc.pid and s.interrupted_now == [killed["id"]]
    assert len(before) >= 1
    done = subprocess.run([*cmd[:-1], "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"run {killed['id']} (bench on {killed['hostname']}, pid {proc.pid}) was interrupted" in done.stderr
    with Store(db) as s:
        rows = s.measurements()
        assert len(rows) == len(_quick_gemm(None))  # every case once, none lost
        assert before <= {tuple(sorted(r["params"].items())) for r in rows}
        assert [r["status"] for r in s.runs()] == ["interrupted", "ok"]


def test_bad_shape_set_and_family():
    with pytest.raises(ValueError, match="shape_set must be one of"):
        benchmark.plan_cases(["gemm"], "gpt5")
    with pytest.raises(ValueError, match="family must be one of"):
        benchmark.plan_cases(["conv"], "quick")


def test_quantized_gemm_cases_compare_against_the_unquantized_layer(tmp_path):
    from pyscale.benchmark.rows import bench_rows

    cases = [c for c in _quick_gemm(None) if c.params_dict["m"] == 16 and c.params_dict["layer"] == "a"]
    assert {(c.impl, c.dtype) for c in cases} == {("torch.mm", "fp32"), ("pyscale", "int8"),
                                                   ("pyscale", "w4a16-g128")}
    with Store(tmp_path / "s.db") as store:
        summary = benchmark.sweep(cases, store=store, progress=False)
    assert summary.failed == 0
    rows = {r["dtype"]: r for r in bench_rows(summary.rows)}
    for fmt in ("int8", "w4a16-g128"):
        assert set(rows[fmt]["speedup"]) == {"torch.mm[fp32]"} and rows[fmt]["speedup"]["torch.mm[fp32]"] > 0
    assert rows["w4a16-g128"]["gb_s"] > 0 and rows["int8"]["tflops"] > 0


@pytest.mark.parametrize("version", [2, 3])
def test_resume_skips_the_cases_of_a_store_written_before_one_device_record(tmp_path, monkeypatch, capsys, version):
    """`pyscale bench --resume` on a v2 store: before v3 the benchmark filed a CPU's rows with torch's CUDA
    version (as on a machine whose torch is a CUDA build); today's record has none, and the cases still match.
    On a v3 store (its runs without the process columns of v4) too."""
    import json
    import sqlite3

    from pyscale import cli, sysinfo
    from pyscale import store as st

    real_versions = sysinfo.versions
    monkeypatch.setattr(sysinfo, "versions", lambda: {**real_versions(), "torch_cuda": "12.8"})  # a CUDA build
    versions, cpu = sysinfo.versions(), sysinfo.cpu_device()
    old = st.DeviceRecord(kind="cpu", name=cpu.name, uuid=cpu.uuid, memory_bytes=cpu.memory_bytes, cuda_version="12.8",
                          torch_version=versions["torch"], triton_version=versions["triton"])
    assert old != sysinfo.device_record("cpu")  # the old id is not today's: only the migration can match it
    cases = _quick_gemm()
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    for script in st.MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO devices (id, kind, name, uuid, memory_bytes, cuda_version, torch_version, "
                 "triton_version, created_at) VALUES (1, 'cpu', ?, ?, ?, ?, ?, ?, 0)",
                 (old.name, old.uuid, old.memory_bytes, old.cuda_version, old.torch_version, old.triton_version))
    for c in cases:
        params = {**c.params_dict, "shape_set": c.shape_set}
        key = st.case_key(c.op, c.impl, params, c.dtype, old.uuid, old.versions())
        conn.execute("INSERT INTO measurements (device_id, case_key, op, backend, params, dtype, status, "
                     "time_s_median, created_at) VALUES (1, ?, ?, ?, ?, ?, 'ok', 1e-3, 0)",
                     (key, c.op, c.impl, json.dumps(params, sort_keys=True), c.dtype))
    if version == 3:  # the store as pyscale with schema v3 left it
        conn.row_factory = sqlite3.Row
        st.MIGRATIONS[2](conn)
        conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    assert cli.main(["bench", "gemm", "--quick", "--impl", "torch.mm", "--resume", "--store", str(db)]) == 0
    assert f": 0 measured, 0 failed, {len(cases)} skipped (already in the store)" in capsys.readouterr().out
    with Store(db) as store:
        assert len(store.measurements(include_superseded=True)) == len(cases)  # nothing measured again


def test_the_profiler_and_a_sweep_file_their_rows_under_one_device(tmp_path):
    """One builder of the stored device record (pyscale.sysinfo.device_record): a CPU is named after its host
    and has no CUDA version, whether the profiler or the benchmark measured on it."""
    import platform

    from pyscale import sysinfo
    from pyscale.profile import Profiler

    record = sysinfo.device_record("cpu")
    assert record.uuid == f"cpu-{platform.node()}" and record.cuda_version is None
    assert record.torch_version == torch.__version__
    with Store(tmp_path / "s.db") as store:
        with Profiler(store=store, device="cpu", meter="null", idle_s=0, repeats=3) as prof:
            prof.window("mm", torch.mm, torch.randn(8, 8), torch.randn(8, 8), flops=1024.0, bytes=768.0)
        benchmark.sweep(_quick_gemm()[:1], store=store, progress=False)
        rows = store.measurements()
        assert {r["op"] for r in rows} == {"mm", "gemm"}
        assert len({r["device_id"] for r in rows}) == 1 and rows[0]["device_uuid"] == record.uuid
        assert len(store.rows("devices")) == 1  # registered once, not once per row
    with pytest.raises(ValueError, match="kind must be 'cuda' or 'cpu'"):
        sysinfo.device_record("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            sysinfo.device_record("cuda")


def test_unstable_cases_are_measured_again_up_to_the_retries_and_every_attempt_is_kept(tmp_path, monkeypatch):
    from pyscale.benchmark import runner

    real = runner.run_case
    attempts: dict[str, int] = {}

    def flaky(case, **kw):  # the first case is never stable, the second only on its second attempt
        device, record = real(case, **kw)
        n = attempts[case.label()] = attempts.get(case.label(), 0) + 1
        record.extra["stable"] = case is not cases[0] and (case is not cases[1] or n > 1)
        return device, record

    monkeypatch.setattr(runner, "run_case", flaky)
    cases = _quick_gemm()[:3]
    with Store(tmp_path / "s.db") as store:
        summary = benchmark.sweep(cases, store=store, progress=False, retry_unstable=2)
        assert [attempts[c.label()] for c in cases] == [3, 2, 1]
        assert summary.measured == 6 and len(store.measurements()) == 3
        assert len(store.measurements(include_superseded=True)) == 6  # nothing measured is lost
        current = {r["params"]["m"]: r["extra"]["stable"] for r in store.measurements()}
        assert current == {c.params_dict["m"]: c is not cases[0] for c in cases}
    with pytest.raises(ValueError, match="retry_unstable"):
        benchmark.sweep(cases, store=Store(tmp_path / "t.db"), progress=False, retry_unstable=-1)


def test_cpu_cases_rotate_past_the_last_level_cache_and_record_their_cpu_time(tmp_path):
    from pyscale import sysinfo
    from pyscale.benchmark import runner

    (case,) = [c for c in _quick_gemm() if c.params_dict["m"] == 64 and c.params_dict["layer"] == "a"]
    _, record = runner.run_case(case, device="cpu")
    llc = runner.cpu_last_level_cache_bytes()
    assert llc == (sysinfo.cpu_cache_bytes(3) or sysinfo.cpu_cache_bytes(2))
    if llc:
        assert record.extra["rotating_copies"] > 1
    assert 0 < record.extra["cpu_time_s_median"] <= 10 * record.time_s
