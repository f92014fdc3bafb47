"""MoE layer benchmarks: pyscale.nn.MoE (forward, forward+backward) and its routing against a per-expert loop
and a torch._grouped_mm layer (cases: pyscale.benchmark.cases.moe; shapes: pyscale.benchmark.shapes).

    pytest bench/bench_moe.py --shapes qwen3-moe,mixtral-8x7b,deepseek-v3 --benchmark-json moe.json

extra_info per test: ms, TFLOP/s on active FLOPs and speedups over each baseline, all in one process.
"""

from __future__ import annotations

from pyscale.benchmark import run_group_for_pytest

FAMILY = "moe"
DEFAULT_SHAPES = "mixtral-8x7b,qwen3-moe,deepseek-v3"


def test_moe(benchmark, group):
    run_group_for_pytest(benchmark, group)
