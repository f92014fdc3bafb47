"""Was a timing taken on a quiet machine? The documented criterion, recorded with every measurement.

A timing is `stable` when every condition of its device's criterion was checked and holds:

* all devices: the repetitions agree, p80 / p20 <= `SPREAD_MAX` (1.5);
* CPU: nothing else took the cores it ran on, CPU time / (wall time x threads) >= `CPU_SHARE_MIN` (0.8)
  over the timed repetitions (a contended core shows as a lower share: the process waited for it);
* GPU: no other process computing on the GPU (NVML's compute processes, our own left out) and no
  throttling (NVML's power-cap, thermal or hardware-slowdown clock reasons) at either edge of the timing.

A condition that cannot be checked (no NVML, no CPU time) makes the timing not stable, and says why: a
timing is called stable only when the criterion was seen to hold. Measurements record the verdict in
`extra["stable"]` and the figures behind it in `extra["stability"]`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

SPREAD_MAX = 1.5
CPU_SHARE_MIN = 0.8
# NVML clock-event reasons that slow the GPU down (idle, application clocks, sync boost and display clocks do not)
THROTTLING = ("SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown")
CRITERION = {
    "cpu": f"p80/p20 <= {SPREAD_MAX} and CPU time / (wall x threads) >= {CPU_SHARE_MIN}",
    "cuda": f"p80/p20 <= {SPREAD_MAX}, no other compute process on the GPU, no throttling (NVML) at either edge",
}


@dataclass
class GpuState:
    """What NVML says about the GPU at one instant: other compute processes and throttle reasons."""

    other_processes: list[int] | None = None
    throttling: list[str] | None = None
    unavailable_reason: str | None = None
    notes: list[str] = field(default_factory=list)


def gpu_state(index: int) -> GpuState:
    """NVML's view of visible CUDA device `index` now; unavailable (with the reason) without NVML."""
    from pyscale.profile.power import MeterError, NvmlMeter

    try:
        meter = NvmlMeter(index)
    except MeterError as exc:
        return GpuState(unavailable_reason=f"NVML: {exc}")
    try:
        nv, state = meter.nv, GpuState()
        try:
            procs = list(nv.nvmlDeviceGetComputeRunningProcesses(meter.handle))
            pids = [int(p.pid) for p in procs]
            own = os.getpid()
            if own in pids or not pids:
                state.other_processes = [p for p in pids if p != own]
            else:  # NVML reports PIDs of another namespace: ours cannot be told apart, count it as one of them
                state.other_processes = pids[1:]
                state.notes.append(f"NVML lists PIDs {pids} without ours ({own}): one is taken to be this process")
        except nv.NVMLError as exc:
            state.unavailable_reason = f"NVML compute processes: {exc}"
        snap = meter.snapshot()
        if snap.throttle_reasons is None:
            why = snap.unavailable_reasons.get("throttle_reasons", "not reported")
            state.unavailable_reason = state.unavailable_reason or f"NVML throttle reasons: {why}"
        else:
            state.throttling = [r for r in snap.throttle_reasons if r in THROTTLING]
        return state
    finally:
        meter.close()


def assess(times_s: tuple[float, ...] | list[float], device_kind: str, *, cpu_time_s: float | None = None,
           wall_s: float | None = None, threads: int | None = None,
           gpu_edges: tuple[GpuState, GpuState] | None = None) -> dict[str, Any]:
    """The verdict and its figures for one timing: {"stable", "criterion", "spread", ..., "reasons"}.

    times_s: the timed repetitions. CPU: the process CPU time, wall time and thread count over them.
    GPU: NVML's state before and after them (`gpu_state`)."""
    kind = "cuda" if device_kind == "cuda" else "cpu"
    reasons: list[str] = []
    out: dict[str, Any] = {"criterion": CRITERION[kind]}
    xs = sorted(float(t) for t in times_s)
    if not xs:
        reasons.append("no repetitions")
    else:
        def q(p: float) -> float:
            pos = p * (len(xs) - 1)
            lo = int(pos)
            hi = min(lo + 1, len(xs) - 1)
            return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
        spread = q(0.8) / q(0.2) if q(0.2) > 0 else float("inf")
        out["spread"] = spread
        if not spread <= SPREAD_MAX:
            reasons.append(f"p80/p20 = {spread:.2f} > {SPREAD_MAX}")
    if kind == "cpu":
        if cpu_time_s is None or not wall_s or not threads:
            reasons.append("CPU time not measured: the share of the cores it got is unknown")
        else:
            share = cpu_time_s / (wall_s * threads)
            out.update(cpu_share=share, cpu_time_s=cpu_time_s, wall_s=wall_s, threads=threads)
            if share < CPU_SHARE_MIN:
                reasons.append(f"CPU time / (wall x {threads} thread(s)) = {share:.2f} < {CPU_SHARE_MIN}: "
                               "the cores were shared")
    else:
        if gpu_edges is None:
            reasons.append("GPU state not read (no NVML check)")
        else:
            others: set[int] = set()
            throttling: set[str] = set()
            for edge in gpu_edges:
                if edge.unavailable_reason:
                    reasons.append(f"cannot check: {edge.unavailable_reason}")
                others.update(edge.other_processes or ())
                throttling.update(edge.throttling or ())
                out.setdefault("notes", []).extend(edge.notes)
            out.update(other_processes=sorted(others), throttling=sorted(throttling))
            if others:
                reasons.append(f"other compute processes on the GPU: {sorted(others)}")
            if throttling:
                reasons.append(f"throttling: {', '.join(sorted(throttling))}")
    out["reasons"] = sorted(set(reasons), key=reasons.index)
    out["stable"] = not reasons
    return out
