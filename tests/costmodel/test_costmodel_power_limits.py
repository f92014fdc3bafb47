"""The energy model across GPU power limits: known synthetic curves recovered, leave-one-limit-out error, the
profile section (old profiles still load), `costmodel fit|show`. Every number is SYNTHETIC."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synth_costmodel import SYNTH_GPU, SYNTH_PEAK_BF16, gemm_cost, gemm_shapes, true_time_s

from pyscale import cli
from pyscale import store as st
from pyscale.costmodel import DeviceProfile, fit_device_profile
from pyscale.costmodel.data import Rows, tile_count
from pyscale.costmodel.power_limits import END, INTERPOLATED, fit_power_limits
from pyscale.costmodel.profile import NO_POWER_LIMIT_SECTION

# A made-up GPU under four power limits: slowdown and average power against the largest limit. The energy
# ratio s·p is 0.815, 0.753, 0.785, 1 -- 300 W is the known energy optimum. Synthetic, no real device's.
SLOWDOWN = {200.0: 1.75, 300.0: 1.25, 400.0: 1.08, 700.0: 1.0}
POWER_W = {200.0: 205.0, 300.0: 265.0, 400.0: 320.0, 700.0: 440.0}  # of a shape drawing 440 W at 700 W
NOISE = 0.01


def _loglog_truth(at: float, lo: float, hi: float, table: dict[float, float]) -> float:
    """What interpolating `table` in log-log between lo and hi gives at `at` (the known interpolation error)."""
    w = math.log(at / lo) / math.log(hi / lo)
    return math.exp((1 - w) * math.log(table[lo]) + w * math.log(table[hi]))


def fill_limits(path, truth, limits=tuple(SLOWDOWN), *, n_shapes: int = 16, energy: bool = True,
                record_limit: bool = True) -> st.Store:
    """GEMM rows of the synthetic GPU at each limit: at 700 W the roofline truth; elsewhere its time x slowdown
    and its power x the power ratio, with 1 % noise."""
    rng = np.random.default_rng(7)
    store = st.Store(path)
    dev = store.register_device(st.DeviceRecord(kind="cuda", name=SYNTH_GPU, uuid="cuda-synth",
                                                torch_version="synthetic"))
    for shape in gemm_shapes(0, n_shapes):
        flops, nbytes = gemm_cost(shape)
        t_max = float(true_time_s(truth, flops, nbytes, tile_count("gemm", shape), peak=SYNTH_PEAK_BF16,
                                  bandwidth=1e12, sms=64)[0])
        p_max = (truth.e_flop_j * flops + truth.e_byte_j * nbytes) / t_max + truth.p0_w
        for limit in limits:
            t = t_max * SLOWDOWN[limit] * float(np.exp(rng.normal(0, NOISE)))
            watts = p_max * POWER_W[limit] / POWER_W[700.0] * float(np.exp(rng.normal(0, NOISE)))
            calls = max(1, round(1.0 / t))
            store.record(st.MeasurementRecord(
                op="gemm", backend="triton", params=dict(shape), dtype="bf16", time_s=t, flops=flops, bytes=nbytes,
                energy_j=t * watts if energy else None, avg_power_w=watts if energy else None, idle_power_w=50.0,
                power_limit_w=limit if record_limit else None,
                extra={"window_s": t * calls, "window_calls": calls} if energy else {},
            ).explain_missing("synthetic: not modelled"), device_id=dev)
    return store


@pytest.fixture
def limits_profile(tmp_path, synth_gpu, truth):
    with fill_limits(tmp_path / "limits.db", truth) as store:
        return fit_device_profile(store, folds=3, command="test")


def test_the_fit_recovers_the_known_curves_and_validates_by_leaving_limits_out(limits_profile, truth):
    m = limits_profile.model("gemm", "bf16")
    pl = m.power_limits
    assert pl is not None and m.power_limits_unavailable_reason is None
    assert pl.limits_w == sorted(SLOWDOWN) and pl.reference_w == 700.0
    for p in pl.points:
        assert p.slowdown == pytest.approx(SLOWDOWN[p.power_limit_w], rel=0.01)
        assert p.power_ratio == pytest.approx(POWER_W[p.power_limit_w] / 440.0, rel=0.01)
        assert p.n_shapes == 16 and p.fit_time_mape_pct < 2.0 and p.fit_energy_mape_pct < 3.0
    # the ends are not held out; the interior limits are, with the error log-log interpolation really makes
    assert [p.loo for p in pl.points] == [END, INTERPOLATED, INTERPOLATED, END]
    for i in (1, 2):
        lo, at, hi = pl.limits_w[i - 1], pl.limits_w[i], pl.limits_w[i + 1]
        expected = 100 * abs(_loglog_truth(at, lo, hi, SLOWDOWN) / SLOWDOWN[at] - 1)
        assert pl.points[i].loo_time_mape_pct == pytest.approx(expected, abs=1.5)
    assert 4.0 < pl.loo_mape_pct("time") < 10.0 and pl.loo_mape_pct("energy") < 10.0
    # the runtime model is the largest limit's, not an average over limits
    assert m.n_rows == 16 and "largest power limit (700 W)" in " ".join(m.notes)
    shape = {"m": 512, "n": 4096, "k": 4096}
    f, b = gemm_cost(shape)
    t_true = float(true_time_s(truth, f, b, tile_count("gemm", shape), peak=SYNTH_PEAK_BF16, bandwidth=1e12,
                               sms=64)[0])
    assert limits_profile.predict_time_s("gemm", "bf16", f, b, **shape) == pytest.approx(t_true, rel=0.08)
    assert m.cv.metrics["runtime"]["mape_pct"] < 10


def test_factors_interpolate_between_measured_limits_only(limits_profile):
    s, e = limits_profile.power_limit_factors("gemm", "bf16", 300.0)
    assert s == pytest.approx(1.25, rel=0.01) and e == pytest.approx(1.25 * 265 / 440, rel=0.02)
    energy = {w: limits_profile.power_limit_factors("gemm", "bf16", w)[1] for w in SLOWDOWN}
    assert min(energy, key=energy.get) == 300.0  # the known optimum
    s350, _ = limits_profile.power_limit_factors("gemm", "bf16", 350.0)
    assert 1.08 < s350 < 1.25
    with pytest.raises(ValueError, match="outside the measured limits"):
        limits_profile.power_limit_factors("gemm", "bf16", 150.0)
    back = DeviceProfile.from_json(limits_profile.to_json())
    assert back.to_dict() == json.loads(limits_profile.to_json())
    assert back.power_limit_factors("gemm", "bf16", 350.0) == limits_profile.power_limit_factors("gemm", "bf16", 350.0)


def test_one_limit_or_none_gives_no_model_and_says_why(tmp_path, synth_gpu, truth):
    with fill_limits(tmp_path / "one.db", truth, limits=(700.0,)) as store:
        one = fit_device_profile(store, folds=3).model("gemm", "bf16")
    with fill_limits(tmp_path / "none.db", truth, limits=(700.0,), record_limit=False) as store:
        none = fit_device_profile(store, folds=3).model("gemm", "bf16")
    assert one.power_limits is None and "one power limit only (700 W)" in one.power_limits_unavailable_reason
    assert none.power_limits is None and "no power limit recorded" in none.power_limits_unavailable_reason
    # the rest of the model does not depend on whether the limit was recorded
    assert one.runtime.to_dict() == none.runtime.to_dict() and one.n_rows == none.n_rows == 16
    with pytest.raises(ValueError, match="no power-limit model .*one power limit only"):
        DeviceProfile(device_name="x", device_kind="cuda", created="", versions={}, models=[one]).power_limit_factors(
            "gemm", "bf16", 700.0)


def test_times_only_without_energy_and_monotone_against_noise():
    def rows(times: dict[float, list[float]], energy: bool) -> Rows:
        limits = [w for w, ts in times.items() for _ in ts]
        t = np.array([x for ts in times.values() for x in ts])
        n = len(t)
        e = t * 100.0 if energy else np.full(n, np.nan)
        return Rows(op="gemm", dtype="bf16", backend="t", device_name="d", device_kind="cuda", time_s=t,
                    flops=np.ones(n), bytes=np.ones(n), energy_j=e, energy_time_s=t if energy else e,
                    idle_power_w=np.full(n, np.nan), tiles=np.full(n, np.nan),
                    groups=[f"s{i % 2}" for i in range(n)], params=[{}] * n, power_limit_w=np.array(limits))

    model, why = fit_power_limits(rows({300.0: [1.0, 2.0], 400.0: [0.99, 1.98], 500.0: [1.0, 2.0]}, energy=False))
    assert why is None and not model.has_energy and model.energy_ratio(400.0) is None
    assert [p.slowdown for p in model.points] == [1.0, 1.0, 1.0]  # 400 W "faster" than 500 W is noise: held
    assert any("400 W measured 1.00% faster than 500 W (noise)" in n for n in model.notes)
    assert any("times only" in n for n in model.notes)
    two, _ = fit_power_limits(rows({300.0: [2.0, 4.0], 400.0: [1.0, 2.0]}, energy=True))
    assert two.slowdown(300.0) == 2.0 and two.loo_mape_pct() is None and "no interior limit" in two.notes[0]


def test_a_profile_written_before_power_limit_models_loads_unchanged(limits_profile, tmp_path, capsys):
    old = json.loads(limits_profile.to_json())
    for m in old["models"]:  # what pyscale wrote before this section existed
        del m["power_limits"], m["power_limits_unavailable_reason"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    back = DeviceProfile.from_json(path)
    m = back.model("gemm", "bf16")
    assert m.power_limits is None and m.power_limits_unavailable_reason == NO_POWER_LIMIT_SECTION
    f, b = gemm_cost({"m": 300, "n": 1000, "k": 2000})
    assert back.predict_time_s("gemm", "bf16", f, b) == limits_profile.predict_time_s("gemm", "bf16", f, b)
    assert back.predict_energy_j("gemm", "bf16", f, b) == limits_profile.predict_energy_j("gemm", "bf16", f, b)
    assert cli.main(["costmodel", "show", str(path)]) == 0
    assert "power limits: no model for any op: the profile was written before" in capsys.readouterr().out


def test_cli_fit_and_show_print_the_power_limit_section_in_80_columns(tmp_path, synth_gpu, truth, capsys):
    fill_limits(tmp_path / "s.db", truth).close()
    out = tmp_path / "p.json"
    assert cli.main(["costmodel", "fit", "--store", str(tmp_path / "s.db"), "--folds", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["costmodel", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    section = shown[shown.index("power limits:"):shown.index("step validation")].splitlines()
    assert all(len(line) <= 80 for line in shown.splitlines()), [line for line in shown.splitlines() if len(line) > 80]
    table = [line.split() for line in section if line.split() and line.split()[0] in {"200", "300", "400", "700"}]
    assert [row[0] for row in table] == ["200", "300", "400", "700"]
    assert float(table[1][1]) == pytest.approx(1.25, abs=0.015)  # the slowdown at 300 W
    assert table[0][-1] == "end" and table[3][-1] == "end" and table[1][-1] != "end"
    assert "leave-one-limit-out MAPE at most" in shown
