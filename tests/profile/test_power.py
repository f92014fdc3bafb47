"""Meters without hardware: NVML mocked with autospec'd pynvml functions (incl. error paths), RAPL on a
fake powercap tree, the Python sampler, and the meter factory."""

from __future__ import annotations

import types
from pathlib import Path
from unittest.mock import create_autospec

import pynvml
import pytest

from pyscale.profile import power
from pyscale.profile.power import nvml as nvml_mod

FUNCS = ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByUUID",
         "nvmlDeviceGetUUID", "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage",
         "nvmlDeviceGetFieldValues", "nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperature",
         "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
         "nvmlDeviceGetEnforcedPowerLimit")
CONSTANTS = ("NVMLError", "NVML_FI_DEV_POWER_INSTANT", "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_TEMPERATURE_GPU",
             "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_NOT_SUPPORTED")


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml picks the matching subclass


def field_value(mw: int, ret: int = 0):
    return types.SimpleNamespace(nvmlReturn=ret, value=types.SimpleNamespace(uiVal=mw))


class Counter:
    """An energy counter the test advances: each read returns the next value."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self, handle):
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


@pytest.fixture
def nv():
    """A pynvml stand-in: every function autospec'd from the real one, constants and errors copied."""
    fake = types.SimpleNamespace(**{name: getattr(pynvml, name) for name in CONSTANTS})
    for name in FUNCS:
        setattr(fake, name, create_autospec(getattr(pynvml, name)))
    fake.nvmlDeviceGetHandleByIndex.return_value = "handle-by-index"
    fake.nvmlDeviceGetHandleByUUID.return_value = "handle-by-uuid"
    fake.nvmlDeviceGetUUID.return_value = "GPU-1234"
    fake.nvmlDeviceGetFieldValues.return_value = [field_value(250_000)]
    fake.nvmlDeviceGetPowerUsage.return_value = 240_000
    fake.nvmlDeviceGetClockInfo.side_effect = lambda h, clock: {pynvml.NVML_CLOCK_SM: 1980,
                                                                pynvml.NVML_CLOCK_MEM: 2619}[clock]
    fake.nvmlDeviceGetTemperature.return_value = 61
    fake.nvmlDeviceGetCurrentClocksEventReasons.return_value = 0x4 | 0x40
    fake.nvmlDeviceGetTotalEnergyConsumption.return_value = 1_000_000
    fake.nvmlDeviceGetEnforcedPowerLimit.return_value = 350_000
    return fake


def meter(nv, **kw):
    return power.NvmlMeter(0, nvml=nv, env=kw.pop("env", {}), **kw)


def test_nvml_window_and_fields(nv):
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = Counter(1_000_000, 1_000_000, 1_150_250)
    m = meter(nv)
    start, end = m.snapshot(), m.snapshot()
    w = m.window(start, end)
    assert w.energy_j == pytest.approx(150.25)
    assert start.power_w == 250.0  # the instantaneous field, mW -> W
    assert start.sm_clock_mhz == 1980 and start.mem_clock_mhz == 2619 and start.temperature_c == 61
    assert start.throttle_reasons == ("SwPowerCap", "HwThermalSlowdown")
    assert start.power_limit_w == 350.0  # the enforced limit, mW -> W
    assert w.avg_power_w == pytest.approx(150.25 / w.time_s)
    m.close()
    m.close()  # idempotent
    nv.nvmlShutdown.assert_called_once_with()


def test_nvml_counter_wrap_and_reset(nv):
    top = 2**64
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = Counter(5, top - 500, 700, 9_000, 100)
    m = meter(nv)
    assert m.window(m.snapshot(), m.snapshot()).energy_j == pytest.approx(1.2)  # 500 + 700 mJ across the wrap
    a, b = m.snapshot(), m.snapshot()
    with pytest.raises(power.CounterReset, match="went backwards"):
        m.window(a, b)


def test_nvml_energy_not_supported_is_none_with_reason(nv):
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = err(pynvml.NVML_ERROR_NOT_SUPPORTED)
    nv.nvmlDeviceGetFieldValues.return_value = [field_value(0, ret=pynvml.NVML_ERROR_NOT_SUPPORTED)]
    nv.nvmlDeviceGetTemperature.side_effect = err(pynvml.NVML_ERROR_NOT_SUPPORTED)
    m = meter(nv)
    snap = m.snapshot()
    assert snap.energy_j is None and "not supported" in snap.unavailable_reasons["energy_j"].lower()
    assert "Volta" in snap.unavailable_reasons["energy_j"]
    assert snap.temperature_c is None and "temperature_c" in snap.unavailable_reasons
    assert snap.power_limit_w == 350.0
    assert snap.power_w == 240.0  # unsupported instant field -> the averaged power reading
    w = m.window(snap, m.snapshot())
    assert w.energy_j is None and w.avg_power_w is None and "not supported" in w.energy_unavailable_reason.lower()
    calls = nv.nvmlDeviceGetTotalEnergyConsumption.call_count
    m.snapshot()
    assert nv.nvmlDeviceGetTotalEnergyConsumption.call_count == calls  # not asked again


def test_nvml_no_permission_raises(nv):
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = err(pynvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(power.MeterPermissionError, match="no permission"):
        meter(nv)
    nv.nvmlShutdown.assert_called_once_with()  # cleaned up on the failed construction


def test_nvml_gpu_lost_mid_window(nv):
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = Counter(1, 2, err(pynvml.NVML_ERROR_GPU_IS_LOST))
    m = meter(nv)
    m.snapshot()
    with pytest.raises(power.DeviceLost, match="lost"):
        m.snapshot()


def test_nvml_init_failure_is_unavailable(nv):
    nv.nvmlInit.side_effect = pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(power.MeterUnavailable, match="nvmlInit failed"):
        meter(nv)


def test_nvml_cuda_visible_devices_mapping(nv):
    m = meter(nv, env={"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}, )
    nv.nvmlDeviceGetHandleByUUID.assert_called_with("GPU-aaa")
    m2 = power.NvmlMeter(1, nvml=nv, env={"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"})
    nv.nvmlDeviceGetHandleByUUID.assert_called_with("GPU-bbb")
    assert m2.handle == "handle-by-uuid" and m.uuid == "GPU-aaa"
    m3 = power.NvmlMeter(1, nvml=nv, env={"CUDA_VISIBLE_DEVICES": "3,2"})
    nv.nvmlDeviceGetHandleByIndex.assert_called_with(2)
    assert m3.uuid == "GPU-1234" and "PCI_BUS_ID" in m3.description
    with pytest.raises(power.MeterUnavailable, match="not visible"):
        power.NvmlMeter(2, nvml=nv, env={"CUDA_VISIBLE_DEVICES": "GPU-aaa"})


def test_nvml_old_driver_uses_throttle_reasons_name(nv):
    del nv.nvmlDeviceGetCurrentClocksEventReasons
    nv.nvmlDeviceGetCurrentClocksThrottleReasons.return_value = 0x1
    assert meter(nv).snapshot().throttle_reasons == ("GpuIdle",)


def test_stale_counter_is_unavailable_not_zero(nv):
    m = meter(nv)  # the counter stays at 1_000_000 mJ
    w = m.window(m.snapshot(), m.snapshot())
    assert w.energy_j is None and "did not advance" in w.energy_unavailable_reason


# --------------------------------------------------------------------------- RAPL

def rapl_tree(root: Path, zones: dict[str, tuple[str, int, int]]) -> Path:
    for zone, (name, energy, max_range) in zones.items():
        d = root / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_energy(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_sums_packages_and_unwraps(tmp_path):
    root = rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1_000, 10_000_000),
                                "intel-rapl:0:0": ("core", 500, 10_000_000),
                                "intel-rapl:1": ("package-1", 2_000, 20_000_000),
                                "intel-rapl:2": ("psys", 9_000, 10_000_000)})
    m = power.RaplMeter(root)
    assert [z.name for z in m.zones] == ["package-0", "package-1"]
    a = m.snapshot()
    set_energy(root, "intel-rapl:0", 3_001_000)
    set_energy(root, "intel-rapl:1", 2_500_000)
    b = m.snapshot()
    assert m.window(a, b).energy_j == pytest.approx(3.0 + 2.498)
    # package-0 wraps: 3_001_000 -> 9_999_000 -> 1_000 is 6_998_000 + 2_000 µJ
    set_energy(root, "intel-rapl:0", 9_999_000)
    c = m.snapshot()
    set_energy(root, "intel-rapl:0", 1_000)
    d = m.snapshot()
    assert m.window(b, d).energy_j == pytest.approx(6.998 + 0.002)
    assert m.window(c, d).energy_j == pytest.approx(0.002)
    assert m.wrap_period_s(100.0) == pytest.approx(0.1)
    assert b.power_w is None and "power_w" in b.unavailable_reasons


def test_rapl_permission_error_is_explained(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 100)})
    real = Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(power.MeterPermissionError, match="CVE-2020-8694"):
        power.RaplMeter(root)


def test_rapl_missing_tree_and_vanished_zone(tmp_path):
    with pytest.raises(power.MeterUnavailable, match="no RAPL zones"):
        power.RaplMeter(tmp_path / "nothing")
    root = rapl_tree(tmp_path / "r", {"intel-rapl:0": ("package-0", 1, 100)})
    m = power.RaplMeter(root)
    (root / "intel-rapl:0" / "energy_uj").unlink()
    with pytest.raises(power.DeviceLost):
        m.snapshot()


# --------------------------------------------------------------------------- null meter, factory, Python sampler

def test_null_meter_reports_none_with_reason():
    m = power.NullMeter("no GPU here")
    snap = m.snapshot()
    assert snap.energy_j is None and snap.power_w is None
    assert set(snap.unavailable_reasons.values()) == {"no GPU here"}
    w = m.window(snap, m.snapshot())
    assert w.energy_j is None and w.energy_unavailable_reason == "no GPU here"
    with pytest.raises(ValueError):
        power.NullMeter("")


def test_make_meter_auto_falls_back_with_reason_and_named_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(power.rapl, "DEFAULT_ROOT", tmp_path)
    monkeypatch.setattr(power.RaplMeter.__init__, "__defaults__", (tmp_path, None))
    auto = power.make_meter("auto", device_kind="cpu")
    assert isinstance(auto, power.NullMeter) and "no RAPL zones" in auto.reason
    with pytest.raises(power.MeterUnavailable):
        power.make_meter("rapl")
    with pytest.raises(ValueError, match="meter must be one of"):
        power.make_meter("wattmeter")


class ConstantMeter(power.PowerMeter):
    name = "constant"

    def __init__(self, watts):
        self.watts = watts

    def _read(self):
        t = power.base.now_s()
        return power.MeterSnapshot(t, self.watts * t, power_w=self.watts, counter=None)


def test_python_sampler_trace():
    s = power.PythonSampler(ConstantMeter(50.0), interval_s=0.002)
    with s:
        import time

        time.sleep(0.2)  # ~100 samples nominal; >= 5 even on a loaded machine
    trace = s.trace()
    assert len(trace) >= 5
    assert all(b > a for a, b in zip(trace.timestamp_s, trace.timestamp_s[1:]))
    span = trace.timestamp_s[-1] - trace.timestamp_s[0]
    assert trace.integrated_energy_j() == pytest.approx(50.0 * span)
    assert trace.counter_energy_j() == pytest.approx(50.0 * span)
    assert trace.mean_power_w() == 50.0
    arrays = trace.as_arrays()
    assert arrays["power_w"].shape == (len(trace),)


def test_nvml_module_never_imports_torch():
    assert "torch" not in nvml_mod.__dict__


def test_multi_meter_one_reading_per_device(nv):
    a_counter = Counter(1_000, 1_000, 3_000)
    b_counter = Counter(5_000, 5_000, 5_500)
    nv_a, nv_b = types.SimpleNamespace(**vars(nv)), types.SimpleNamespace(**vars(nv))
    nv_a.nvmlDeviceGetTotalEnergyConsumption = create_autospec(pynvml.nvmlDeviceGetTotalEnergyConsumption,
                                                               side_effect=a_counter)
    nv_b.nvmlDeviceGetTotalEnergyConsumption = create_autospec(pynvml.nvmlDeviceGetTotalEnergyConsumption,
                                                               side_effect=b_counter)
    nv_b.nvmlDeviceGetTemperature = create_autospec(pynvml.nvmlDeviceGetTemperature, return_value=70)
    m = power.MultiMeter([meter(nv_a), meter(nv_b)])
    start, end = m.snapshot(), m.snapshot()
    assert len(start.parts) == 2 and start.power_w == 500.0 and start.temperature_c == 70
    w = m.window(start, end)
    assert w.energy_j == pytest.approx(2.0 + 0.5)
    assert [p.energy_j for p in w.parts] == [pytest.approx(2.0), pytest.approx(0.5)]
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = Counter(10, 10, 20)
    mixed = power.MultiMeter([meter(nv), power.NullMeter("no second meter")])
    ws = mixed.window(mixed.snapshot(), mixed.snapshot())
    assert ws.energy_j is None and "device 1" in ws.energy_unavailable_reason
    assert "no second meter" in ws.energy_unavailable_reason


def test_the_enforced_power_limit_is_read_read_only(nv):
    assert nvml_mod.enforced_power_limit_w(0, nvml=nv, env={}) == (350.0, None)
    nv.nvmlDeviceGetEnforcedPowerLimit.side_effect = err(pynvml.NVML_ERROR_NOT_SUPPORTED)
    limit, why = nvml_mod.enforced_power_limit_w(0, nvml=nv, env={})
    assert limit is None and "not supported" in why.lower()
    nv.nvmlInit.side_effect = err(pynvml.NVML_ERROR_NOT_SUPPORTED)
    limit, why = nvml_mod.enforced_power_limit_w(0, nvml=nv, env={})
    assert limit is None and why.startswith("NVML: nvmlInit failed")
    assert not any(name.startswith("nvmlDeviceSet") for name in vars(nv))  # nothing here sets anything


def test_a_multimeter_sums_the_power_limits(nv):
    multi = power.MultiMeter([meter(nv), meter(nv)])
    assert multi.snapshot().power_limit_w == 700.0
    assert "not a GPU" in power.NullMeter("not a GPU").snapshot().unavailable_reasons["power_limit_w"]
