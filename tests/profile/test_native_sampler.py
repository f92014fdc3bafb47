"""The native NVML sampler in pyscale._C, run against a small fake libnvidia-ml compiled here with `cc`."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from pyscale import _ext
from pyscale.profile import power

FAKE_NVML = r"""
#include <stdlib.h>
#include <string.h>

/* Behaviour from FAKE_NVML_MODE, read at nvmlInit: "ok", "lost:<n>" (GPU lost after n power reads),
   "no_energy" (energy counter unsupported), "instant" (the instant power field works: 200 W + 1 mW per
   read; otherwise it answers NOT_SUPPORTED in the field). Averaged power is 100 W + 1 mW per read;
   energy 10 mJ per read. */
static unsigned int reads = 0;
static long lost_after = -1;
static int no_energy = 0;
static int instant = 0;
static int dev = 7;

typedef struct {
  unsigned int fieldId; unsigned int scopeId; long long timestamp; long long latencyUsec;
  int valueType; int nvmlReturn; union { double d; unsigned int ui; unsigned long long ull; } value;
} field_value;

int nvmlInit_v2(void) {
  const char* mode = getenv("FAKE_NVML_MODE");
  reads = 0; lost_after = -1; no_energy = 0; instant = mode && strcmp(mode, "instant") == 0;
  if (mode && strncmp(mode, "lost:", 5) == 0) lost_after = atol(mode + 5);
  if (mode && strcmp(mode, "no_energy") == 0) no_energy = 1;
  return 0;
}
int nvmlShutdown(void) { return 0; }
const char* nvmlErrorString(int r) { return r == 15 ? "GPU is lost" : (r == 13 ? "Not Found" : "Other"); }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void** h) { if (i != 0) return 13; *h = &dev; return 0; }
int nvmlDeviceGetHandleByUUID(const char* u, void** h) {
  if (strcmp(u, "GPU-fake") != 0) return 13; *h = &dev; return 0;
}
int nvmlDeviceGetPowerUsage(void* h, unsigned int* mw) {
  if (h != &dev) return 2;
  if (lost_after >= 0 && (long)reads >= lost_after) return 15;
  reads++; *mw = 100000u + reads; return 0;
}
int nvmlDeviceGetFieldValues(void* h, int n, field_value* v) {
  if (h != &dev || n != 1 || v[0].fieldId != 186) return 2;
  if (!instant) { v[0].nvmlReturn = 3; return 0; }
  reads++; v[0].nvmlReturn = 0; v[0].valueType = 1; v[0].value.ui = 200000u + reads; return 0;
}
int nvmlDeviceGetTotalEnergyConsumption(void* h, unsigned long long* mj) {
  if (no_energy) return 3;
  if (lost_after >= 0 && (long)reads > lost_after) return 15;
  *mj = 10ull * reads; return 0;
}
"""


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake libnvidia-ml")
    if not _ext.has_cpp() or not hasattr(_ext.extension(), "NvmlSampler"):
        pytest.fail("pyscale._C has no NvmlSampler: rebuild with `pip install -e .`")
    d = tmp_path_factory.mktemp("fakenvml")
    (d / "fake_nvml.c").write_text(FAKE_NVML)
    lib = d / "libnvidia-ml-fake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(d / "fake_nvml.c")], check=True)
    return str(lib)


def test_native_trace_values_and_clock(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MODE", "ok")
    s = power.NativeSampler(uuid="GPU-fake", interval_s=0.002, library=fake_nvml)
    t0 = time.monotonic()
    s.start()
    # A pure-Python busy loop holds the GIL; the native thread must keep sampling regardless.
    end = time.monotonic() + 0.15
    spins = 0
    while time.monotonic() < end:
        spins += 1
    s.stop()
    t1 = time.monotonic()
    trace = s.trace()
    assert trace.source == "native (average power)" and trace.error is None
    assert len(trace) >= 10, f"only {len(trace)} samples in 150 ms at 2 ms"
    assert t0 <= trace.timestamp_s[0] and trace.timestamp_s[-1] <= t1  # the clock of time.monotonic()
    assert all(b > a for a, b in zip(trace.timestamp_s, trace.timestamp_s[1:]))
    assert trace.power_w == [pytest.approx(100.0 + (i + 1) * 1e-3) for i in range(len(trace))]
    assert trace.energy_j == [pytest.approx(0.01 * (i + 1)) for i in range(len(trace))]
    assert trace.counter_energy_j() == pytest.approx(0.01 * (len(trace) - 1))
    span = trace.timestamp_s[-1] - trace.timestamp_s[0]
    assert trace.integrated_energy_j() == pytest.approx(100.0 * span, rel=1e-3)
    assert 50 < trace.rate_hz() < 1000
    assert not s.running
    # a restart clears the trace (and the fake counts on)
    s.start()
    time.sleep(0.01)
    s.stop()
    assert 0 < len(s.trace()) < len(trace) + 10


def test_native_prefers_the_instant_power_field(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MODE", "instant")
    with power.NativeSampler(index=0, interval_s=0.002, library=fake_nvml) as s:
        time.sleep(0.02)
    trace = s.trace()
    assert trace.source == "native (instant power)"
    # the constructor's probe read is #1, so the trace starts at read #2
    assert trace.power_w == [pytest.approx(200.0 + (i + 2) * 1e-3) for i in range(len(trace))]


def test_native_gpu_lost_stops_and_raises(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MODE", "lost:3")
    monkeypatch.setenv(power.sampler.LIBRARY_ENV, fake_nvml)  # found through the environment variable
    s = power.NativeSampler(index=0, interval_s=0.001)
    s.start()
    deadline = time.monotonic() + 2.0
    while s.running and time.monotonic() < deadline:
        time.sleep(0.005)
    s.stop()
    trace = s.trace()
    # three good samples, then the one that found the GPU gone (recorded, with its status), then nothing
    assert len(trace) == 4 and trace.power_w[3] is None and trace.power_w[2] is not None
    assert "15" in trace.error and "lost" in trace.error.lower()
    with pytest.raises(power.DeviceLost):
        s.check()


def test_native_no_energy_counter(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MODE", "no_energy")
    with power.NativeSampler(index=0, interval_s=0.002, library=fake_nvml) as s:
        time.sleep(0.02)
    trace = s.trace()
    assert len(trace) >= 2 and all(e is None for e in trace.energy_j)
    assert trace.counter_energy_j() is None and trace.integrated_energy_j() is not None


def test_native_errors_are_meter_unavailable(fake_nvml, tmp_path):
    with pytest.raises(power.MeterUnavailable, match="cannot load"):
        power.NativeSampler(library=str(tmp_path / "missing.so"))
    with pytest.raises(power.MeterUnavailable, match="GPU-other.*Not Found"):
        power.NativeSampler(uuid="GPU-other", library=fake_nvml)
    with pytest.raises(power.MeterUnavailable, match="interval_s"):
        power.NativeSampler(library=fake_nvml, interval_s=0.0)


def test_make_sampler_falls_back_to_python(tmp_path):
    meter = power.NullMeter("test")
    s = power.make_sampler(meter=meter, library=str(tmp_path / "missing.so"))
    assert isinstance(s, power.PythonSampler)
    with pytest.raises(power.MeterUnavailable):
        power.make_sampler(meter=meter, library=str(tmp_path / "missing.so"), native=True)
