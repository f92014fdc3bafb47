from __future__ import annotations

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


def test_report_with_user_runs_fits_them(tmp_path, monkeypatch):
    from pyscale.scaling.synthetic import chinchilla_runs, write_csv

    monkeypatch.setenv("PYSCALE_HOME", str(tmp_path / "home"))
    csv = tmp_path / "runs.csv"
    write_csv(chinchilla_runs(60, seed=1), str(csv))
    out = tmp_path / "rep"
    assert cli.main(["report", "--out", str(out), "--skip-bench", "--data", str(csv)]) == 0
    text = (out / "report.md").read_text()
    assert "Fitted Chinchilla's law" in text and (out / "fit.png").exists()
    assert "No cost model fitted" in text  # an empty store is said, not hidden
