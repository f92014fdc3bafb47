"""The PowerMeter interface, its readings and its exception tree.

A meter reads a cumulative energy counter (joules, wrap-around already handled), instantaneous power and,
where the hardware has them, clocks, temperature and throttle reasons. Energy of a window is the
difference of two counter readings taken with the device synchronised (the profiler does that).
A value a meter cannot give is None with a reason -- never 0; a meter that cannot work at all raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class MeterError(RuntimeError):
    """Base of every power-meter error."""


class MeterUnavailable(MeterError):
    """No such meter here (no library, no driver, no device, no sysfs zone, unsupported counter)."""


class MeterPermissionError(MeterError, PermissionError):
    """The meter exists but this process may not read it; the message says how to allow it."""


class DeviceLost(MeterError):
    """The device disappeared (NVML_ERROR_GPU_IS_LOST, a vanished sysfs zone): readings stop here."""


class CounterReset(MeterError):
    """The energy counter went backwards without wrapping (a driver reload): the window is invalid."""


@dataclass(frozen=True)
class MeterSnapshot:
    """One reading. `timestamp_s` is time.monotonic(); energy is the meter's cumulative counter."""

    timestamp_s: float
    energy_j: float | None
    power_w: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temperature_c: float | None = None
    throttle_reasons: tuple[str, ...] | None = None
    power_limit_w: float | None = None  # the enforced power limit (NVML); None with a reason elsewhere
    # the raw counter in the meter's own unit (mJ for NVML, µJ for RAPL): exact integer arithmetic
    counter: int | None = None
    # field name -> why it is None (only for fields that are None)
    unavailable_reasons: dict[str, str] = field(default_factory=dict)
    # one snapshot per device when the meter reads several (MultiMeter)
    parts: tuple[MeterSnapshot, ...] = ()


@dataclass(frozen=True)
class EnergyWindow:
    """Energy between two snapshots of one meter (`parts`: one window per device of a MultiMeter)."""

    start: MeterSnapshot
    end: MeterSnapshot
    energy_j: float | None
    energy_unavailable_reason: str | None = None
    parts: tuple[EnergyWindow, ...] = ()

    @property
    def time_s(self) -> float:
        return self.end.timestamp_s - self.start.timestamp_s

    @property
    def avg_power_w(self) -> float | None:
        if self.energy_j is None or self.time_s <= 0:
            return None
        return self.energy_j / self.time_s


class PowerMeter:
    """Base class. Subclasses implement `_read()`; `energy_delta_j` handles wrap-around of their counter."""

    name = "meter"
    #: True when energy_j comes from a hardware counter (not from integrating power samples)
    has_energy_counter = True

    @property
    def measures_energy(self) -> bool:
        """False for a meter that can read nothing (NullMeter): no window needs filling for it."""
        return self.has_energy_counter

    def snapshot(self) -> MeterSnapshot:
        return self._read()

    def _read(self) -> MeterSnapshot:  # pragma: no cover - abstract
        raise NotImplementedError

    def power_w(self) -> float | None:
        """Instantaneous power in W (None with the reason in the snapshot when not available)."""
        return self.snapshot().power_w

    def energy_delta_j(self, start: MeterSnapshot, end: MeterSnapshot) -> float:
        """Energy between two snapshots; subclasses override to undo their counter's wrap."""
        assert start.energy_j is not None and end.energy_j is not None
        if end.energy_j < start.energy_j:
            raise CounterReset(f"{self.name}: the energy counter went backwards "
                               f"({start.energy_j} J -> {end.energy_j} J)")
        return end.energy_j - start.energy_j

    def window(self, start: MeterSnapshot, end: MeterSnapshot) -> EnergyWindow:
        if start.energy_j is None or end.energy_j is None:
            reason = (start.unavailable_reasons.get("energy_j") or end.unavailable_reasons.get("energy_j")
                      or f"{self.name} gave no energy reading")
            return EnergyWindow(start, end, None, reason)
        delta = self.energy_delta_j(start, end)
        if delta <= 0:
            # A counter that did not move over a window is a stale or coarse counter, not 0 J of work.
            return EnergyWindow(start, end, None, f"{self.name}: the energy counter did not advance over "
                                                  f"{end.timestamp_s - start.timestamp_s:.3f} s (too coarse or stale)")
        return EnergyWindow(start, end, delta)

    def close(self) -> None:
        """Release the meter's resources (idempotent)."""

    def __enter__(self) -> PowerMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def description(self) -> str:
        return self.name


def now_s() -> float:
    return time.monotonic()


class MultiMeter(PowerMeter):
    """Several meters read as one (e.g. every GPU a process drives): one reading per device, kept in
    `snapshot().parts` and `window().parts`; energy and power are summed, clocks are the minimum,
    temperature the maximum, throttle reasons the union. Energy is unavailable if any device's is."""

    name = "multi"

    def __init__(self, meters: list[PowerMeter]) -> None:
        if not meters:
            raise ValueError("MultiMeter needs at least one meter")
        self.meters = list(meters)

    def _read(self) -> MeterSnapshot:
        parts = tuple(m.snapshot() for m in self.meters)
        reasons: dict[str, str] = {}

        def combine(name: str, fn: object) -> float | None:
            values = [getattr(p, name) for p in parts]
            missing = [i for i, v in enumerate(values) if v is None]
            if missing:
                why = parts[missing[0]].unavailable_reasons.get(name, "no reading")
                reasons[name] = f"device {missing[0]} ({self.meters[missing[0]].description}): {why}"
                return None
            return fn(values)  # type: ignore[operator]

        throttle = combine("throttle_reasons", lambda vs: tuple(sorted({r for v in vs for r in v})))
        return MeterSnapshot(
            timestamp_s=max(p.timestamp_s for p in parts), energy_j=combine("energy_j", sum),
            power_w=combine("power_w", sum), sm_clock_mhz=combine("sm_clock_mhz", min),
            mem_clock_mhz=combine("mem_clock_mhz", min), temperature_c=combine("temperature_c", max),
            throttle_reasons=throttle, power_limit_w=combine("power_limit_w", sum),  # the devices' power budget
            unavailable_reasons=reasons, parts=parts)

    def window(self, start: MeterSnapshot, end: MeterSnapshot) -> EnergyWindow:
        parts = tuple(m.window(a, b) for m, a, b in zip(self.meters, start.parts, end.parts))
        missing = [i for i, w in enumerate(parts) if w.energy_j is None]
        if missing:
            i = missing[0]
            return EnergyWindow(start, end, None, f"device {i} ({self.meters[i].description}): "
                                                  f"{parts[i].energy_unavailable_reason}", parts)
        return EnergyWindow(start, end, sum(w.energy_j for w in parts), None, parts)  # type: ignore[misc]

    def close(self) -> None:
        for m in self.meters:
            m.close()

    @property
    def measures_energy(self) -> bool:
        return all(m.measures_energy for m in self.meters)

    @property
    def description(self) -> str:
        return "multi [" + "; ".join(m.description for m in self.meters) + "]"
