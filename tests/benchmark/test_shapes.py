"""The GEMM benchmark shape sets (pyscale/benchmark_shapes/gemm.py) are well formed."""

from __future__ import annotations

import pytest

from pyscale.benchmark_shapes.gemm import DECODE_M, LAYERS, PREFILL_M, SHAPE_SETS, gemm_shapes


def test_every_named_set_has_decode_and_prefill_shapes():
    assert set(LAYERS) == set(SHAPE_SETS)
    for name in SHAPE_SETS:
        shapes = gemm_shapes(name)
        assert shapes and all(s.model == name and s.m > 0 and s.n > 0 and s.k > 0 for s in shapes)
        if name != "quick":
            assert {s.m for s in shapes} == set(DECODE_M) | set(PREFILL_M)
        # every K must hold whole int4 groups of 128 and whole FP8 blocks (the W4A16 / block cases)
        assert all(s.k % 128 == 0 or name == "quick" for s in shapes)


def test_llama3_8b_layers_follow_its_config():
    hidden, inter, heads, kv_heads, head_dim = 4096, 14336, 32, 8, 128
    layers = LAYERS["llama3-8b"]
    assert layers["qkv"] == ((heads + 2 * kv_heads) * head_dim, hidden)
    assert layers["gate_up"] == (2 * inter, hidden) and layers["down"] == (hidden, inter)


def test_unknown_set_is_named():
    with pytest.raises(ValueError, match="^shape_set must be one of"):
        gemm_shapes("gpt-5")
