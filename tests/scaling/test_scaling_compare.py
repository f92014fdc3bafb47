"""Testing a published fit against data: every parameter fixed, and likelihood-ratio tests of nested fits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyscale.cli import main
from pyscale.scaling import compare, fit, presets
from pyscale.scaling.synthetic import chinchilla_runs, write_csv

EPOCH = dict(presets.EPOCH_2024.params)
HOFF = dict(presets.HOFFMANN_2022.params)


@pytest.fixture(scope="module")
def runs():
    return chinchilla_runs(200, params=EPOCH, noise=0.01, seed=2)  # drawn from Epoch's constants


@pytest.fixture(scope="module")
def fits(runs):
    return {"full": fit("chinchilla", runs, loss="huber_nll", starts="quick"),
            "hoffmann": fit("chinchilla", runs, loss="huber_nll", fixed=HOFF),
            "truth": fit("chinchilla", runs, loss="huber_nll", fixed=EPOCH),
            "exponents": fit("chinchilla", runs, loss="huber_nll", starts="quick",
                             fixed={"alpha": EPOCH["alpha"], "beta": EPOCH["beta"]})}


def test_every_parameter_fixed_evaluates_the_objective(runs):
    r = fit("chinchilla", runs, fixed=HOFF)
    assert r.success and r.n_free == 0 and "nothing optimised" in r.message
    logr = np.log(presets.HOFFMANN_2022.predict(N=runs["N"], D=runs["D"])) - np.log(runs["loss"])
    a, d = np.abs(logr), 1e-3
    assert r.objective == pytest.approx(np.sum(np.where(a <= d, 0.5 * logr**2, d * (a - 0.5 * d))), rel=1e-12)
    assert r.params == pytest.approx(HOFF) and set(r.stderr.values()) == {0.0}
    with pytest.raises(ValueError, match="bootstrap: every parameter of the law is fixed"):
        fit("chinchilla", runs, fixed=HOFF, bootstrap=10)


def test_every_parameter_fixed_profiles_the_likelihood_scale(fits):
    r = fits["hoffmann"]
    assert r.success and r.n_free == 1 and r.params == pytest.approx(HOFF)
    assert r.log_likelihood == pytest.approx(-r.objective)
    # the scale is the likelihood's maximum: moving it either way lowers the log-likelihood
    from pyscale.scaling.fit import Objective

    law = r.law
    sd = r.data
    obj = Objective(law, law.prepare(sd.columns), np.log(sd.columns["loss"]), np.array([], dtype=np.int64),
                    law.to_internal(HOFF), "huber_nll", r.delta)
    ll = [-float(obj(np.array([[math.log(r.scale * f)]]))[0][0]) for f in (0.95, 1.0, 1.05)]
    assert ll[1] > ll[0] and ll[1] > ll[2] and ll[1] == pytest.approx(r.log_likelihood, rel=1e-9)


def test_likelihood_ratio_rejects_hoffmann_on_data_drawn_from_epoch(fits):
    # Besiroglu et al.'s test of Hoffmann's published Approach-3 constants, on data from their own refit.
    t = compare(fits["hoffmann"], fits["full"])
    assert t.df == 5 and t.tested == HOFF and t.p_value < 1e-20
    assert t.statistic == pytest.approx(2 * (fits["full"].log_likelihood - fits["hoffmann"].log_likelihood))
    assert compare(fits["truth"], fits["full"]).p_value > 0.01  # the true constants are not rejected
    e = compare(fits["exponents"], fits["full"])
    assert e.df == 2 and e.p_value > 0.05 and "p =" in e.describe()


def test_compare_reads_saved_fits(fits, tmp_path):
    paths = {}
    for name in ("hoffmann", "full"):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({"source": "test", **fits[name].to_dict()}))
    assert compare(paths["hoffmann"], paths["full"]) == compare(fits["hoffmann"], fits["full"])
    assert main(["fit", "--compare", str(paths["hoffmann"]), str(paths["full"]), "--json"]) == 0


def test_compare_names_what_is_not_nested(runs, fits):
    full, hoff = fits["full"], fits["hoffmann"]
    with pytest.raises(ValueError, match="restricted: a likelihood-ratio test needs likelihoods.*loss='huber'"):
        compare(fit("chinchilla", runs, fixed=HOFF), full)
    other_rows = chinchilla_runs(200, params=EPOCH, noise=0.01, seed=3)
    with pytest.raises(ValueError, match="data: the fits are not on the same rows"):
        compare(fit("chinchilla", other_rows, loss="huber_nll", fixed=HOFF), full)
    with pytest.raises(ValueError, match="law: restricted is 'overtraining'"):
        compare(fit("overtraining", runs, loss="huber_nll", starts="quick", fixed={"eta": 0.3}), full)
    with pytest.raises(ValueError, match="full fit fixes \\['alpha', 'beta'\\]"):
        compare(full, fits["exponents"])
    with pytest.raises(ValueError, match="nothing is tested"):
        compare(full, full)
    moved = fit("chinchilla", runs, loss="huber_nll", starts="quick", fixed={"alpha": 0.3, "beta": EPOCH["beta"]})
    with pytest.raises(ValueError, match="fixed at different values"):
        compare(hoff, moved)
    with pytest.raises(ValueError, match="delta"):
        compare(fit("chinchilla", runs, loss="huber_nll", fixed=HOFF, delta=2.0), full)


def test_cli_fixed_and_compare(runs, tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    write_csv(runs, str(csv))
    saved = {}
    for name, flags in (("restricted", ["--fixed", "hoffmann2022"]), ("full", ["--quick"])):
        assert main(["fit", str(csv), "--loss", "huber_nll", "--json", *flags]) == 0
        saved[name] = tmp_path / f"{name}.json"
        saved[name].write_text(capsys.readouterr().out)
    assert main(["fit", "--compare", str(saved["restricted"]), str(saved["full"])]) == 0
    out = capsys.readouterr().out
    assert "df 5" in out and "p = " in out
    assert main(["fit", "--compare", str(saved["full"]), str(saved["restricted"])]) == 2
    assert "the restricted fit's fixed set must contain the full fit's" in capsys.readouterr().err
    assert main(["fit", str(csv), "--fixed", "E=abc"]) == 2
    assert "--fixed: 'abc' for E is not a number" in capsys.readouterr().err
    assert main(["fit", str(csv), "--fixed", "kaplan2020"]) == 2
    assert "preset kaplan2020 is a kaplan law" in capsys.readouterr().err


@pytest.mark.slow
def test_likelihood_ratio_is_calibrated_under_the_null():
    # Data from the law with alpha, beta at their true values: the test at 5 % rejects about 5 % of seeds.
    rejected = 0
    for seed in range(100):
        data = chinchilla_runs(120, params=EPOCH, noise=0.01, seed=100 + seed)
        full = fit("chinchilla", data, loss="huber_nll", starts="quick")
        held = fit("chinchilla", data, loss="huber_nll", starts="quick",
                   fixed={"alpha": EPOCH["alpha"], "beta": EPOCH["beta"]})
        rejected += compare(held, full).p_value < 0.05
    assert 1 <= rejected <= 12, rejected
