"""pyscale.benchmark.distributed: benchmark sweeps fanned out over a local Ray cluster with 2 CPU workers.

The Ray tests are `slow` (a cluster takes seconds to start) and skip when Ray is not installed; the
checks of the no-Ray error and of the worker environment run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import ray_fake_runs as fake

from pyscale import benchmark, sysinfo
from pyscale import store as st
from pyscale.benchmark import distributed, runner

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed "
                               "(pip install 'pyscale[ray]')")


def _env(**extra: str) -> dict[str, str]:
    # Workers import the fake run functions by module name, like pyscale itself on a real cluster.
    return {"PYTHONPATH": str(Path(fake.__file__).parent), **extra}


def _cases() -> list[benchmark.Case]:
    cases = benchmark.plan_cases(["gemm"], "quick", device="cpu")
    assert len(cases) >= 4  # the sweep must give the two workers something to share
    return cases


def _rows(path: Path) -> list[tuple]:
    """The store's current rows, as what a sweep must reproduce: case identity, status, time, error."""
    with st.Store(path) as s:
        rows = s.measurements(status=None)
    return sorted((r["case_key"], r["status"], r["time_s_median"], r["error"] is None) for r in rows)


def _identity(row: dict) -> tuple[str, str, str]:
    """What tells cases apart: one shape holds a case per format and implementation."""
    return json.dumps(row["params"], sort_keys=True), row["backend"], row["dtype"]


def _all_rows(path: Path) -> list[dict]:
    with st.Store(path) as s:
        return s.measurements(status=None, include_superseded=True)


def _serial(path: Path, monkeypatch: pytest.MonkeyPatch, run_fn=fake.fake_run) -> None:
    monkeypatch.setattr(runner, "run_case", run_fn)
    with st.Store(path) as s:
        benchmark.sweep(_cases(), store=s, device="cpu", progress=False)
    monkeypatch.undo()


# ------------------------------------------------------------------ without a cluster

def test_without_ray_the_error_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(distributed.RayUnavailable, match=r"pip install 'pyscale\[ray\]'"):
        distributed.ray_executor(None, device="cpu")


def test_worker_env_forwards_pyscale_variables_and_interprets_triton_on_cpu():
    environ = {"PYSCALE_BACKEND": "reference", "HOME": "/root", "SECRET_TOKEN": "x"}
    env = distributed.worker_env("cpu", {"EXTRA": "1"}, environ=environ)
    assert env == {"PYSCALE_BACKEND": "reference", "TRITON_INTERPRET": "1", "EXTRA": "1"}
    # A GPU sweep must not be pushed into the interpreter, and a driver's explicit choice wins.
    assert "TRITON_INTERPRET" not in distributed.worker_env("cuda", environ=environ)
    assert distributed.worker_env("cpu", environ={"TRITON_INTERPRET": "0"})["TRITON_INTERPRET"] == "0"


# ------------------------------------------------------------------ on a local cluster

@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'pyscale[ray]')")
    import ray

    # 2 CPU workers; the 2 "GPUs" of two types exist only as Ray resources, for the per-type fan-out test.
    ray.init(num_cpus=2, num_gpus=2, resources={"accelerator_type:FAKE-A": 1, "accelerator_type:FAKE-B": 1},
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()



@pytest.mark.slow
@needs_ray
def test_ray_sweep_equals_serial_sweep(cluster, tmp_path, monkeypatch):
    _serial(tmp_path / "serial.db", monkeypatch)
    monkeypatch.setenv("PYSCALE_TEST_TAG", "forwarded")
    monkeypatch.setenv("PYSCALE_BACKEND", "reference")
    executor = distributed.ray_executor(None, device="cpu", run_fn=fake.fake_run, env=_env())
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(_cases(), store=s, device="cpu", executor=executor, progress=False)
    assert summary.measured == len(_cases()) and summary.failed == 0
    assert _rows(tmp_path / "ray.db") == _rows(tmp_path / "serial.db")

    rows = _all_rows(tmp_path / "ray.db")
    assert len(rows) == len(_cases())  # one row per case, nothing superseded
    env = rows[0]["extra"]["env"]
    assert env["PYSCALE_BACKEND"] == "reference" and env["TRITON_INTERPRET"] == "1"
    # The unknown variable is not forwarded: only pyscale's own and those passed via env=.
    assert env["PYSCALE_TEST_TAG"] is None
    pids = {r["extra"]["pid"] for r in rows}
    assert os.getpid() not in pids  # measured in worker processes, not in the driver


@pytest.mark.slow
@needs_ray
def test_killed_worker_is_retried_and_leaves_no_partial_row(cluster, tmp_path, monkeypatch):
    _serial(tmp_path / "serial.db", monkeypatch)
    executor = distributed.ray_executor(None, device="cpu", run_fn=fake.crash_first_attempt, max_retries=2,
                                        env=_env(**{fake.MARKERS_ENV: str(tmp_path)}))
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(_cases(), store=s, device="cpu", executor=executor, progress=False)
    attempts = (tmp_path / "attempts").read_text().splitlines()
    assert len(attempts) == 2 and attempts[0] != attempts[1]  # died once, then ran in a fresh worker
    assert summary.failed == 0
    assert len(_all_rows(tmp_path / "ray.db")) == len(_cases())  # the dead attempt wrote nothing
    assert _rows(tmp_path / "ray.db") == _rows(tmp_path / "serial.db")


@pytest.mark.slow
@needs_ray
def test_exhausted_retries_are_recorded_as_the_case_error(cluster, tmp_path):
    executor = distributed.ray_executor(None, device="cpu", run_fn=fake.always_crash, max_retries=1,
                                        env=_env(**{fake.MARKERS_ENV: str(tmp_path)}))
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(_cases(), store=s, device="cpu", executor=executor, progress=False)
    assert len((tmp_path / "attempts").read_text().splitlines()) == 2  # first try + 1 retry
    assert summary.failed == 1 and summary.measured == len(_cases()) - 1
    failed = [r for r in _all_rows(tmp_path / "ray.db") if r["status"] != "ok"]
    assert len(failed) == 1
    assert failed[0]["params"]["layer"] == "a" and failed[0]["params"]["m"] == 16
    assert "worker failed" in failed[0]["error"] and "died" in failed[0]["error"].lower()


@pytest.mark.slow
@needs_ray
def test_an_exception_in_the_task_is_not_retried_and_keeps_its_type(cluster, tmp_path):
    executor = distributed.ray_executor(None, device="cpu", run_fn=fake.raise_on_target, max_retries=3,
                                        env=_env(**{fake.MARKERS_ENV: str(tmp_path)}))
    results = dict(executor.map_unordered(_cases(), device="cpu", energy=False))
    assert len((tmp_path / "attempts").read_text().splitlines()) == 1
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and "boom from the worker" in str(errors[0])


@pytest.mark.slow
@needs_ray
def test_resume_after_a_driver_crash_measures_only_the_rest(cluster, tmp_path, monkeypatch):
    cases = _cases()
    executor = distributed.ray_executor(None, device="cpu", run_fn=fake.fake_run, env=_env())
    with st.Store(tmp_path / "ray.db") as s:
        stream = executor.map_unordered(cases, device="cpu", energy=False)
        first_case, (device, record) = next(stream)
        s.record(record, device_id=s.register_device(device))
        stream.close()  # the driver "dies": pending tasks are cancelled, nothing else is written
    assert len(_all_rows(tmp_path / "ray.db")) == 1
    # --resume compares against the driver's device; the fake rows use a fixed fake device.
    monkeypatch.setattr(sysinfo, "device_record", lambda kind, index=None: fake.DEVICE)
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(cases, store=s, device="cpu", executor=executor, resume=True, progress=False)
    assert summary.skipped == 1 and summary.measured == len(cases) - 1
    rows = _all_rows(tmp_path / "ray.db")
    assert len(rows) == len(cases)
    assert len({_identity(r) for r in rows}) == len(cases)


def test_a_failed_case_is_recorded_even_when_the_driver_lacks_the_device(tmp_path, monkeypatch):
    """A Ray head without GPUs drives a GPU sweep: a case whose worker died still gets its error row."""
    case = _cases()[0]

    class DeadWorkers:
        def map_unordered(self, cases, **kwargs):
            for c in cases:
                yield c, RuntimeError("worker died")

    def no_gpu(kind, index=None):
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device")

    monkeypatch.setattr(sysinfo, "device_record", no_gpu)
    with st.Store(tmp_path / "s.db") as s:
        summary = benchmark.sweep([case], store=s, device="cuda", executor=DeadWorkers(), progress=False)
    assert summary.failed == 1
    (row,) = _all_rows(tmp_path / "s.db")
    assert row["status"] == "error" and "worker died" in row["error"]
    assert row["device_kind"] == "cuda" and row["device_uuid"] == "unknown-cuda"


@needs_ray
def test_gpu_cases_get_one_gpu_and_a_fresh_process_each(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # conftest sets it here, where there is no GPU
    gpu = distributed.ray_executor("ray://nowhere:1", device="cuda", max_retries=3).task_options()
    assert gpu["num_gpus"] == 1 and gpu["max_calls"] == 1 and gpu["max_retries"] == 3
    assert gpu["retry_exceptions"] is False
    assert "TRITON_INTERPRET" not in gpu["runtime_env"]["env_vars"]
    cpu = distributed.ray_executor(None, device="cpu").task_options()
    assert cpu["num_gpus"] == 0 and cpu["num_cpus"] == 1 and cpu["max_calls"] == 0
    assert cpu["runtime_env"]["env_vars"]["TRITON_INTERPRET"] == "1"


def test_bench_ray_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    from pyscale import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert cli.main(["bench", "gemm", "--quick", "--device", "cpu", "--store", str(tmp_path / "s.db"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'pyscale[ray]'" in err and err.startswith("pyscale bench: --ray: ") and err.count("\n") == 1
    assert not (tmp_path / "s.db").exists()  # nothing was measured or written


@pytest.mark.slow
@needs_ray
def test_a_mixed_gpu_cluster_measures_every_case_on_every_gpu_type(cluster, tmp_path):
    cases = _cases()
    executor = distributed.ray_executor(None, device="cuda", run_fn=fake.fake_gpu_run, env=_env())
    assert executor.gpu_types() == ["FAKE-A", "FAKE-B"]
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(cases, store=s, device="cuda", executor=executor, progress=False)
    assert summary.failed == 0 and summary.measured == 2 * len(cases)
    rows = _all_rows(tmp_path / "ray.db")
    per_type: dict[str, set] = {}
    for r in rows:
        per_type.setdefault(r["device_name"], set()).add(_identity(r))
        assert r["extra"]["cuda_visible_devices"] in ("0", "1")  # Ray gave each task one GPU
    assert sorted(per_type) == ["fake FAKE-A", "fake FAKE-B"]
    assert all(len(v) == len(cases) for v in per_type.values())  # a complete profile per type

    single = distributed.ray_executor(None, device="cuda", run_fn=fake.fake_gpu_run, env=_env(),
                                      per_gpu_type=False)
    assert single.gpu_types() == []
    results = list(single.map_unordered(cases, device="cuda", energy=False))
    assert len(results) == len(cases) and all(r[1][0].name == "fake unpinned" for r in results)
