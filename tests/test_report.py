from __future__ import annotations

import json

import pytest

from pyscale import cli


def test_main_job_writes_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSCALE_HOME", str(tmp_path / "home"))
    out = tmp_path / "rep"
    assert cli.main(["report", "--out", str(out), "--family", "gemm", "--budget", "1e20 flops"]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Device", "## Benchmark", "## Cost model", "## Loss law", "## Plan"):
        assert heading in text
    assert "Stages with problems" not in text
    assert (out / "plan_iso_loss.png").stat().st_size > 1000
    assert (out / "device_profile.json").exists() and (out / "plan.json").exists()
    # GEMMs alone cannot price a training step: the plan says so instead of inventing a throughput
    assert "Hardware: the cost model cannot price a GPT training step" in text
    assert json.loads((out / "plan.json").read_text())["time_s"] is None


def _synthetic_store(path, device: dict) -> None:
    """fp32 GEMM and attention timings of a made-up 1 TFLOP/s, 100 GB/s device, filed under this machine's
    device (the report fits the cost model of the device it runs on)."""
    from pyscale.store import DeviceRecord, MeasurementRecord, Store

    reasons = {f"{k}_unavailable_reason": "synthetic row: not measured" for k in ("energy_j", "avg_power_w", "idle_power_w",
                                                          "sm_clock_mhz", "mem_clock_mhz", "temperature_c")}

    def record(store, dev, op, backend, params, flops, nbytes):
        t = max(flops / 1e12, nbytes / 1e11) + 1e-5
        store.record(MeasurementRecord(op=op, backend=backend, params=params, dtype="fp32", time_s=t,
                                       flops=flops, bytes=nbytes, **reasons), device_id=dev)

    with Store(path) as store:
        dev = store.register_device(DeviceRecord(kind=device["kind"], name=device["name"], uuid="synthetic"))
        for m in (64, 256, 1024, 4096):
            for n, k in ((1024, 1024), (4096, 1024), (1024, 4096)):
                record(store, dev, "gemm", "torch.mm", {"m": m, "n": n, "k": k}, 2.0 * m * n * k,
                       4.0 * (m * k + n * k + m * n))
        for op, mult in (("attention_fwd", 1.0), ("attention_bwd", 2.5)):
            for s in (256, 1024, 2048):
                for heads in (8, 16):
                    params = {"batch": 1, "heads": heads, "seq_q": s, "seq_k": s, "head_dim": 64, "causal": True}
                    record(store, dev, op, "pyscale", params, mult * 2.0 * s * (s + 1) * heads * 64,
                           16.0 * s * heads * 64)


def test_report_plan_is_priced_by_the_fitted_cost_model(tmp_path):
    from pyscale import sysinfo
    from pyscale.report import run_main_job

    device = sysinfo.collect()["devices"][0]
    _synthetic_store(tmp_path / "syn.db", device)
    job = run_main_job(tmp_path / "rep", store_path=tmp_path / "syn.db", skip_bench=True, progress=False)
    assert job.failed == [] and job.skipped == []
    text = job.path.read_text()
    assert "Stages with problems" not in text
    assert "Hardware: the cost model fitted above (`device_profile.json`" in text
    assert "fp32 GEMMs (torch.mm) and attention (pyscale)" in text
    plan = json.loads((tmp_path / "rep" / "plan.json").read_text())
    assert f"cost model of {device['name']}" in plan["throughput_source"]
    # the synthetic device computes at 1 TFLOP/s (model FLOPs count attention without the causal discount, so
    # they may run a little faster than that)
    assert 0.5 < plan["model_flops"] / plan["time_s"] / 1e12 < 2.0


@pytest.mark.parametrize(("law", "form"), [(None, "chinchilla"), ("kaplan", "kaplan"), ("kaplan2020", "kaplan")])
def test_report_with_user_runs_fits_them(tmp_path, monkeypatch, law, form):
    from pyscale.scaling.synthetic import chinchilla_runs, write_csv

    monkeypatch.setenv("PYSCALE_HOME", str(tmp_path / "home"))
    csv = tmp_path / "runs.csv"
    write_csv(chinchilla_runs(60, seed=1), str(csv))
    out = tmp_path / "rep"
    args = ["report", "--out", str(out), "--skip-bench", "--data", str(csv)] + (["--law", law] if law else [])
    assert cli.main(args) == 0
    text = (out / "report.md").read_text()
    assert f"Fitted the **{form}** law" in text and (out / "fit.png").exists()
    assert json.loads((out / "fit.json").read_text())["law"] == form  # --law is honoured, not always chinchilla
    assert "No cost model fitted" in text  # an empty store is said, not hidden
    assert "Hardware: no cost model was fitted" in text
    assert "Stages with problems" not in text
    # the plan's loss interval comes from the fit's bootstrap refits
    assert "bootstrap refits of the fit" in json.loads((out / "plan.json").read_text())["loss_interval_source"]


def test_report_data_with_an_unknown_law_names_the_option():
    from pyscale.report import _law_form

    assert _law_form("epoch2024") == ("chinchilla", "the form of preset epoch2024")
    with pytest.raises(ValueError, match="--law must be a preset"):
        _law_form("no-such-law")
