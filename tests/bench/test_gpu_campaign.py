"""bench/gpu_campaign.sh and bench/campaign.py: the step table, time boxes, resume, exit codes, the results.

CI checks the script's syntax and its step list here (fast, no torch); the whole dry run on this CPU is the
`slow` test at the end (about two minutes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_campaign.sh"


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("gpu_campaign", ROOT / "bench" / "campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_campaign"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_campaign", None)


def _sh(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, **kwargs)


def test_the_script_parses_and_lists_every_step_with_its_budget_fast_and_without_torch():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    t0 = time.perf_counter()
    out = _sh("--dry-run", "--list")
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - t0 < 5
    lines = out.stdout.splitlines()
    steps = [line.split()[1] for line in lines if line[:2].strip().isdigit()]
    assert steps == ["build", "smoke", "sweep", "profile", "fit", "ab-attention-tma", "ab-attention-bwd", "ab-gemm",
                     "ab-moe-dw-splits", "energy", "pytest-gpu"]
    budgets = [float(line.split()[2]) for line in lines if line[:2].strip().isdigit() and "rest" not in line]
    assert sum(budgets) < 300 and "rest ≥" in out.stdout  # the final step gets what is left
    assert "budget 300 s including the build" in out.stdout and "at most 8" in out.stdout
    halved = _sh("--list", "--budget-s", "150")
    assert "build                    20" in halved.stdout  # shares scale with the budget
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "s = importlib.util.spec_from_file_location('c', 'bench/campaign.py'); "
                            "m = importlib.util.module_from_spec(s); sys.modules['c'] = m; s.loader.exec_module(m); "
                            "m.main(['--dry-run', '--list']); print('torch loaded:', 'torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT)
    assert "torch loaded: False" in probe.stdout, probe.stderr  # listing the steps starts no torch


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "campaign.log").write_text("an earlier run\n")
    cases = [(["--only", "build,nope"], "--only: unknown step(s) nope"),
             (["--budget-s", "0"], "--budget-s must be > 0"),
             (["--shapes", "grid", "--dry-run"], "--shapes must be one of"),
             (["--dry-run", "--out", str(tmp_path / "old")], "is not empty: pass --resume"),
             (["--out", str(tmp_path / "new")], "no GPU here")]  # this machine has no GPU
    for args, message in cases:
        out = _sh(*args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "new").exists()


def _context(campaign, tmp_path: Path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    return campaign.Context(out=out, tmp=tmp, dry_run=True, device="cpu", op_shapes=("quick",),
                            gpt_steps="quick", energy=False, energy_reason="no NVML here")


def _py(campaign, code: str):
    return campaign.Command((sys.executable, "-c", code))


def test_steps_are_time_boxed_skipped_when_the_budget_is_spent_and_resumed(campaign, tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "MIN_STEP_S", 0.3)
    monkeypatch.setattr(campaign, "RESERVE_S", 0.1)
    monkeypatch.setattr(campaign, "MIN_COMMAND_S", 0.1)
    monkeypatch.setattr(campaign, "_device_info", lambda ctx: {"devices": [{"name": "test CPU", "kind": "cpu"}]})
    ctx = _context(campaign, tmp_path)
    ran = tmp_path / "ran"

    def mark(name: str) -> str:
        return f"open({str(ran)!r}, 'a').write({name!r} + '\\n')"

    steps = [campaign.Step("quick", 10, "writes a line", lambda c: [_py(campaign, mark("quick") + "; print('hi')")]),
             campaign.Step("slow", 20, "sleeps past its share", lambda c: [
                 _py(campaign, mark("slow") + "; import time; time.sleep(30)"), _py(campaign, mark("never"))]),
             campaign.Step("fails", 10, "exits 3", lambda c: [_py(campaign, "raise SystemExit(3)")]),
             campaign.Step("needs", 10, "cannot run here", lambda c: [_py(campaign, mark("needs"))],
                           needs=lambda c: "needs a GPU"),
             campaign.Step("rest", 0, "takes what is left", lambda c: [_py(campaign, mark("rest"))], final=True)]
    budget = 300 * 0.05  # shares scale by 1/20: 10 -> 0.5 s, 20 -> 1 s
    t0 = time.monotonic()
    rc = campaign.run_campaign(ctx, steps, budget, resume=False, argv=["--dry-run"])
    assert time.monotonic() - t0 < budget + 8  # the sleeping step was stopped at its share
    assert rc == 1  # a step failed
    state = json.loads((ctx.out / "campaign.json").read_text())["steps"]
    assert {k: v["status"] for k, v in state.items()} == {
        "quick": "done", "slow": "timeout", "fails": "failed", "needs": "skipped", "rest": "done"}
    assert "needs a GPU" in state["needs"]["note"] and "share" in state["slow"]["note"]
    assert state["slow"]["share_s"] > 1.0  # its 1 s, plus what the quick step before it left unused
    assert ran.read_text().split() == ["quick", "slow", "rest"]  # the stopped step's second command never ran
    log = (ctx.out / "campaign.log").read_text()
    assert "hi" in log and "slow: stopped at the end of its share" in log
    results = (ctx.out / "results.md").read_text()
    assert results.startswith("## GPU campaign — test CPU — ") and "| slow |" in results and "dry run" in results
    # --resume runs again only what is not done
    ran.unlink()
    campaign.run_campaign(ctx, steps, budget, resume=True, argv=["--dry-run", "--resume"])
    assert ran.read_text().split() == ["slow"]  # "fails" runs again too; the done steps do not
    state = json.loads((ctx.out / "campaign.json").read_text())
    assert len(state["runs"]) == 2 and state["steps"]["quick"]["status"] == "done"
    # nothing is left outside the files DIR may hold
    assert {p.name for p in ctx.out.iterdir()} <= set(campaign.FILES)


def test_an_ab_step_is_one_entry_with_labelled_rows_a_repeat_and_fresh_tuning(campaign, tmp_path):
    step = campaign.ab_step("ab-x", "PYSCALE_X", ("a", "b"), family="gemm", ops=("gemm",), impls=("pyscale",),
                            budget_s=10, min_capability=(9, 0))
    ctx = _context(campaign, tmp_path)
    commands = step.commands(ctx)
    labels = [c.argv[c.argv.index("--label") + 1] for c in commands]
    assert labels == ["@PYSCALE_X=a", "@PYSCALE_X=b", "@PYSCALE_X=a#repeat"]
    assert all(c.env["PYSCALE_AUTOTUNE"] == "on" for c in commands)
    assert len({c.env["PYSCALE_AUTOTUNE_CACHE"] for c in commands}) == 3  # each variant tunes from scratch
    assert step.needs(ctx) is None  # a dry run runs it (the variable does nothing on a CPU)
    gpu = campaign.Context(**{**ctx.__dict__, "dry_run": False, "device": "cuda", "capability": (8, 0)})
    assert "9.0" in step.needs(gpu)


def test_results_render_the_store_profile_and_tests(campaign, tmp_path):
    from pyscale.store import DeviceRecord, MeasurementRecord, Store

    ctx = _context(campaign, tmp_path)
    unmeasured = {f"{k}_unavailable_reason": "test row" for k in ("idle_power_w", "sm_clock_mhz", "mem_clock_mhz",
                                                                  "temperature_c", "energy_j", "avg_power_w")}
    with Store(ctx.store) as store:
        dev = store.register_device(DeviceRecord(kind="cpu", name="test CPU", uuid="cpu-test"))
        for backend, t in (("torch.mm", 2e-3), ("pyscale@PYSCALE_X=a", 1e-3), ("pyscale@PYSCALE_X=b", 5e-4),
                           ("pyscale@PYSCALE_Y=default", 4e-3), ("pyscale@PYSCALE_Y=1", 2e-3),
                           ("pyscale@variants", 1e-3), ("pyscale:tma@variants", 1.25e-3),
                           ("torch.mm@variants", 2e-3)):
            dtype = "int8" if backend.endswith("variants") and backend.startswith("pyscale") else "fp32"
            store.record(MeasurementRecord(op="gemm", backend=backend, params={"m": 8, "n": 8, "k": 8}, dtype=dtype,
                                           time_s=t, flops=1024.0, bytes=768.0, extra={"stable": True},
                                           **unmeasured), device_id=dev)
        store.record(MeasurementRecord(op="gpt_step", backend="step", dtype="float32", time_s=0.1, time_s_p20=0.09,
                                       time_s_p80=0.11, flops=1e9, bytes=1e6,
                                       params={"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 8, "batch": 2,
                                               "vocab_size": 64, "tokens_per_step": 16},
                                       extra={"stable": False}, **unmeasured), device_id=dev)
    text = campaign.render_results(ctx, {"device": {"devices": [{"name": "test CPU"}]}, "runs": [
        {"started": "2026-12-04T00:00:00", "command": "bash bench/gpu_campaign.sh --dry-run", "budget_s": 300}],
        "steps": {"sweep": {"status": "done", "seconds": 1.0, "commands": ["pyscale bench gemm"]}}})
    assert "## GPU campaign — test CPU — 2026-12-04" in text and "- sweep: `pyscale bench gemm`" in text
    assert "| gemm | torch.mm | fp32 | k=8, m=8, n=8 | 2 |" in text  # op rows; A/B rows apart
    assert "| 1 | 32 | 2 | 8 | 2 | 64 | 100 |" in text and "| no |" in text  # the step, not stable
    x, y = text.split("### A/B PYSCALE_X")[1].split("###")[0], text.split("### A/B PYSCALE_Y")[1].split("###")[0]
    assert "PYSCALE_X=b / PYSCALE_X=a" in x and "| 0.500 |" in x and "PYSCALE_Y" not in x  # one table a variable
    assert "PYSCALE_Y=1 / PYSCALE_Y=default" in y and "| 0.500 |" in y
    variants = text.split("### Variants, int8")[1]
    assert "pyscale:tma / pyscale" in variants and "torch.mm / pyscale" in variants
    assert "| 1.250 | 2.000 |" in variants  # each implementation against the default, pyscale


def test_the_ab_steps_cover_attention_gemm_and_moe(campaign, tmp_path):
    ctx = _context(campaign, tmp_path)
    steps = {s.name: s for s in campaign.STEPS}
    bwd = steps["ab-attention-bwd"].commands(ctx)
    assert [c.env["PYSCALE_ATTN_BWD"] for c in bwd] == ["split", "fused", "split"]
    moe = steps["ab-moe-dw-splits"].commands(ctx)
    assert [c.env["PYSCALE_MOE_DW_SPLITS"] for c in moe] == ["", "1", ""]  # "": the op's own split count
    assert moe[0].argv[moe[0].argv.index("--label") + 1] == "@PYSCALE_MOE_DW_SPLITS=default"
    (gemm,) = steps["ab-gemm"].commands(ctx)
    assert gemm.argv[gemm.argv.index("--families") + 1] == "gemm:*" and gemm.env["PYSCALE_AUTOTUNE"] == "on"
    gpu = campaign.Context(**{**ctx.__dict__, "dry_run": False, "device": "cuda", "capability": (9, 0)})
    assert all(steps[n].needs(gpu) is None for n in ("ab-attention-bwd", "ab-gemm", "ab-moe-dw-splits"))
    assert sum(s.budget_s for s in campaign.STEPS) <= campaign.DEFAULT_BUDGET_S  # the default budget holds them all


@pytest.mark.slow
def test_the_dry_run_leaves_a_profile_costmodel_show_reads_and_a_results_section(tmp_path):
    out = tmp_path / "dry"
    t0 = time.perf_counter()
    run = _sh("--dry-run", "--out", str(out), timeout=600)
    took = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert took < 180, f"the dry run took {took:.0f} s"
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(len(p.parts) == 1 for p in files), files
    assert {"store.db", "profile.json", "results.md", "campaign.log", "campaign.json", "pytest.xml"} <= {
        str(p) for p in files}
    show = subprocess.run([sys.executable, "-m", "pyscale", "costmodel", "show", str(out / "profile.json")],
                          capture_output=True, text=True)
    assert show.returncode == 0 and "step validation (" in show.stdout, show.stderr
    results = (out / "results.md").read_text()
    for section in ("## GPU campaign", "| step | share s |", "### Op sweep", "### Training steps",
                    "### Cost model", "### Step predictions", "### A/B", "### GPU tests"):
        assert section in results, section
    state = json.loads((out / "campaign.json").read_text())["steps"]
    assert state["energy"]["status"] == "skipped" and all(
        v["status"] == "done" for k, v in state.items() if k != "energy"), state
    # a resumed campaign runs only what is not done (the build always: a fresh machine has nothing)
    again = _sh("--dry-run", "--resume", "--out", str(out), timeout=600)
    assert again.returncode == 0 and "sweep: done in an earlier run, skipped" in again.stdout


@pytest.mark.slow
def test_a_sweep_stopped_at_its_share_keeps_its_rows_and_resume_continues_it(tmp_path):
    from pyscale.store import Store

    out = tmp_path / "cut"
    args = ["--dry-run", "--only", "sweep", "--shapes", "gpt-cpu", "--budget-s", "40", "--out", str(out)]
    first = _sh(*args, timeout=600)  # a 10 s share of a sweep that needs about a minute
    assert first.returncode == 0 and "sweep: stopped at the end of its share" in first.stdout, first.stdout[-2000:]
    with Store(out / "store.db") as store:
        partial = store.measurements(status=None)
    assert partial
    second = _sh(*args, "--resume", timeout=600)
    assert second.returncode == 0, second.stdout[-2000:]
    with Store(out / "store.db") as store:
        rows = store.measurements(status=None)
    assert len(rows) > len(partial)
    keys = [(r["op"], r["backend"], json.dumps(r["params"], sort_keys=True)) for r in rows]
    assert len(keys) == len(set(keys))  # resumed case by case: nothing measured twice
    assert json.loads((out / "campaign.json").read_text())["steps"]["sweep"]["status"] == "timeout"


def test_results_record_the_power_limit_read_only(campaign, tmp_path, monkeypatch):
    """The campaign reads GPU 0's limit and range (never sets them) and results.md says what it found."""
    from pyscale.profile.power import MeterUnavailable, limits

    monkeypatch.setattr(limits, "power_limit_range", lambda index: limits.PowerLimitRange(index, 100.0, 700.0, 700.0))
    assert campaign._probe_power_limit() == "700 W enforced (NVML allows 100-700 W; read only, never changed)"

    def unavailable(index):
        raise MeterUnavailable("nvidia-ml-py is not installed")

    monkeypatch.setattr(limits, "power_limit_range", unavailable)
    assert campaign._probe_power_limit() == "not read (nvidia-ml-py is not installed)"
    text = campaign.render_results(_context(campaign, tmp_path), {"power_limit": "700 W enforced (...)"})
    assert "Power limit: 700 W enforced (...)." in text
