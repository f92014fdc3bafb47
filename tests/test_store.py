from __future__ import annotations

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
                time_s_median=1e-3, time_s_p20=0.9e-3, time_s_p80=1.1e-3, repeats=50, flops=2 * 128 * 256 * 64,
                energy_j=None, avg_power_w=None,
                unavailable_reasons={"energy_j": "no NVML", "avg_power_w": "no NVML"})
    base.update(kw)
    record = st.MeasurementRecord(**base)
    for name in st.REASONED_FIELDS:  # the energy fields' reasons stay each test's own
        if getattr(record, name) is None:
            record.unavailable_reasons.setdefault(name, "not measured in this test")
    return record


def test_round_trip(tmp_path):
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        assert s.register_device(DEVICE) == dev  # idempotent
        run = s.start_run("bench", {"shapes": "quick"})
        s.record(_ok(energy_j=2.5, avg_power_w=300.0, unavailable_reasons={}), device_id=dev, run_id=run)
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
        with pytest.raises(ValueError, match=r"unavailable_reasons\['energy_j'\]"):
            s.record(_ok(unavailable_reasons={"avg_power_w": "x"}), device_id=dev)
        with pytest.raises(ValueError, match=r"unavailable_reasons\['sm_clock_mhz'\]"):
            s.record(_without_reason("sm_clock_mhz"), device_id=dev)
        s.record(_ok(flops=0.0, bytes=0.0, params={"permutation": 1}), device_id=dev)  # 0 FLOPs can be real
        with pytest.raises(ValueError, match="status"):
            s.record(_ok(status="weird"), device_id=dev)
        with pytest.raises(ValueError, match="time_s_median"):
            s.record(_ok(time_s_median=None), device_id=dev)


def test_explain_missing_fills_only_absent_fields():
    rec = st.MeasurementRecord(op="gemm", backend="triton", params={}, dtype="bf16", time_s_median=1e-3,
                               flops=8.0, energy_j=None, unavailable_reasons={"energy_j": "no NVML"})
    rec.explain_missing("CPU run")
    assert rec.unavailable_reasons["energy_j"] == "no NVML"  # an existing reason is kept
    assert "flops" not in rec.unavailable_reasons and rec.unavailable_reasons["sm_clock_mhz"] == "CPU run"
    rec.validate()


def _without_reason(name: str) -> st.MeasurementRecord:
    record = _ok()
    del record.unavailable_reasons[name]
    return record


def test_case_key_resume_and_supersede(tmp_path):
    with st.Store(tmp_path / "a.db") as s:
        dev = s.register_device(DEVICE)
        key = s.case_key_for("gemm", "triton", {"n": 256, "m": 128, "k": 64}, "bf16", device_id=dev)
        assert not s.has_case(key)
        s.record(_ok(status="oom", error="CUDA out of memory", time_s_median=None), device_id=dev)
        assert not s.has_case(key)  # a failed case is retried by --resume
        assert s.has_case(key, statuses=("oom",))
        s.record(_ok(), device_id=dev)
        assert s.has_case(key)
        assert len(s.measurements(status=None)) == 1
        everything = s.measurements(status=None, include_superseded=True)
        assert [r["status"] for r in everything] == ["oom", "ok"]  # nothing measured is lost
        # A failed rerun is kept but never hides the measurement.
        s.record(_ok(status="oom", error="CUDA out of memory", time_s_median=None), device_id=dev)
        assert s.has_case(key) and [r["status"] for r in s.measurements(status=None)] == ["ok"]
        everything = s.measurements(status=None, include_superseded=True)
        assert [(r["status"], r["superseded"]) for r in everything] == [("oom", 1), ("ok", 0), ("oom", 1)]
        s.record(_ok(time_s_median=2e-3), device_id=dev)  # a new measurement does replace the old one
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
                 time_s_median=1e-3).explain_missing("x"), device_id=dev)
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
                 time_s_median=1e-3).explain_missing("x"), device_id=dev)
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
