"""GPU power limits: the allowed range (read-only), a `--power-limits` spec, and setting a limit for the
duration of a measurement, always restored. Imports no torch.

    allowed = power_limit_range(0)                         # NVML's constraints and the enforced limit, W
    watts = parse_power_limits("200,300,max", allowed)     # every check before anything is measured
    with power_limit(300, index=0) as applied:             # set, read back, ... restored on the way out
        measure()                                          # applied.enforced_w: what NVML enforces now

Setting a limit needs root (or an administrator's grant); without it, or on a GPU that cannot, entering
`power_limit` raises `CannotSetPowerLimit` having changed nothing. The original limit (NVML's
power-management limit, the setting itself) is restored on every way out: normal exit, an exception,
Ctrl-C, SIGTERM or SIGHUP (a handler for the duration that restores and then hands the signal on to the
handler before it, or dies of it as the process would have), interpreter exit (atexit), and a SIGKILL of
this process: a guard child (`limit_guard.py`, torch-free) waits on a pipe and restores the limit when the
pipe closes without "done". The guard loads the same NVML module as the caller: pynvml, or the file of an
injected module (`nvml=`), so a fake NVML module file works in the guard too. A forked child that outlives
this process keeps the pipe open, and the guard waits for it.

Signal handlers can only be installed from the main thread; elsewhere the guard and atexit remain.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TypeVar

from pyscale.profile.power.base import MeterError
from pyscale.profile.power.nvml import NvmlDevice

T = TypeVar("T")
GUARD_SCRIPT = Path(__file__).with_name("limit_guard.py")
READ_BACK_TOLERANCE_W = 1.0
_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class CannotSetPowerLimit(MeterError):
    """NVML refused to set a power limit here (no permission: not root; or a GPU that does not support it).
    Nothing was changed; measure at the current limit instead."""


@dataclass(frozen=True)
class PowerLimitRange:
    """What NVML allows on GPU `index` (its power-management limit constraints) and enforces now, in W."""

    index: int
    min_w: float
    max_w: float
    enforced_w: float | None

    def __str__(self) -> str:
        return f"{self.min_w:g}-{self.max_w:g} W"


@dataclass(frozen=True)
class AppliedLimit:
    """A limit set by `power_limit`: what was asked, what NVML enforces (read back), what it was before."""

    index: int
    requested_w: float
    enforced_w: float | None
    original_w: float

    @property
    def note(self) -> str | None:
        """Why the enforced limit is not the one asked for (None when it is, within 1 W)."""
        if self.enforced_w is None:
            return f"GPU {self.index}'s enforced power limit could not be read back after setting {self.requested_w:g} W"
        if abs(self.enforced_w - self.requested_w) > READ_BACK_TOLERANCE_W:
            return (f"GPU {self.index} enforces {self.enforced_w:g} W, not the {self.requested_w:g} W set "
                    f"(another limit, e.g. the board's or a thermal one, is lower)")
        return None


def _w(mw: Any) -> float:
    return float(mw) / 1000.0


def _mw(watts: float) -> int:
    return int(round(watts * 1000.0))


def power_limit_range(index: int = 0, *, nvml: ModuleType | Any | None = None,
                      env: Mapping[str, str] | None = None) -> PowerLimitRange:
    """GPU `index`'s allowed power limits and its enforced limit now, read-only. Raises a MeterError when
    NVML cannot say (no driver, no nvidia-ml-py, unsupported)."""
    device = NvmlDevice(index, nvml=nvml, env=env)
    try:
        nv = device.nv
        low, high = device.call(nv.nvmlDeviceGetPowerManagementLimitConstraints, device.handle)
        enforced = device.call(nv.nvmlDeviceGetEnforcedPowerLimit, device.handle)
        return PowerLimitRange(index, _w(low), _w(high), _w(enforced))
    finally:
        device.close()


def parse_power_limits(spec: str, allowed: PowerLimitRange) -> tuple[float, ...]:
    """`spec` ("200,300,400,max") as watts in the order given; `max` is the range's maximum. Rejects empty
    items, non-numbers, values <= 0, values outside `allowed` and duplicates (after resolving max)."""
    def bad(what: str) -> ValueError:
        return ValueError(f"power_limits: {what}; GPU {allowed.index} allows {allowed} "
                          f"(e.g. {allowed.min_w:g},{allowed.max_w:g} or max)")

    items = [item.strip() for item in str(spec).split(",")]
    if any(not item for item in items):
        raise bad(f"an empty item in {spec!r}; give watts separated by commas")
    watts: list[float] = []
    for item in items:
        if item.lower() == "max":
            value = allowed.max_w
        else:
            try:
                value = float(item.removesuffix("W").removesuffix("w"))
            except ValueError:
                raise bad(f"{item!r} is not a number of watts") from None
            if not math.isfinite(value):
                raise bad(f"{item!r} is not a number of watts")
            if value <= 0:
                raise bad(f"{item} W is not a power limit (it must be > 0 W)")
            if not allowed.min_w <= value <= allowed.max_w:
                raise bad(f"{item} W is outside the allowed range")
        if value in watts:
            resolved = f" (max is {allowed.max_w:g} W)" if "max" in (i.lower() for i in items) else ""
            raise bad(f"{value:g} W is given twice{resolved}; give each limit once")
        watts.append(value)
    return tuple(watts)


def _guard_source(nvml: ModuleType | Any | None) -> str:
    """What the guard process loads as NVML: pynvml, or the file of an injected module."""
    if nvml is None:
        return "pynvml"
    path = getattr(nvml, "__file__", None)
    if not isinstance(nvml, ModuleType) or not path:
        raise ValueError("guard: an injected nvml must be a module with a file, so that the guard process can "
                         "load it too; pass guard=False to go without the guard")
    return str(path)


class _Guard:
    """The child that restores `restore_mw` on GPU `uuid` unless told "done" before its pipe closes."""

    def __init__(self, nvml_source: str, uuid: str, restore_mw: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(GUARD_SCRIPT), nvml_source, uuid, str(restore_mw)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            ready = self.proc.stdout.readline()
        except BaseException:  # Ctrl-C while it starts: nothing is set yet, so it has nothing to restore
            self.finish(restored=True)
            raise
        if ready.strip() != b"ready":  # it could not load NVML: better to change nothing than to go unguarded
            self.proc.stdin.close()
            rc = self.proc.wait()
            raise MeterError(f"the power-limit guard process did not start (exit status {rc}; its error is above)")
        self.proc.stdout.close()

    def finish(self, restored: bool) -> bool:
        """Release the guard; True when the limit is restored (here, or by the guard when not here)."""
        assert self.proc.stdin is not None
        try:
            if restored:
                self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # the guard is gone already
            pass
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return restored or rc == 0


class power_limit:  # noqa: N801 - used as a function: `with power_limit(300):`
    """Set GPU `index`'s power limit to `watts` for the duration of the block, yield an `AppliedLimit` (with
    the enforced limit read back) and always restore the original limit (see the module's docstring).

    `nvml`: a pynvml-like module (tests inject a fake); `guard=False` goes without the guard process.
    Raises `CannotSetPowerLimit` (having changed nothing) when NVML may not set limits here."""

    def __init__(self, watts: float, *, index: int = 0, nvml: ModuleType | Any | None = None,
                 env: Mapping[str, str] | None = None, guard: bool = True) -> None:
        if not (isinstance(watts, (int, float)) and math.isfinite(watts) and watts > 0):
            raise ValueError(f"watts must be a power limit > 0 W: got {watts!r}")
        self.watts, self.index, self.nvml, self.env = float(watts), index, nvml, env
        self.guard_source = _guard_source(nvml) if guard else None
        self._device: NvmlDevice | None = None
        self._guard: _Guard | None = None
        self._previous: dict[int, Any] = {}
        self._changed = self._restored = False

    def __enter__(self) -> AppliedLimit:
        self._device = device = NvmlDevice(self.index, nvml=self.nvml, env=self.env)
        nv = device.nv
        try:
            self._original_mw = int(device.call(nv.nvmlDeviceGetPowerManagementLimit, device.handle))
            if self.guard_source is not None:
                self._guard = _Guard(self.guard_source, device.uuid, self._original_mw)
            self._install()
            self._changed = True  # from here on, whatever happens, set the original back
            try:
                nv.nvmlDeviceSetPowerManagementLimit(device.handle, _mw(self.watts))
            except nv.NVMLError as exc:
                code = getattr(exc, "value", None)
                if code in (getattr(nv, "NVML_ERROR_NO_PERMISSION", 4), getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3)):
                    self._changed = False
                    why = "not permitted: needs root" if code == getattr(nv, "NVML_ERROR_NO_PERMISSION", 4) \
                        else "this GPU does not support it"
                    raise CannotSetPowerLimit(f"NVML: {exc}; {why}") from exc
                raise device.translate(exc, nv.nvmlDeviceSetPowerManagementLimit) from exc
            enforced = device.call(nv.nvmlDeviceGetEnforcedPowerLimit, device.handle)
            return AppliedLimit(self.index, self.watts, _w(enforced), _w(self._original_mw))
        except BaseException:
            self._finish()
            raise

    def __exit__(self, *exc: object) -> None:
        self._finish()

    # ------------------------------------------------------------------ every way out

    def _install(self) -> None:
        atexit.register(self._restore)
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _uninstall(self) -> None:
        atexit.unregister(self._restore)
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:  # leave a handler someone set since alone
                signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._restore()
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: die of the signal, as without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _restore(self) -> None:
        if self._restored:
            return
        self._restored = True  # first, so that a signal during the restore does not start another
        failure: BaseException | None = None
        if self._changed and self._device is not None:
            try:
                self._device.call(self._device.nv.nvmlDeviceSetPowerManagementLimit, self._device.handle,
                                  self._original_mw)
            except MeterError as exc:
                failure = exc
        restored = failure is None
        if self._guard is not None:
            restored = self._guard.finish(restored)  # on a failure here the guard tries too
        if not restored:
            raise MeterError(f"could not restore GPU {self.index}'s power limit to {_w(self._original_mw):g} W "
                             f"({failure}); set it back with `nvidia-smi -i {self._device.uuid} -pl "
                             f"{_w(self._original_mw):g}` (as root)") from failure

    def _finish(self) -> None:
        try:
            self._restore()
        finally:
            self._uninstall()
            if self._device is not None:
                self._device.close()


def sweep_power_limits(watts: Sequence[float], measure: Callable[[AppliedLimit | None], T], *,
                       allowed: PowerLimitRange, say: Callable[[str], None],
                       setting: Callable[..., contextlib.AbstractContextManager[AppliedLimit]] = power_limit,
                       **setting_args: Any) -> list[T]:
    """`measure(applied)` under each limit of `watts` in turn (set, measure, restore), its results in order.
    `measure` warms up again itself (the first timings after a change run at the old clocks); `say` gets
    one line per limit. Where limits cannot be set (`CannotSetPowerLimit` at the first one), `say` gets one
    line and `measure(None)` runs once at the current limit. `setting`: the context that sets a limit."""
    results: list[T] = []
    for i, w in enumerate(watts, 1):
        with contextlib.ExitStack() as stack:
            try:
                applied = stack.enter_context(setting(w, index=allowed.index, **setting_args))
            except CannotSetPowerLimit as exc:
                if results:
                    raise
                refused = exc
                break
            note = f"; {applied.note}" if applied.note else ""
            say(f"power limit {w:g} W ({i} of {len(watts)}{note}; the original {applied.original_w:g} W is "
                "restored afterwards)")
            results.append(measure(applied))
    else:
        return results
    current = "the current limit" + (f" {allowed.enforced_w:g} W" if allowed.enforced_w is not None else "")
    say(f"cannot set GPU power limits here ({refused}): measuring at {current} only")
    return [measure(None)]


__all__ = ["AppliedLimit", "CannotSetPowerLimit", "PowerLimitRange", "parse_power_limits", "power_limit",
           "power_limit_range", "sweep_power_limits"]
