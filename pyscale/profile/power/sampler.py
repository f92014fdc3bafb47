"""Power traces: a native NVML sampler thread (pyscale._C, no GIL) and a Python-thread fallback.

    with make_sampler(index=0, interval_s=0.01) as s:
        work()
    trace = s.trace()          # PowerTrace: timestamps (time.monotonic), power in W, energy counter
    trace.integrated_energy_j()   # trapezoid over the power samples
    trace.counter_energy_j()      # from the energy counter samples (when the GPU has one)

The native sampler opens libnvidia-ml at run time (`library=`, else $PYSCALE_NVML_LIBRARY, else
libnvidia-ml.so.1). The Python sampler polls any PowerMeter from a daemon thread; it holds the GIL for
each read, so it perturbs Python-heavy work more and cannot sample faster than the interpreter allows.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pyscale.profile.power.base import DeviceLost, MeterError, MeterUnavailable, PowerMeter

LIBRARY_ENV = "PYSCALE_NVML_LIBRARY"
DEFAULT_LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0


@dataclass(frozen=True)
class PowerTrace:
    """Samples in time order. `power_w[i]` / `energy_j[i]` are None where that read failed."""

    timestamp_s: list[float]
    power_w: list[float | None]
    energy_j: list[float | None] = field(default_factory=list)
    source: str = ""
    error: str | None = None

    def __len__(self) -> int:
        return len(self.timestamp_s)

    def _valid_power(self, t0: float | None, t1: float | None) -> list[tuple[float, float]]:
        return [(t, p) for t, p in zip(self.timestamp_s, self.power_w)
                if p is not None and (t0 is None or t >= t0) and (t1 is None or t <= t1)]

    def mean_power_w(self, t0: float | None = None, t1: float | None = None) -> float | None:
        pts = self._valid_power(t0, t1)
        return sum(p for _, p in pts) / len(pts) if pts else None

    def integrated_energy_j(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Trapezoid integral of power over [first, last] sample inside [t0, t1]; None with < 2 samples."""
        pts = self._valid_power(t0, t1)
        if len(pts) < 2:
            return None
        return sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in zip(pts[:-1], pts[1:]))

    def counter_energy_j(self, t0: float | None = None, t1: float | None = None) -> float | None:
        pts = [(t, e) for t, e in zip(self.timestamp_s, self.energy_j)
               if e is not None and (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        if len(pts) < 2:
            return None
        return pts[-1][1] - pts[0][1]

    def rate_hz(self) -> float | None:
        if len(self.timestamp_s) < 2:
            return None
        return (len(self.timestamp_s) - 1) / (self.timestamp_s[-1] - self.timestamp_s[0])

    def as_arrays(self) -> dict[str, Any]:
        """numpy arrays (NaN where a read failed)."""
        import numpy as np

        nan = float("nan")
        return {"timestamp_s": np.asarray(self.timestamp_s, dtype=np.float64),
                "power_w": np.asarray([nan if p is None else p for p in self.power_w], dtype=np.float64),
                "energy_j": np.asarray([nan if e is None else e for e in self.energy_j], dtype=np.float64)}


class Sampler:
    """Base: `start()`, `stop()`, `trace()`; a context manager that starts and stops."""

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def trace(self) -> PowerTrace:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NativeSampler(Sampler):
    """The C++ sampler in pyscale._C. `uuid` (preferred) or NVML `index` selects the GPU."""

    def __init__(self, *, uuid: str | None = None, index: int = 0, interval_s: float = 0.01,
                 library: str | None = None) -> None:
        from pyscale import _ext

        try:
            native = _ext.extension().NvmlSampler
        except (_ext.ExtensionUnavailable, AttributeError) as exc:
            raise MeterUnavailable(f"native sampler unavailable: {exc}") from exc
        self.library = library or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY
        try:
            self._s = native(self.library, uuid or "", index, float(interval_s))
        except (RuntimeError, ValueError) as exc:
            raise MeterUnavailable(str(exc)) from exc

    def start(self) -> None:
        self._s.start()

    def stop(self) -> None:
        self._s.stop()

    @property
    def running(self) -> bool:
        return bool(self._s.running)

    def trace(self) -> PowerTrace:
        raw = self._s.trace()
        error = self._s.error() or None
        energy = [None if e is None else e / 1000.0 for e in raw["energy_mj"]]
        return PowerTrace(list(raw["timestamp_s"]), list(raw["power_w"]), energy,
                          source=f"native ({self._s.power_source} power)", error=error)

    def check(self) -> None:
        """Raise DeviceLost if the sampler stopped because the GPU was lost."""
        error = self._s.error()
        if error:
            raise DeviceLost(f"native sampler stopped: {error}")


class PythonSampler(Sampler):
    """Poll `meter.snapshot()` from a daemon thread every `interval_s`."""

    def __init__(self, meter: PowerMeter, interval_s: float = 0.05) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive: got {interval_s!r}")
        self.meter, self.interval_s = meter, interval_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t: list[float] = []
        self._p: list[float | None] = []
        self._e: list[float | None] = []
        self._error: str | None = None

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                snap = self.meter.snapshot()
            except MeterError as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                return
            self._t.append(snap.timestamp_s)
            self._p.append(snap.power_w)
            self._e.append(snap.energy_j)
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> None:
        self.stop()
        self._t, self._p, self._e, self._error = [], [], [], None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pyscale-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def trace(self) -> PowerTrace:
        n = min(len(self._t), len(self._p), len(self._e))
        return PowerTrace(self._t[:n], self._p[:n], self._e[:n], source=f"python ({self.meter.name})",
                          error=self._error)


def make_sampler(*, meter: PowerMeter | None = None, uuid: str | None = None, index: int = 0,
                 interval_s: float = 0.01, library: str | None = None, native: bool | None = None) -> Sampler:
    """The native sampler when it can run (native=None or True), else a Python sampler over `meter`."""
    if native is not False:
        try:
            return NativeSampler(uuid=uuid, index=index, interval_s=interval_s, library=library)
        except MeterUnavailable:
            if native:
                raise
    if meter is None:
        raise MeterUnavailable("no native NVML sampler and no meter to poll from Python")
    return PythonSampler(meter, interval_s)
