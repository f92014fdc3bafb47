"""The benchmark shape registry (pyscale/benchmark/shapes.py): one entry per model, every family's shapes
derived from it, well formed and true to the models' published configurations."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyscale.benchmark.shapes import (
    DECODE_M,
    GPT_STEPS,
    MODELS,
    PREFILL_M,
    SHAPE_SETS,
    STEP_OPS,
    attention_shapes,
    gemm_shapes,
    moe_shapes,
    step_shapes,
    training_gemms,
)
from pyscale.formulas import embedding_rows_touched, moe_layer_model_flops


def test_every_named_set_has_decode_and_prefill_shapes():
    for name in SHAPE_SETS:
        shapes = gemm_shapes(name)
        if name == "grid":  # attention's coverage sweep only
            assert shapes == [] and moe_shapes(name) == [] and attention_shapes(name)
            continue
        assert shapes and all(s.model == name and s.m > 0 and s.n > 0 and s.k > 0 for s in shapes)
        if name in GPT_STEPS and name != "quick":  # training GEMMs of the built-in GPT (checked below)
            continue
        if name != "quick":
            assert {s.m for s in shapes} == set(DECODE_M) | set(PREFILL_M)
        # every K must hold whole int4 groups of 128 and whole FP8 blocks (the W4A16 / block cases)
        assert all(s.k % 128 == 0 or name == "quick" for s in shapes)


def test_llama3_8b_layers_follow_its_config():
    hidden, inter, heads, kv_heads, head_dim = 4096, 14336, 32, 8, 128
    layers = MODELS["llama3-8b"].layers
    assert layers["qkv"] == ((heads + 2 * kv_heads) * head_dim, hidden)
    assert layers["gate_up"] == (2 * inter, hidden) and layers["down"] == (hidden, inter)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_models_families_agree_on_its_sizes(name):
    """One entry per model: its attention heads, its layers' (N, K) and its MoE layer tell one story."""
    m = MODELS[name]
    assert all(s.heads_q == m.heads_q and s.heads_kv == m.heads_kv and s.head_dim == m.head_dim and s.causal
               for s in attention_shapes(name))
    assert m.heads_q % m.heads_kv == 0
    if "qkv" in m.layers:  # fused q, k, v projection
        assert m.layers["qkv"][0] == (m.heads_q + 2 * m.heads_kv) * m.head_dim
        assert m.layers["o"][1] == m.heads_q * m.head_dim
    if m.moe is None:
        assert moe_shapes(name) == [] and not any(layer.startswith("expert") for layer in m.layers)
        return
    hidden = m.layers["o"][0]
    assert m.layers["expert_gate_up"] == (2 * m.moe.d_ff, m.moe.d_model) and m.moe.d_model == hidden
    assert m.layers["expert_down"] == (hidden, m.moe.d_ff)
    assert [c["tokens"] for c in moe_shapes(name)] == list(m.moe.tokens)


def test_moe_shape_sets():
    assert moe_shapes("llama3-8b") == [] and moe_shapes("llama3-70b") == []  # dense models
    from pyscale.nn import MoE

    for name in SHAPE_SETS:
        for case in moe_shapes(name):
            assert 1 <= case["top_k"] <= case["n_experts"]
            assert ("n_group" in case) == (case["scoring"] == "sigmoid")  # only DeepSeek-V3 groups experts
            m = MoE(8, 8, case["n_experts"], case["top_k"], device="meta")
            m.d_model, m.d_ff = case["d_model"], case["d_ff"]
            sizes = (case["tokens"], case["d_model"], case["d_ff"], case["n_experts"], case["top_k"])
            assert moe_layer_model_flops(*sizes) == case["tokens"] * m.flops_per_token()
            assert moe_layer_model_flops(*sizes, backward=True) == 3 * moe_layer_model_flops(*sizes)


def test_deepseek_v3_sweeps_4k_to_32k_tokens():
    assert [c["tokens"] for c in moe_shapes("deepseek-v3")] == [4096, 8192, 16384, 32768]


@pytest.mark.parametrize("shapes", [attention_shapes, gemm_shapes, moe_shapes])
def test_unknown_set_is_named(shapes):
    with pytest.raises(ValueError, match="^shape_set must be one of quick, llama3-8b, .*grid: got 'gpt-5'"):
        shapes("gpt-5")


def test_the_cli_offers_the_registry_sets():
    from pyscale import cli

    parser = cli.build_parser()
    for name in SHAPE_SETS:
        assert parser.parse_args(["bench", "--shapes", name]).shapes == name
    with pytest.raises(cli.CommandLineError, match="--shapes: invalid choice: 'gpt-5'"):
        parser.parse_args(["bench", "--shapes", "gpt-5"])


def test_shape_data_imports_no_torch():
    code = "import sys, pyscale.benchmark.shapes; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", [n for n in GPT_STEPS if n != "quick"])
def test_gpt_sets_hold_every_gemm_and_attention_of_their_steps(name):
    want, attention = set(), set()
    for step in GPT_STEPS[name]:
        c = step.config()
        for m in c.matrices():
            if m.name != "embed.weight":
                want |= {(mm, n, k) for _, mm, n, k in training_gemms(step.batch * step.seq, m.out_features,
                                                                     m.in_features)}
        attention.add((step.batch, step.seq, c.n_heads, c.n_kv_heads, c.head_dim))
    got = [(s.m, s.n, s.k) for s in gemm_shapes(name)]
    assert set(got) == want and len(got) == len(want)  # each GEMM once, whichever layer ran it first
    assert {(a.batch, a.seq, a.heads_q, a.heads_kv, a.head_dim) for a in attention_shapes(name)} == attention
    assert moe_shapes(name) == []
    # sizes where the rest of the step matters: a 32000-token vocabulary on a narrow model
    assert any(s.vocab == 32000 and s.d_model <= 256 for s in GPT_STEPS[name]) and len(GPT_STEPS[name]) >= 5


@pytest.mark.parametrize("name", [n for n in SHAPE_SETS if n != "grid"])
def test_step_shapes_cover_every_step_op_with_its_optimizer_tensors(name):
    shapes = step_shapes(name)
    assert {op for op, _ in shapes} == set(STEP_OPS)
    assert len(shapes) == len({(op, tuple(sorted(p.items()))) for op, p in shapes})  # no duplicates
    if name in GPT_STEPS:  # AdamW sees each step.s parameters: one tensor at a time, or a group at once
        groups = [p for op, p in shapes if op == "adamw" and p["tensors"] > 1]
        for step in GPT_STEPS[name]:
            c = step.config()
            matrices = sum(m.out_features * m.in_features * m.count for m in c.matrices())
            vectors = sum(v.size * v.count for v in c.vectors())
            assert matrices + vectors == c.n_params()
            (group,) = [g for g in groups if g["elements"] == matrices and g["tensors"] == sum(
                m.count for m in c.matrices()) and g["matrix"]]
            # a profile repeats one batch: the embedding rows it never touches keep zero gradients
            untouched = c.vocab_size - embedding_rows_touched(step.batch * step.seq, c.vocab_size)
            assert group["zero_fraction"] == pytest.approx(untouched * c.d_model / matrices, abs=1e-4)
    assert step_shapes("grid") == []
