"""What the pytest-benchmark suites in bench/ run: the cases of one op and shape, grouped, measured through
`run_case` in the same process, their figures into pytest-benchmark's `extra_info`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyscale.benchmark.rows import bench_rows
from pyscale.benchmark.runner import Case, family_module, run_case


def case_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped by op and shape: one pyscale implementation and its baselines per group."""
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault((c.family, c.op, c.params, c.shape_set), []).append(c)
    return list(groups.values())


def group_id(group: Sequence[Case]) -> str:
    c = group[0]
    return f"{c.shape_set}-{c.op}-" + "-".join(f"{k}{v}" for k, v in c.params)


def _peak_memory_bytes(case: Case) -> int:
    """CUDA memory one call of the case allocates above its inputs (max_memory_allocated)."""
    import torch

    workload = family_module(case.family).workload(case, "cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    workload.fn(*workload.args)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def run_group_for_pytest(benchmark: Any, group: Sequence[Case], *, device: str = "cuda") -> dict[str, Any]:
    """What bench/ suites run per test: every implementation of one op and shape in this process through
    `run_case` (CUDA events, cold L2), the figures and speedups into `benchmark.extra_info`, and
    pytest-benchmark's own rounds over pyscale's implementation (synchronised, so its host clock is fair)."""
    results = [(c, *run_case(c, device=device)) for c in group]
    rows = bench_rows([{"case": c, "device": d, "record": r} for c, d, r in results])
    info: dict[str, Any] = {"shape_set": group[0].shape_set, "op": group[0].op, **group[0].params_dict}
    for (case, _, _), row in zip(results, rows):
        key = f"{row['impl']}[{row['dtype']}]"
        info[key] = {k: row[k] for k in ("status", "error", "time_ms", "tflops", "pct_peak", "gb_s")}
        if row.get("speedup"):
            info[key]["speedup"] = row["speedup"]
        if device == "cuda" and row["status"] == "ok":
            info[key]["peak_memory_bytes"] = _peak_memory_bytes(case)
    benchmark.extra_info.update(info)
    ours = [c for c in group if c.impl == "pyscale"] or list(group)
    workload = family_module(ours[0].family).workload(ours[0], device)

    def run() -> None:
        workload.fn(*workload.args)
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)
    return info
