"""Attention benchmarks: pyscale's FlashAttention-2 kernel against every SDPA backend (flash, efficient,
cuDNN, math where its scores fit), forward, backward and forward+backward
(cases: pyscale.benchmark.cases.attention; shapes: pyscale.benchmark.shapes, incl. `grid`:
head dim 64/128, MHA and GQA 8:1, causal and not, seq 512 -> 16k).

    pytest bench/bench_attention.py --shapes llama3-8b,grid --benchmark-json attention.json

extra_info per test: ms (CUDA events, cold L2), TFLOP/s on the executed count with causal pairs counted
exactly, % of the dense peak, GB/s, peak memory, and pyscale's speedup over each SDPA backend.
The TMA forward (sm_90+) is measured by running the suite with PYSCALE_ATTN_TMA=1.
"""

from __future__ import annotations

from pyscale.benchmark import run_group_for_pytest

FAMILY = "attention"
DEFAULT_SHAPES = "llama3-8b,grid"


def test_attention(benchmark, group):
    run_group_for_pytest(benchmark, group)
