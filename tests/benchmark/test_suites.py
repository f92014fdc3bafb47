"""pyscale.benchmark.suites: what a bench/ suite runs per test (here on CPU, with the pytest-benchmark fixture)."""

from __future__ import annotations

from pyscale import benchmark as pyscale_benchmark  # the fixture takes the name `benchmark`


def _groups():
    return pyscale_benchmark.case_groups(pyscale_benchmark.plan_cases(["gemm"], "quick", device="cpu"))


def test_pytest_benchmark_group_runs_every_implementation(benchmark):
    group = next(g for g in _groups() if len(g) == 3)
    info = pyscale_benchmark.run_group_for_pytest(benchmark, group, device="cpu")
    assert {"torch.mm[fp32]", "pyscale[int8]", "pyscale[w4a16-g128]"} <= set(info)
    assert info["pyscale[int8]"]["status"] == "ok" and info["pyscale[int8]"]["speedup"]["torch.mm[fp32]"] > 0
    assert benchmark.extra_info["op"] == "gemm"
