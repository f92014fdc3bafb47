"""pyscale.benchmark.cases.moe: the MoE layer's cases, its torch._grouped_mm baseline planned only where torch
has it, and every baseline computing the same layer as pyscale."""

from __future__ import annotations

import pytest
import torch

from pyscale.benchmark.cases import moe as moe_cases
from pyscale.benchmark.shapes import moe_shapes


def test_grouped_mm_baseline_skipped_without_torch_support(monkeypatch):
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    assert "has no torch._grouped_mm" in moe_cases.grouped_mm_unavailable("bf16")
    with pytest.warns(RuntimeWarning, match=r"skipping the torch._grouped_mm baseline \(torch .* has no"):
        cases = moe_cases.cases("quick", "cuda")  # planning only: needs no GPU
    assert {c.impl for c in cases} == {"pyscale", "loop"}
    m = moe_cases.make_layer(moe_shapes("quick")[0], "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="torch._grouped_mm baseline cannot run"):
        moe_cases.layer_fn("torch._grouped_mm", m, moe_shapes("quick")[0])


def test_grouped_mm_baseline_planned_where_torch_has_it(monkeypatch):
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: None, raising=False)
    assert moe_cases.grouped_mm_unavailable("bf16") is None
    cases = moe_cases.cases("quick", "cuda")
    gmm = [c for c in cases if c.impl == "torch._grouped_mm"]
    assert {c.op for c in gmm} == {"moe_fwd", "moe_fwd_bwd", "moe_fwd_bwd_hot"} and all(c.dtype == "bf16" for c in gmm)
    assert "loop" not in {c.impl for c in cases if c.op == "moe_fwd_bwd_hot"}
    assert "torch._grouped_mm" not in {c.impl for c in moe_cases.cases("quick", "cpu")}  # fp32 on CPU


def test_benchmark_cases_quick_run_and_agree():
    """`pyscale bench` MoE cases on the quick set: every workload runs, and the baselines compute the same
    layer as pyscale (same parameters and routing)."""
    from pyscale import benchmark
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
    hot = moe_cases.make_layer(shape, "cpu", torch.float32, hot=True)
    with torch.no_grad():
        ours_hot, aux = hot(x)
        torch.testing.assert_close(ours_hot, moe_cases.layer_fn("loop", hot, shape)(x), rtol=1e-5, atol=1e-5)
    assert int(aux.tokens_per_expert[0]) == shape["tokens"]  # every token's first choice
    if hasattr(torch, "_grouped_mm"):  # bf16 only; CPU support depends on the torch build
        with torch.no_grad():
            gmm = moe_cases.layer_fn("torch._grouped_mm", m.to(torch.bfloat16), shape)(x.bfloat16())
        torch.testing.assert_close(gmm.float(), ours, rtol=0.05, atol=0.05)
