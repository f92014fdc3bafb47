"""`pyscale bench --ray` with no address: pyscale starts a local Ray cluster for the sweep and stops it.

Kept apart from test_distributed.py, whose module fixture holds a cluster open: here no Ray session may
exist before or after the sweep.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import ray_fake_runs as fake

from pyscale import benchmark
from pyscale import store as st
from pyscale.benchmark import distributed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed "
                       "(pip install 'pyscale[ray]')"),
]


def _has_timing() -> bool:
    try:
        return importlib.util.find_spec("pyscale.profile.timing") is not None
    except ModuleNotFoundError:  # no pyscale.profile package at all yet
        return False


def _keys_and_statuses(path: Path) -> list[tuple[str, str]]:
    with st.Store(path) as s:
        return sorted((r["case_key"], r["status"]) for r in s.measurements(status=None))


def test_executor_starts_and_shuts_down_its_own_local_cluster(tmp_path):
    import ray

    assert not ray.is_initialized()
    executor = distributed.ray_executor(None, device="cpu", num_cpus=2, run_fn=fake.fake_run,
                                        env={"PYTHONPATH": str(Path(fake.__file__).parent)})
    cases = benchmark.plan_cases(["gemm"], "quick", device="cpu")
    with st.Store(tmp_path / "ray.db") as s:
        summary = benchmark.sweep(cases, store=s, device="cpu", executor=executor, progress=False)
    assert summary.measured == len(cases) and summary.failed == 0
    assert not ray.is_initialized()


def _bench_args(store: Path, ray: str | None) -> argparse.Namespace:
    from pyscale.commands import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["gemm", "--quick", "--device", "cpu", "--store", str(store), "--json"]
    return parser.parse_args(argv + (["--ray"] if ray == "local" else []))


@pytest.mark.skipif(not _has_timing(),
                    reason="pyscale.profile.timing (the profiler issue) has not landed: run_case cannot time yet")
def test_real_quick_sweep_through_bench_equals_the_serial_one(tmp_path, capsys):
    from pyscale.commands import bench

    assert bench.run(_bench_args(tmp_path / "serial.db", None)) == 0
    assert bench.run(_bench_args(tmp_path / "ray.db", "local")) == 0
    capsys.readouterr()
    serial = _keys_and_statuses(tmp_path / "serial.db")
    assert serial and all(status == "ok" for _, status in serial)
    assert _keys_and_statuses(tmp_path / "ray.db") == serial
