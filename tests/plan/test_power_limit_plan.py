"""The planner with a cost model measured at several GPU power limits: energy and cost plans choose the limit,
report the trade-off against the largest, and the time-energy plot's front spans (size, limit). Synthetic."""

from __future__ import annotations

import json

import pytest

from pyscale import cli
from pyscale.plan import Budget, from_user, plan
from pyscale.plan.pareto import pareto_front
from pyscale.plan.planner import equal_loss_candidates
from pyscale.plan.step_model import hardware_from_profile

PEAK = 400e12  # the synthetic device's (conftest.py)
# GPU power limit -> (slowdown, power ratio) of every op against 700 W; the energy ratios 0.815, 0.753, 0.785, 1
# make 300 W the known energy optimum. Made-up numbers, no real device's.
LIMITS = {200.0: (1.75, 205 / 440), 300.0: (1.25, 265 / 440), 400.0: (1.08, 320 / 440), 700.0: (1.0, 1.0)}
BEST = 300.0


@pytest.fixture(scope="module")
def limits_profile(session_profile):
    return session_profile(watts=440.0, power_limits=LIMITS)


def _hardware(profile, **fleet):
    return hardware_from_profile(profile, micro_batch=4, peak_flops_per_s=PEAK, memory_bytes=80 * 2**30,
                                 gemm_backend="torch.mm", attention_backend="pyscale", **fleet)


@pytest.fixture(scope="module")
def energy_plan(limits_profile):
    return plan(Budget("kwh", 500), hardware=_hardware(limits_profile), seq_len=1024)


def test_an_energy_plan_chooses_the_known_best_limit_and_reports_the_trade_off(energy_plan, profile, capsys):
    from pyscale.commands.plan import print_plan

    p = energy_plan
    pl = p.power_limit
    assert (pl["power_limit_w"], pl["largest_w"], pl["measured_w"]) == (BEST, 700.0, sorted(LIMITS))
    s, ratio = LIMITS[BEST]
    assert pl["time_change"] == pytest.approx(s - 1, rel=1e-6)
    assert pl["energy_change"] == pytest.approx(s * ratio - 1, rel=1e-6)
    assert p.energy_kwh == pytest.approx(500, rel=1e-6)  # the budget is spent at the chosen limit
    assert pl["energy_kwh_at_largest"] == pytest.approx(500 / (s * ratio), rel=1e-6)
    assert pl["time_s_at_largest"] == pytest.approx(p.time_s / s, rel=1e-6)
    assert any(a.startswith(f"power limit: {BEST:g} W, of the measured 200, 300, 400, 700 W, minimises energy")
               for a in p.assumptions)
    # the same rows without their limits price like the largest limit: the saved energy buys compute
    flat = plan(Budget("kwh", 500), hardware=_hardware(profile), seq_len=1024)
    assert flat.power_limit is None and "power_limit" not in flat.to_dict()
    assert p.training_flops == pytest.approx(flat.training_flops * 300 / 440 / (s * ratio), rel=0.03)
    print_plan(p)
    text = capsys.readouterr().out
    assert "GPU power limit" in text and "300 W of the measured 200, 300, 400, 700 W" in text
    assert "vs 700 W: time +25.0%, energy -24.7%" in text


def test_a_time_plan_stays_at_the_largest_limit(limits_profile, profile):
    timed = plan(Budget("gpu_hours", 1000), hardware=_hardware(limits_profile), seq_len=1024)
    assert timed.power_limit["power_limit_w"] == 700.0 and timed.power_limit["time_change"] == 0.0
    assert timed.gpu_hours == pytest.approx(1000, rel=1e-6)
    assert any("a time plan runs at full power; at 300 W, the energy-optimal limit" in a for a in timed.assumptions)
    # priced like the same rows without their limits (the largest limit's)
    flat = plan(Budget("gpu_hours", 1000), hardware=_hardware(profile), seq_len=1024)
    assert timed.n_params == flat.n_params and timed.tokens == pytest.approx(flat.tokens, rel=1e-9)


def test_the_cost_objective_takes_a_lower_limit_only_when_it_is_no_slower_and_gaps_are_named():
    hw = from_user("H100 SXM", mfu=0.4, power_w=600, price_per_device_hour=2.0)
    options = [{"power_limit_w": 300.0, "time_ratio": 1.3, "energy_ratio": 0.7},
               {"power_limit_w": 500.0, "time_ratio": 1.0, "energy_ratio": 0.9},
               {"power_limit_w": 700.0, "time_ratio": 1.0, "energy_ratio": 1.0}]
    hw.power_limit_source = lambda config: (options, "test options")
    cost = plan(Budget("dollars", 1e5), hardware=hw)
    assert cost.power_limit["power_limit_w"] == 500.0 and cost.power_limit["time_change"] == 0.0
    assert cost.power_limit["energy_change"] == pytest.approx(-0.1)
    assert cost.energy_kwh == pytest.approx(0.9 * cost.time_s * 600 / 3.6e6)
    energy = plan(Budget("kwh", 1e4), hardware=hw)
    assert energy.power_limit["power_limit_w"] == 300.0
    assert energy.time_s == pytest.approx(energy.power_limit["time_s_at_largest"] * 1.3)
    # a profile with power-limit models that cannot price the step across limits says so; one without is silent
    hw.power_limit_source = lambda config: (None, "rmsnorm/bf16/torch has no power-limit model: one limit only")
    partial = plan(Budget("kwh", 1e4), hardware=hw)
    assert partial.power_limit is None and "rmsnorm/bf16/torch" in partial.unavailable["power_limit"]
    hw.power_limit_source = lambda config: (None, "")
    assert "power_limit" not in plan(Budget("kwh", 1e4), hardware=hw).unavailable


def test_the_time_energy_front_spans_sizes_and_limits(limits_profile, energy_plan):
    pytest.importorskip("matplotlib")
    from pyscale.plan.plot import pareto_figure

    pts = equal_loss_candidates(energy_plan, hardware=_hardware(limits_profile), points=9)
    assert {x["power_limit_w"] for x in pts} == set(LIMITS) and len(pts) == 4 * len({x["n_params"] for x in pts})
    front = pareto_front(pts, energy_key="energy_kwh")
    assert {x["power_limit_w"] for x in front} >= {BEST, 700.0}  # the fastest runs at 700 W, the leanest at 300 W
    assert all(x["power_limit_w"] != 200.0 for x in front)  # 200 W is slower and costs more energy than 300 W
    fig = pareto_figure(pts)
    ax = fig.axes[0]
    line = ax.lines[0]
    assert list(line.get_ydata()) == [x["energy_kwh"] for x in front]
    assert len(ax.collections) == len(LIMITS) and "power limit" in ax.get_title()
    # far-off candidates (decades of size away) leave the axes, counted in the title
    from pyscale.plan.plot import ZOOM

    shown = sum(len(c.get_offsets()) for c in ax.collections)
    far = [x for x in pts if x["time_s"] > ZOOM * front[-1]["time_s"] or x["energy_kwh"] > ZOOM * front[0]["energy_kwh"]]
    assert shown == len(pts) - len(far) and (f"{len(far)} candidates more than" in ax.get_title()) == bool(far)


def test_cli_plan_from_a_profile_file_dumps_the_power_limit(limits_profile, tmp_path, capsys):
    path = tmp_path / "limits.json"
    limits_profile.to_json(path)
    assert cli.main(["plan", "--kwh", "500", "--profile", str(path), "--seq-len", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["power_limit"]["power_limit_w"] == BEST and out["energy_kwh"] == pytest.approx(500, rel=1e-6)


def test_validation_prices_a_step_at_the_power_limit_it_was_measured_at(monkeypatch):
    from pyscale.costmodel.model_level import StepPrediction
    from pyscale.plan import step_model

    def predicted(*args, **kwargs):
        return StepPrediction(time_s=1.0, energy_j=None, flops=0.0, model_flops=None, peak_flops_per_s=None,
                              mfu=None, hfu=None, tokens=None, energy_j_per_token=None, per_op=[],
                              at_power_limits=[{"power_limit_w": 300.0, "time_s": 1.25, "energy_j": None},
                                               {"power_limit_w": 700.0, "time_s": 1.0, "energy_j": None}])

    monkeypatch.setattr(step_model, "predict_gpt_step", predicted)
    row = {"params": {"n_layers": 2, "d_model": 256, "n_heads": 4, "seq_len": 128, "batch": 2,
                      "impl_parts": {"attention": "pyscale"}}, "dtype": "bf16", "device_kind": "cuda",
           "time_s_median": 1.3}
    at_300, at_250, unknown = step_model.validate_against_store(
        None, [{**row, "power_limit_w": 300.0}, {**row, "power_limit_w": 250.0}, row])
    assert at_300["predicted_s"] == 1.25 and at_300["priced_at_power_limit_w"] == 300.0
    assert at_300["rel_error"] == pytest.approx(1.25 / 1.3 - 1)
    for check in (at_250, unknown):  # not a measured limit of the model, or none recorded: the largest's price
        assert check["predicted_s"] == 1.0 and "priced_at_power_limit_w" not in check
