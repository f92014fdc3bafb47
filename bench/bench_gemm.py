"""GEMM benchmarks: pyscale's FP8 / int8 / W4A16 GEMMs against bf16 torch.mm, torch._scaled_mm (tensor- and
row-wise) and torch._int_mm on the layers of named models at decode and prefill M
(cases: pyscale.benchmark.cases.gemm; shapes: pyscale.benchmark.shapes).

    pytest bench/bench_gemm.py --shapes llama3-8b,llama3-70b --benchmark-json gemm.json

extra_info per test: for each implementation ms (CUDA events, cold L2), TFLOP/s (2·M·N·K), % of the
dense peak of its format, GB/s, and pyscale's speedup over every baseline of the same shape.
"""

from __future__ import annotations

from pyscale.benchmark import run_group_for_pytest

FAMILY = "gemm"


def test_gemm(benchmark, group):
    run_group_for_pytest(benchmark, group)
