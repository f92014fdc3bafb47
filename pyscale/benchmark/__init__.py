"""Benchmark sweeps: what `pyscale bench` runs, and what the pytest-benchmark suites in bench/ wrap.

    shapes.py       the per-model shape registry; every family's shapes and the shape-set names derive from it
    cases/<family>  one module per op family: its cases of a shape set, and a case's workload
    runner.py       Case, Workload, run_case (one case, here), sweep (cases -> store), pending (resume), executors
    distributed.py  the Ray fan-out (`pyscale bench --ray`)
    rows.py         derived report rows (TFLOP/s, % of peak, GB/s, J/TFLOP, speedups), the table, exports
    suites.py       what the bench/ suites run per test

The names below load their module on first use, so `pyscale.benchmark.shapes` (the CLI's shape-set
names) imports nothing else; torch and the ops load only when a case is planned or run.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FAMILIES": "runner", "Case": "runner", "Executor": "runner", "LocalExecutor": "runner",
    "SweepSummary": "runner", "Workload": "runner", "pending": "runner", "plan_cases": "runner", "run_case": "runner", "sweep": "runner",
    "SHAPE_SETS": "shapes",
    "case_groups": "suites", "group_id": "suites", "run_group_for_pytest": "suites",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pyscale.benchmark.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pyscale.benchmark' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
