"""The model-level cost prediction wired into the planner, on a synthetic store (no GPU numbers)."""

from __future__ import annotations

import pytest

from pyscale.models.config import GPTConfig
from pyscale.plan import Budget, plan
from pyscale.plan.step_model import gpt_op_breakdown, hardware_from_profile, predict_gpt_step

# `profile` (tests/plan/conftest.py): a synthetic device, 400 TFLOP/s at 70 % GEMM efficiency, 300 W.


def test_breakdown_counts_every_matmul_flop():
    cfg = GPTConfig(n_layers=4, d_model=512, n_heads=8, vocab_size=1000, seq_len=256)
    calls = gpt_op_breakdown(cfg, 2)
    gemm = sum(c.flops * c.count for c in calls if c.op == "gemm")
    tokens = 2 * 256
    # forward 2·N_matmul per token, backward twice that: 6 x the non-embedding matmul weights + LM head
    weights = cfg.n_layers * (cfg.d_model * (cfg.d_attn + 2 * cfg.d_kv) + cfg.d_attn * cfg.d_model
                              + 3 * cfg.d_model * cfg.d_ff) + cfg.vocab_size * cfg.d_model
    assert gemm == pytest.approx(6 * weights * tokens)


def test_profile_prices_a_step_and_drives_a_time_plan(profile):
    small = GPTConfig(n_layers=4, d_model=512, n_heads=4, seq_len=1024)
    big = GPTConfig(n_layers=24, d_model=2048, n_heads=16, seq_len=1024)
    ps, pb = (predict_gpt_step(profile, c, 4, gemm_backend="torch.mm", attention_backend="pyscale",
                               peak_flops_per_s=400e12) for c in (small, big))
    assert 0 < ps.mfu < pb.mfu < 1  # launch overheads weigh more on small models
    assert pb.energy_j == pytest.approx(pb.time_s * 300.0, rel=0.05)
    hw = hardware_from_profile(profile, micro_batch=4, peak_flops_per_s=400e12, memory_bytes=80 * 2**30,
                               gemm_backend="torch.mm", attention_backend="pyscale")
    p = plan(Budget("flops", 1e21), hardware=hw, seq_len=1024)
    # MFU counts attention without the causal discount (PaLM), so it may exceed the 70 % GEMM efficiency a
    # little; the executed-FLOP utilisation may not.
    assert p.mfu == pytest.approx(hw.mfu(p.config)) and 0 < p.mfu < 0.75
    step = predict_gpt_step(profile, p.config, 4, gemm_backend="torch.mm", attention_backend="pyscale",
                            peak_flops_per_s=400e12)
    assert step.hfu <= 0.7 + 1e-6
    assert p.time_s == pytest.approx(p.model_flops / hw.throughput(p.config)[0])
    assert "cost model of Synthetic GPU" in p.throughput_source
    assert p.energy_kwh == pytest.approx(p.time_s * 300.0 / 3.6e6, rel=0.05)
