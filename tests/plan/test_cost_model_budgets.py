"""GPU-hour and energy budgets priced by a fitted cost model (synthetic profiles, no GPU numbers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyscale import cli
from pyscale.models.config import default_aspect_ratio
from pyscale.plan import Budget, plan
from pyscale.plan.planner import equal_loss_candidates
from pyscale.plan.shape import search_config
from pyscale.plan.step_model import hardware_from_profile, step_options

PEAK = 400e12  # the synthetic device's (tests/plan/conftest.py)


def _hardware(profile):
    return hardware_from_profile(profile, micro_batch=4, peak_flops_per_s=PEAK, memory_bytes=80 * 2**30,
                                 gemm_backend="torch.mm", attention_backend="pyscale")


@pytest.fixture
def fast_and_slow(make_profile):
    """The synthetic device, and one that takes twice as long for everything at the same power."""
    return _hardware(make_profile()), _hardware(make_profile("Slow GPU", slowdown=2.0))


def test_gpu_hours_budget_priced_by_a_cost_model(profile):
    hw = _hardware(profile)
    p = plan(Budget("gpu_hours", 1000), hardware=hw, seq_len=1024)
    assert p.objective == "time"
    assert p.gpu_hours == pytest.approx(1000, rel=1e-6)  # the budget is spent, not exceeded
    assert p.time_s == pytest.approx(p.model_flops / hw.throughput(p.config)[0])
    assert "cost model of Synthetic GPU" in p.throughput_source
    assert 0.3 < p.mfu < 0.75 and p.mfu == pytest.approx(hw.mfu(p.config))
    assert any(a.startswith("search: each candidate size priced on a concrete architecture") for a in p.assumptions)


def test_kwh_budget_priced_by_a_cost_model(profile):
    p = plan(Budget("kwh", 500), hardware=_hardware(profile), seq_len=1024)
    assert p.objective == "energy"
    assert p.energy_kwh == pytest.approx(500, rel=1e-6)
    # the synthetic device draws 300 W throughout
    assert p.energy_kwh == pytest.approx(p.time_s * 300.0 / 3.6e6, rel=0.05)
    assert "energy model of Synthetic GPU" in " ".join(p.assumptions)


@pytest.mark.parametrize("budget", [Budget("gpu_hours", 1000), Budget("kwh", 500)])
def test_a_slower_device_buys_a_smaller_model_at_a_higher_loss(fast_and_slow, budget):
    fast, slow = (plan(budget, hardware=hw, seq_len=1024) for hw in fast_and_slow)
    assert slow.training_flops == pytest.approx(fast.training_flops / 2, rel=0.1)
    assert slow.n_params_optimal < fast.n_params_optimal
    assert slow.n_params < fast.n_params
    assert slow.predicted_loss > fast.predicted_loss


def test_equal_loss_trade_off_from_a_cost_model(profile):
    hw = _hardware(profile)
    p = plan(Budget("gpu_hours", 1000), hardware=hw, seq_len=1024)
    pts = equal_loss_candidates(p, hardware=hw)
    assert len(pts) > 10
    assert all(a["tokens"] > b["tokens"] for a, b in zip(pts, pts[1:]))
    assert all(x["time_s"] > 0 and x["energy_kwh"] > 0 for x in pts)
    # the plan is time-optimal for its loss: no candidate reaching that loss is much faster
    assert min(x["time_s"] for x in pts) == pytest.approx(p.time_s, rel=0.05)


def test_a_cost_model_needs_an_architecture_not_a_count(profile):
    with pytest.raises(ValueError, match="config: a cost-model prediction needs a concrete architecture"):
        _hardware(profile).flops_source(1e9)


def test_cli_plans_a_gpu_hours_budget_from_a_profile_file(profile, tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    assert cli.main(["plan", "--gpu-hours", "1000", "--profile", str(path), "--seq-len", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu_hours"] == pytest.approx(1000, rel=1e-6)
    assert "cost model of Synthetic GPU" in out["throughput_source"]


def test_step_options_pick_a_dtype_and_the_fastest_backends(make_profile):
    two = make_profile("Two", attention_backends={"slow": 3.0, "pyscale": 1.0})
    assert step_options(two) == {"dtype": "bf16", "gemm_backend": "torch.mm", "attention_backend": "pyscale"}
    gemm_only = make_profile("GEMM only", attention_backends={})
    with pytest.raises(ValueError, match="cannot price a GPT step"):
        step_options(gemm_only)
    with pytest.raises(ValueError, match="cannot price a GPT step in fp32"):
        step_options(two, "fp32")


@pytest.mark.parametrize("shape", [{}, {"gqa_ratio": 4}, {"n_experts": 8, "top_k": 2}, {"embeddings": False}])
def test_search_config_is_an_aligned_model_of_the_asked_size(shape):
    kw = {"embeddings": True, "vocab_size": 32000, "seq_len": 2048, **shape}
    for n in np.exp(np.linspace(math.log(3e8), math.log(1e13), 25)):
        c = search_config(float(n), **kw)
        assert c.n_active_params(kw["embeddings"]) == pytest.approx(n, rel=0.05)
        assert c.d_model % 128 == 0 and c.n_heads % c.n_kv_heads == 0 and c.head_dim in (64, 128)
        assert (c.n_experts, c.top_k) == (shape.get("n_experts", 0), shape.get("top_k", 0))
        if n >= 1e9:  # trainable at scale: heads over 8 tensor-parallel ranks, 8 kv heads unless a ratio is asked
            assert c.n_heads % 8 == 0
            assert c.n_kv_heads == 8 if "gqa_ratio" not in shape else c.gqa_ratio == shape["gqa_ratio"]
            # widths then step by 8 heads of 128 (1024): the depth/width rule holds within that step
            assert abs(math.log(c.aspect_ratio / default_aspect_ratio(n))) < math.log(2.0)
        else:
            assert c.gqa_ratio == shape.get("gqa_ratio", 1)
