"""A meter that measures nothing and says why: every energy/power value is None with its reason."""

from __future__ import annotations

from pyscale.profile.power.base import MeterSnapshot, PowerMeter, now_s


class NullMeter(PowerMeter):
    name = "null"
    has_energy_counter = False

    def __init__(self, reason: str) -> None:
        if not reason or not reason.strip():
            raise ValueError("NullMeter needs the reason nothing is measured")
        self.reason = reason

    def _read(self) -> MeterSnapshot:
        fields = ("energy_j", "power_w", "sm_clock_mhz", "mem_clock_mhz", "temperature_c", "throttle_reasons",
                  "power_limit_w")
        return MeterSnapshot(now_s(), None, unavailable_reasons=dict.fromkeys(fields, self.reason))

    @property
    def description(self) -> str:
        return f"null ({self.reason})"
