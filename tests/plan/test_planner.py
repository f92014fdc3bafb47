from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyscale import cli
from pyscale.plan import Budget, from_measurements, from_user, plan
from pyscale.plan.memory import fit_memory, model_state_bytes


def test_flops_optimal_epoch2024_at_chinchilla_compute():
    # Besiroglu et al. 2024 refit at Chinchilla's 5.76e23 FLOPs: N* ~ 7.2e10, D* ~ 1.3e12 (~18 tokens/param).
    p = plan(Budget("flops", 5.76e23), law="epoch2024")
    assert p.n_params_optimal == pytest.approx(7.2e10, rel=0.02)
    assert p.tokens_optimal == pytest.approx(1.33e12, rel=0.02)
    assert p.tokens_optimal / p.n_params_optimal == pytest.approx(18.4, rel=0.03)
    # The concrete architecture is near N* and the tokens keep the budget exactly.
    assert p.n_params == pytest.approx(p.n_params_optimal, rel=0.02)
    assert 6 * p.n_params * p.tokens == pytest.approx(5.76e23, rel=1e-9)
    assert p.n_params == p.config.n_params()
    assert p.loss_interval is not None and p.loss_interval[0] < p.predicted_loss < p.loss_interval[1]
    assert any("epoch2024" in a for a in p.assumptions)


# Hoffmann et al. 2022, Table 3 (Approach 1 projections): parameters, FLOPs, tokens.
HOFFMANN_TABLE_3 = [
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9), (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12), (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


@pytest.mark.parametrize(("n", "c", "d"), HOFFMANN_TABLE_3)
def test_hoffmann_table3_is_consistent_with_6nd(n, c, d):
    # The table rounds tokens to 2-4 significant digits (1.5T at 67B is the coarsest: 4.7 % off).
    assert 6 * n * d == pytest.approx(c, rel=0.05)


def test_target_loss_plan_reaches_the_target():
    p = plan(Budget("loss", 2.4), law="epoch2024")
    assert p.predicted_loss == pytest.approx(2.4, abs=1e-6)
    cheaper = plan(Budget("flops", p.training_flops * 0.9), law="epoch2024")
    assert cheaper.predicted_loss > 2.4  # the target plan is (near) the cheapest way there


def test_unreachable_target_and_impossible_budget_are_clear_errors():
    with pytest.raises(ValueError, match="not reachable"):
        plan(Budget("loss", 1.5), law="epoch2024")  # below E = 1.82
    with pytest.raises(ValueError, match="smallest model"):
        plan(Budget("flops", 1e12), law="epoch2024")


def test_time_plan_with_constant_mfu_matches_flops_plan():
    hw = from_user("H100 SXM", mfu=0.4, power_w=600.0)
    timed = plan(Budget("gpu_hours", 1000), law="epoch2024", hardware=hw)
    assert timed.time_s == pytest.approx(1000 * 3600, rel=0.02)
    assert timed.mfu == pytest.approx(0.4)
    assert timed.energy_kwh == pytest.approx(600 * 1000 / 1000, rel=0.02)
    same = plan(Budget("flops", timed.training_flops), law="epoch2024")
    assert timed.n_params_optimal == pytest.approx(same.n_params_optimal, rel=0.1)


def _measured(slope: float) -> object:
    # Throughput that grows with model size (small models reach lower MFU) when slope > 0.
    pts = [{"n_params": n, "model_flops_per_s": 3e14 * (n / 1e8) ** slope, "avg_power_w": 500.0}
           for n in (1e8, 1e9, 1e10, 1e11)]
    return from_measurements(pts, device_name="H100 SXM", peak_flops_per_s=989e12, memory_bytes=80 * 2**30)


def test_size_dependent_throughput_moves_the_time_optimum_to_larger_models():
    flat, rising = _measured(0.0), _measured(0.15)
    a = plan(Budget("gpu_hours", 2000), hardware=flat)
    b = plan(Budget("gpu_hours", 2000), hardware=rising)
    # Per-token time of small models is costlier when they run at lower MFU: the optimum grows relative
    # to the FLOPs-optimal split at the compute each plan affords.
    assert b.n_params_optimal / b.flops_optimal["N"] > a.n_params_optimal / a.flops_optimal["N"]


@settings(max_examples=6)
@given(mfu=st.floats(0.1, 0.45), factor=st.floats(1.2, 2.0), hours=st.floats(100, 1e5))
def test_more_mfu_buys_a_bigger_model_and_lower_loss(mfu, factor, hours):
    lo = plan(Budget("gpu_hours", hours), hardware=from_user("H100 SXM", mfu=mfu))
    hi = plan(Budget("gpu_hours", hours), hardware=from_user("H100 SXM", mfu=min(1.0, mfu * factor)))
    assert hi.training_flops > lo.training_flops
    assert hi.n_params_optimal > lo.n_params_optimal
    assert hi.predicted_loss < lo.predicted_loss


@settings(max_examples=6)
@given(power=st.floats(200, 700), factor=st.floats(1.2, 2.0), kwh=st.floats(1e3, 1e6))
def test_more_power_per_flop_buys_less_under_an_energy_budget(power, factor, kwh):
    cheap = plan(Budget("kwh", kwh), hardware=from_user("H100 SXM", mfu=0.4, power_w=power))
    dear = plan(Budget("kwh", kwh), hardware=from_user("H100 SXM", mfu=0.4, power_w=power * factor))
    assert dear.training_flops < cheap.training_flops
    assert dear.n_params_optimal < cheap.n_params_optimal
    assert cheap.energy_kwh == pytest.approx(kwh, rel=0.05)


def test_inference_tokens_shift_toward_smaller_longer_trained_models():
    base = plan(Budget("loss", 2.3), law="epoch2024")
    served = plan(Budget("loss", 2.3), law="epoch2024", inference_tokens=1e14)
    assert served.n_params_optimal < base.n_params_optimal
    assert served.tokens_per_param > base.tokens_per_param


def test_hardware_inputs_are_never_invented():
    with pytest.raises(ValueError, match="dp_efficiency is required"):
        from_user("H100 SXM", mfu=0.4, n_devices=8)
    with pytest.raises(ValueError, match="price"):
        plan(Budget("dollars", 1e5), hardware=from_user("H100 SXM", mfu=0.4))
    p = plan(Budget("flops", 1e21), hardware=from_user("H100 SXM", mfu=0.4))
    assert p.energy_kwh is None and "power" in p.unavailable["energy_kwh"]
    assert p.cost_dollars is None and "price" in p.unavailable["cost_dollars"]
    with pytest.raises(ValueError, match="gpu: no spec"):
        from_user("Imaginary GPU 9000", mfu=0.4)


def test_cost_budget_and_fleet():
    hw = from_user("H100 SXM", mfu=0.4, power_w=650, n_devices=64, dp_efficiency=0.9, price_per_device_hour=2.5,
                   pue=1.2)
    p = plan(Budget("dollars", 250_000), hardware=hw)
    assert p.cost_dollars == pytest.approx(250_000, rel=0.02)
    assert p.facility_energy_kwh == pytest.approx(p.energy_kwh * 1.2)
    assert p.batch.sequences % 64 == 0  # a whole number of sequences per device per step
    assert p.memory.fits and p.memory.zero_stage is not None


def test_memory_fit_picks_the_smallest_sharding():
    small = plan(Budget("flops", 1e20)).config
    big = plan(Budget("flops", 1e25)).config
    assert fit_memory(small, capacity_bytes=80 * 2**30, n_devices=8).zero_stage == 0
    assert model_state_bytes(1e9, 3, 8) == pytest.approx(16e9 / 8)
    fit = fit_memory(big, capacity_bytes=80 * 2**30, n_devices=8)
    assert fit.zero_stage in (None, 2, 3)
    assert not fit_memory(big, capacity_bytes=80 * 2**30, n_devices=1).fits


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("1e23 flops", "flops", 1e23), ("5000 gpu-hours", "gpu_hours", 5000), ("120 kWh", "kwh", 120),
    ("$20,000", "dollars", 20000), ("loss=2.1", "loss", 2.1)])
def test_budget_parse(text, kind, value):
    assert Budget.parse(text) == Budget(kind, value)


def test_bad_budget():
    with pytest.raises(ValueError, match="budget: cannot parse"):
        Budget.parse("lots of compute")
    with pytest.raises(ValueError, match="positive"):
        Budget("flops", -1)


def test_cli_plan_json(capsys):
    assert cli.main(["plan", "--flops", "1e21", "--gpu", "H100 SXM", "--mfu", "0.4", "--power-w", "600",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "flops" and out["config"]["n_layers"] >= 1
    assert out["time_s"] > 0 and out["energy_kwh"] > 0 and math.isfinite(out["predicted_loss"])
    assert cli.main(["plan", "--flops", "1e5"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("pyscale plan: budget:") and "smallest model" in err


def test_cli_no_throughput_names_the_flags_that_give_one(capsys, monkeypatch):
    import pyscale.costmodel

    monkeypatch.setattr(pyscale.costmodel, "load_shipped_profile", lambda name: None)  # whatever ships later
    assert cli.main(["plan", "--gpu-hours", "100", "--gpu", "H100 SXM"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no throughput for H100 SXM" in err
    assert all(flag in err for flag in ("--mfu", "--profile", "--store"))


@pytest.mark.parametrize("flags", [["--n-gpus", "8"], ["--n-gpus", "8", "--dp-efficiency", "0.9"], ["--pue", "1.2"],
                                   ["--price-per-gpu-hour", "2"]])
def test_cli_hardware_flags_without_hardware_are_errors(capsys, flags):
    assert cli.main(["plan", "--flops", "1e21", *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]}" in err and "without hardware" in err and "--gpu" in err


def test_cli_two_hardware_sources_are_an_error(capsys, tmp_path):
    from pyscale.store import Store

    Store(tmp_path / "x.db").close()  # a store that exists: the flags, not the file, are wrong
    assert cli.main(["plan", "--flops", "1e21", "--gpu", "H100 SXM", "--mfu", "0.4",
                     "--store", str(tmp_path / "x.db")]) == 2
    assert "alternative hardware sources" in capsys.readouterr().err


def test_moe_plan_counts_active_parameters():
    from pyscale.scaling.presets import DEEPSEEK_BATCH_SIZE

    dense = plan(Budget("flops", 1e21))
    p = plan(Budget("flops", 1e21), n_experts=8, top_k=2)
    c = p.config
    assert (c.n_experts, c.top_k) == (8, 2)
    active = c.n_active_params()
    assert p.n_params_active == active and active < p.n_params / 2  # 6 of 8 experts idle per token
    # the law receives the active count: C = 6·N_active·D spends the budget, and N_active lands where the dense
    # plan's N does
    assert p.training_flops == pytest.approx(6 * active * p.tokens, rel=1e-12)
    assert p.training_flops == pytest.approx(1e21, rel=1e-9)
    assert active == pytest.approx(dense.n_params, rel=0.03)
    assert p.tokens_per_param == pytest.approx(p.tokens / active)
    # model FLOPs (PaLM) differ from 6·N_active·D only by attention and the input embedding table
    attention = 12 * c.n_layers * c.n_heads * c.head_dim * c.seq_len
    assert p.model_flops == pytest.approx(p.training_flops + (attention - 6 * c.vocab_size * c.d_model) * p.tokens,
                                          rel=1e-9)
    # DeepSeek's M counts the experts a token runs, not all of them
    m = 6 * c.n_active_params(embeddings=False) + 12 * c.n_layers * c.d_model * c.seq_len
    assert p.batch.raw_tokens == pytest.approx(DEEPSEEK_BATCH_SIZE(m * p.tokens), rel=1e-9)
    assert any("the law receives the ACTIVE parameters" in a for a in p.assumptions)


def test_moe_time_plan_prices_active_compute():
    hw = from_user("H100 SXM", mfu=0.4)
    p = plan(Budget("gpu_hours", 1000), hardware=hw, n_experts=8, top_k=2)
    assert p.gpu_hours == pytest.approx(1000, rel=1e-6)
    assert p.model_flops == pytest.approx(p.config.model_flops_per_token() * p.tokens)
    # at a constant MFU an hour buys the same active compute as for a dense model
    dense = plan(Budget("gpu_hours", 1000), hardware=hw)
    assert p.model_flops == pytest.approx(dense.model_flops, rel=1e-6)


def test_equal_loss_trade_off_and_plots(tmp_path, capsys):
    from pyscale.plan.planner import equal_loss_candidates

    hw = _measured(0.15)
    p = plan(Budget("gpu_hours", 2000), hardware=hw)
    pts = equal_loss_candidates(p, hardware=hw)
    assert len(pts) > 10
    # every candidate reaches the same loss; bigger models need fewer tokens
    assert all(a["tokens"] > b["tokens"] for a, b in zip(pts, pts[1:]))
    assert all(x["time_s"] > 0 and x["energy_kwh"] > 0 for x in pts)
    assert cli.main(["plan", "--gpu-hours", "2000", "--gpu", "H100 SXM", "--mfu", "0.4", "--power-w", "600",
                     "--plot", str(tmp_path)]) == 0
    assert (tmp_path / "plan_iso_loss.png").stat().st_size > 1000
    assert (tmp_path / "plan_time_energy.png").stat().st_size > 1000


def test_plan_from_a_fit_takes_its_interval_from_the_bootstrap():
    from pyscale.scaling import fit
    from pyscale.scaling.synthetic import chinchilla_runs

    result = fit("chinchilla", chinchilla_runs(60, seed=1), starts="quick", bootstrap=20)
    result.bootstrap[0] = np.nan  # a failed replicate is a non-finite row, skipped
    p = plan(Budget("flops", 1e21), law=result)
    assert p.loss_interval_source.startswith("19 bootstrap refits")
    assert p.loss_interval[0] < p.predicted_loss < p.loss_interval[1]


# ------------------------------------------------------------------------------- allocation laws (item 5)
@pytest.mark.parametrize(("law", "approach", "n_star"), [("hoffmann2022_approach1", "Approach 1", 67e9),
                                                         ("hoffmann2022_approach2", "Approach 2", 61.41e9),
                                                         ("hoffmann2022", "Approach 3", 32.19e9)])
def test_each_hoffmann_approach_plans_its_own_optimum(law, approach, n_star):
    p = plan(Budget("flops", 5.76e23), law=law)
    assert p.law_approach.startswith(approach) and any(approach in a for a in p.assumptions)
    assert p.n_params_optimal == pytest.approx(n_star, rel=0.002)
    assert 6 * p.n_params_law * p.tokens == pytest.approx(5.76e23, rel=1e-9)
    if law != "hoffmann2022":
        assert p.predicted_loss is None and p.loss_interval is None and "predicted_loss" in p.unavailable
        assert p.to_dict()["predicted_loss"] is None


def test_allocation_law_prices_a_time_budget_at_the_compute_it_buys():
    from pyscale.scaling.presets import HOFFMANN_2022_APPROACH1 as A1

    p = plan(Budget("gpu_hours", 1e5), law="hoffmann2022_approach1", hardware=from_user("H100 SXM", mfu=0.4))
    assert p.gpu_hours == pytest.approx(1e5, rel=1e-6)
    c = 6 * p.n_params_optimal * p.tokens_optimal
    assert p.n_params_optimal == pytest.approx(A1.N(c), rel=1e-9)
    assert any("compute-optimal split of what the budget buys" in a for a in p.assumptions)


def test_allocation_law_refuses_what_needs_a_loss(capsys):
    with pytest.raises(ValueError, match="target loss needs a loss law.*predicts no loss"):
        plan(Budget("loss", 2.2), law="hoffmann2022_approach1")
    with pytest.raises(ValueError, match="inference_tokens: .*predicts no loss"):
        plan(Budget("flops", 1e22), law="hoffmann2022_approach2", inference_tokens=1e12)
    with pytest.raises(ValueError, match="batch_law: .*needs a predicted loss"):
        plan(Budget("flops", 1e22), law="hoffmann2022_approach2", batch_law="kaplan")
    assert cli.main(["plan", "--flops", "1e22", "--law", "hoffmann2022_approach1", "--inference-tokens", "1e12"]) == 2
    assert "--inference-tokens: an inference-aware plan" in capsys.readouterr().err


# ------------------------------------------------------------------------------- extrapolation (item 6)
def test_a_plan_far_beyond_the_fitted_data_says_so(tmp_path, capsys):
    from pyscale.scaling import fit
    from pyscale.scaling.synthetic import chinchilla_runs

    runs = chinchilla_runs(60, seed=1)
    largest = float(np.max(6 * runs["N"] * runs["D"]))
    result = fit("chinchilla", runs, starts="quick", bootstrap=10)
    near = plan(Budget("flops", largest), law=result)
    assert near.extrapolation_factor == pytest.approx(1.0, rel=0.01) and not near.warnings
    far = plan(Budget("flops", 1200 * largest), law=result)
    assert far.extrapolation_factor == pytest.approx(1200, rel=0.01)
    assert far.loss_interval_source.startswith("extrapolated x1.2e+03")
    assert any(w.startswith("extrapolated: ") for w in far.warnings) and far.to_dict()["extrapolated"]
    saved = tmp_path / "fit.json"
    saved.write_text(json.dumps(result.to_dict()))
    assert cli.main(["plan", "--flops", f"{1200 * largest:g}", "--law", str(saved), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["extrapolation_factor"] == pytest.approx(1200, rel=0.01)
    assert err.startswith("pyscale plan: warning: extrapolated:")
    p = plan(Budget("flops", 1e21), law="kaplan2020")  # a preset whose data range is not published here
    assert p.extrapolation_factor is None and "extrapolation_factor" in p.unavailable


# ------------------------------------------------------------------------------- trainable shapes (item 8)
@pytest.mark.parametrize("flops", [1e21, 1e22, 1e23, 5.76e23, 1e25])
def test_plans_are_architectures_a_team_could_train(flops):
    p = plan(Budget("flops", flops))
    c = p.config
    assert c.d_model % 128 == 0 and c.d_ff % 128 == 0 and c.head_dim in (64, 128)
    assert p.batch.sequences % 8 == 0
    assert abs(p.n_params_deviation) <= 0.05 and p.n_params_law == c.n_params()
    assert 6 * p.n_params_law * p.tokens == pytest.approx(flops, rel=1e-9)  # D moved to keep C
    if p.n_params_law >= 1e9:
        assert c.n_heads % 8 == 0 and c.n_kv_heads == 8
        mha = plan(Budget("flops", flops), gqa_ratio=1)
        assert mha.config.n_kv_heads == mha.config.n_heads and mha.config.n_heads % 8 == 0


def test_batch_is_a_multiple_of_data_parallel_times_micro_batch(capsys):
    hw = from_user("H100 SXM", mfu=0.4, n_devices=3, dp_efficiency=0.9)
    p = plan(Budget("gpu_hours", 3000), hardware=hw, micro_batch=2)
    assert p.batch.sequences % 24 == 0 and p.memory.micro_batch == 2
    assert cli.main(["plan", "--flops", "1e23", "--gqa", "1", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert cfg["n_kv_heads"] == cfg["n_heads"]
    assert cli.main(["plan", "--flops", "1e23", "--heads-multiple", "0"]) == 2
    assert "--heads-multiple" in capsys.readouterr().err


# ------------------------------------------------------------------------------- infeasible plans (item 9)
def test_an_impossible_plan_is_an_answer_that_says_so(capsys):
    hw = from_user("H100 SXM", mfu=0.4, power_w=650)
    p = plan(Budget("kwh", 2e5), hardware=hw)
    assert not p.feasible and len(p.infeasible_reasons) == 2
    assert "does not fit in memory" in p.infeasible_reasons[0] and "years" in p.infeasible_reasons[1]
    assert cli.main(["plan", "--kwh", "2e5", "--gpu", "H100 SXM", "--mfu", "0.4", "--power-w", "650",
                     "--json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["feasible"] is False and len(d["infeasible_reasons"]) == 2
    assert err.count("pyscale plan: warning: infeasible:") == 2 and "longer than --max-days 365" in err
    ok = plan(Budget("gpu_hours", 100), hardware=hw)
    assert ok.feasible and not ok.infeasible_reasons and ok.time_s < 86400 * 365
    slow = plan(Budget("gpu_hours", 100), hardware=hw, max_days=1)
    assert not slow.feasible and "longer than max_days=1" in slow.infeasible_reasons[0]
    with pytest.raises(ValueError, match="max_days"):
        plan(Budget("gpu_hours", 100), hardware=hw, max_days=0)
    assert cli.main(["plan", "--kwh", "2e5", "--gpu", "H100 SXM", "--mfu", "0.4", "--power-w", "650"]) == 0
    assert "INFEASIBLE" in capsys.readouterr().out
