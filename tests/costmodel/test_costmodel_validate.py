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
from pyscale.benchmark.shapes import GPT_STEPS  # noqa: E402

GPT = GPT_STEPS["quick"][1].profile_arguments()  # 2 layers, d_model 64: its step ops are in the quick sweep
FAST = ["--steps", "3", "--warmup", "1", "--meter", "null", "--idle", "0", "--min-window", "0.01"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from pyscale import benchmark

    tmp = tmp_path_factory.mktemp("validate")
    db = tmp / "cpu.db"
    # The step runs plain PyTorch (--impl torch): its attention is SDPA as torch dispatches it, so the sweep
    # needs no interpreted Triton attention (a minute on 2 cores); the step family prices the rest.
    cases = [c for c in benchmark.plan_cases(["gemm", "attention", "step"], "quick", device="cpu")
             if c.impl in ("torch.mm", "sdpa") or c.family == "step"]
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
    # priced with what the step ran: fp32 on CPU, torch's SDPA and rotary, AdamW one tensor at a time, one
    # batch repeated
    assert step["priced_as"] == {"dtype": "fp32", "gemm_backend": "torch.mm", "attention_backend": "sdpa",
                                 "rotary_backend": "torch", "optimizer_backend": "for-loop", "step_ops": True,
                                 "repeated_batch": True}
    assert 0 < step["predicted_share_outside_gemm_attention"] < 1
    assert step["measured_stable"] == row["extra"]["stable"]
    print(f"CPU GPT step: measured {step['measured_s'] * 1e3:.3g} ms, predicted {step['predicted_s'] * 1e3:.3g} ms")

    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db)]) == 0
    text = capsys.readouterr().out
    assert "measured" in text and "priced with the implementation it ran (fp32" in text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_validate_records_its_errors_in_the_profile_and_a_plan_prints_them(measured, tmp_path, capsys):
    import shutil

    from pyscale.costmodel import DeviceProfile

    db, original = measured
    profile = tmp_path / "cpu.json"
    shutil.copy(original, profile)
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--record"]) == 0
    recorded = DeviceProfile.from_json(profile).validation
    (step,) = recorded["steps"]
    assert recorded["summary"]["max_abs_error"] == pytest.approx(abs(step["rel_error"]))
    assert recorded["command"].startswith("pyscale costmodel validate") and recorded["created"]
    capsys.readouterr()
    assert cli.main(["costmodel", "show", str(profile)]) == 0
    assert "step validation (" in capsys.readouterr().out
    assert cli.main(["plan", "--flops", "1e18", "--profile", str(profile), "--seq-len", "64"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table wraps
    assert "step-validation error of this profile:" in out and f"{step['rel_error']:+.1%}" in out
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--communication-s", "0.5",
                     "--json"]) == 0
    (with_comm,) = json.loads(capsys.readouterr().out)["steps"]
    assert with_comm["predicted_s"] == pytest.approx(step["predicted_s"] + 0.5)


def test_validate_errors_name_the_argument(measured, tmp_path, capsys):
    db, profile = measured
    empty = tmp_path / "empty.db"
    st.Store(empty).close()
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(empty)]) == 2
    assert "--store: no gpt_step rows" in capsys.readouterr().err
    assert cli.main(["costmodel", "validate", str(tmp_path / "none.json"), "--store", str(db)]) == 2
    assert "PROFILE.json" in capsys.readouterr().err
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--dtype", "bf16"]) == 2
    assert "--dtype bf16: no gpt_step rows in that dtype (measured: fp32)" in capsys.readouterr().err
    assert cli.main(["costmodel", "validate", str(profile), "--store", str(db), "--communication-s", "-1"]) == 2
    assert "--communication-s" in capsys.readouterr().err
