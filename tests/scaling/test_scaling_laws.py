from __future__ import annotations

import math

import numpy as np
import pytest

from pyscale.scaling import laws, presets
from pyscale.scaling.laws import (
    QAT,
    Chinchilla,
    DataConstrained,
    DownstreamLink,
    KaplanCompute,
    KaplanND,
    LRAnnealing,
    OverTraining,
    annealing_areas,
)

RNG = np.random.default_rng(3)
N = np.exp(RNG.uniform(np.log(1e7), np.log(1e11), 40))
D = np.exp(RNG.uniform(np.log(1e9), np.log(1e12), 40))


def _cases():
    hoff = dict(presets.HOFFMANN_2022.params)
    yield Chinchilla(), hoff, {"N": N, "D": D}
    yield KaplanND(), dict(presets.KAPLAN_2020.params), {"N": N, "D": D}
    yield KaplanCompute(), {"E": 1.7, "A": 80.0, "alpha": 0.1}, {"C": 6 * N * D}
    yield OverTraining(), {"E": 1.8, "a": 300.0, "b": 500.0, "eta": 0.15}, {"N": N, "D": D}
    # Repetition on both sides (U_N capped at G^2 U for large N) so every branch is exercised.
    yield DataConstrained(), dict(presets.MUENNIGHOFF_2023.params), {"N": N, "D": D, "U": D / 8}
    yield QAT(), {**hoff, "k": 0.5, "gamma_D": 0.1, "gamma_G": 1.2, "gamma_N": 0.3}, {
        "N": N, "D": D, "G": RNG.choice([32.0, 64.0, 128.0, 256.0], len(N))}
    lr = np.concatenate([np.full(300, 1e-3), np.linspace(1e-3, 1e-4, 300)])
    S1, S2 = annealing_areas(lr)
    yield LRAnnealing(), {"L0": 2.0, "A": 0.3, "alpha": 0.5, "C": 0.5}, {"S1": S1[50:], "S2": S2[50:]}
    yield DownstreamLink(), {"e": 0.9, "a": 4.0, "b": 1.0}, {"loss": np.linspace(2.0, 4.0, 30)}


@pytest.mark.parametrize("law,params,inputs", list(_cases()), ids=lambda v: getattr(v, "name", ""))
def test_analytic_gradient_matches_finite_differences(law, params, inputs):
    theta = law.to_internal(params)
    X = law.prepare(inputs)
    logp, jac = law.log_model(theta[None, :], X)
    assert np.all(np.isfinite(logp))
    for k in range(len(theta)):
        h = 1e-6 * max(1.0, abs(theta[k]))
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd = (law.log_model(tp[None, :], X)[0] - law.log_model(tm[None, :], X)[0]) / (2 * h)
        an = np.broadcast_to(jac[k], logp.shape)
        np.testing.assert_allclose(an[0], fd[0], rtol=1e-5, atol=1e-7, err_msg=f"{law.name}: {law.params[k].name}")


def test_chinchilla_lse_form_equals_the_sum_form():
    p = presets.HOFFMANN_2022.params
    direct = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    np.testing.assert_allclose(Chinchilla().predict(p, N=N, D=D), direct, rtol=1e-13)


def test_chinchilla_full_grid_is_hoffmanns_4500_starts():
    grid = Chinchilla().start_grid("grid")
    assert grid.shape == (4500, 5)
    assert set(np.round(grid[:, 3], 6)) == {0.0, 0.5, 1.0, 1.5, 2.0}
    assert set(np.round(grid[:, 1], 6)) == {0.0, 5.0, 10.0, 15.0, 20.0, 25.0}
    assert set(np.round(grid[:, 0], 6)) == {-1.0, -0.5, 0.0, 0.5, 1.0}


def test_data_constrained_closed_form_from_released_constants():
    value = presets.MUENNIGHOFF_2023.predict(N=6.34e9, D=242e9, U=25e9)[0]
    assert abs(value - 2.2256440889984477) < 1e-9


def test_data_constrained_without_repetition_is_chinchilla():
    p = presets.MUENNIGHOFF_2023.params
    base = {k: p[k] for k in ("E", "A", "B", "alpha", "beta")}
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    n = np.array([1e8, 1e9])
    u = n / G**2 * 10  # enough unique data that U_N = N
    np.testing.assert_allclose(presets.MUENNIGHOFF_2023.predict(N=n, D=u, U=u),
                               Chinchilla().predict(base, N=n, D=u), rtol=1e-12)


def test_overtraining_is_chinchilla_with_equal_exponents():
    p = {"E": 1.8, "a": 300.0, "b": 500.0, "eta": 0.15}
    k = 6.0
    equiv = {"E": 1.8, "A": 300.0 * k ** -0.15, "B": 500.0 * k ** -0.15, "alpha": 0.3, "beta": 0.3}
    np.testing.assert_allclose(OverTraining(k).predict(p, N=N, D=D), Chinchilla().predict(equiv, N=N, D=D),
                               rtol=1e-12)


def test_qat_term_is_a_power_law_in_log2_of_group_size():
    base = dict(presets.HOFFMANN_2022.params)
    p = {**base, "k": 2.0, "gamma_D": 0.1, "gamma_G": 1.5, "gamma_N": 0.4}
    law = QAT()
    n, d = 1e9, 2e10
    l0 = Chinchilla().predict(base, N=n, D=d)[0]
    for g in (16.0, 128.0):
        delta = law.predict(p, N=n, D=d, G=g)[0] - l0
        assert math.isclose(delta, 2.0 * d**0.1 * math.log2(g) ** 1.5 / n**0.4, rel_tol=1e-9)


def test_kaplan_nd_formula():
    p = presets.KAPLAN_2020.params
    direct = ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]
    np.testing.assert_allclose(KaplanND().predict(p, N=N, D=D), direct, rtol=1e-12)


def test_annealing_areas_by_hand():
    S1, S2 = annealing_areas([1.0, 1.0, 0.5, 0.5], decay=0.5)
    np.testing.assert_allclose(S1, [1.0, 2.0, 2.5, 3.0])
    # drops 0, 0, 0.5, 0 -> momentum 0, 0, 0.5, 0.25 -> cumulative 0, 0, 0.5, 0.75
    np.testing.assert_allclose(S2, [0.0, 0.0, 0.5, 0.75])
    S1c, S2c = annealing_areas(np.full(100, 3e-4))
    assert np.all(S2c == 0) and math.isclose(S1c[-1], 0.03)
    # Warm-up raises the LR; it must not count as (negative) annealing.
    _, S2w = annealing_areas([0.1, 0.5, 1.0, 1.0, 0.5], decay=0.9, warmup_steps=3)
    np.testing.assert_allclose(S2w, [0.0, 0.0, 0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="decay"):
        annealing_areas([1.0], decay=1.0)


def test_lr_annealing_predict_curve_matches_areas():
    law = LRAnnealing(decay=0.999)
    lr = np.linspace(1e-3, 1e-5, 500)
    p = {"L0": 2.0, "A": 0.3, "alpha": 0.5, "C": 0.4}
    S1, S2 = annealing_areas(lr, 0.999)
    np.testing.assert_allclose(law.predict_curve(p, lr), 2.0 + 0.3 * S1 ** -0.5 - 0.4 * S2, rtol=1e-12)


def test_get_law_and_errors():
    assert isinstance(laws.get_law("chinchilla"), Chinchilla)
    assert isinstance(laws.get_law(KaplanND), KaplanND)
    with pytest.raises(ValueError, match="unknown"):
        laws.get_law("nope")
    with pytest.raises(ValueError, match="missing"):
        Chinchilla().predict({"E": 1.0}, N=1e9, D=1e10)
    with pytest.raises(ValueError, match="> 0"):
        Chinchilla().to_internal({"E": -1.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3})
