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


def _by_op(calls):
    out = {}
    for c in calls:
        out.setdefault(c.op, []).append(c)
    return out


@pytest.mark.parametrize("optimizer", ["for-loop", "foreach"])
def test_the_breakdown_is_the_step_the_built_model_runs(optimizer):
    torch = pytest.importorskip("torch")
    from pyscale.models import gpt

    cfg = GPTConfig(n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=500, seq_len=16)
    model = gpt.GPT(cfg, impl="torch")
    calls = _by_op(gpt_op_breakdown(cfg, 2, dtype="fp32", optimizer_backend=optimizer))
    norms = [m for m in model.modules() if isinstance(m, gpt.RMSNorm)]
    assert sum(c.count for c in calls["rmsnorm"]) == len(norms) == 2 * cfg.n_layers + 1
    # every nn.Linear runs its forward, input-gradient and weight-gradient GEMM at 2 x 16 tokens
    linears = sorted((m.out_features, m.in_features) for m in model.modules() if isinstance(m, torch.nn.Linear))
    fwd = sorted((c.features["n"], c.features["k"]) for c in calls["gemm"] if c.features["m"] == 32
                 for _ in range(c.count))
    assert sorted(set(fwd) & set(linears)) == sorted(set(linears))
    assert sum(c.count for c in calls["gemm"]) == 3 * len(linears)
    params = [p.numel() for p in model.parameters()]
    adamw = calls["adamw"]
    assert sum(c.features["elements"] * c.count for c in adamw) == sum(params) == cfg.n_params()
    if optimizer == "for-loop":  # one call per tensor
        assert sum(c.count for c in adamw) == len(params)
    else:  # one per parameter group: the matrices (decayed) and the norm weights
        assert [(c.features["tensors"], c.features["matrix"]) for c in adamw] == [
            (sum(p.dim() >= 2 for p in model.parameters()), True), (len(norms), False)]
    assert sum(c.count for c in calls["rotary"]) == cfg.n_layers and calls["rotary"][0].features["heads_kv"] == 2
    assert [c.count for c in calls["cross_entropy"]] == [1] and calls["cross_entropy"][0].features["vocab"] == 500
    assert sum(c.count for c in calls["add"]) == 7 * cfg.n_layers
    assert sum(c.count for c in calls["swiglu"]) == cfg.n_layers
    # a repeated batch (a profile's) leaves the embedding rows it never touches at zero
    repeated = _by_op(gpt_op_breakdown(cfg, 2, dtype="fp32", optimizer_backend=optimizer, repeated_batch=True))
    from pyscale.formulas import embedding_rows_touched

    untouched = (cfg.vocab_size - embedding_rows_touched(32, cfg.vocab_size)) * cfg.d_model  # about 469 rows
    first = repeated["adamw"][0]  # the embedding table, or the matrices' group holding it
    assert first.features["zero_fraction"] == pytest.approx(untouched / first.features["elements"], abs=1e-4)
    assert all(c.features["zero_fraction"] == 0 for c in adamw + repeated["adamw"][1:])


def test_a_profile_without_the_step_ops_prices_gemm_and_attention_and_says_so(profile):
    cfg = GPTConfig(n_layers=2, d_model=512, n_heads=8, seq_len=256)
    pred = predict_gpt_step(profile, cfg, 2, gemm_backend="torch.mm", attention_backend="pyscale")
    assert any("leaves out the rest of the step" in n for n in pred.notes)
    with pytest.raises(ValueError, match="op 'rmsnorm' is not in the profile"):
        predict_gpt_step(profile, cfg, 2, gemm_backend="torch.mm", attention_backend="pyscale", step_ops=True)
    hw = hardware_from_profile(profile, gemm_backend="torch.mm", attention_backend="pyscale")
    assert "the rest of the step left out" in hw.throughput(cfg)[1]
    assert "records no validation" in hw.time_error


def test_communication_is_a_user_given_time_added_to_the_step(profile):
    cfg = GPTConfig(n_layers=2, d_model=512, n_heads=8, seq_len=256)
    kw = {"gemm_backend": "torch.mm", "attention_backend": "pyscale", "step_ops": False}
    alone = predict_gpt_step(profile, cfg, 2, **kw)
    with_comm = predict_gpt_step(profile, cfg, 2, communication_s=0.25, **kw)
    assert with_comm.time_s == pytest.approx(alone.time_s + 0.25)
    assert with_comm.per_op[-1] == {"op": "communication", "dtype": None, "count": 1, "time_s": 0.25,
                                    "energy_j": None, "source": "user-given"}
    assert with_comm.energy_j is None and "communication" in with_comm.unavailable_reasons["energy_j"]
    with pytest.raises(ValueError, match="communication_s"):
        predict_gpt_step(profile, cfg, 2, communication_s=-1.0, **kw)


def test_a_stored_step_is_priced_with_the_implementation_it_ran():
    from pyscale.plan.step_model import implementation_of

    row = {"dtype": "bfloat16", "device_kind": "cuda", "params": {"impl_parts": {"attention": "pyscale"}}}
    assert implementation_of(row) == {"dtype": "bf16", "gemm_backend": "torch.mm", "attention_backend": "pyscale",
                                      "rotary_backend": "pyscale", "optimizer_backend": "foreach", "step_ops": True,
                                      "repeated_batch": True}
    row = {"dtype": "float32", "device_kind": "cpu",
           "params": {"impl_parts": {"attention": "torch"}, "optimizer": "foreach"}}
    assert implementation_of(row)["attention_backend"] == "sdpa" and implementation_of(row)["rotary_backend"] == "torch"
    assert implementation_of(row)["optimizer_backend"] == "foreach"  # as recorded, not the device's default
    with pytest.raises(ValueError, match="which attention"):
        implementation_of({"dtype": "float32", "params": {}})
    with pytest.raises(ValueError, match="dtype"):
        implementation_of({"dtype": "int8", "params": {"impl_parts": {"attention": "torch"}}})
