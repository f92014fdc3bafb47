"""pyscale.profile.power.limits with a fake NVML (tests/profile/fake_nvml.py, its state in a file, so that the
processes a test starts and their guard processes share it): the range, parsing, set / read back / restore on
every way out (normal, exception, Ctrl-C, SIGTERM, interpreter exit, SIGKILL through the guard), the refusal
without permission, and the per-limit loop. No real GPU's settings are touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import fake_nvml
import pytest

from pyscale.profile.power import MeterError, limits

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = fake_nvml.init(tmp_path / "nvml.json")
    monkeypatch.setenv("FAKE_NVML_STATE", str(path))
    return path


def reset(path: Path, **kw) -> None:
    fake_nvml.init(path, **kw)


def allowed() -> limits.PowerLimitRange:
    return limits.power_limit_range(0, nvml=fake_nvml, env={})


def test_the_range_is_read_read_only(fake):
    assert allowed() == limits.PowerLimitRange(0, 100.0, 700.0, 350.0)
    assert str(allowed()) == "100-700 W"
    assert fake_nvml.sets() == []


def test_a_spec_is_watts_in_order_with_max_the_largest(fake):
    assert limits.parse_power_limits("200, 300,400 ,max", allowed()) == (200.0, 300.0, 400.0, 700.0)
    assert limits.parse_power_limits("100,250.5W", allowed()) == (100.0, 250.5)


@pytest.mark.parametrize(("spec", "why"), [
    ("", "empty item"), ("200,,300", "empty item"), ("200,", "empty item"), ("abc", "'abc' is not a number"),
    ("nan", "'nan' is not a number"), ("inf", "'inf' is not a number"), ("0", "0 W is not a power limit"),
    ("-50", "-50 W is not a power limit"), ("99.5", "99.5 W is outside"), ("200,701", "701 W is outside"),
    ("300,300", "300 W is given twice"), ("700,max", "700 W is given twice (max is 700 W)"),
])
def test_every_bad_spec_is_one_line_naming_the_flag_and_the_range(fake, spec, why):
    with pytest.raises(ValueError) as info:
        limits.parse_power_limits(spec, allowed())
    line = str(info.value)
    assert line.startswith("power_limits: ") and why in line and "allows 100-700 W" in line and "\n" not in line
    assert fake_nvml.sets() == []  # checked before anything is set, let alone measured


def test_set_read_back_and_restore_on_normal_exit_with_the_guard(fake):
    with limits.power_limit(200, nvml=fake_nvml, env={}) as applied:
        assert fake_nvml.state()["limit_mw"] == 200_000
        assert applied == limits.AppliedLimit(0, 200.0, 200.0, 350.0) and applied.note is None
    assert fake_nvml.state()["limit_mw"] == 350_000
    log = fake_nvml.state()["log"]
    assert [mw for _, mw in log] == [200_000, 350_000] and {pid for pid, _ in log} == {os.getpid()}  # guard idle
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's own handler: none


def test_an_enforced_limit_unlike_the_request_is_stated(fake):
    reset(fake, cap_w=250.0)
    with limits.power_limit(300, nvml=fake_nvml, env={}, guard=False) as applied:
        assert applied.enforced_w == 250.0
        assert "enforces 250 W, not the 300 W set" in applied.note
    assert fake_nvml.state()["limit_mw"] == 350_000
    said = []
    limits.sweep_power_limits((300.0,), lambda a: None, allowed=allowed(), say=said.append, nvml=fake_nvml, env={},
                              guard=False)
    assert "(1 of 1; GPU 0 enforces 250 W, not the 300 W set" in said[0]  # said, not hidden


@pytest.mark.parametrize("error", [RuntimeError("kernel failed"), KeyboardInterrupt()])
def test_restored_on_an_exception_and_on_ctrl_c(fake, error):
    with pytest.raises(type(error)), limits.power_limit(150, nvml=fake_nvml, env={}):
        assert fake_nvml.state()["limit_mw"] == 150_000
        raise error
    assert fake_nvml.sets() == [150.0, 350.0]


@pytest.mark.parametrize("code", [fake_nvml.NVML_ERROR_NO_PERMISSION, fake_nvml.NVML_ERROR_NOT_SUPPORTED])
def test_without_permission_nothing_changes_and_it_says_why(fake, code):
    reset(fake, refuse=code)
    why = "needs root" if code == 4 else "does not support"
    with pytest.raises(limits.CannotSetPowerLimit, match=why), limits.power_limit(200, nvml=fake_nvml, env={}):
        pytest.fail("entered without a limit")
    assert fake_nvml.state()["limit_mw"] == 350_000 and fake_nvml.sets() == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_guard_needs_a_module_it_can_load_too(fake):
    with pytest.raises(ValueError, match="guard=False"):
        limits.power_limit(200, nvml=types.SimpleNamespace())
    with pytest.raises(ValueError, match="watts"):
        limits.power_limit(0, nvml=fake_nvml)


# ------------------------------------------------------------------------------------------- other processes

CHILD = """
import os, signal, sys, time
sys.path.insert(0, {here!r})
import fake_nvml
from pyscale.profile.power.limits import power_limit
mode = sys.argv[1]
if mode == "chained":
    def previous(signum, frame):
        print("previous handler", fake_nvml.state()["limit_mw"], flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, previous)
ctx = power_limit(200, nvml=fake_nvml, env={{}}, guard=(mode == "kill"))
ctx.__enter__()
print("set", flush=True)
if mode == "exit":
    sys.stdin.readline()
    sys.exit(0)  # the interpreter exits with the limit set and the context never left: atexit restores
time.sleep(30)
"""


def child(tmp_path: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(here=str(HERE))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "set"
    assert fake_nvml.state()["limit_mw"] == 200_000
    return proc


@pytest.mark.parametrize(("mode", "status"), [("default", -signal.SIGTERM), ("chained", 3)])
def test_sigterm_restores_then_dies_of_it_or_hands_it_on(fake, tmp_path, mode, status):
    proc = child(tmp_path, mode)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == status
    if mode == "chained":  # the handler before ours runs after the limit is back
        assert out.strip() == "previous handler 350000"
    assert fake_nvml.state()["log"] == [[proc.pid, 200_000], [proc.pid, 350_000]]


def test_interpreter_exit_restores(fake, tmp_path):
    proc = child(tmp_path, "exit")
    proc.communicate("go\n", timeout=10)
    assert proc.returncode == 0
    assert fake_nvml.state()["log"] == [[proc.pid, 200_000], [proc.pid, 350_000]]


def test_the_guard_restores_after_a_sigkill(fake, tmp_path):
    proc = child(tmp_path, "kill")
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while fake_nvml.state()["limit_mw"] != 350_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    (setter, _), (restorer, restored) = fake_nvml.state()["log"]
    assert setter == proc.pid and restorer != proc.pid and restored == 350_000  # the guard did it


def test_a_guard_that_cannot_load_nvml_stops_before_anything_is_set(fake, tmp_path):
    broken = tmp_path / "broken_nvml.py"
    broken.write_text(Path(fake_nvml.__file__).read_text() + "\nraise ImportError('no driver')\n")
    module = types.ModuleType("broken_nvml")
    module.__file__ = str(broken)
    vars(module).update({k: v for k, v in vars(fake_nvml).items() if not k.startswith("__")})
    with pytest.raises(MeterError, match="guard process did not start"), limits.power_limit(200, nvml=module, env={}):
        pytest.fail("entered unguarded")
    assert fake_nvml.sets() == []



def test_a_restore_that_fails_here_is_done_by_the_guard_or_said(fake):
    """The guard loads the fake's file, so it restores where this process's NVML (a copy that fails on the
    restore) cannot; when the guard fails too, the error says how to restore by hand."""
    module = types.ModuleType("flaky_nvml")
    vars(module).update({k: v for k, v in vars(fake_nvml).items() if not k.startswith("__")})
    module.__file__ = fake_nvml.__file__

    def set_once(handle, limit_mw):
        if fake_nvml.sets():
            raise fake_nvml.NVMLError(15)  # NVML_ERROR_GPU_IS_LOST on the way back
        fake_nvml.nvmlDeviceSetPowerManagementLimit(handle, limit_mw)

    module.nvmlDeviceSetPowerManagementLimit = set_once
    with limits.power_limit(200, nvml=module, env={}):
        pass
    (setter, _), (restorer, restored) = fake_nvml.state()["log"]
    assert setter == os.getpid() and restorer != setter and restored == 350_000

    reset(fake)
    by_hand = "could not restore GPU 0's power limit to 350 W .*nvidia-smi -i GPU-fake-0 -pl 350"
    with pytest.raises(MeterError, match=by_hand), limits.power_limit(200, nvml=module, env={}):
        reset(fake, limit_w=200.0, refuse=fake_nvml.NVML_ERROR_NO_PERMISSION)  # here and in the guard

# ------------------------------------------------------------------------------------------- the per-limit loop

def test_each_limit_is_measured_under_it_and_restored_after(fake):
    seen, said = [], []

    def measure(applied):
        seen.append((applied.requested_w, fake_nvml.state()["limit_mw"]))
        return applied.enforced_w

    out = limits.sweep_power_limits((200.0, 700.0), measure, allowed=allowed(), say=said.append, nvml=fake_nvml,
                                    env={})
    assert out == [200.0, 700.0] and seen == [(200.0, 200_000), (700.0, 700_000)]
    assert fake_nvml.sets() == [200.0, 350.0, 700.0, 350.0]  # restored between limits and at the end
    assert said[0] == "power limit 200 W (1 of 2; the original 350 W is restored afterwards)" and said[1].startswith("power limit 700")


def test_a_failure_under_a_limit_restores_it(fake):
    def measure(applied):
        if applied.requested_w == 300:
            raise RuntimeError("out of memory")
        return applied.requested_w

    with pytest.raises(RuntimeError, match="out of memory"):
        limits.sweep_power_limits((200.0, 300.0, 400.0), measure, allowed=allowed(), say=lambda line: None,
                                  nvml=fake_nvml, env={})
    assert fake_nvml.sets() == [200.0, 350.0, 300.0, 350.0]


def test_without_permission_the_loop_measures_once_at_the_current_limit(fake):
    reset(fake, refuse=fake_nvml.NVML_ERROR_NO_PERMISSION)
    said, seen = [], []
    out = limits.sweep_power_limits((200.0, 300.0), lambda applied: seen.append(applied) or "row",
                                    allowed=allowed(), say=said.append, nvml=fake_nvml, env={})
    assert out == ["row"] and seen == [None] and len(said) == 1
    assert said[0].startswith("cannot set GPU power limits here (NVML: Insufficient Permissions")
    assert said[0].endswith("): measuring at the current limit 350 W only")


def test_the_loop_takes_any_limit_setting(fake):
    """The runner's seam: a context factory in place of power_limit (no NVML at all)."""
    import contextlib

    log = []

    @contextlib.contextmanager
    def setting(watts, *, index):
        log.append(("set", watts, index))
        yield limits.AppliedLimit(index, watts, watts, 350.0)
        log.append(("restore", index))

    out = limits.sweep_power_limits((250.0,), lambda a: a.requested_w, allowed=allowed(), say=lambda line: None,
                                    setting=setting)
    assert out == [250.0] and log == [("set", 250.0, 0), ("restore", 0)]
    assert json.loads(fake.read_text())["log"] == []


# ------------------------------------------------------------------------------------------- the commands

@pytest.fixture
def gpu_stand_in(fake, monkeypatch):
    """The commands on this CPU as if it were a GPU whose limits the fake NVML holds."""
    from pyscale.benchmark import runner
    from pyscale.commands import power_limits

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(power_limits, "NVML", fake_nvml)
    monkeypatch.setattr(power_limits, "require_cuda", lambda kind: None)
    monkeypatch.setattr(runner, "_power_limit_now", lambda device: fake_nvml.state()["limit_mw"] / 1000)
    return fake


def test_bench_measures_under_each_limit_and_restores_before_the_tables(gpu_stand_in, tmp_path, monkeypatch, capsys):
    from pyscale import benchmark, cli
    from pyscale.benchmark import rows
    from pyscale.store import Store

    sweeps, tables = [], []
    real_sweep, real_table = benchmark.sweep, rows.print_bench_table

    def sweep(cases, **kw):
        sweeps.append((fake_nvml.state()["limit_mw"], kw["resume"], kw["arguments"].get("power_limit_w")))
        return real_sweep(cases[:1], **kw)

    def table(table_rows, title, **kw):
        tables.append((fake_nvml.state()["limit_mw"], title))
        return real_table(table_rows, title, **kw)

    monkeypatch.setattr(benchmark, "sweep", sweep)
    monkeypatch.setattr(rows, "print_bench_table", table)
    db = tmp_path / "s.db"
    argv = ["bench", "gemm", "--quick", "--impl", "torch.mm", "--device", "cpu", "--store", str(db), "--resume"]
    assert cli.main([*argv, "--power-limits", "200,max"]) == 0
    out, err = capsys.readouterr()
    assert sweeps == [(200_000, True, 200.0), (700_000, True, 700.0)]
    assert [limit for limit, _ in tables] == [350_000, 350_000]  # restored before anything is printed
    assert tables[0][1].endswith("at power limit 200 W") and tables[1][1].endswith("at power limit 700 W")
    assert "pyscale bench: power limit 200 W (1 of 2; the original 350 W" in err and "(2 of 2" in err
    assert "runs 1, 2: 2 measured" in out
    with Store(db) as store:
        assert [json.loads(r["arguments"])["power_limit_w"] for r in store.runs()] == [200.0, 700.0]
    assert fake_nvml.sets() == [200.0, 350.0, 700.0, 350.0]

    bad = cli.main([*argv, "--power-limits", "200,800"])  # the range is checked before anything is measured
    out, err = capsys.readouterr()
    assert bad == 2 and err.count("\n") == 1 and len(sweeps) == 2
    assert err.startswith("pyscale bench: --power-limits: 800 W is outside the allowed range") and "100-700 W" in err

    reset(gpu_stand_in, refuse=fake_nvml.NVML_ERROR_NO_PERMISSION)
    assert cli.main([*argv, "--power-limits", "200,300"]) == 0
    out, err = capsys.readouterr()
    assert err == ("pyscale bench: cannot set GPU power limits here (NVML: Insufficient Permissions; not "
                   "permitted: needs root): measuring at the current limit 350 W only\n")
    assert len(sweeps) == 3 and sweeps[-1][0] == 350_000 and tables[-1][1].endswith("at the current power limit")


def test_profile_measures_under_each_limit(gpu_stand_in, tmp_path, monkeypatch, capsys):
    from pyscale import cli

    (tmp_path / "limits_user_step.py").write_text("def step():\n    return sum(range(1000))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fast = ["--meter", "null", "--min-window", "0.01", "--idle", "0", "--steps", "2", "--warmup", "0"]
    assert cli.main(["profile", "-m", "limits_user_step:step", "--device", "cpu", *fast, "--no-store",
                     "--power-limits", "150,250", "--json"]) == 0
    out, err = capsys.readouterr()
    per_limit = json.loads(out)["power_limits"]
    assert [o["power_limit"]["requested_w"] for o in per_limit] == [150.0, 250.0]
    assert all(o["power_limit"]["original_w"] == 350.0 and len(o["steps"]) == 2 for o in per_limit)
    assert err.count("\n") == 2 and "power limit 250 W (2 of 2" in err
    assert fake_nvml.sets() == [150.0, 350.0, 250.0, 350.0]
    sys.modules.pop("limits_user_step", None)
