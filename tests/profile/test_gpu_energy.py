"""On a lent GPU only (`pytest -m gpu`): the real NVML meter, counter-vs-trace agreement over one window,
and the native sampler's overhead on step time. Skipped without CUDA."""

from __future__ import annotations

import time

import pytest
import torch

from pyscale.profile import power
from pyscale.profile import profiler as pr

pytestmark = pytest.mark.gpu


def _work(n: int = 4096):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return torch.mm, (a, a)


def test_nvml_meter_reads_this_gpu():
    with power.NvmlMeter(torch.cuda.current_device()) as m:
        snap = m.snapshot()
        assert snap.power_w is not None and snap.power_w > 0
        assert snap.sm_clock_mhz is not None and snap.temperature_c is not None
        assert m.uuid.startswith(("GPU-", "MIG-"))


def test_counter_and_trace_agree_within_5_percent():
    fn, args = _work()
    with pr.Profiler(meter="nvml", min_window_s=3.0, idle_s=1.0, sampler=True, sampler_interval_s=0.005) as prof:
        m = prof.window("mm_energy", fn, *args)
    window_j = m.energy_j * m.window_calls
    trace_j = m.extra["trace_energy_j"]
    assert trace_j is not None, m.extra
    print(f"counter {window_j:.2f} J, trace {trace_j:.2f} J over {m.window_s:.3f} s "
          f"({m.extra['trace_samples']} samples, {m.extra['trace_source']})")
    assert trace_j == pytest.approx(window_j, rel=0.05)


def test_native_sampler_overhead_below_1_percent():
    fn, args = _work(2048)

    def run_for(n_calls: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_calls):
            fn(*args)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    run_for(50)
    plain = min(run_for(200) for _ in range(3))
    sampler = power.NativeSampler(index=0, uuid=power.NvmlMeter(0).uuid, interval_s=0.01)
    sampler.start()
    try:
        sampled = min(run_for(200) for _ in range(3))
    finally:
        sampler.stop()
    print(f"plain {plain:.4f} s, with sampler {sampled:.4f} s, {len(sampler.trace())} samples")
    assert sampled <= plain * 1.01 + 1e-3
