"""NVIDIA GPU energy, power, clocks, temperature and throttle reasons through NVML (nvidia-ml-py).

- Energy: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver loaded; Volta and newer). The
  counter is 64-bit: a decrease from the upper half of the range is a wrap, any other decrease a reset.
- Power: the instantaneous field `NVML_FI_DEV_POWER_INSTANT` where the driver has it; else
  `nvmlDeviceGetPowerUsage`, which on Ampere and newer is a ~1 s average (the snapshot says which).
- Device: the *visible* CUDA index (CUDA_VISIBLE_DEVICES applies) is mapped to an NVML handle by UUID,
  since NVML ignores CUDA_VISIBLE_DEVICES and may order devices differently from CUDA.
Errors map onto the meter exception tree: no library/driver -> MeterUnavailable, NO_PERMISSION ->
MeterPermissionError, GPU_IS_LOST -> DeviceLost. A field the GPU does not support is None with a reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from pyscale.profile.power.base import (
    CounterReset,
    DeviceLost,
    MeterError,
    MeterPermissionError,
    MeterSnapshot,
    MeterUnavailable,
    PowerMeter,
    now_s,
)

COUNTER_RANGE_MJ = 2**64

# Throttle ("clocks event") reason bits, named as NVML names them; read from the module when present.
_REASON_NAMES = (
    ("GpuIdle", 0x1), ("ApplicationsClocksSetting", 0x2), ("SwPowerCap", 0x4), ("HwSlowdown", 0x8),
    ("SyncBoost", 0x10), ("SwThermalSlowdown", 0x20), ("HwThermalSlowdown", 0x40),
    ("HwPowerBrakeSlowdown", 0x80), ("DisplayClockSetting", 0x100),
)


def decode_throttle_reasons(mask: int) -> tuple[str, ...]:
    return tuple(name for name, bit in _REASON_NAMES if mask & bit)


def _load_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise MeterUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from exc
    return pynvml


def _visible_uuid(index: int, env: Mapping[str, str]) -> str | None:
    """The UUID of visible CUDA device `index`: from torch when it is loaded, else from CUDA_VISIBLE_DEVICES."""
    import sys

    torch = sys.modules.get("torch")  # never import torch from a meter; use it if the caller has
    if torch is not None:
        try:
            if torch.cuda.is_available():
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        except Exception:
            pass
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            raise MeterUnavailable(f"CUDA device {index} is not visible: CUDA_VISIBLE_DEVICES={visible!r}")
        entry = entries[index]
        if entry.startswith(("GPU-", "MIG-")):
            return entry
    return None


def _nvml_index(index: int, env: Mapping[str, str]) -> int:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return index
    entry = [e.strip() for e in visible.split(",") if e.strip()][index]
    if not entry.isdigit():
        raise MeterUnavailable(f"cannot map CUDA_VISIBLE_DEVICES entry {entry!r} to an NVML device")
    # Integer entries are CUDA indices; they equal NVML's only with CUDA_DEVICE_ORDER=PCI_BUS_ID.
    return int(entry)


class NvmlDevice:
    """nvmlInit and one GPU's handle, with NVML's errors as meter errors: what every NVML user here shares
    (the meter reads through it, `pyscale.profile.power.limits` sets limits through it).

    `index` is the visible CUDA index; `uuid` overrides the mapping; `nvml` injects a pynvml-like module."""

    def __init__(self, index: int = 0, *, uuid: str | None = None, nvml: ModuleType | Any | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.nv = nvml if nvml is not None else _load_pynvml()
        self.index = index
        env = os.environ if env is None else env
        try:
            self.nv.nvmlInit()
        except self.nv.NVMLError as exc:
            raise MeterUnavailable(f"nvmlInit failed: {exc} (no NVIDIA driver, or no GPU on this machine)") from exc
        self._open = True
        try:
            self.uuid = uuid or _visible_uuid(index, env)
            if self.uuid is not None:
                self.handle = self.call(self.nv.nvmlDeviceGetHandleByUUID, self.uuid)
                self.mapping = f"UUID {self.uuid}"
            else:
                nvml_index = _nvml_index(index, env)
                self.handle = self.call(self.nv.nvmlDeviceGetHandleByIndex, nvml_index)
                self.uuid = _text(self.call(self.nv.nvmlDeviceGetUUID, self.handle))
                self.mapping = (f"NVML index {nvml_index} (no UUID known; assumes CUDA_DEVICE_ORDER=PCI_BUS_ID "
                                f"when devices differ)")
        except BaseException:
            self.close()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            raise self.translate(exc, fn) from exc

    def translate(self, exc: Exception, fn: Callable[..., Any]) -> MeterError:
        what = getattr(fn, "__name__", str(fn))
        code = getattr(exc, "value", None)
        if code == getattr(self.nv, "NVML_ERROR_GPU_IS_LOST", 15):
            return DeviceLost(f"GPU {self.index} is lost ({what}: {exc}); it needs a reset or a reboot")
        if code == getattr(self.nv, "NVML_ERROR_NO_PERMISSION", 4):
            return MeterPermissionError(f"{what}: no permission to read GPU {self.index} ({exc}); "
                                        f"an administrator may have restricted NVML queries")
        if code == getattr(self.nv, "NVML_ERROR_NOT_SUPPORTED", 3):
            return MeterUnavailable(f"{what} is not supported on GPU {self.index} ({exc})")
        return MeterError(f"{what} failed on GPU {self.index}: {exc}")

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            with contextlib.suppress(self.nv.NVMLError):
                self.nv.nvmlShutdown()


class NvmlMeter(PowerMeter):
    """One GPU's meter. `index` is the visible CUDA index; `uuid` overrides the mapping; `nvml` injects pynvml."""

    name = "nvml"

    def __init__(self, index: int = 0, *, uuid: str | None = None, nvml: ModuleType | Any | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.device = NvmlDevice(index, uuid=uuid, nvml=nvml, env=env)
        self.nv, self.index, self.handle = self.device.nv, index, self.device.handle
        self.uuid, self.mapping = self.device.uuid, self.device.mapping
        try:
            self._energy_reason: str | None = None
            self._instant_power = hasattr(self.nv, "NVML_FI_DEV_POWER_INSTANT")
            # Fail now on a meter that cannot measure energy at all? No: report it per window, with the reason.
            self._read()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ NVML calls mapped to meter errors

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.device.call(fn, *args)

    def _translate(self, exc: Exception, fn: Callable[..., Any]) -> MeterError:
        return self.device.translate(exc, fn)

    def _optional(self, reasons: dict[str, str], field: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A reading that may be unsupported: None + reason then; lost GPUs and other errors raise."""
        try:
            return self._call(fn, *args)
        except MeterUnavailable as exc:
            reasons[field] = str(exc)
            return None

    # ------------------------------------------------------------------ readings

    def _power_w(self, reasons: dict[str, str]) -> float | None:
        if self._instant_power:
            try:
                values = self.nv.nvmlDeviceGetFieldValues(self.handle, [self.nv.NVML_FI_DEV_POWER_INSTANT])
                value = values[0]
                if getattr(value, "nvmlReturn", 0) == 0:
                    return float(value.value.uiVal) / 1000.0  # mW
            except self.nv.NVMLError as exc:
                err = self._translate(exc, self.nv.nvmlDeviceGetFieldValues)
                if not isinstance(err, MeterUnavailable):
                    raise err from exc
            self._instant_power = False  # unsupported field: use the averaged reading from now on
        mw = self._optional(reasons, "power_w", self.nv.nvmlDeviceGetPowerUsage, self.handle)
        return None if mw is None else float(mw) / 1000.0

    def _read(self) -> MeterSnapshot:
        reasons: dict[str, str] = {}
        energy_mj = None
        if self._energy_reason is None:
            energy_mj = self._optional(reasons, "energy_j", self.nv.nvmlDeviceGetTotalEnergyConsumption, self.handle)
            if energy_mj is None:
                # Unsupported once is unsupported always (pre-Volta): stop asking.
                self._energy_reason = reasons["energy_j"] + " (NVML's energy counter needs a Volta or newer GPU)"
        if self._energy_reason is not None:
            reasons["energy_j"] = self._energy_reason
        t = now_s()
        power_w = self._power_w(reasons)
        sm = self._optional(reasons, "sm_clock_mhz", self.nv.nvmlDeviceGetClockInfo, self.handle,
                            self.nv.NVML_CLOCK_SM)
        mem = self._optional(reasons, "mem_clock_mhz", self.nv.nvmlDeviceGetClockInfo, self.handle,
                             self.nv.NVML_CLOCK_MEM)
        temp = self._optional(reasons, "temperature_c", self.nv.nvmlDeviceGetTemperature, self.handle,
                              self.nv.NVML_TEMPERATURE_GPU)
        reasons_fn = getattr(self.nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self.nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = self._optional(reasons, "throttle_reasons", reasons_fn, self.handle)
        limit_mw = self._optional(reasons, "power_limit_w", self.nv.nvmlDeviceGetEnforcedPowerLimit, self.handle)
        return MeterSnapshot(
            timestamp_s=t,
            energy_j=None if energy_mj is None else float(energy_mj) / 1000.0,
            counter=None if energy_mj is None else int(energy_mj),
            power_w=power_w,
            sm_clock_mhz=None if sm is None else float(sm),
            mem_clock_mhz=None if mem is None else float(mem),
            temperature_c=None if temp is None else float(temp),
            throttle_reasons=None if mask is None else decode_throttle_reasons(int(mask)),
            power_limit_w=None if limit_mw is None else float(limit_mw) / 1000.0,
            unavailable_reasons=reasons,
        )

    def energy_delta_j(self, start: MeterSnapshot, end: MeterSnapshot) -> float:
        assert start.counter is not None and end.counter is not None
        start_mj, end_mj = start.counter, end.counter
        if end_mj >= start_mj:
            return (end_mj - start_mj) / 1000.0
        if start_mj >= COUNTER_RANGE_MJ // 2:  # a 64-bit wrap (only plausible from the upper half)
            return ((COUNTER_RANGE_MJ - start_mj) + end_mj) / 1000.0
        raise CounterReset(f"nvml: GPU {self.index}'s energy counter went backwards ({start_mj} mJ -> {end_mj} mJ): "
                           f"the driver was reloaded during the window")

    def close(self) -> None:
        self.device.close()

    @property
    def description(self) -> str:
        return f"nvml (GPU {self.index}, {self.mapping})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def enforced_power_limit_w(index: int, **meter_args: Any) -> tuple[float | None, str | None]:
    """The power limit NVML enforces on visible CUDA device `index` now, in W, read-only; or (None, why)."""
    try:
        meter = NvmlMeter(index, **meter_args)
    except MeterError as exc:
        return None, f"NVML: {exc}"
    try:
        snap = meter.snapshot()
        return snap.power_limit_w, snap.unavailable_reasons.get("power_limit_w")
    except MeterError as exc:
        return None, f"NVML: {exc}"
    finally:
        meter.close()
