from __future__ import annotations

import json
import multiprocessing as mp
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from pyscale import store as st

DEVICE = st.DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-1234", compute_capability="9.0",
                         driver_version="580.1", cuda_version="13.0", torch_version="2.11.0", triton_version="3.6.0")


def _ok(op: str = "gemm", **kw) -> st.MeasurementRecord:
    base = dict(op=op, backend="triton", params={"m": 128, "n": 256, "k": 64}, dtype="bf16",
                time_s=1e-3, time_s_p20=0.9e-3, time_s_p80=1.1e-3, repeats=50, flops=2 * 128 * 256 * 64,
                energy_j=None, avg_power_w=None,
                energy_j_unavailable_reason="no NVML", avg_power_w_unavailable_reason="no NVML")
    base.update(kw)
    record = st.MeasurementRecord(**base)
    for name in st.REASONED_FIELDS:  # the energy fields' reasons stay each test's own
        if getattr(record, name) is None and not getattr(record, f"{name}_unavailable_reason"):
            setattr(record, f"{name}_unavailable_reason", "not measured in this test")
    return record


def test_round_trip(tmp_path):
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        assert s.register_device(DEVICE) == dev  # idempotent
        run = s.start_run("bench", {"shapes": "quick"})
        s.record(_ok(energy_j=2.5, avg_power_w=300.0), device_id=dev, run_id=run)
        s.end_run(run)
        rows = s.measurements()
        assert len(rows) == 1
        r = rows[0]
        assert r["params"] == {"k": 64, "m": 128, "n": 256}
        assert r["energy_j"] == 2.5 and r["avg_power_w"] == 300.0
        assert r["device_name"] == DEVICE.name and r["run_id"] == run
        assert s.rows("runs")[0]["status"] == "ok"
        assert s.schema_version == st.SCHEMA_VERSION


def test_unavailable_is_null_with_reason_never_zero(tmp_path):
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        s.record(_ok(), device_id=dev)
        row = s.measurements()[0]
        assert row["energy_j"] is None and row["unavailable_reasons"]["energy_j"] == "no NVML"
        with pytest.raises(ValueError, match="energy_j is 0"):
            s.record(_ok(energy_j=0.0, avg_power_w=1.0), device_id=dev)
        with pytest.raises(ValueError, match="energy_j is None: give the reason in energy_j_unavailable_reason"):
            s.record(_ok(energy_j_unavailable_reason=None), device_id=dev)
        with pytest.raises(ValueError, match="sm_clock_mhz_unavailable_reason"):
            s.record(_without_reason("sm_clock_mhz"), device_id=dev)
        s.record(_ok(flops=0.0, bytes=0.0, params={"permutation": 1}), device_id=dev)  # 0 FLOPs can be real
        with pytest.raises(ValueError, match="status"):
            s.record(_ok(status="weird"), device_id=dev)
        with pytest.raises(ValueError, match=r"time_s \(stored as time_s_median\)"):
            s.record(_ok(time_s=None), device_id=dev)
        with pytest.raises(ValueError, match="throttle_reasons must be a tuple"):
            s.record(_ok(throttle_reasons="SwPowerCap"), device_id=dev)


def test_explain_missing_fills_only_absent_fields():
    rec = st.MeasurementRecord(op="gemm", backend="triton", params={}, dtype="bf16", time_s=1e-3,
                               flops=8.0, energy_j=None, energy_j_unavailable_reason="no NVML")
    rec.explain_missing("CPU run")
    assert rec.energy_j_unavailable_reason == "no NVML"  # an existing reason is kept
    assert rec.flops_unavailable_reason is None and rec.sm_clock_mhz_unavailable_reason == "CPU run"
    assert "flops" not in rec.unavailable_reasons() and rec.unavailable_reasons()["sm_clock_mhz"] == "CPU run"
    rec.validate()


def _without_reason(name: str) -> st.MeasurementRecord:
    record = _ok()
    setattr(record, f"{name}_unavailable_reason", None)
    return record


def test_case_key_resume_and_supersede(tmp_path):
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        key = s.case_key_for("gemm", "triton", {"n": 256, "m": 128, "k": 64}, "bf16", device_id=dev)
        assert not s.has_case(key)
        s.record(_ok(status="oom", error="CUDA out of memory", time_s=None), device_id=dev)
        assert not s.has_case(key)  # a failed case is retried by --resume
        assert s.has_case(key, statuses=("oom",))
        s.record(_ok(), device_id=dev)
        assert s.has_case(key)
        assert len(s.measurements(status=None)) == 1
        everything = s.measurements(status=None, include_superseded=True)
        assert [r["status"] for r in everything] == ["oom", "ok"]  # nothing measured is lost
        # A failed rerun is kept but never hides the measurement.
        s.record(_ok(status="oom", error="CUDA out of memory", time_s=None), device_id=dev)
        assert s.has_case(key) and [r["status"] for r in s.measurements(status=None)] == ["ok"]
        everything = s.measurements(status=None, include_superseded=True)
        assert [(r["status"], r["superseded"]) for r in everything] == [("oom", 1), ("ok", 0), ("oom", 1)]
        s.record(_ok(time_s=2e-3), device_id=dev)  # a new measurement does replace the old one
        assert [r["time_s_median"] for r in s.measurements()] == [2e-3]
        # Another dtype, rank or device version is another case.
        assert key != s.case_key_for("gemm", "triton", {"n": 256, "m": 128, "k": 64}, "fp16", device_id=dev)
        assert key != s.case_key_for("gemm", "triton", {"n": 256, "m": 128, "k": 64}, "bf16", device_id=dev, rank=1)


def test_runs_record_the_source_revision(tmp_path):
    import subprocess
    from pathlib import Path

    rev = st.source_revision()
    top = subprocess.run(["git", "-C", str(Path(st.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    if top.returncode != 0:
        assert rev is None  # an installed wheel: no checkout to name
    else:
        assert rev is not None and rev.removesuffix("-dirty") == top.stdout.strip()
    with st.Store(tmp_path / "a.db") as s:
        s.start_run("bench")
        s.start_run("bench", git_revision="abc123")
        assert [r["git_revision"] for r in s.rows("runs")] == [rev, "abc123"]


def test_exports(tmp_path):
    pd = pytest.importorskip("pandas")
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        for m in (64, 128):
            s.record(_ok(params={"m": m}), device_id=dev)
        csv_path = s.to_csv(tmp_path / "m.csv")
        assert len(pd.read_csv(csv_path)) == 2
        df = s.to_pandas()
        assert list(df["time_s_median"]) == [1e-3, 1e-3]
        pytest.importorskip("pyarrow")
        assert len(pd.read_parquet(s.to_parquet(tmp_path / "m.parquet"))) == 2
        with pytest.raises(ValueError, match="table"):
            s.rows("devices; DROP TABLE runs")


def test_migration_from_v1(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(st.MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO devices (kind, name, uuid, created_at) VALUES ('cpu', 'x', 'cpu-x', 0)")
    conn.execute("INSERT INTO measurements (device_id, case_key, op, backend, params, dtype, status, "
                 "time_s_median, created_at) VALUES (1, 'k', 'gemm', 'cpp', '{}', 'fp32', 'ok', 0.5, 0)")
    conn.commit()
    conn.close()
    with st.Store(path) as s:
        assert s.schema_version == st.SCHEMA_VERSION
        row = s.measurements()[0]
        assert row["time_s_median"] == 0.5 and row["energy_j"] is None and row["superseded"] == 0
        assert row["unavailable_reasons"] == {}


def _v2_store(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    for script in st.MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    return conn


def test_migration_v3_moves_rows_onto_one_device_record(tmp_path):
    """Before v3 the profiler and the benchmark filed one CPU under two records ("cpu" on a machine with
    CUDA devices, resp. "cpu-<host>" with torch's CUDA version) and the profiler named a CUDA device without
    a uuid "cuda:<index>": v3 moves the rows onto today's record and recomputes their case keys."""
    path = tmp_path / "v2.db"
    conn = _v2_store(path)
    conn.execute("INSERT INTO runs (id, command, arguments, started_at, hostname) VALUES (1, 'profile', '{}', 0, 'gpuhost')")
    devices = {  # id: (kind, name, uuid, memory_bytes, driver, cuda)
        1: ("cpu", "Some CPU", "cpu", None, None, None),  # the profiler's CPU on a machine with a GPU
        2: ("cpu", "Some CPU", "cpu-gpuhost", 2**30, None, "12.8"),  # the benchmark's CPU, torch's CUDA version
        3: ("cuda", "NVIDIA H100 80GB HBM3", "cuda:0", 2**36, "580.1", "12.8"),  # the profiler, no uuid known
        4: ("cuda", "NVIDIA H100 80GB HBM3", "GPU-1234", 2**36, "580.1", "12.8"),  # already as recorded today
        5: ("cpu", "Some CPU", "cpu-gpuhost", 2**30, None, None),  # already as recorded today
    }
    for i, (kind, name, uuid, memory, driver, cuda) in devices.items():
        conn.execute("INSERT INTO devices (id, kind, name, uuid, memory_bytes, driver_version, cuda_version, "
                     "torch_version, triton_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, '2.11.0+cu128', "
                     "'3.6.0', 0)", (i, kind, name, uuid, memory, driver, cuda))
    rows = {  # id: (device, op, params, status)
        1: (1, "mm", {"m": 1}, "ok"), 2: (2, "gemm", {"layer": "a"}, "ok"), 3: (3, "mm", {"m": 2}, "ok"),
        4: (4, "mm", {"m": 3}, "ok"),
        5: (1, "mm", {"m": 9}, "ok"), 6: (5, "mm", {"m": 9}, "error"),  # one case once the CPUs are one
    }
    for i, (dev, op, params, status) in rows.items():
        uuid, cuda, driver = devices[dev][2], devices[dev][5], devices[dev][4]
        key = st.case_key(op, "cpp", params, "fp32", uuid,
                          {"driver": driver, "cuda": cuda, "torch": "2.11.0+cu128", "triton": "3.6.0"})
        conn.execute("INSERT INTO measurements (id, run_id, device_id, case_key, op, backend, params, dtype, status, "
                     "error, time_s_median, created_at) VALUES (?, 1, ?, ?, ?, 'cpp', ?, 'fp32', ?, ?, ?, ?)",
                     (i, dev, "keep-me" if i == 4 else key, op, json.dumps(params, sort_keys=True), status,
                      None if status == "ok" else "boom", 1e-3 if status == "ok" else None, i))
    conn.commit()
    conn.close()
    with st.Store(path) as s:
        assert s.schema_version == st.SCHEMA_VERSION >= 3
        cpu = s.register_device(st.DeviceRecord(kind="cpu", name="Some CPU", uuid="cpu-gpuhost",
                                                torch_version="2.11.0+cu128", triton_version="3.6.0"))
        gpu = s.register_device(st.DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="NVIDIA H100 80GB HBM3",
                                                driver_version="580.1", cuda_version="12.8",
                                                torch_version="2.11.0+cu128", triton_version="3.6.0"))
        for dev, op, params in ((cpu, "mm", {"m": 1}), (cpu, "gemm", {"layer": "a"}), (gpu, "mm", {"m": 2})):
            assert s.has_case(s.case_key_for(op, "cpp", params, "fp32", device_id=dev)), (op, params)
        everything = {r["id"]: r for r in s.measurements(status=None, include_superseded=True)}
        assert sorted(everything) == sorted(rows)  # nothing measured is lost
        assert everything[4]["case_key"] == "keep-me"  # a row already on today's record is left alone
        assert {everything[i]["device_id"] for i in (1, 2, 5, 6)} == {cpu} == {5}
        # the two rows of one case: the ok one stays current, the failure is kept behind it
        assert (everything[5]["superseded"], everything[6]["superseded"]) == (0, 1)
        assert s.has_case(s.case_key_for("mm", "cpp", {"m": 9}, "fp32", device_id=cpu))
        # the records no row uses any more are gone; today's are kept
        assert {d["uuid"] for d in s.rows("devices")} == {"cpu-gpuhost", "GPU-1234", "NVIDIA H100 80GB HBM3"}


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "new.db"
    st.Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {st.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade pyscale"):
        st.Store(path)


def test_default_path_honours_pyscale_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSCALE_HOME", str(tmp_path))
    assert st.default_path() == tmp_path / "pyscale.db"


WRITER = textwrap.dedent("""
    import sys
    from pyscale import store as st
    s = st.Store(sys.argv[1])
    dev = s.register_device(st.DeviceRecord(kind="cpu", name="cpu", uuid="cpu-1"))
    i = 0
    while True:
        s.record(st.MeasurementRecord(op="op", backend="cpp", params={"i": i}, dtype="fp32",
                 time_s=1e-3).explain_missing("x"), device_id=dev)
        print(i, flush=True)
        i += 1
""")


def test_killed_writer_loses_nothing_committed(tmp_path):
    path = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    confirmed = []
    for line in proc.stdout:
        confirmed.append(int(line))
        if len(confirmed) == 30:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    with st.Store(path) as s:
        stored = {r["params"]["i"] for r in s.measurements()}
        assert set(confirmed) <= stored
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _write_many(path: str, worker: int, n: int) -> None:
    s = st.Store(path)
    dev = s.register_device(st.DeviceRecord(kind="cpu", name="cpu", uuid=f"cpu-{worker}"))
    for i in range(n):
        s.record(st.MeasurementRecord(op="op", backend="cpp", params={"i": i, "w": worker}, dtype="fp32",
                 time_s=1e-3).explain_missing("x"), device_id=dev)
    s.close()


def test_two_concurrent_writers(tmp_path):
    path = str(tmp_path / "c.db")
    st.Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with st.Store(path) as s:
        rows = s.measurements()
        assert len(rows) == 120
        assert {(r["params"]["w"], r["params"]["i"]) for r in rows} == {(w, i) for w in range(2) for i in range(60)}
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
