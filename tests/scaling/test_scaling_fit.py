from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from pyscale.scaling import fit, get_law, presets
from pyscale.scaling.fit import bootstrap_weights
from pyscale.scaling.laws import QAT, DataConstrained, LRAnnealing, annealing_areas
from pyscale.scaling.synthetic import chinchilla_runs

HOFF = presets.HOFFMANN_2022.params


@pytest.fixture(scope="module")
def runs():
    return chinchilla_runs(150, noise=0.005, seed=1)


def _close(got, want, rel):
    return all(math.isclose(got[k], want[k], rel_tol=rel) for k in want)


def test_chinchilla_recovers_known_parameters_quick(runs):
    r = fit("chinchilla", runs, starts="quick")
    assert r.success, r.message
    assert abs(r.params["alpha"] - HOFF["alpha"]) < 0.02
    assert abs(r.params["beta"] - HOFF["beta"]) < 0.02
    assert abs(r.params["E"] - HOFF["E"]) < 0.05
    assert r.flops_convention == "C = 6*N*D"
    assert np.sqrt(np.mean(r.residuals**2)) < 0.01
    assert set(r.stderr) == set(HOFF) and all(v > 0 for v in r.stderr.values())


def test_full_grid_reaches_the_same_minimum_as_quick(runs):
    full = fit("chinchilla", runs)
    quick = fit("chinchilla", runs, starts="quick")
    assert full.n_starts >= 4500
    assert full.objective <= quick.objective * (1 + 1e-6)
    assert _close(full.params, quick.params, 1e-3)


def test_kaplan_nd_recovers():
    rng = np.random.default_rng(2)
    p = dict(presets.KAPLAN_2020.params)
    N = np.exp(rng.uniform(np.log(1e6), np.log(1e10), 120))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 120))
    L = presets.KAPLAN_2020.predict(N=N, D=D) * np.exp(0.003 * rng.standard_normal(120))
    r = fit("kaplan", {"N": N, "D": D, "loss": L}, starts="quick")
    assert r.success
    assert abs(r.params["alpha_N"] - p["alpha_N"]) < 0.01 and abs(r.params["alpha_D"] - p["alpha_D"]) < 0.01
    assert abs(math.log(r.params["N_c"] / p["N_c"])) < 0.5 * abs(math.log(p["N_c"])) * 0.05


def test_kaplan_compute_recovers():
    rng = np.random.default_rng(3)
    C = np.exp(rng.uniform(np.log(1e17), np.log(1e23), 80))
    p = {"E": 1.7, "A": 120.0, "alpha": 0.1}
    from pyscale.scaling.laws import KaplanCompute

    L = KaplanCompute().predict(p, C=C) * np.exp(0.002 * rng.standard_normal(80))
    r = fit("kaplan_compute", {"C": C, "loss": L})
    assert r.success and abs(r.params["alpha"] - 0.1) < 0.01 and abs(r.params["E"] - 1.7) < 0.05


def test_overtraining_recovers():
    rng = np.random.default_rng(4)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 120))
    D = N * np.exp(rng.uniform(np.log(5), np.log(500), 120))
    from pyscale.scaling.laws import OverTraining

    p = {"E": 1.8, "a": 300.0, "b": 500.0, "eta": 0.15}
    L = OverTraining().predict(p, N=N, D=D) * np.exp(0.003 * rng.standard_normal(120))
    r = fit("overtraining", {"N": N, "D": D, "loss": L}, starts="quick")
    assert r.success and abs(r.params["eta"] - 0.15) < 0.01 and abs(r.params["E"] - 1.8) < 0.05


def test_data_constrained_recovers_repetition_constants():
    rng = np.random.default_rng(5)
    P = presets.MUENNIGHOFF_2023
    N = np.exp(rng.uniform(np.log(1e8), np.log(1e10), 150))
    U = np.exp(rng.uniform(np.log(1e9), np.log(1e11), 150))
    D = U * np.exp(rng.uniform(0, np.log(60), 150))
    L = P.predict(N=N, D=D, U=U) * np.exp(0.002 * rng.standard_normal(150))
    r = fit(DataConstrained(), {"N": N, "D": D, "U": U, "loss": L})
    assert r.success, r.message
    assert set(r.fixed) == {"E", "A", "B", "alpha", "beta"}
    assert abs(r.params["R_D"] / P.params["R_D"] - 1) < 0.2
    assert abs(r.params["R_N"] / P.params["R_N"] - 1) < 0.3


def test_qat_recovers_error_term_with_fixed_base():
    rng = np.random.default_rng(6)
    N = np.exp(rng.uniform(np.log(1e8), np.log(1e10), 160))
    D = np.exp(rng.uniform(np.log(1e10), np.log(1e12), 160))
    G = rng.choice([16.0, 32.0, 64.0, 128.0, 256.0], 160)
    p = {**HOFF, "k": 3.0, "gamma_D": 0.15, "gamma_G": 1.5, "gamma_N": 0.4}
    L = QAT().predict(p, N=N, D=D, G=G) * np.exp(0.001 * rng.standard_normal(160))
    r = fit(QAT(base=HOFF), {"N": N, "D": D, "G": G, "loss": L})
    assert r.success, r.message
    for k in ("gamma_D", "gamma_G", "gamma_N"):
        assert abs(r.params[k] - p[k]) < 0.1, (k, r.params[k])


def test_lr_annealing_fits_two_curves_and_predicts_a_third():
    steps = 2000
    warm = np.linspace(0, 1e-3, 101)[1:]
    cosine = np.concatenate([warm, 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.linspace(0, np.pi, steps)))])
    const = np.concatenate([warm, np.full(steps, 1e-3)])
    wsd = np.concatenate([warm, np.full(int(0.8 * steps), 1e-3), np.linspace(1e-3, 1e-4, steps - int(0.8 * steps))])
    law = LRAnnealing({"cos": cosine, "const": const, "wsd": wsd}, decay=0.999, warmup_steps=100)
    p = {"L0": 2.1, "A": 0.25, "alpha": 0.5, "C": 0.3}
    rng = np.random.default_rng(7)
    rows = {"run": [], "step": [], "loss": []}
    for run in ("cos", "const"):
        s = np.arange(150, steps + 100, 25)
        S1, S2 = law.areas_at(s, np.array([run] * len(s)))
        loss = (p["L0"] + p["A"] * S1 ** -p["alpha"] - p["C"] * S2) * np.exp(0.001 * rng.standard_normal(len(s)))
        rows["run"] += [run] * len(s)
        rows["step"] += list(s)
        rows["loss"] += list(loss)
    r = fit(law, rows)
    assert r.success, r.message
    assert abs(r.params["alpha"] - p["alpha"]) < 0.1 and abs(r.params["C"] / p["C"] - 1) < 0.2
    assert abs(r.params["L0"] - p["L0"]) < 0.05
    S1, S2 = annealing_areas(wsd, 0.999, 100)
    truth = 2.1 + 0.25 * S1**-0.5 - 0.3 * S2
    pred = law.predict(r.params, S1=S1, S2=S2)
    assert np.max(np.abs(pred[200:] / truth[200:] - 1)) < 0.01


def test_downstream_link_recovers():
    rng = np.random.default_rng(8)
    L = rng.uniform(2.0, 4.0, 80)
    p = {"e": 0.95, "a": 20.0, "b": 1.5}
    from pyscale.scaling.laws import DownstreamLink

    err = DownstreamLink().predict(p, loss=L) * np.exp(0.002 * rng.standard_normal(80))
    r = fit("downstream", {"loss": L, "error": err})
    assert r.success and abs(r.params["e"] - 0.95) < 0.03 and abs(r.params["b"] - 1.5) < 0.2


@pytest.mark.parametrize("loss", ["mse", "huber_nll"])
def test_other_losses_recover(runs, loss):
    r = fit("chinchilla", runs, starts="quick", loss=loss)
    assert r.success and abs(r.params["alpha"] - HOFF["alpha"]) < 0.02
    if loss == "huber_nll":
        assert 0.003 < r.scale < 0.008  # the synthetic noise is 0.005 in log space


def test_asymmetric_loss_shifts_residuals(runs):
    over = fit("chinchilla", runs, starts="quick", loss="asymmetric", asymmetry=0.9)
    under = fit("chinchilla", runs, starts="quick", loss="asymmetric", asymmetry=0.1)
    # Penalising over-prediction pushes predictions down, so residuals (pred - obs) move negative.
    assert np.mean(over.residuals) < np.mean(under.residuals)


def test_huber_resists_outliers_better_than_mse(runs):
    bad = {k: np.array(v, copy=True) for k, v in runs.items()}
    bad["loss"][:6] *= 1.4
    h = fit("chinchilla", bad, starts="quick")
    m = fit("chinchilla", bad, starts="quick", loss="mse")
    assert abs(h.params["alpha"] - HOFF["alpha"]) < abs(m.params["alpha"] - HOFF["alpha"])
    assert abs(h.params["E"] - HOFF["E"]) < 0.05


def test_bootstrap_deterministic_with_seed_and_across_threads(runs):
    a = fit("chinchilla", runs, starts="quick", bootstrap=16, seed=11)
    b = fit("chinchilla", runs, starts="quick", bootstrap=16, seed=11, n_jobs=1)
    c = fit("chinchilla", runs, starts="quick", bootstrap=16, seed=12, n_jobs=1)
    d = fit("chinchilla", runs, starts="quick", bootstrap=16, seed=11, n_jobs=3)
    np.testing.assert_array_equal(a.bootstrap, b.bootstrap)
    assert not np.allclose(a.bootstrap, c.bootstrap)
    np.testing.assert_array_equal(a.bootstrap, d.bootstrap)  # rows never interact: the split changes nothing
    lo, hi = a.ci["alpha"]
    assert lo < a.params["alpha"] < hi and a.bootstrap_failed == 0
    assert a.ci_of(lambda p: p["alpha"]) == pytest.approx(a.ci["alpha"], rel=1e-12)
    from pyscale.scaling.frontier import chinchilla_optimal

    n_lo, n_hi = a.ci_of(lambda p: float(chinchilla_optimal(p, 1e22)[0]))
    assert n_lo < float(chinchilla_optimal(a.params, 1e22)[0]) < n_hi
    with pytest.raises(ValueError, match="no bootstrap"):
        fit("chinchilla", runs, starts="quick").ci_of(lambda p: p["E"])


def test_parallel_bootstrap_runs_in_a_script_without_a_main_guard(tmp_path):
    # A process pool re-imports an unguarded __main__ in every worker and crashed; threads need no guard.
    script = tmp_path / "unguarded.py"
    script.write_text("from pyscale.scaling import fit\n"
                      "from pyscale.scaling.synthetic import chinchilla_runs\n"
                      "r = fit('chinchilla', chinchilla_runs(40, seed=3), starts='quick', bootstrap=8, n_jobs=2)\n"
                      "print('replicates', len(r.bootstrap), 'failed', r.bootstrap_failed)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "replicates 8 failed 0"


@pytest.mark.parametrize("n_jobs", [0, -1, 1.5, True])
def test_bad_n_jobs_raise(runs, n_jobs):
    with pytest.raises(ValueError, match="n_jobs"):
        fit("chinchilla", runs, starts="quick", bootstrap=4, n_jobs=n_jobs)


def test_bootstrap_weights_resample_whole_runs():
    codes = np.repeat(np.arange(10), 3)  # 10 runs x 3 checkpoints
    W = bootstrap_weights(codes, 50, seed=0)
    assert W.shape == (50, 30)
    np.testing.assert_array_equal(W.reshape(50, 10, 3), np.repeat(W.reshape(50, 10, 3)[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(W.reshape(50, 10, 3)[:, :, 0].sum(axis=1), np.full(50, 10.0))


def test_mean_reduction_still_reaches_the_sum_minimum(runs):
    # Tight tolerances keep the 1/n-scaled objective from stopping early (the sum/mean trap): the mean is then
    # only a rescaling, with the same minimiser.
    s = fit("chinchilla", runs, starts="quick")
    m = fit("chinchilla", runs, starts="quick", reduction="mean")
    assert s.success and m.success and (s.reduction, m.reduction) == ("sum", "mean")
    assert m.objective * m.n == pytest.approx(s.objective, rel=1e-6)
    assert _close(m.params, s.params, 1e-5)


def test_mean_reduction_stops_early_at_scipy_default_tolerances(runs):
    # The trap itself (issue 8): the mean shrinks the gradient by 1/n, so L-BFGS-B's default projected-gradient
    # test stops it far from the minimum the sum reaches from the same start.
    from scipy.optimize import minimize

    from pyscale.scaling.data import load
    from pyscale.scaling.fit import Objective

    law = get_law("chinchilla")
    sd = load(runs, target=law.target, law=law)
    X, logy, free = law.prepare(sd.columns), np.log(sd.columns[law.target]), np.arange(len(law.params))
    start = np.array([0.5, 10.0, 10.0, 1.0, 1.0])  # internal (e, a, b, alpha, beta), inside Hoffmann's grid

    def default_lbfgs(reduction: str) -> float:
        obj = Objective(law, X, logy, free, np.zeros(len(law.params)), "huber", 1e-3, reduction)

        def fun(v):
            f, g = obj(v[None, :])
            return float(f[0]), g[0]

        r = minimize(fun, start, jac=True, method="L-BFGS-B", bounds=[p.bounds for p in law.params])
        return r.fun * (obj.n if reduction == "mean" else 1.0)  # both as sums

    best = fit("chinchilla", runs, starts="quick").objective
    assert default_lbfgs("sum") == pytest.approx(best, rel=1e-3)
    assert default_lbfgs("mean") > 10 * best


def test_failed_fit_is_reported_not_raised(runs):
    r = fit("downstream", {"loss": [2.0, 3.0, 4.0, 5.0, 6.0], "error": [0.5, 0.6, 0.7, 0.8, 0.85]},
            starts=np.array([[0.0, 5.0, 0.0]]))
    assert not r.success and "finite" in r.message


def test_fixed_parameters_and_result_dict(runs):
    r = fit("chinchilla", runs, starts="quick", fixed={"E": 1.69})
    assert r.params["E"] == pytest.approx(1.69) and r.stderr["E"] == 0.0 and r.n_free == 4
    d = r.to_dict()
    assert d["fixed"] == {"E": 1.69} and d["law"] == "chinchilla"
    assert "alpha" in r.report()


def test_bad_arguments_raise(runs):
    with pytest.raises(ValueError, match="loss"):
        fit("chinchilla", runs, loss="l3")
    with pytest.raises(ValueError, match="reduction"):
        fit("chinchilla", runs, reduction="median")
    with pytest.raises(ValueError, match="fixed"):
        fit("chinchilla", runs, fixed={"Q": 1.0})
    with pytest.raises(ValueError, match="starts"):
        fit("chinchilla", runs, starts="many")
    with pytest.raises(ValueError, match="rows cannot determine"):
        fit("chinchilla", {"N": [1e8, 2e8, 3e8], "D": [1e9, 2e9, 3e9], "loss": [3.0, 2.9, 2.8]})


def test_parameter_at_a_bound_is_named_in_the_message():
    # Loss that rises while the LR anneals: the best annealing coefficient C >= 0 is its bound 0.
    lr = np.concatenate([np.full(500, 1e-3), np.linspace(1e-3, 1e-4, 500)])
    law = LRAnnealing(lr, decay=0.99)
    S1, S2 = annealing_areas(lr, 0.99)
    steps = np.arange(20, 1001, 20)
    loss = 2.0 + 0.3 * S1[steps - 1] ** -0.5 + 0.3 * S2[steps - 1]
    r = fit(law, {"step": steps, "loss": loss}, loss="mse")
    assert r.params["C"] == 0.0
    assert "at a bound: C" in r.message


def test_batched_lbfgs_rows_do_not_interact(runs):
    from pyscale.scaling.data import load
    from pyscale.scaling.fit import Objective, lbfgs_batch
    from pyscale.scaling.laws import Chinchilla

    law = Chinchilla()
    sd = load(runs)
    obj = Objective(law, law.prepare(sd.columns), np.log(sd.columns["loss"]), np.arange(5), np.zeros(5))
    lo, hi = np.array([b[0] for b in law.bounds()]), np.array([b[1] for b in law.bounds()])
    starts = law.start_grid("quick")[:12]
    together = lbfgs_batch(obj, starts, lo, hi, max_iter=60)
    alone = lbfgs_batch(obj, starts[5:6], lo, hi, max_iter=60)
    np.testing.assert_allclose(together["x"][5], alone["x"][0], rtol=1e-12, atol=1e-14)
    assert together["nfev"][5] == alone["nfev"][0]
    # And it descends: every finite start ends no higher than it began.
    f0, _ = obj(np.clip(starts, lo, hi))
    assert np.all(together["f"][np.isfinite(f0)] <= f0[np.isfinite(f0)])


def test_stderr_after_a_bootstrap_is_the_bootstrap_spread(runs):
    plain = fit("chinchilla", runs, starts="quick")
    boot = fit("chinchilla", runs, starts="quick", bootstrap=40, seed=3)
    assert plain.stderr_method == "asymptotic" and plain.stderr == plain.stderr_asymptotic
    assert boot.stderr_method == "bootstrap" and boot.stderr_asymptotic == pytest.approx(plain.stderr)
    for i, name in enumerate(boot.law.param_names):
        assert boot.stderr[name] == pytest.approx(np.std(boot.bootstrap[:, i], ddof=1), rel=1e-12)
    assert boot.stderr != boot.stderr_asymptotic
    d = boot.to_dict()
    assert d["stderr_method"] == "bootstrap" and d["stderr_asymptotic"]["alpha"] == plain.stderr["alpha"]
    assert "stderr: bootstrap standard deviation over 40 replicates" in boot.report()
    assert "asymptotic (Gauss-Newton)" in plain.report()


def test_linear_space_is_curve_fit_least_squares():
    # Gadre et al. 2024 fit L(C, M) = E + (a M^eta + b M^-eta) C^-eta by scipy's curve_fit: least squares on L.
    from scipy.optimize import curve_fit

    from pyscale.scaling.laws import OverTraining

    rng = np.random.default_rng(4)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 120))
    D = N * np.exp(rng.uniform(np.log(5), np.log(500), 120))
    truth = {"E": 1.8, "a": 300.0, "b": 500.0, "eta": 0.15}
    L = OverTraining().predict(truth, N=N, D=D) + 0.02 * rng.standard_normal(120)  # additive noise on L
    r = fit("overtraining", {"N": N, "D": D, "loss": L}, loss="mse", space="linear", starts="quick")
    assert r.success and r.space == "linear"
    M, C = D / N, 6 * N * D

    def gadre(x, E, a, b, eta):
        m, c = x
        return E + (a * m**eta + b * m**-eta) * c**-eta

    popt, _ = curve_fit(gadre, (M, C), L, p0=[truth[k] for k in ("E", "a", "b", "eta")], maxfev=20000)
    for k, v in zip(("E", "a", "b", "eta"), popt):
        assert r.params[k] == pytest.approx(v, rel=1e-4), k
    assert r.objective == pytest.approx(np.sum((r.predicted - L) ** 2), rel=1e-9)
    assert r.residuals == pytest.approx(np.log(r.predicted) - np.log(L))  # residuals stay log-space
    # the log-space default minimises a different sum
    log = fit("overtraining", {"N": N, "D": D, "loss": L}, loss="mse", starts="quick")
    assert log.params["eta"] != pytest.approx(r.params["eta"], rel=1e-6)


@pytest.mark.parametrize("loss", ["huber", "asymmetric", "huber_nll"])
def test_linear_space_needs_least_squares(runs, loss):
    with pytest.raises(ValueError, match=f"space='linear'.*needs loss='mse': got loss='{loss}'"):
        fit("chinchilla", runs, loss=loss, space="linear")
    with pytest.raises(ValueError, match="space must be one of"):
        fit("chinchilla", runs, space="cubic")
