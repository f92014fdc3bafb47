"""CPU package energy from Linux powercap RAPL (`/sys/class/powercap/intel-rapl:*`, also AMD via the same driver).

Each zone has `name`, `energy_uj` (a counter that wraps to 0 after `max_energy_range_uj`) and subzones
(`intel-rapl:0:0` core, dram, ...). By default the meter sums the top-level zones (packages; psys is
skipped because it already contains them). A wrap is undone per zone; more than one wrap in a window is
undetectable, so windows must stay shorter than the fastest zone's wrap period (`wrap_period_s`).
Since Linux 5.10 (CVE-2020-8694, "Platypus") `energy_uj` is readable by root only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pyscale.profile.power.base import (
    CounterReset,
    DeviceLost,
    MeterPermissionError,
    MeterSnapshot,
    MeterUnavailable,
    PowerMeter,
    now_s,
)

DEFAULT_ROOT = Path("/sys/class/powercap")
_TOP_ZONE = re.compile(r"^intel-rapl:\d+$")

PERMISSION_HINT = (
    "RAPL energy counters are readable by root only since Linux 5.10 (CVE-2020-8694): run as root, or "
    "allow reading with `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj` (until reboot) or a "
    "udev rule"
)


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str
    max_energy_range_uj: int


class RaplMeter(PowerMeter):
    """Energy of the CPU packages (sum of the top-level RAPL zones)."""

    name = "rapl"

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, zones: list[str] | None = None) -> None:
        self.root = Path(root)
        candidates = sorted(p for p in self.root.glob("intel-rapl:*") if _TOP_ZONE.match(p.name)) \
            if self.root.is_dir() else []
        if not candidates:
            raise MeterUnavailable(f"no RAPL zones under {self.root} (not an Intel/AMD host with the powercap "
                                   f"driver loaded, or a VM/container without /sys/class/powercap)")
        self.zones: list[RaplZone] = []
        for path in candidates:
            zone_name = _read_text(path / "name")
            if zones is None and zone_name == "psys":
                continue  # psys (platform) contains the packages: summing both would double count
            if zones is not None and zone_name not in zones:
                continue
            self.zones.append(RaplZone(path, zone_name, int(_read_text(path / "max_energy_range_uj"))))
        if not self.zones:
            raise MeterUnavailable(f"no RAPL zone named {zones} under {self.root}")
        self._last: list[int] | None = None
        self._wraps = [0] * len(self.zones)
        self._read()  # fail now (permission, missing file), not in the middle of a measurement

    def _read_zone_uj(self, zone: RaplZone) -> int:
        return int(_read_text(zone.path / "energy_uj"))

    def _read(self) -> MeterSnapshot:
        raw = [self._read_zone_uj(z) for z in self.zones]
        t = now_s()
        # The cumulative value keeps counting across wraps: undo each wrap seen since the previous read.
        if self._last is not None:
            for i, (prev, cur) in enumerate(zip(self._last, raw)):
                if cur < prev:
                    self._wraps[i] += 1
        self._last = raw
        total_uj = sum(r + w * z.max_energy_range_uj for r, w, z in zip(raw, self._wraps, self.zones))
        return MeterSnapshot(t, total_uj * 1e-6, counter=total_uj, unavailable_reasons={
            "power_w": "RAPL has no instantaneous power reading (sample the counter instead)",
            "sm_clock_mhz": "not a GPU", "mem_clock_mhz": "not a GPU", "temperature_c": "RAPL reports no temperature",
            "throttle_reasons": "not a GPU", "power_limit_w": "not a GPU"})

    def energy_delta_j(self, start: MeterSnapshot, end: MeterSnapshot) -> float:
        assert start.counter is not None and end.counter is not None
        if end.counter < start.counter:  # cannot happen after the per-zone unwrap unless the driver was reloaded
            raise CounterReset(f"rapl: the unwrapped counter went backwards ({start.counter} µJ -> {end.counter} µJ)")
        return (end.counter - start.counter) * 1e-6

    def wrap_period_s(self, power_w: float) -> float:
        """How long a window may last at `power_w` per zone before a second wrap could hide."""
        return min(z.max_energy_range_uj for z in self.zones) * 1e-6 / power_w

    @property
    def description(self) -> str:
        return f"rapl ({', '.join(z.name for z in self.zones)})"


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError as exc:
        raise MeterPermissionError(f"cannot read {path}: {PERMISSION_HINT}") from exc
    except FileNotFoundError as exc:
        raise DeviceLost(f"RAPL zone file {path} disappeared") from exc
    except OSError as exc:
        raise MeterUnavailable(f"cannot read {path}: {exc}") from exc
