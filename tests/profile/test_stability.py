"""pyscale.profile.stability: a timing is `stable` only when its device's criterion was checked and holds."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pyscale.profile import stability
from pyscale.profile.stability import GpuState, assess

QUIET = [1.0, 1.01, 1.02, 0.99, 1.0]


def test_a_cpu_timing_is_stable_when_it_had_its_cores_and_its_repetitions_agree():
    ok = assess(QUIET, "cpu", cpu_time_s=4.9, wall_s=5.0, threads=1)
    assert ok["stable"] and ok["reasons"] == [] and ok["cpu_share"] == pytest.approx(0.98)
    assert ok["criterion"] == stability.CRITERION["cpu"] and ok["spread"] < 1.05
    shared = assess(QUIET, "cpu", cpu_time_s=2.0, wall_s=5.0, threads=1)  # waited for a contended core
    assert not shared["stable"] and "the cores were shared" in shared["reasons"][0]
    two = assess(QUIET, "cpu", cpu_time_s=9.0, wall_s=5.0, threads=2)  # both threads busy: 0.9
    assert two["stable"]
    spread = assess([1.0, 1.0, 2.0, 3.0, 3.0], "cpu", cpu_time_s=5.0, wall_s=5.0, threads=1)
    assert not spread["stable"] and spread["reasons"] == [f"p80/p20 = {spread['spread']:.2f} > 1.5"]
    unknown = assess(QUIET, "cpu")
    assert not unknown["stable"] and "CPU time not measured" in unknown["reasons"][0]
    assert not assess([], "cpu", cpu_time_s=1.0, wall_s=1.0, threads=1)["stable"]


def test_a_gpu_timing_needs_a_gpu_of_its_own_that_did_not_throttle():
    clean = GpuState(other_processes=[], throttling=[])
    assert assess(QUIET, "cuda", gpu_edges=(clean, clean))["stable"]
    busy = GpuState(other_processes=[4242], throttling=[])
    hot = GpuState(other_processes=[], throttling=["HwThermalSlowdown"])
    verdict = assess(QUIET, "cuda", gpu_edges=(busy, hot))
    assert not verdict["stable"] and verdict["other_processes"] == [4242]
    assert verdict["throttling"] == ["HwThermalSlowdown"] and len(verdict["reasons"]) == 2
    blind = GpuState(unavailable_reason="NVML: not installed")
    assert assess(QUIET, "cuda", gpu_edges=(blind, clean))["reasons"] == ["cannot check: NVML: not installed"]
    assert not assess(QUIET, "cuda")["stable"]  # never read: never called stable


class _FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self, pids):
        self.pids = pids

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802 - NVML's name
        return [SimpleNamespace(pid=p) for p in self.pids]


def _fake_meter(pids, reasons):
    class Meter:
        def __init__(self, index):
            self.nv, self.handle = _FakeNvml(pids), object()

        def snapshot(self):
            return SimpleNamespace(throttle_reasons=reasons, unavailable_reasons={"throttle_reasons": "no field"})

        def close(self):
            pass
    return Meter


@pytest.mark.parametrize("pids,reasons,others,throttling", [
    ([os.getpid()], ("GpuIdle",), [], []),  # ourselves, idle clocks: quiet
    ([os.getpid(), 7], ("SwPowerCap", "ApplicationsClocksSetting"), [7], ["SwPowerCap"]),
    ([99], (), [], []),  # another PID namespace: the only process listed is taken to be us
    ([98, 99], None, [99], None),
])
def test_gpu_state_reads_other_processes_and_throttling_from_nvml(monkeypatch, pids, reasons, others, throttling):
    import pyscale.profile.power as power

    monkeypatch.setattr(power, "NvmlMeter", _fake_meter(pids, reasons))
    state = stability.gpu_state(0)
    assert state.other_processes == others and state.throttling == throttling
    assert (state.unavailable_reason is None) == (reasons is not None)


def test_gpu_state_without_nvml_says_why():
    state = stability.gpu_state(0)  # this machine has no NVIDIA driver
    assert state.unavailable_reason and state.unavailable_reason.startswith("NVML")
    assert not assess(QUIET, "cuda", gpu_edges=(state, state))["stable"]


def test_profiled_windows_and_steps_record_the_verdict_with_its_figures():
    torch = pytest.importorskip("torch")
    from pyscale.profile.profiler import Profiler

    # 512 x 512: five steps last milliseconds. At 64 x 64 they lasted ~60 us, and the process CPU time of the
    # other threads, accounted at scheduler ticks, made CPU time / wall up to ~20 (1 run in ~25 failed)
    a = torch.randn(512, 512)
    with Profiler(store=None, meter="null", idle_s=0, min_window_s=0.01) as prof:
        m = prof.window("mm", torch.mm, a, a)
        steps = prof.profile_step(lambda: torch.mm(a, a), steps=5, warmup=1, record=False)
    for extra in (m.extra, steps.summary.extra):
        verdict = extra["stability"]
        assert extra["stable"] is verdict["stable"] and verdict["criterion"] == stability.CRITERION["cpu"]
        assert 0 < verdict["cpu_share"] <= 1.5 and verdict["threads"] >= 1
        assert extra["cpu_time_s_median"] > 0  # the CPU time each call took, besides its wall time
    assert m.extra["warmup_converged"] in (True, False)
