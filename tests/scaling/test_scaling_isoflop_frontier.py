from __future__ import annotations

import math

import numpy as np
import pytest

from pyscale.scaling import compute_optimal, fit, isoflop, leave_largest_out, presets
from pyscale.scaling.frontier import chinchilla_optimal
from pyscale.scaling.laws import Chinchilla, KaplanCompute, OverTraining
from pyscale.scaling.synthetic import chinchilla_runs, isoflop_runs

HOFF = presets.HOFFMANN_2022.params
A_TRUE = HOFF["beta"] / (HOFF["alpha"] + HOFF["beta"])  # N_opt ~ C^(beta/(alpha+beta))


def test_approach2_recovers_exponents_with_ci():
    data = isoflop_runs(seed=1)
    res = isoflop.approach2(data, n_points=5, bootstrap=100, seed=0)
    assert abs(res.a - A_TRUE) < 0.03
    assert math.isclose(res.a + res.b, 1.0, abs_tol=1e-9)  # D_opt = C/(6 N_opt)
    assert res.ci_a[0] < res.a < res.ci_a[1]
    assert len(res.budgets) == 5
    n_true, _ = chinchilla_optimal(HOFF, res.budgets)
    np.testing.assert_allclose(res.N_opt, n_true, rtol=0.25)
    # Repeatable with the seed.
    again = isoflop.approach2(data, n_points=5, bootstrap=100, seed=0)
    assert again.ci_a == res.ci_a


def test_approach2_far_points_bias_the_parabola():
    data = isoflop_runs(per_budget=15, noise=0.0, seed=0)
    near = isoflop.approach2(data, n_points=5, bootstrap=0)
    allp = isoflop.approach2(data, n_points=None, bootstrap=0)
    n_true, _ = chinchilla_optimal(HOFF, near.budgets)
    err_near = np.max(np.abs(np.log(near.N_opt / n_true)))
    err_all = np.max(np.abs(np.log(allp.N_opt / n_true)))
    assert err_near < err_all


def test_approach2_bad_input():
    with pytest.raises(ValueError, match="n_points"):
        isoflop.approach2(isoflop_runs(), n_points=2)
    one = isoflop_runs(budgets=(1e19,))
    with pytest.raises(ValueError, match="at least 2 budgets"):
        isoflop.approach2(one)


def test_approach1_lower_envelope():
    sizes = np.logspace(7, 9.5, 14)
    rows = {"run": [], "N": [], "D": [], "loss": []}
    for i, n in enumerate(sizes):
        D = np.logspace(8, 11.5, 60)
        rows["run"] += [f"r{i}"] * len(D)
        rows["N"] += [n] * len(D)
        rows["D"] += list(D)
        rows["loss"] += list(Chinchilla().predict(HOFF, N=n, D=D))
    res = isoflop.approach1(rows, bootstrap=30, seed=0)
    assert abs(res.a - A_TRUE) < 0.06
    assert res.ci_a is not None and res.ci_a[0] <= res.ci_a[1]
    with pytest.raises(ValueError, match="missing column"):
        isoflop.approach1({k: v for k, v in rows.items() if k != "run"})


def test_frontier_closed_form_matches_numeric_and_formula():
    P = presets.EPOCH_2024.params
    C = 5.76e23
    closed = compute_optimal(presets.EPOCH_2024, C)
    numeric = compute_optimal(presets.EPOCH_2024, C, method="numeric")
    G = (P["alpha"] * P["A"] / (P["beta"] * P["B"])) ** (1 / (P["alpha"] + P["beta"]))
    n_star = G * (C / 6) ** (P["beta"] / (P["alpha"] + P["beta"]))
    assert closed.method == "closed" and numeric.method == "numeric"
    assert closed.N[0] == pytest.approx(n_star, rel=1e-12)
    assert closed.D[0] == pytest.approx(C / 6 / n_star, rel=1e-12)
    assert numeric.N[0] == pytest.approx(n_star, rel=1e-5)
    # What the published constants give at Chinchilla's budget: ~7.2e10 parameters, ~1.3e12 tokens.
    assert closed.N[0] == pytest.approx(7.2e10, rel=0.01) and closed.D[0] == pytest.approx(1.3e12, rel=0.03)
    # It is a minimum: moving N either way at fixed C raises the loss.
    law = presets.EPOCH_2024.law
    for f in (0.97, 1.03):
        assert law.predict(P, N=n_star * f, D=C / 6 / (n_star * f))[0] > closed.loss[0]


def test_frontier_numeric_for_other_laws():
    p = {"E": 1.8, "a": 300.0, "b": 500.0, "eta": 0.15}
    equiv = {"E": 1.8, "A": 300.0 * 6 ** -0.15, "B": 500.0 * 6 ** -0.15, "alpha": 0.3, "beta": 0.3}
    got = compute_optimal(OverTraining(), [1e20, 1e23], params=p)
    want = compute_optimal(Chinchilla(), [1e20, 1e23], params=equiv)
    np.testing.assert_allclose(got.N, want.N, rtol=1e-5)
    dc = compute_optimal(presets.MUENNIGHOFF_2023, 1e21, U=1e10)
    assert dc.method == "numeric" and np.isfinite(dc.N[0]) and dc.D[0] > 0
    with pytest.raises(ValueError, match="not a function of N and D"):
        compute_optimal(KaplanCompute(), 1e20, params={"E": 1.0, "A": 10.0, "alpha": 0.1})
    with pytest.raises(ValueError, match="params"):
        compute_optimal("chinchilla", 1e20)
    with pytest.raises(ValueError, match="no closed form"):
        compute_optimal(presets.KAPLAN_2020, 1e20, method="closed")


def test_frontier_from_fit_result():
    r = fit("chinchilla", chinchilla_runs(80, noise=0.003, seed=4), starts="quick")
    co = compute_optimal(r, 1e21)
    n_star, _ = chinchilla_optimal(r.params, 1e21)
    assert co.N[0] == pytest.approx(float(n_star), rel=1e-12)


def test_leave_largest_out():
    data = chinchilla_runs(120, noise=0.005, seed=5)
    v = leave_largest_out("chinchilla", data, n_largest=10, starts="quick")
    assert v.n_test == 10 and v.n_train == 110
    assert np.all(v.flops >= v.threshold)
    s = v.summary()
    assert s["mape"] < 0.02 and s["max_rel_error"] < 0.05
    v2 = leave_largest_out("chinchilla", data, threshold=float(np.median(6 * data["N"] * data["D"])), starts="quick")
    assert v2.n_test == 60
    with pytest.raises(ValueError, match="threshold"):
        leave_largest_out("chinchilla", data, threshold=1e40)


def test_presets_state_conventions_and_sources():
    for p in presets.PRESETS.values():
        assert p.source and p.n_convention and p.flops_convention
        assert set(p.params) == set(p.law.param_names)
    assert "non-embedding" in presets.KAPLAN_2020.n_convention
    assert "including embeddings" in presets.HOFFMANN_2022.n_convention
    for name, (lo, hi) in presets.EPOCH_2024.ci.items():
        assert lo < presets.EPOCH_2024.params[name] < hi
    for pl in presets.POWER_LAWS.values():
        assert "M*D" in pl.x
    # DeepSeek: the optimal learning rate falls and the batch size grows with compute.
    assert presets.DEEPSEEK_LEARNING_RATE(1e22) < presets.DEEPSEEK_LEARNING_RATE(1e20)
    assert presets.DEEPSEEK_BATCH_SIZE(1e22) > presets.DEEPSEEK_BATCH_SIZE(1e20)
    # DeepSeek's allocation laws split C = M*D: M_opt(C) * D_opt(C) must give back C.
    for c in (1e20, 1e24):
        assert presets.DEEPSEEK_M_OPT(c) * presets.DEEPSEEK_D_OPT(c) == pytest.approx(c, rel=2e-3)
    with pytest.raises(ValueError, match="unknown"):
        presets.get("nope")


def test_frontier_states_extrapolation_and_bootstrap_intervals():
    runs = chinchilla_runs(60, noise=0.005, seed=4)
    largest = float(np.max(6 * runs["N"] * runs["D"]))
    r = fit("chinchilla", runs, starts="quick", bootstrap=30)
    assert r.data_flops_range[1] == pytest.approx(largest) and r.to_dict()["data_flops_range"][1] == largest
    co = compute_optimal(r, [largest / 10, 1200 * largest])
    np.testing.assert_allclose(co.extrapolation_factor, [0.1, 1200])
    assert co.extrapolated.tolist() == [False, True] and len(co.warnings()) == 1
    assert co.n_bootstrap == 30 and co.ci_level == 0.95
    for i in range(2):
        assert co.N_ci[i][0] < co.N[i] < co.N_ci[i][1] and co.D_ci[i][0] < co.D[i] < co.D_ci[i][1]
    # far beyond the data the interval widens: relative width grows with the extrapolation
    width = (co.N_ci[:, 1] - co.N_ci[:, 0]) / co.N
    assert width[1] > width[0]
    d = co.to_dict()
    assert d["extrapolated"] == [False, True] and len(d["N_ci"]) == 2
    assert compute_optimal(presets.KAPLAN_2020, 1e21).extrapolation_factor is None  # range unknown
    plain = compute_optimal(presets.EPOCH_2024, 5.76e23)
    assert plain.N_ci is None and plain.extrapolation_factor[0] == pytest.approx(5.76e23 / (6 * 16e9 * 500e9))
