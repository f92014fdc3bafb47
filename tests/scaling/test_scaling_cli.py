from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyscale.cli import main
from pyscale.scaling.synthetic import chinchilla_runs, write_csv


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    data = chinchilla_runs(60, noise=0.005, seed=9)
    renamed = {"name": data["run"], "params": data["N"], "tokens": data["D"], "val_loss": data["loss"]}
    path = tmp_path_factory.mktemp("fit") / "runs.csv"
    write_csv(renamed, str(path))
    return str(path)


def test_fit_json(csv_path, capsys):
    rc = main(["fit", csv_path, "--quick", "--json", "--columns", "N=params,D=tokens,loss=val_loss,run=name",
               "--frontier", "1e21"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["success"] and out["law"] == "chinchilla"
    assert set(out["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert out["n_runs"] == 60 and out["flops_convention"] == "C = 6*N*D"
    assert out["frontier"]["N"][0] > 0
    assert main(["fit", csv_path, "--quick", "--json", "--columns", "N=params,D=tokens,loss=val_loss",
                 "--frontier", "1e21", "1e26", "--bootstrap", "8"]) == 0
    captured = capsys.readouterr()
    frontier = json.loads(captured.out)["frontier"]
    assert frontier["extrapolated"] == [False, True] and len(frontier["N_ci"]) == 2
    assert captured.err.startswith("pyscale fit: warning: C = 1e+26 FLOPs is")


def test_fit_table_with_bootstrap_and_plot(csv_path, tmp_path, capsys):
    png = tmp_path / "fit.png"
    rc = main(["fit", csv_path, "--quick", "--bootstrap", "8", "--jobs", "1", "--plot", str(png),
               "--columns", "N=params,D=tokens,loss=val_loss"])
    out = capsys.readouterr().out
    assert rc == 0 and "alpha" in out and "bootstrap: 8 replicates" in out
    # after a bootstrap the standard errors are its spread, and the asymptotic ones are labelled as such
    assert "(bootstrap)" in out and "(asymptotic)" in out and "stderr: bootstrap standard deviation" in out
    assert png.stat().st_size > 10_000


def test_fit_errors(csv_path, capsys):
    assert main(["fit"]) == 2
    assert main(["fit", csv_path, "--quick"]) == 2  # its columns are not the canonical names
    assert "missing column" in capsys.readouterr().err


def test_fit_synthetic(tmp_path, capsys):
    out_csv = tmp_path / "synthetic.csv"
    rc = main(["fit", "--synthetic", "40", "--quick", "--json", "--save-synthetic", str(out_csv)])
    assert rc == 0 and json.loads(capsys.readouterr().out)["n"] == 40
    assert out_csv.read_text().startswith("run,N,D,loss")


def test_scaling_imports_neither_torch_nor_heavy_optionals():
    code = ("import sys, pyscale.scaling, pyscale.commands.fit; "
            "from pyscale.scaling.synthetic import chinchilla_runs; "
            "pyscale.scaling.fit('chinchilla', chinchilla_runs(30), starts='quick'); "
            "bad = [m for m in ('torch', 'triton', 'pandas', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_fit_with_validation_and_isoflop(tmp_path, capsys):
    from pyscale.scaling.synthetic import isoflop_runs

    path = tmp_path / "iso.csv"
    write_csv(isoflop_runs(seed=3), str(path))
    rc = main(["fit", str(path), "--quick", "--json", "--validate", "1", "--isoflop"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["validation"]["n_test"] == 9 and out["validation"]["mape"] < 0.05
    assert 0.35 < out["isoflop"]["a"] < 0.55
    assert out["isoflop"]["n_points"] == 8 and out["isoflop"]["bootstrap_failed"] == 0
    assert main(["fit", str(path), "--quick", "--json", "--isoflop-points", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["isoflop"]["n_points"] is None  # 0: every point
    assert main(["fit", str(path), "--quick", "--isoflop-points", "5"]) == 0
    assert "5 points nearest each minimum" in capsys.readouterr().out
    assert main(["fit", str(path), "--quick", "--isoflop-points", "2"]) == 2
    assert "--isoflop-points must be 0 (all points) or >= 3" in capsys.readouterr().err


def test_fit_in_linear_space(csv_path, capsys):
    cols = ["--columns", "N=params,D=tokens,loss=val_loss"]
    assert main(["fit", csv_path, "--quick", "--json", "--loss", "mse", "--space", "linear", *cols]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["space"] == "linear" and out["loss"] == "mse" and out["success"]
    assert main(["fit", csv_path, "--quick", "--space", "linear", *cols]) == 2
    assert "needs --loss mse: got --loss huber" in capsys.readouterr().err  # the CLI's words
