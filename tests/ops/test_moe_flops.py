"""FLOP formulas of the MoE ops in pyscale.formulas (consumed by the profiler) and the MoE benchmark shape sets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pyscale.benchmark_shapes.moe import SHAPES, active_flops, moe_shapes
from pyscale.formulas import BUILTIN_FORMULAS, formulas_for
from pyscale.nn import MoE
from pyscale.ops import moe_align

OPS = ("pyscale::grouped_gemm", "pyscale::grouped_gemm_backward", "pyscale::moe_align", "pyscale::moe_combine",
       "pyscale::moe_combine_backward", "pyscale::moe_route", "pyscale::moe_route_backward")


def _formulas(kind: str) -> dict:
    """op -> its `kind` formula ("executed" or "model") for the MoE ops that have one."""
    return {op: getattr(formulas_for(op), kind) for op in OPS if getattr(formulas_for(op), kind) is not None}


def test_every_custom_op_has_a_formula():
    assert {op for op in BUILTIN_FORMULAS if op.split("::")[1].startswith(("moe_", "grouped_gemm"))} == set(OPS)
    for name in OPS:
        assert hasattr(torch.ops.pyscale, name.split("::")[1])


def test_grouped_gemm_flops_count_padded_rows():
    ids = torch.tensor([[0, 1], [0, 2], [0, 1]], dtype=torch.int32)
    al = moe_align(ids, 4, 16)
    n_pad = 3 * 16  # experts 0, 1, 2 each pad to one 16-row block
    assert int(al.n_pad) == n_pad
    w = torch.empty(4, 40, 24)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    f = _formulas("executed")
    assert f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None) == 2 * n_pad * 40 * 24
    assert f["pyscale::grouped_gemm"]((None, w, w, *lay, 2, 16, "swiglu"), {}, None) == \
        2 * 2 * n_pad * 40 * 24 + 4 * n_pad * 40
    assert f["pyscale::grouped_gemm_backward"]((None, None, w, None, None, *lay, 0, 16, "none"), {}, None) == \
        2 * 2 * n_pad * 40 * 24


def test_grouped_gemm_model_flops_count_routed_slots():
    """Model FLOPs (active parameters): T·k rows, not n_pad; no elementwise SwiGLU; backward 2x forward."""
    ids = torch.tensor([[0, 1], [0, 2], [0, 1]], dtype=torch.int32)  # T·k = 6 slots, n_pad = 48
    al = moe_align(ids, 4, 16)
    w = torch.empty(4, 40, 24)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    f = _formulas("model")
    assert set(f) == {"pyscale::grouped_gemm", "pyscale::grouped_gemm_backward"}
    assert f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None) == 2 * 6 * 40 * 24
    assert f["pyscale::grouped_gemm"]((None, w, w, *lay, 2, 16, "swiglu"), {}, None) == 2 * 2 * 6 * 40 * 24
    assert f["pyscale::grouped_gemm_backward"]((None, None, w, w, None, *lay, 2, 16, "swiglu"), {}, None) == \
        2 * 2 * 2 * 6 * 40 * 24
    executed = _formulas("executed")["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None)
    assert executed == 8 * f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None)


def test_combine_and_route_flops():
    y, w = torch.empty(100, 32), torch.empty(7, 3)
    slot_pos = torch.empty(21, dtype=torch.int32)
    assert _formulas("executed")["pyscale::moe_combine"]((y, w, slot_pos, None, 3), {}, None) == 2 * 21 * 32
    logits = torch.empty(7, 8)
    assert _formulas("executed")["pyscale::moe_route"]((logits, 3), {}, None) == 5 * 56 + 2 * 56 * 3 + 21


def test_shape_sets():
    assert set(SHAPES) >= {"mixtral-8x7b", "qwen3-moe", "deepseek-v3", "llama3-8b", "quick"}
    assert moe_shapes("llama3-8b") == []
    for name in SHAPES:
        for case in moe_shapes(name):
            assert 1 <= case["top_k"] <= case["n_experts"]
            m = MoE(8, 8, case["n_experts"], case["top_k"], device="meta")
            m.d_model, m.d_ff = case["d_model"], case["d_ff"]
            assert active_flops(case) == case["tokens"] * m.flops_per_token()
            assert active_flops(case, backward=True) == 3 * active_flops(case)
    with pytest.raises(ValueError, match="shape set"):
        moe_shapes("gpt-5")


def test_deepseek_v3_sweeps_4k_to_32k_tokens():
    assert [c["tokens"] for c in moe_shapes("deepseek-v3")] == [4096, 8192, 16384, 32768]


def test_grouped_mm_baseline_skipped_without_torch_support(monkeypatch):
    from pyscale.benchmark_cases import moe as moe_cases

    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    assert "has no torch._grouped_mm" in moe_cases.grouped_mm_unavailable("bf16")
    with pytest.warns(RuntimeWarning, match=r"skipping the torch._grouped_mm baseline \(torch .* has no"):
        cases = moe_cases.cases("quick", "cuda")  # planning only: needs no GPU
    assert {c.impl for c in cases} == {"pyscale", "loop"}
    m = moe_cases.make_layer(moe_shapes("quick")[0], "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="torch._grouped_mm baseline cannot run"):
        moe_cases.layer_fn("torch._grouped_mm", m, moe_shapes("quick")[0])


def test_grouped_mm_baseline_planned_where_torch_has_it(monkeypatch):
    from pyscale.benchmark_cases import moe as moe_cases

    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: None, raising=False)
    assert moe_cases.grouped_mm_unavailable("bf16") is None
    cases = moe_cases.cases("quick", "cuda")
    gmm = [c for c in cases if c.impl == "torch._grouped_mm"]
    assert {c.op for c in gmm} == {"moe_fwd", "moe_fwd_bwd"} and all(c.dtype == "bf16" for c in gmm)
    assert "torch._grouped_mm" not in {c.impl for c in moe_cases.cases("quick", "cpu")}  # fp32 on CPU


def test_shape_data_imports_no_torch():
    code = "import sys, pyscale.benchmark_shapes.moe; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_cases_quick_run_and_agree():
    """`pyscale bench` MoE cases on the quick set: every workload runs, and the baselines compute the same
    layer as pyscale (same parameters and routing)."""
    from pyscale import benchmark
    from pyscale.benchmark_cases import moe as moe_cases

    cases = benchmark.plan_cases(["moe"], "quick", device="cpu")
    assert {c.op for c in cases} == set(moe_cases.OPS) and {c.impl for c in cases} == {"pyscale", "loop"}
    for case in cases:
        w = moe_cases.workload(case, "cpu")
        w.fn(*w.args)
        assert w.flops > 0
    shape = moe_shapes("quick")[0]
    m = moe_cases.make_layer(shape, "cpu", torch.float32)
    x = torch.randn(shape["tokens"], shape["d_model"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = moe_cases.layer_fn("pyscale", m, shape)(x)
        loop = moe_cases.layer_fn("loop", m, shape)(x)
    torch.testing.assert_close(ours, loop, rtol=1e-5, atol=1e-5)
    if hasattr(torch, "_grouped_mm"):  # bf16 only; CPU support depends on the torch build
        with torch.no_grad():
            gmm = moe_cases.layer_fn("torch._grouped_mm", m.to(torch.bfloat16), shape)(x.bfloat16())
        torch.testing.assert_close(gmm.float(), ours, rtol=0.05, atol=0.05)
