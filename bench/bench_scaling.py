"""Fit-speed benchmark of pyscale.scaling (issue 8's performance goal; not part of the test suite).

Goal on a 2-core machine: the full 4,500-start Chinchilla fit on ~250 runs in < 10 s, and 1,000
warm-started bootstrap refits (resampling runs) in < 60 s.

    python -m pytest bench/bench_scaling.py --benchmark-only      # pytest-benchmark
    python bench/bench_scaling.py                                 # plain timings, one round each
"""

from __future__ import annotations

import time

import pytest

from pyscale.scaling import fit
from pyscale.scaling.synthetic import chinchilla_runs

N_RUNS = 250
N_BOOT = 1000


@pytest.fixture(scope="module")
def runs():
    return chinchilla_runs(N_RUNS, noise=0.01, seed=0)


def test_full_grid_fit(benchmark, runs):
    result = benchmark.pedantic(fit, args=("chinchilla", runs), rounds=1, iterations=1)
    assert result.success and result.n_starts >= 4500


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["serial", "2-threads"])
def test_bootstrap_1000(benchmark, runs, n_jobs):
    # pytest-benchmark times the full fit plus the bootstrap; extra_info splits the two.
    result = benchmark.pedantic(fit, args=("chinchilla", runs),
                                kwargs={"bootstrap": N_BOOT, "seed": 0, "n_jobs": n_jobs}, rounds=1, iterations=1)
    benchmark.extra_info["fit_s"] = result.time_s
    benchmark.extra_info["bootstrap_s"] = result.bootstrap_time_s
    assert result.bootstrap_failed == 0 and len(result.bootstrap) == N_BOOT


def main() -> None:
    import os

    runs_ = chinchilla_runs(N_RUNS, noise=0.01, seed=0)
    for n_jobs in (1, 2):
        t0 = time.perf_counter()
        r = fit("chinchilla", runs_, bootstrap=N_BOOT, seed=0, n_jobs=n_jobs)
        total = time.perf_counter() - t0
        print(f"cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.2f}  runs: {r.n}  starts: {r.n_starts}  "
              f"nfev: {r.nfev}  threads: {n_jobs}")
        print(f"full-grid fit: {r.time_s:.2f} s  (success={r.success}: {r.message})")
        print(f"{N_BOOT} bootstrap refits: {r.bootstrap_time_s:.2f} s  ({r.bootstrap_failed} failed)")
        print(f"total: {total:.2f} s")


if __name__ == "__main__":
    main()
