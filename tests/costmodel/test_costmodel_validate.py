"""`pyscale costmodel validate`: a profile fitted from a CPU sweep predicts a GPT step that was measured.

The accuracy goal (within 10 %) is for GPU profiles; here the path is checked end to end on the CPU: the
comparison uses the stored step as measured and the profile's own prediction for its configuration.
"""

from __future__ import annotations

import json
import math

import pytest

from pyscale import cli
from pyscale import store as st

pytest.importorskip("torch")
GPT = ["--layers", "2", "--d-model", "64", "--heads", "2", "--seq", "64", "--batch", "2", "--vocab", "256"]
FAST = ["--steps", "3", "--warmup", "1", "--meter", "null", "--idle", "0", "--min-window", "0.01"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from pyscale import benchmark

    tmp = tmp_path_factory.mktemp("validate")
    db = tmp / "cpu.db"
    # The step runs plain PyTorch (--impl torch): its attention is SDPA's, so the sweep needs no interpreted
    # Triton attention (a minute on 2 cores).
    cases = [c for c in benchmark.plan_cases(["gemm", "attention"], "quick", device="cpu")
             if c.family == "gemm" or c.impl.startswith("sdpa")]
    with st.Store(db) as store:
        benchmark.sweep(cases, store=store, device="cpu", progress=False)
    assert cli.main(["costmodel", "fit", "--store", str(db), "--out", str(tmp / "cpu.json")]) == 0
    assert cli.main(["profile", "--model", "gpt", *GPT, "--impl", "torch", *FAST, "--store", str(db),
                     "--json"]) == 0
    return db, tmp / "cpu.json"


def test_validate_compares_the_stored_step_with_the_profiles_prediction(measured, capsys):
    db, profile = measured
    capsys.readouterr()
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (step,) = out["steps"]
    with st.Store(db) as store:
        (row,) = store.measurements(op="gpt_step")
    assert step["measured_s"] == row["time_s_median"]
    assert step["config"]["d_model"] == 64 and step["config"]["n_layers"] == 2
    assert math.isfinite(step["predicted_s"]) and step["predicted_s"] > 0
    assert step["rel_error"] == pytest.approx(step["predicted_s"] / step["measured_s"] - 1)
    assert out["dtype"] == "fp32"  # the CPU sweep measures fp32
    print(f"CPU GPT step: measured {step['measured_s'] * 1e3:.3g} ms, predicted {step['predicted_s'] * 1e3:.3g} ms")

    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db)]) == 0
    assert "measured" in capsys.readouterr().out


def test_validate_errors_name_the_argument(measured, tmp_path, capsys):
    db, profile = measured
    empty = tmp_path / "empty.db"
    st.Store(empty).close()
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(empty)]) == 2
    assert "--store: no gpt_step rows" in capsys.readouterr().err
    assert cli.main(["costmodel", "validate", str(tmp_path / "none.json"), "--store", str(db)]) == 2
    assert "PROFILE.json" in capsys.readouterr().err
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--dtype", "fp8"]) == 2
    assert "dtype" in capsys.readouterr().err
