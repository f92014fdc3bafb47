"""Step benchmarks: what a training step of the built-in GPT spends outside GEMMs and attention (RMSNorm,
SwiGLU, rotary, adds, cross-entropy over the vocabulary, the embedding, AdamW), forward and backward together
(cases: pyscale.benchmark.cases.step; shapes: pyscale.benchmark.shapes.step_shapes).

    pytest bench/bench_step.py --shapes gpt-gpu,llama3-8b --benchmark-json step.json
"""

from __future__ import annotations

from pyscale.benchmark import run_group_for_pytest

FAMILY = "step"
DEFAULT_SHAPES = "gpt-gpu"


def test_step(benchmark, group):
    run_group_for_pytest(benchmark, group)
