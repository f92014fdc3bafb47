"""pytest-benchmark suites over pyscale.benchmark's cases (the same ones `pyscale bench` sweeps).

    pytest bench/ --shapes llama3-8b --benchmark-json out.json

Each suite sets FAMILY; each test is one op and shape, running pyscale's implementation and every baseline
in the same process. GPU only: without CUDA the suites skip (use `pyscale bench --quick` on CPU).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shapes", default=None,
                     help="shape sets, comma-separated (default: llama3-8b, or PYSCALE_BENCH_SHAPES)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.has_plugin("benchmark"):  # an optional dependency: skip, never error
        skip = pytest.mark.skip(reason="needs pytest-benchmark (pip install pytest-benchmark)")
        for item in items:
            if "benchmark" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "group" not in metafunc.fixturenames:
        return
    import os

    import torch

    from pyscale import benchmark

    family = metafunc.module.FAMILY
    chosen = metafunc.config.getoption("--shapes") or os.environ.get("PYSCALE_BENCH_SHAPES") or \
        getattr(metafunc.module, "DEFAULT_SHAPES", "llama3-8b")
    groups = []
    if torch.cuda.is_available():
        for name in chosen.split(","):
            groups += benchmark.case_groups(benchmark.plan_cases([family], name, device="cuda"))
    metafunc.parametrize("group", groups or [pytest.param(None, marks=pytest.mark.skip(
        reason="benchmarks need a CUDA GPU (CPU: pyscale bench --quick)"))],
        ids=[benchmark.group_id(g) for g in groups] or ["no-gpu"])
