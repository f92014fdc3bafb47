"""DeviceProfile JSON, shipped-profile lookup, model-level prediction and `pyscale costmodel fit|show`."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from synth_costmodel import SYNTH_GPU, SYNTH_PEAK_BF16, Truth, fill_store, gemm_cost

from pyscale import cli
from pyscale import store as st
from pyscale.costmodel import (
    DeviceProfile,
    OpCall,
    fit_device_profile,
    list_shipped_profiles,
    load_shipped_profile,
    predict_step,
    shipped_profile_problems,
)


@pytest.fixture
def profile(tmp_path, synth_gpu, truth):
    with fill_store(tmp_path / "s.db", truth, n_shapes=30, energy_missing_every=5) as store:
        return fit_device_profile(store, command="test")


def test_profile_json_round_trip_predicts_the_same(profile, tmp_path):
    path = tmp_path / "p.json"
    text = profile.to_json(path)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = DeviceProfile.from_json(path)
    assert back.to_dict() == json.loads(text)
    assert DeviceProfile.from_json(text).device_name == SYNTH_GPU
    f, b = gemm_cost({"m": 777, "n": 1234, "k": 555})
    for kw in ({}, {"m": 777, "n": 1234, "k": 555}, {"tiles": 3}):
        assert back.predict_time_s("gemm", "bf16", f, b, **kw) == profile.predict_time_s("gemm", "bf16", f, b, **kw)
        assert back.predict_energy_j("gemm", "bf16", f, b, **kw) == profile.predict_energy_j("gemm", "bf16", f, b, **kw)
    m = back.model("gemm", "torch.bfloat16")  # dtype aliases resolve
    assert m.cv is not None and m.cv.metrics["runtime"]["mape_pct"] < 10
    assert back.versions["pyscale"] and back.created and back.source["measured"] is True
    assert m.n_rows == 60 and m.energy.n_excluded_no_energy == 12


def test_shape_features_change_the_prediction_through_waves(profile):
    f, b = gemm_cost({"m": 4096, "n": 8320, "k": 4096})
    plain = profile.predict_time_s("gemm", "bf16", f, b)
    waves = profile.predict_time_s("gemm", "bf16", f, b, m=4096, n=8320, k=4096)  # 2080 tiles on 64 SMs
    assert profile.model("gemm", "bf16").runtime.wave_alpha > 0.3
    assert waves > plain
    arr = profile.predict_time_s("gemm", "bf16", np.array([f, 2 * f]), np.array([b, 2 * b]))
    assert arr.shape == (2,) and arr[1] > arr[0]


def test_profile_lookup_errors_name_the_argument(profile):
    with pytest.raises(ValueError, match="op 'softmax' is not in the profile"):
        profile.predict_time_s("softmax", "bf16", 1.0, 1.0)
    with pytest.raises(ValueError, match="dtype 'fp8' of op 'gemm'"):
        profile.predict_time_s("gemm", "fp8", 1.0, 1.0)
    with pytest.raises(ValueError, match="backend 'cuda'"):
        profile.predict_time_s("gemm", "bf16", 1.0, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="not a pyscale device profile"):
        DeviceProfile.from_json('{"models": []}')
    with pytest.raises(ValueError, match="no such file"):
        DeviceProfile.from_json("/nonexistent/profile.json")


def test_shipped_profiles_lookup(profile, tmp_path):
    profile.to_json(tmp_path / "synthetic.json")
    (tmp_path / "README.json").write_text("[]")  # a stray file is ignored
    assert list(list_shipped_profiles(tmp_path)) == [SYNTH_GPU]
    assert load_shipped_profile("PYSCALE-synthetic_test gpu", tmp_path).device_name == SYNTH_GPU
    assert load_shipped_profile("some other gpu", tmp_path) is None
    with pytest.raises(ValueError, match="device_name"):
        load_shipped_profile("", tmp_path)


def test_every_shipped_profile_is_measured_and_complete():
    # No invented profile ships: each one says it was measured, when, with what, its CV error and its step
    # validation, and names a device that maps to exactly one hw row.
    for name, path in list_shipped_profiles().items():
        p = DeviceProfile.from_json(path)
        assert p.device_name == name
        assert shipped_profile_problems(path) == [], (path, shipped_profile_problems(path))


def _validated(profile):
    profile.validation = {"created": "2026-12-04T00:00:00+00:00", "command": "pyscale costmodel validate ...",
                          "steps": [{"config": {}, "measured_s": 1.0, "predicted_s": 1.05, "rel_error": 0.05}],
                          "summary": {"n_steps": 1, "max_abs_error": 0.05, "mean_abs_error": 0.05,
                                      "min_error": 0.05, "max_error": 0.05}}
    return profile


def test_a_shipped_profile_must_be_a_measured_validated_gpu_profile_of_one_hw_row(profile, tmp_path):
    path = tmp_path / "p.json"
    profile.to_json(path)
    assert any("step validation" in p for p in shipped_profile_problems(path))  # fitted, never validated
    _validated(profile).to_json(path)
    assert shipped_profile_problems(path) == []
    for change, problem in ((dict(device_kind="cpu"), "only GPU profiles ship"),
                            (dict(device_name="Imaginary GPU 9000"), "maps to 0 hw rows"),
                            (dict(source={"measured": False}), "source.measured must be true")):
        changed = DeviceProfile.from_dict({**profile.to_dict()})
        for key, value in change.items():
            setattr(changed, key, value)
        changed.to_json(path)
        assert any(problem in p for p in shipped_profile_problems(path)), (change, shipped_profile_problems(path))


def test_the_machine_name_and_the_hw_row_name_find_the_same_shipped_profile(profile, tmp_path):
    from pyscale import hw

    assert [s.name for s in hw.matching_specs("NVIDIA H200")] == ["H200 SXM"]  # the lent machine's name
    h200 = _validated(DeviceProfile.from_dict(profile.to_dict()))
    h200.device_name = "NVIDIA H200"
    h200.to_json(tmp_path / "h200.json")
    for name in ("NVIDIA H200", "H200 SXM", "h200"):
        assert load_shipped_profile(name, tmp_path).device_name == "NVIDIA H200"
    assert load_shipped_profile("H100 SXM", tmp_path) is None
    h200.device_name = "H200 SXM"
    h200.to_json(tmp_path / "h200-again.json")
    with pytest.raises(ValueError, match="several shipped profiles"):
        load_shipped_profile("NVIDIA H200", tmp_path)


def test_a_measured_shape_is_answered_with_its_measurement_and_others_by_the_model(profile):
    m = profile.model("gemm", "bf16")
    key, seconds = next(iter(m.measured.items()))
    shape = json.loads(key)["shape"]
    f, b = gemm_cost(shape)
    assert profile.predict_time_s("gemm", "bf16", f, b, **shape) == seconds
    model = profile.predict_time_s("gemm", "bf16", f, b)  # no features: the fitted model
    assert model != seconds and model == pytest.approx(seconds, rel=0.5)
    other = {**shape, "m": shape["m"] + 1}
    assert profile.predict_time_s("gemm", "bf16", *gemm_cost(other), **other) not in m.measured.values()


def test_predict_step_sums_ops(profile):
    f1, b1 = gemm_cost({"m": 2048, "n": 4096, "k": 4096})
    f2, b2 = gemm_cost({"m": 16, "n": 4096, "k": 4096})
    step = predict_step(profile, [("gemm", "bf16", f1, b1, 3), OpCall("gemm", "bf16", f2, b2, count=2)],
                        model_flops=3 * f1, tokens=2048)
    t1 = profile.predict_time_s("gemm", "bf16", f1, b1)
    t2 = profile.predict_time_s("gemm", "bf16", f2, b2)
    assert step.time_s == pytest.approx(3 * t1 + 2 * t2)
    e1 = profile.predict_energy_j("gemm", "bf16", f1, b1)
    e2 = profile.predict_energy_j("gemm", "bf16", f2, b2)
    assert step.energy_j == pytest.approx(3 * e1 + 2 * e2)
    assert step.peak_flops_per_s == SYNTH_PEAK_BF16  # from pyscale.hw for the profile's device
    assert step.mfu == pytest.approx(3 * f1 / (step.time_s * SYNTH_PEAK_BF16))
    assert step.hfu == pytest.approx((3 * f1 + 2 * f2) / (step.time_s * SYNTH_PEAK_BF16))
    assert step.energy_j_per_token == pytest.approx(step.energy_j / 2048)
    assert 0 < step.mfu < 1


def test_predict_step_without_energy_or_model_flops_says_why(tmp_path, synth_gpu, truth):
    with fill_store(tmp_path / "s.db", truth, n_shapes=10, repeats=1, energy_missing_every=1) as store:
        profile = fit_device_profile(store)
    step = predict_step(profile, [("gemm", "bf16", 1e12, 1e8, 1)])
    assert step.energy_j is None and "no energy model" in step.unavailable_reasons["energy_j"]
    assert step.mfu is None and "model_flops" in step.unavailable_reasons["mfu"]
    with pytest.raises(ValueError, match="op 'attention' is not in the profile"):
        predict_step(profile, [("attention", "bf16", 1e12, 1e8, 1)])
    with pytest.raises(ValueError, match=r"op_breakdown\[0\]"):
        predict_step(profile, [("gemm", "bf16", 1e12)])
    with pytest.raises(ValueError, match="op_breakdown is empty"):
        predict_step(profile, [])


# ---------------------------------------------------------------------------------------- CLI


def test_cli_fit_and_show(tmp_path, synth_gpu, truth, capsys):
    db = tmp_path / "s.db"
    fill_store(db, truth, n_shapes=25, energy_missing_every=4).close()
    out, plots = tmp_path / "profile.json", tmp_path / "plots"
    assert cli.main(["costmodel", "fit", "--store", str(db), "--out", str(out), "--plot", str(plots)]) == 0
    text = capsys.readouterr().out
    assert SYNTH_GPU in text and "gemm" in text and "time MAPE%" in text
    assert out.is_file() and (plots / "gemm_bf16_triton.png").stat().st_size > 1000
    assert DeviceProfile.from_json(out).model("gemm", "bf16").cv.n_groups == 25
    assert cli.main(["costmodel", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "gemm" in shown and "fraction_of_peak" in shown


def test_cli_cpu_store_fit(tmp_path, capsys):
    db = tmp_path / "cpu.db"
    fill_store(db, Truth(eta_compute=1e11, eta_memory=2e10, wave_alpha=0.0), device_name="synthetic cpu", kind="cpu",
               peak=1.0, bandwidth=1.0, sms=None, n_shapes=12, repeats=1, energy_missing_every=1).close()
    assert cli.main(["costmodel", "fit", "--store", str(db), "--op", "gemm"]) == 0
    text = capsys.readouterr().out
    assert "flop_per_s" in text and "no energy model" in text


@pytest.mark.parametrize("argv, message", [
    (["fit", "--store", "{db}", "--op", "softmax"], "op 'softmax' has no measurements"),
    (["fit", "--store", "{db}", "--device", "other"], "device 'other' has no measurements"),
    (["fit", "--store", "{db}", "--dtype", "fp8"], "dtype 'fp8' has no measurements"),
    (["fit", "--store", "{db}", "--folds", "1"], "--folds must be at least 2"),
    (["fit", "--store", "{missing}"], "--store: no store at"),
    (["fit", "--store", "{empty}"], "has no measurements"),
    (["show"], "exactly one"),
    (["show", "--device", "no such gpu"], "--device: no shipped profile"),
    (["show", "{missing}"], "PROFILE.json"),
    ([], "choose an action"),
])
def test_cli_errors_name_the_argument(tmp_path, synth_gpu, truth, capsys, argv, message):
    db = tmp_path / "s.db"
    fill_store(db, truth, n_shapes=5, repeats=1).close()
    st.Store(tmp_path / "empty.db").close()
    paths = {"db": db, "missing": tmp_path / "missing.db", "empty": tmp_path / "empty.db"}
    argv = [a.format(**paths) for a in argv]
    assert cli.main(["costmodel", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_several_devices_need_device(tmp_path, synth_gpu, truth, capsys):
    db = tmp_path / "s.db"
    fill_store(db, truth, n_shapes=6, repeats=1).close()
    fill_store(db, truth, n_shapes=6, repeats=1, device_name="synthetic cpu", kind="cpu", peak=1.0, bandwidth=1.0,
               sms=None).close()
    assert cli.main(["costmodel", "fit", "--store", str(db)]) == 2
    assert "several devices" in capsys.readouterr().err
    assert cli.main(["costmodel", "fit", "--store", str(db), "--device", "synthetic cpu"]) == 0
    text = capsys.readouterr().out
    assert "synthetic cpu" in text and SYNTH_GPU not in text.split("\n")[0]


def test_cli_residual_without_sklearn_is_a_clear_error(tmp_path, synth_gpu, truth, capsys, monkeypatch):
    db = tmp_path / "s.db"
    fill_store(db, truth, n_shapes=8, repeats=1).close()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    assert cli.main(["costmodel", "fit", "--store", str(db), "--residual"]) == 2
    assert "pyscale[costmodel]" in capsys.readouterr().err


def test_residual_profile_predicts_without_sklearn(tmp_path, synth_gpu, truth, monkeypatch):
    pytest.importorskip("sklearn")
    with fill_store(tmp_path / "s.db", truth, n_shapes=12, repeats=1) as store:
        p = fit_device_profile(store, residual=True, folds=2)
    assert p.model("gemm", "bf16").runtime.residual is not None
    text = p.to_json()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    back = DeviceProfile.from_json(text)
    f, b = gemm_cost({"m": 300, "n": 300, "k": 300})
    assert math.isclose(back.predict_time_s("gemm", "bf16", f, b), p.predict_time_s("gemm", "bf16", f, b))


def test_costmodel_import_is_lean():
    # Loading a profile must not need scipy (fitting), matplotlib (plots), scikit-learn or torch.
    import subprocess

    code = ("import sys, pyscale.costmodel, pyscale.commands.costmodel\n"
            "heavy = {'scipy', 'matplotlib', 'sklearn', 'torch', 'triton'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cpu_quick_sweep_fits_end_to_end(tmp_path, capsys):
    # The real path: pyscale.benchmark's CPU quick GEMM sweep into a store, then `costmodel fit` on it.
    pytest.importorskip("torch")
    pytest.importorskip("pyscale.profile.timing")  # the profiler lands separately
    from pyscale import benchmark

    db = tmp_path / "bench.db"
    with st.Store(db) as store:
        summary = benchmark.sweep(benchmark.plan_cases(["gemm"], "quick", device="cpu"), store=store,
                                  device="cpu", progress=False)
    errors = [r["record"].error for r in summary.rows if r["record"].status != "ok"]
    assert summary.measured >= 3, f"the CPU quick sweep measured too few cases: {errors}"
    assert cli.main(["costmodel", "fit", "--store", str(db), "--op", "gemm", "--out", str(tmp_path / "cpu.json")]) == 0
    assert "time MAPE%" in capsys.readouterr().out
    p = DeviceProfile.from_json(tmp_path / "cpu.json")
    m = p.model("gemm", "fp32")
    assert p.device_kind == "cpu" and m.runtime.compute_units == "flop_per_s"
    assert m.cv is not None and math.isfinite(m.cv.metrics["runtime"]["mape_pct"])


def test_ops_with_only_failed_rows_are_reported_not_fitted(tmp_path, synth_gpu, truth):
    with fill_store(tmp_path / "s.db", truth, n_shapes=8, repeats=1) as store:
        dev = store.register_device(st.DeviceRecord(kind="cuda", name=SYNTH_GPU, uuid=f"cuda-{SYNTH_GPU}",
                                                    torch_version="synthetic"))
        for seq in (1024, 2048):
            store.record(st.MeasurementRecord(op="attention", backend="triton", params={"seq_q": seq}, dtype="bf16",
                                              status="oom", error="synthetic OOM"), device_id=dev)
        p = fit_device_profile(store)
    assert [m.op for m in p.models] == ["gemm"]
    assert any("attention/bf16/triton: not fitted, 0 usable row(s)" in n and "status oom': 2" in n for n in p.notes)
