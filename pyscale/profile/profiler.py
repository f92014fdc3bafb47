"""Measurement windows: time, FLOPs, bytes and energy of a callable or a training step, into the store.

    with Profiler(store="runs.db") as prof:
        m = prof.window("gemm", torch.mm, a, b)                # counted, timed, energy over >= 1 s
        steps = prof.profile_step(train_step, model, opt, x, y, steps=20, warmup=3, module=model)

Conventions (DESIGN.md §6): SI units; an unavailable value is None with a `*_unavailable_reason`,
never 0. Energy comes from the meter's counter over windows of at least `min_window_s` (the work is
repeated, through the same rotating input copies as the timing, to fill them), with the device
synchronised at both edges; with a meter that reads nothing (none here, or meter="null") nothing is
repeated and no idle power is waited for. Idle power is measured once, when the profiler starts, and
reported in its own field -- never subtracted. A module inside a step is timed in extra steps with module
hooks; its share of such a step, times the step's median, is its time (`time_attributed=True`, the
hooked times kept in `extra`), and its energy is attributed by the same share (`energy_attributed=True`).
Per call: `time_s` (a median), `flops`, `energy_j`; per window: `avg_power_w`, `window_s`.

Under torch.distributed each rank measures its own device; `window`/`profile_step` are collectives (every
rank calls them in the same order). Rank 0 receives every rank's figures, adds a reduced row (energy and
FLOPs summed, time the max over ranks) and alone writes the store, rows tagged by rank.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from pyscale import sysinfo
from pyscale.profile import stability
from pyscale.profile import timing as tm
from pyscale.profile.flops import FlopCounter, FlopCounts
from pyscale.profile.power import EnergyWindow, MeterSnapshot, NullMeter, PowerMeter, make_meter
from pyscale.store import OPTIONAL_VALUES, DeviceRecord, MeasuredValues, MeasurementRecord, Store

# Values that may be unavailable, each paired with a `<value>_unavailable_reason`: the store's, and MFU.
OPTIONAL_FIELDS = (*OPTIONAL_VALUES, "mfu")


@dataclass
class Measurement(MeasuredValues):
    """One measured window: the store's measured values (per call: time_s (median), flops, model_flops,
    bytes, energy_j; per window: avg_power_w; see `pyscale.store.MeasuredValues`) plus what the profiler
    derives and labels: MFU, the energy window, and the rank."""

    name: str
    _: KW_ONLY
    mfu: float | None = None
    mfu_unavailable_reason: str | None = None
    energy_attributed: bool = False
    window_s: float | None = None  # length of the energy window
    window_calls: int = 0  # calls inside the energy window
    dtype: str | None = None
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    reduced: bool = False  # True for rank 0's sum/max over all ranks

    def __post_init__(self) -> None:
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is None and not getattr(self, f"{name}_unavailable_reason"):
                setattr(self, f"{name}_unavailable_reason", "not measured")
            if name in ("energy_j", "avg_power_w") and value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None with a reason, never {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_record(self, *, op: str | None = None, backend: str = "callable",
                  params: dict[str, Any] | None = None) -> MeasurementRecord:
        """The store row: the measured values as they are; MFU and the profiler's labels in `extra`."""
        ok = self.time_s is not None and self.time_s > 0
        values = {f.name: getattr(self, f.name) for f in fields(MeasuredValues)}
        values["extra"] = {"mfu": self.mfu, "energy_attributed": self.energy_attributed, "window_s": self.window_s,
                           "window_calls": self.window_calls, "world_size": self.world_size,
                           "reduced": self.reduced, "device": self.device, **self.extra}
        if self.mfu is None:
            values["extra"]["mfu_unavailable_reason"] = self.mfu_unavailable_reason
        return MeasurementRecord(
            **values, op=op or self.name, backend=backend,
            params={**(params or {}), "world_size": self.world_size, "reduced": self.reduced},
            dtype=self.dtype or "unknown", status="ok" if ok else "skipped",
            error=None if ok else (self.time_s_unavailable_reason or "no time"), rank=self.rank)


@dataclass
class StepProfile:
    """`profile_step`'s result: the step summary, each timed step ("step[i]"), and each module ("step/<module
    path>", its path also in `extra["module"]`; energy attributed)."""

    summary: Measurement
    steps: list[Measurement]
    modules: list[Measurement]
    counts: FlopCounts | None = None


# --------------------------------------------------------------------------- helpers

def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def infer_dtype(args: tuple, kwargs: dict | None = None) -> str | None:
    """The dtype of the first floating-point tensor among the arguments (parameters of a module count)."""
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten((args, kwargs or {}))
    for leaf in leaves:
        if isinstance(leaf, torch.nn.Module):
            for p in leaf.parameters():
                if p.is_floating_point():
                    return _dtype_name(p.dtype)
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return _dtype_name(leaf.dtype)
    return None


def peak_flops_per_s(device: torch.device, dtype: str | None) -> tuple[float | None, str | None]:
    """(peak FLOP/s from hw.py, None) or (None, why not)."""
    if device.type != "cuda":
        return None, "MFU needs a GPU peak from hw.py; pyscale keeps no peak table for CPUs"
    if dtype is None:
        return None, "no floating-point dtype to pick the peak FLOP/s by (pass dtype=)"
    try:
        from pyscale import hw
    except ImportError as exc:
        return None, f"pyscale.hw is not available ({exc})"
    spec = hw.lookup(torch.cuda.get_device_name(device))
    if getattr(spec, "known", True) is False:
        return None, f"GPU not in hw.py: {getattr(spec, 'reason', 'unknown')}"
    if dtype == "float32" and torch.get_float32_matmul_precision() != "highest":
        dtype = "tf32"  # fp32 matmuls may run on TF32 tensor cores: judge them against that peak
    try:
        peak = hw.peak_flops(spec, dtype)
    except ValueError as exc:
        return None, str(exc)
    if peak is None:
        return None, f"hw.py has no {dtype} peak for {getattr(spec, 'name', 'this GPU')}"
    return float(peak), None


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- the profiler

class Profiler:
    """Measure windows on one device with one meter; see the module docstring.

    store: a Store, a path, or None (nothing written). device: "cuda", "cuda:1", "cpu" or None (the
    current CUDA device, else the CPU). meter: "auto" | "nvml" | "rapl" | "null" | a PowerMeter.
    min_window_s: the shortest energy window. idle_s: how long idle power is measured at start (0: not).
    gpus: visible CUDA indices that the measured work drives (one process, several GPUs): the meter reads
    each (one reading per GPU, summed; per-device energies in `extra`) and all are synchronised.
    timing: keyword arguments for `timing.time_fn` (repeats, cold_l2, cuda_graph, ...).
    """

    def __init__(self, store: Store | str | os.PathLike[str] | None = None, device: str | torch.device | None = None,
                 meter: str | PowerMeter = "auto", min_window_s: float = 1.0, idle_s: float = 1.0,
                 command: str = "profile", arguments: dict[str, Any] | None = None, sampler: bool = False,
                 sampler_interval_s: float = 0.01, gpus: list[int] | None = None, **timing: Any) -> None:
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if not min_window_s > 0:
            raise ValueError(f"min_window_s must be positive: got {min_window_s!r}")
        self._store_arg = store
        self._meter_arg = meter
        self.min_window_s = float(min_window_s)
        self.idle_s = float(idle_s)
        self.command, self.arguments = command, dict(arguments or {})
        self.use_sampler, self.sampler_interval_s = sampler, sampler_interval_s
        self.timing = timing
        self.gpus = list(gpus) if gpus else None
        if self.gpus and self.device.type != "cuda":
            raise ValueError("gpus= needs a CUDA device")
        self.meter: PowerMeter = NullMeter("profiler not entered")
        self.store: Store | None = None
        self.run_id: int | None = None
        self._own_store = False
        self._device_ids: dict[str, int] = {}
        self.idle_power_w: float | None = None
        self.idle_power_w_unavailable_reason: str | None = "not measured"
        self.measurements: list[Measurement] = []
        self.rank, self.world_size = _dist()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Profiler:
        self.rank, self.world_size = _dist()
        index: int | list[int] = self.gpus if self.gpus else (self.device.index or 0)
        self.meter = make_meter(self._meter_arg, device_kind=self.device.type, index=index)
        if self.rank == 0 and self._store_arg is not None:
            if isinstance(self._store_arg, Store):
                self.store = self._store_arg
            else:
                self.store, self._own_store = Store(Path(self._store_arg)), True
            self.run_id = self.store.start_run(self.command, self.arguments)
        self._measure_idle()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.end_run(self.run_id, "ok" if exc_type is None else "error")
        if self._own_store and self.store is not None:
            self.store.close()
        self.meter.close()

    def _sync(self) -> None:
        for index in self.gpus or ():
            tm.synchronize(torch.device("cuda", index))
        tm.synchronize(self.device)

    def _no_energy_reason(self) -> str:
        return self.meter.snapshot().unavailable_reasons.get("energy_j") or f"{self.meter.description} reads nothing"

    def _measure_idle(self) -> None:
        if self.idle_s <= 0:
            self.idle_power_w, self.idle_power_w_unavailable_reason = None, "idle power not measured (idle_s=0)"
            return
        if not self.meter.measures_energy:  # nothing to wait for
            self.idle_power_w, self.idle_power_w_unavailable_reason = None, self._no_energy_reason()
            return
        self._sync()
        start = self.meter.snapshot()
        time.sleep(self.idle_s)
        w = self.meter.window(start, self.meter.snapshot())
        self.idle_power_w = w.avg_power_w
        self.idle_power_w_unavailable_reason = None if w.avg_power_w is not None else w.energy_unavailable_reason

    # ------------------------------------------------------------------ energy

    def _energy_window(self, run: Callable[[int], None], estimate_s: float) -> tuple[EnergyWindow, int, dict[str, Any]]:
        """Repeat `run(i)` between two synchronised meter snapshots until the window lasts min_window_s.

        `estimate_s` (a call's expected time) sizes the first chunk; the device is synchronised after each
        chunk to read the elapsed time; chunks at most double, so a window overshoots by at most ~2x.
        Returns the window, the number of calls in it and sampler details.
        """
        from pyscale.profile.power import make_sampler

        extra: dict[str, Any] = {}
        if not self.meter.measures_energy:  # no window to fill: the work is not repeated for nothing
            start = self.meter.snapshot()
            return self.meter.window(start, start), 0, extra
        sampler = None
        if self.use_sampler and self.device.type == "cuda":
            try:
                sampler = make_sampler(meter=self.meter, index=self.device.index or 0,
                                       uuid=getattr(self.meter, "uuid", None), interval_s=self.sampler_interval_s)
            except Exception as exc:  # a missing sampler never spoils the counter reading
                extra["trace_unavailable_reason"] = str(exc)
        self._sync()
        if sampler is not None:
            sampler.start()
        start = self.meter.snapshot()
        t0 = time.perf_counter()
        calls = 0
        per_call = max(estimate_s, 1e-7)
        while True:
            chunk = max(1, math.ceil((self.min_window_s - (time.perf_counter() - t0)) / per_call))
            if calls:  # at most double per chunk: a few fast calls must not size a huge chunk of slow ones
                chunk = min(chunk, 2 * calls)
            for _ in range(chunk):
                run(calls)
                calls += 1
            self._sync()
            elapsed = time.perf_counter() - t0  # host clock after a synchronize: GPU work included
            if elapsed >= self.min_window_s:
                break
            per_call = max(elapsed / calls, 1e-7)
        end = self.meter.snapshot()
        if sampler is not None:
            sampler.stop()
            trace = sampler.trace()
            extra.update(trace_source=trace.source, trace_samples=len(trace),
                         trace_energy_j=trace.integrated_energy_j(start.timestamp_s, end.timestamp_s),
                         trace_error=trace.error)
        return self.meter.window(start, end), calls, extra

    def _energy_fields(self, w: EnergyWindow, calls: int, end: MeterSnapshot | None = None) -> dict[str, Any]:
        snap = end or w.end
        out: dict[str, Any] = {
            "window_s": w.time_s, "window_calls": calls,
            "idle_power_w": self.idle_power_w, "idle_power_w_unavailable_reason": self.idle_power_w_unavailable_reason,
            "sm_clock_mhz": snap.sm_clock_mhz, "mem_clock_mhz": snap.mem_clock_mhz,
            "temperature_c": snap.temperature_c, "throttle_reasons": snap.throttle_reasons,
        }
        for name in ("sm_clock_mhz", "mem_clock_mhz", "temperature_c", "throttle_reasons"):
            if out[name] is None:
                out[f"{name}_unavailable_reason"] = snap.unavailable_reasons.get(name, f"{self.meter.name} gave none")
        # A too-short window is the root cause whatever the meter said about it (a counter that did not
        # advance over a few microseconds is a symptom), so its reason comes first.
        if w.time_s < self.min_window_s and self.meter.measures_energy:
            why = (f"energy window of {w.time_s:.3f} s is shorter than min_window_s={self.min_window_s} s; "
                   f"pass the work as a callable so it can be repeated to fill the window")
            out["energy_j_unavailable_reason"] = out["avg_power_w_unavailable_reason"] = why
        elif w.energy_j is None:
            out["energy_j_unavailable_reason"] = w.energy_unavailable_reason
            out["avg_power_w_unavailable_reason"] = w.energy_unavailable_reason
        else:
            out["energy_j"] = w.energy_j / calls
            out["avg_power_w"] = w.avg_power_w
        if w.parts:  # one reading per GPU
            out["extra_per_device_energy_j"] = [None if p.energy_j is None else p.energy_j / calls for p in w.parts]
        return out

    def _gpu_state(self) -> stability.GpuState | None:
        """NVML's view of the measured GPU (stability's other processes and throttling); None on a CPU."""
        return stability.gpu_state(self.device.index or 0) if self.device.type == "cuda" else None

    def _gpu_edges(self, before: stability.GpuState | None) -> tuple[stability.GpuState, stability.GpuState] | None:
        return None if before is None else (before, self._gpu_state())

    def _mfu(self, model_flops: float | None, time_s: float | None, dtype: str | None,
             peaks: int = 1) -> tuple[float | None, str | None]:
        if model_flops is None:
            return None, "no model FLOPs"
        if not time_s:
            return None, "no time"
        peak, why = peak_flops_per_s(self.device, dtype)
        if peak is None:
            return None, why
        return model_flops / time_s / (peak * peaks), None

    # ------------------------------------------------------------------ windows

    def window(self, name: str, fn: Callable[..., Any] | None = None, *args: Any, flops: float | None = None,
               model_flops: float | None = None, bytes: float | None = None,  # noqa: A002
               count_flops: bool = True, dtype: Any = None, params: dict[str, Any] | None = None,
               backend: str = "callable", record: bool = True, **kwargs: Any) -> Any:
        """Measure `fn(*args, **kwargs)`; without `fn`, a context manager measuring its block once.

        FLOPs: given (`flops`, `model_flops`, `bytes` per call), else counted by running fn once under a
        FlopCounter (`count_flops=False`: unavailable).
        """
        if fn is None:
            return self._block(name, flops=flops, model_flops=model_flops, nbytes=bytes, dtype=dtype,
                               params=params, backend=backend, record=record)
        with tm.device_context(self.device):
            return self._window(name, fn, args, kwargs, flops, model_flops, bytes, count_flops, dtype, params,
                                backend, record)

    def _window(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, flops: float | None,
                model_flops: float | None, bytes: float | None, count_flops: bool, dtype: Any,  # noqa: A002
                params: dict[str, Any] | None, backend: str, record: bool) -> Measurement:
        dtype_name = _dtype_name(dtype) if dtype is not None else infer_dtype(args, kwargs)
        fl = self._flops(fn, args, kwargs, flops, model_flops, bytes, count_flops)
        uncounted = fl.pop("extra_uncounted_ops", None)
        inputs, notes, cold = tm.prepare_inputs(args, kwargs, self.device, cold_l2=self.timing.get("cold_l2", True),
                                                l2_bytes=self.timing.get("l2_bytes"))
        before = self._gpu_state()
        t = tm.time_fn(fn, device=self.device, inputs=inputs, **self.timing)
        verdict = stability.assess(t.times_s, self.device.type, cpu_time_s=t.cpu_time_s, wall_s=t.wall_s,
                                   threads=t.threads, gpu_edges=self._gpu_edges(before))
        w, calls, extra = self._energy_window(
            lambda i: fn(*inputs[i % len(inputs)][0], **inputs[i % len(inputs)][1]), t.mean_s)
        energy = self._energy_fields(w, calls)
        extra.update(_pop_extra(energy))
        if t.method == "cuda_graph_events":
            extra["energy_calls"] = "eager (the timing replayed CUDA graphs)"
        m = Measurement(name, time_s=t.median_s, time_s_p20=t.quantile_s(0.2), time_s_p80=t.quantile_s(0.8),
                        repeats=t.repeats, dtype=dtype_name, device=str(self.device), rank=self.rank,
                        world_size=self.world_size, **fl, **energy,
                        extra={"timing_method": t.method, "warmup_calls": t.warmup_calls,
                               "warmup_converged": t.warmup_converged, "stable": verdict["stable"],
                               "stability": verdict, **_cpu_time_median(t.cpu_times_s),
                               "rotating_copies": t.rotating_copies, "cold_l2": cold, "time_s_mean": t.mean_s,
                               "time_s_min": t.min_s, "meter": self.meter.description,
                               "notes": [*notes, *t.notes], **extra,
                               **({"uncounted_ops": uncounted} if uncounted else {})})
        m.mfu, m.mfu_unavailable_reason = self._mfu(m.model_flops, m.time_s, dtype_name)
        return self._finish([m], params, backend, record)[0]

    def _flops(self, fn: Callable[..., Any], args: tuple, kwargs: dict, flops: float | None,
               model_flops: float | None, nbytes: float | None, count: bool) -> dict[str, Any]:
        """Per-call FLOPs and bytes: the given values, the rest counted by one call under a FlopCounter."""
        out: dict[str, Any] = {"flops": flops, "model_flops": model_flops, "bytes": nbytes}
        missing = [k for k, v in out.items() if v is None]
        if missing and count:
            with FlopCounter(modules=False) as counter:
                fn(*args, **kwargs)
            c = counter.step()
            counted = {"flops": c.flops, "model_flops": c.model_flops, "bytes": c.bytes}
            for key in missing:
                out[key] = float(counted[key])
            if c.uncounted_ops:
                out["extra_uncounted_ops"] = list(c.uncounted_ops)
        for key in ("flops", "model_flops", "bytes"):
            if out[key] is None:
                out[f"{key}_unavailable_reason"] = "not given and count_flops=False"
        return out

    @contextmanager
    def _block(self, name: str, *, flops: float | None, model_flops: float | None, nbytes: float | None,
               dtype: Any, params: dict[str, Any] | None, backend: str, record: bool) -> Iterator[_BlockResult]:
        result = _BlockResult()
        with tm.device_context(self.device):
            yield from self._block_body(name, result, flops, model_flops, nbytes, dtype, params, backend, record)

    def _block_body(self, name: str, result: _BlockResult, flops: float | None, model_flops: float | None,
                    nbytes: float | None, dtype: Any, params: dict[str, Any] | None, backend: str,
                    record: bool) -> Iterator[_BlockResult]:
        events = None
        self._sync()
        start = self.meter.snapshot()
        if self.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        t0 = time.perf_counter_ns()
        yield result
        if events is not None:
            events[1].record()
        self._sync()
        host_s = (time.perf_counter_ns() - t0) * 1e-9
        end = self.meter.snapshot()
        time_s = events[0].elapsed_time(events[1]) * 1e-3 if events is not None else host_s
        w = self.meter.window(start, end)
        energy = self._energy_fields(w, 1)
        m = Measurement(name, time_s=time_s, time_s_p20=time_s, time_s_p80=time_s, repeats=1, flops=flops,
                        model_flops=model_flops, bytes=nbytes,
                        dtype=_dtype_name(dtype) if dtype is not None else None, device=str(self.device),
                        rank=self.rank, world_size=self.world_size, **energy,
                        extra={"timing_method": "cuda_events" if events else "perf_counter", "block": True,
                               "meter": self.meter.description, **_pop_extra(energy)})
        for key in ("flops", "model_flops", "bytes"):
            if getattr(m, key) is None:
                setattr(m, f"{key}_unavailable_reason", "a block window counts no FLOPs: pass flops=/model_flops=")
        m.mfu, m.mfu_unavailable_reason = self._mfu(m.model_flops, m.time_s, m.dtype)
        result.measurement = self._finish([m], params, backend, record)[0]

    # ------------------------------------------------------------------ training steps

    def profile_step(self, fn: Callable[..., Any], *args: Any, steps: int = 10, warmup: int = 2,
                     module: torch.nn.Module | None = None, name: str = "step", dtype: Any = None,
                     model_flops: float | None = None, params: dict[str, Any] | None = None,
                     record: bool = True, **kwargs: Any) -> StepProfile:
        """Per-step figures of a training step `fn(*args, **kwargs)`.

        Sequence: `warmup` untimed steps; one step under a FlopCounter (per-module FLOPs; not timed);
        `steps` timed steps, synchronised at both edges of each; more steps if needed to fill the energy
        window (the window covers every timed step); then, if `module` is given, a few steps with module
        hooks for per-module times (kept out of the step timing). `model_flops` overrides the counted
        model FLOPs per step (e.g. 6N + 12·L·H·Q·T per token from the model's config).
        Energy per step: measured between that step's own edges when a step lasts at least min_window_s,
        else the whole window's energy attributed by time share (`energy_attributed=True`).
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1: got {steps}")
        with tm.device_context(self.device):
            return self._profile_step(fn, args, kwargs, steps, warmup, module, name, dtype, model_flops, params,
                                      record)

    def _profile_step(self, fn: Callable[..., Any], args: tuple, kwargs: dict, steps: int, warmup: int,
                      module: torch.nn.Module | None, name: str, dtype: Any, model_flops: float | None,
                      params: dict[str, Any] | None, record: bool) -> StepProfile:
        dtype_name = _dtype_name(dtype) if dtype is not None else infer_dtype((module, *args) if module else args,
                                                                              kwargs)
        for _ in range(warmup):
            fn(*args, **kwargs)
        self._sync()
        with FlopCounter(root=module, modules=module is not None) as counter:
            fn(*args, **kwargs)
        counts = counter.step()
        step_model_flops = float(model_flops) if model_flops is not None else float(counts.model_flops)

        times: list[float] = []
        cpu_times: list[float] = []

        def timed_step(i: int) -> None:
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn(*args, **kwargs)
                b.record()
                b.synchronize()  # each step's edges are synchronised: steps never overlap
                times.append(a.elapsed_time(b) * 1e-3)
            else:
                c0 = time.process_time_ns()
                t0 = time.perf_counter_ns()
                fn(*args, **kwargs)
                times.append((time.perf_counter_ns() - t0) * 1e-9)
                cpu_times.append((time.process_time_ns() - c0) * 1e-9)

        # Timed steps; the energy window covers them, extended until it lasts min_window_s.
        self._sync()
        before = self._gpu_state()
        start = self.meter.snapshot()
        cpu_start = time.process_time()
        t_start = time.perf_counter()
        # Steps as long as an energy window get their own measured energy: snapshot at every step edge
        # (each step already ends synchronised). Shorter steps get a time-share of the whole window.
        edges: list[MeterSnapshot | None] = [start]
        per_step = False
        for i in range(steps):
            timed_step(i)
            per_step = per_step or times[0] >= self.min_window_s
            edges.append(self.meter.snapshot() if per_step else None)
        while self.meter.measures_energy and time.perf_counter() - t_start < self.min_window_s:
            timed_step(len(times))
        self._sync()
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - t_start
        verdict = stability.assess(times, self.device.type, cpu_time_s=cpu_s, wall_s=wall_s,
                                   threads=torch.get_num_threads(), gpu_edges=self._gpu_edges(before))
        w = self.meter.window(start, self.meter.snapshot())
        energy = self._energy_fields(w, len(times))
        energy_extra = _pop_extra(energy)
        step_times = times[:steps]  # the statistics are of the steps asked for; the window's extra steps fill it
        st = tm.Timing(tuple(step_times), "cuda_events" if self.device.type == "cuda" else "perf_counter", warmup,
                       True)

        common = {"dtype": dtype_name, "device": str(self.device), "rank": self.rank, "world_size": self.world_size}
        summary = Measurement(
            name, time_s=st.median_s, time_s_p20=st.p20_s, time_s_p80=st.p80_s, repeats=len(step_times),
            flops=float(counts.flops), model_flops=step_model_flops, bytes=float(counts.bytes), **common, **energy,
            extra={"warmup_steps": warmup, "meter": self.meter.description,
                   "steps_in_energy_window": len(times) if self.meter.measures_energy else 0,
                   "forward_flops": counts.forward_flops, "backward_flops": counts.backward_flops,
                   "model_flops_source": "given" if model_flops is not None else "counted (PaLM convention)",
                   "counted_model_flops": counts.model_flops,
                   "uncounted_ops": list(counts.uncounted_ops), "time_s_mean": st.mean_s, "time_s_min": st.min_s,
                   "stable": verdict["stable"], "stability": verdict, **_cpu_time_median(cpu_times),
                   **energy_extra})
        summary.mfu, summary.mfu_unavailable_reason = self._mfu(summary.model_flops, summary.time_s, dtype_name)

        total_time = sum(times)
        step_rows = []
        for i, t_s in enumerate(step_times):
            a, b = edges[i], edges[i + 1]
            if a is not None and b is not None:
                step_energy = self._energy_fields(self.meter.window(a, b), 1)
                step_extra = {"step": i, **_pop_extra(step_energy)}
                step_energy.pop("idle_power_w", None)  # the profiler's idle power is passed below
                step_energy.pop("idle_power_w_unavailable_reason", None)
                share = {**step_energy, "energy_attributed": False}
            else:
                share = self._attributed(summary.energy_j, len(times) * t_s / total_time if total_time else None,
                                         summary.energy_j_unavailable_reason)
                step_extra = {"step": i}
            m = Measurement(f"{name}[{i}]", time_s=t_s, time_s_p20=t_s, time_s_p80=t_s, repeats=1,
                            flops=summary.flops, model_flops=summary.model_flops, bytes=summary.bytes, **common,
                            **share, idle_power_w=summary.idle_power_w,
                            idle_power_w_unavailable_reason=summary.idle_power_w_unavailable_reason,
                            extra=step_extra)
            m.mfu, m.mfu_unavailable_reason = self._mfu(m.model_flops, t_s, dtype_name)
            step_rows.append(m)

        module_rows = self._module_rows(fn, args, kwargs, module, counts, summary, common) if module else []
        for m in module_rows:
            m.mfu, m.mfu_unavailable_reason = self._mfu(m.model_flops, m.time_s, dtype_name)
        rows = self._finish([summary, *step_rows, *module_rows], params, "step", record)
        n_steps = len(step_rows)
        return StepProfile(rows[0], rows[1:1 + n_steps], rows[1 + n_steps:], counts)

    @staticmethod
    def _attributed(energy_j: float | None, share: float | None, reason: str | None) -> dict[str, Any]:
        """Energy attributed by time share (labelled), or unavailable with the window's reason."""
        if energy_j is None or not share:
            return {"energy_j_unavailable_reason": reason or "no time share", "energy_attributed": True}
        return {"energy_j": energy_j * share, "energy_attributed": True}

    HOOKED_STEPS = 3  # extra steps with module hooks; a module's share is the median over them

    def _module_rows(self, fn: Callable[..., Any], args: tuple, kwargs: dict, module: torch.nn.Module,
                     counts: FlopCounts, summary: Measurement, common: dict[str, Any]) -> list[Measurement]:
        """One row per module: its share of a hooked step (median over HOOKED_STEPS, the same statistic as
        the step's time), times the step's median time; energy attributed by the same share."""

        def hooked(backward: bool) -> tuple[float, dict[str, float], ModuleTimer]:
            timer = ModuleTimer(module, self.device, backward=backward)
            with timer:
                self._sync()
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                self._sync()
                step_s = time.perf_counter() - t0  # host clock between synchronisations
            return step_s, timer.totals_s(), timer

        backward, note = True, None
        passes = []
        for _ in range(self.HOOKED_STEPS):
            try:
                passes.append(hooked(backward))
            except RuntimeError as exc:
                if not backward:
                    raise
                # Global backward hooks wrap outputs in views; in-place ops on them fail: time forwards only.
                backward, note, passes = False, f"forward time only: backward hooks failed ({exc})", []
                passes.append(hooked(backward))
        method = passes[0][2].method
        hooked_step_s = statistics.median([p[0] for p in passes])
        rows = []
        for name, mc in counts.modules.items():
            if name == "Global":
                continue
            per_pass = [p[1][name] for p in passes if name in p[1]]
            hooked_s = statistics.median(per_pass) if len(per_pass) == len(passes) else None
            share = min(1.0, hooked_s / hooked_step_s) if (hooked_s is not None and hooked_step_s > 0) else None
            t_s = None if share is None or summary.time_s is None else share * summary.time_s
            energy = self._attributed(None if summary.energy_j is None else summary.energy_j, share,
                                      summary.energy_j_unavailable_reason)
            if t_s is None:
                energy["energy_j_unavailable_reason"] = "module time unavailable"
            rows.append(Measurement(
                f"{summary.name}/{name}", time_s=t_s or None, time_s_p20=None, time_s_p80=None,
                repeats=len(passes) if t_s else None,
                flops=float(mc.flops), model_flops=float(mc.model_flops(counts.has_backward)), bytes=float(mc.bytes),
                **common, **energy, idle_power_w=summary.idle_power_w,
                idle_power_w_unavailable_reason=summary.idle_power_w_unavailable_reason,
                time_s_unavailable_reason=None if t_s else "the module ran no timed forward/backward",
                extra={"module": name, "forward_flops": mc.forward.flops, "backward_flops": mc.backward.flops,
                       "backward_timed": backward and not any(name in p[2].untimed_backward for p in passes),
                       "time_share": share, "time_attributed": True, "hooked_time_s": hooked_s,
                       "hooked_step_s": hooked_step_s, "hooked_steps": len(passes), "module_time_method": method,
                       **({"module_time_note": note} if note else {})}))
        return rows

    # ------------------------------------------------------------------ reduction and storage

    def _power_limit(self) -> tuple[float | None, str | None]:
        """The GPU power limit NVML enforces now (W; summed over the gpus= devices), read-only, or (None, why)."""
        if self.device.type != "cuda":
            return None, f"no GPU power limit on a {self.device.type} device"
        from pyscale.profile.power.nvml import enforced_power_limit_w

        total = 0.0
        for index in self.gpus or [self.device.index or 0]:
            limit, why = enforced_power_limit_w(index)
            if limit is None:
                return None, why or "not reported"
            total += limit
        return total, None

    def _finish(self, rows: list[Measurement], params: dict[str, Any] | None, backend: str,
                record: bool) -> list[Measurement]:
        limit, why = self._power_limit()  # read once the rows are measured: a limit is set between measurements
        for m in rows:
            if m.power_limit_w is None:
                m.power_limit_w, m.power_limit_w_unavailable_reason = limit, why
        all_rows = rows
        if self.world_size > 1:
            here = sysinfo.device_record(self.device.type, self.device.index)
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, [(m.to_dict(), asdict(here)) for m in rows])
            if self.rank == 0:
                reduced = [reduce_ranks([Measurement(**d) for d, _ in (g[i] for g in gathered)])
                           for i in range(len(rows))]
                self._store_rows(reduced, params, backend, record, here)
                for g in gathered:
                    for d, dev in g:
                        self._store_rows([Measurement(**d)], params, backend, record, DeviceRecord(**dev))
                all_rows = reduced
        else:
            self._store_rows(rows, params, backend, record, None)
        self.measurements.extend(all_rows)
        return all_rows

    def _store_rows(self, rows: list[Measurement], params: dict[str, Any] | None, backend: str, record: bool,
                    device: DeviceRecord | None) -> None:
        if not record or self.store is None:
            return
        dev = device or sysinfo.device_record(self.device.type, self.device.index)
        if dev.uuid not in self._device_ids:
            self._device_ids[dev.uuid] = self.store.register_device(dev)
        for m in rows:
            self.store.record(m.to_record(backend=backend, params=params), device_id=self._device_ids[dev.uuid],
                              run_id=self.run_id)


def _cpu_time_median(cpu_times: tuple[float, ...] | list[float]) -> dict[str, float]:
    """`cpu_time_s_median`, the median process CPU time of a host-timed call: on a shared CPU, what the call
    costs while it holds a core (its wall time also counts the waits); nothing for GPU timings."""
    return {"cpu_time_s_median": statistics.median(cpu_times)} if cpu_times else {}


def _pop_extra(fields_: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the `extra_*` entries of an energy-fields dict (they go to Measurement.extra)."""
    keys = [k for k in fields_ if k.startswith("extra_")]
    return {k.removeprefix("extra_"): fields_.pop(k) for k in keys}


@dataclass
class _BlockResult:
    measurement: Measurement | None = None


def reduce_ranks(per_rank: list[Measurement]) -> Measurement:
    """Rank 0's view of one window over all ranks: energy and FLOPs summed, times the max."""
    first = per_rank[0]

    def total(attr: str) -> float | None:
        values = [getattr(m, attr) for m in per_rank]
        return None if any(v is None for v in values) else float(sum(values))

    def worst(attr: str) -> float | None:
        values = [getattr(m, attr) for m in per_rank]
        return None if any(v is None for v in values) else float(max(values))

    out = replace(first, rank=0, reduced=True, time_s=worst("time_s"), time_s_p20=worst("time_s_p20"),
                  time_s_p80=worst("time_s_p80"), flops=total("flops"), model_flops=total("model_flops"),
                  bytes=total("bytes"), energy_j=total("energy_j"), avg_power_w=total("avg_power_w"),
                  idle_power_w=total("idle_power_w"), power_limit_w=total("power_limit_w"),
                  extra={**first.extra, "ranks": len(per_rank)})
    for name in ("time_s", "flops", "model_flops", "bytes", "energy_j", "avg_power_w", "idle_power_w",
                 "power_limit_w"):
        if getattr(out, name) is None:
            why = next((getattr(m, f"{name}_unavailable_reason") for m in per_rank if getattr(m, name) is None), None)
            setattr(out, f"{name}_unavailable_reason", f"unavailable on some rank: {why}")
        else:
            setattr(out, f"{name}_unavailable_reason", None)
    # MFU of the whole: summed model FLOPs over the slowest rank's time, against every rank's peak
    if out.model_flops is not None and out.time_s and all(m.mfu is not None for m in per_rank):
        per_rank_peak = [m.model_flops / m.time_s / m.mfu for m in per_rank if m.mfu and m.model_flops and m.time_s]
        if len(per_rank_peak) == len(per_rank):
            out.mfu = out.model_flops / out.time_s / sum(per_rank_peak)
    else:
        out.mfu = None
        out.mfu_unavailable_reason = next((m.mfu_unavailable_reason for m in per_rank if m.mfu is None),
                                          "unavailable on some rank")
    return out


class ModuleTimer:
    """Per-module forward + backward time from global module hooks (CUDA events on a GPU, host clock on CPU).

    Module names follow torch's ModuleTracker (root class name + dotted path), as FlopCounter's do.
    Backward time spans from the gradient of a module's outputs to the gradient of its inputs; when no
    input needs a gradient (the first layer, an embedding) torch fires both hooks together, so that
    module's backward time is not captured -- its forward time is (such modules are listed in
    `untimed_backward`: the root module of a model fed token ids is one).
    """

    def __init__(self, root: torch.nn.Module, device: torch.device, backward: bool = True) -> None:
        self.root = root
        self.device = device
        self.backward = backward
        self.note: str | None = None
        self.method = "cuda_events" if device.type == "cuda" else "perf_counter"
        base = type(root).__name__
        self.names = {mod: (f"{base}.{path}" if path else base) for path, mod in root.named_modules()}
        self._open: dict[tuple[int, str], list[Any]] = {}
        self._spans: list[tuple[str, Any, Any]] = []
        self._handles: list[Any] = []
        self.untimed_backward: set[str] = set()  # modules whose backward time was not captured

    def _mark(self) -> Any:
        if self.method == "cuda_events":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter_ns()

    def _begin(self, mod: torch.nn.Module, phase: str) -> None:
        if mod in self.names:
            self._open.setdefault((id(mod), phase), []).append(self._mark())

    def _end(self, mod: torch.nn.Module, phase: str, grad_inputs: Any = None) -> None:
        stack = self._open.get((id(mod), phase))
        if mod in self.names and stack:
            self._spans.append((self.names[mod], stack.pop(), self._mark()))
            if phase == "bwd" and all(g is None for g in grad_inputs):
                self.untimed_backward.add(self.names[mod])  # no input needs a gradient: see the class docstring

    def __enter__(self) -> ModuleTimer:
        from torch.nn.modules import module as nn_module

        # torch warns when a module's inputs need no grad (the hook then fires on output grads): expected here
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

        self._handles = [
            nn_module.register_module_forward_pre_hook(lambda m, i: self._begin(m, "fwd")),
            nn_module.register_module_forward_hook(lambda m, i, o: self._end(m, "fwd")),
        ]
        if self.backward:
            self._handles += [
                nn_module.register_module_full_backward_pre_hook(lambda m, g: self._begin(m, "bwd")),
                nn_module.register_module_full_backward_hook(lambda m, gi, go: self._end(m, "bwd", gi)),
            ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._warnings.__exit__(*exc)

    def totals_s(self) -> dict[str, float]:
        tm.synchronize(self.device)
        out: dict[str, float] = {}
        for name, a, b in self._spans:
            dt = a.elapsed_time(b) * 1e-3 if self.method == "cuda_events" else (b - a) * 1e-9
            out[name] = out.get(name, 0.0) + dt
        return out


@dataclass(frozen=True)
class EnergyResult:
    """`measure_energy`'s answer, store-ready: per-call energy, window power, and reasons for every None."""

    energy_per_call_j: float | None
    energy_j: float | None  # the whole window
    window_s: float
    calls: int
    avg_power_w: float | None
    idle_power_w: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    temperature_c: float | None
    throttle_reasons: str | None  # comma-joined NVML reason names ("none" when none), as the store keeps them
    meter: str
    unavailable_reasons: dict[str, str]


_IDLE_CACHE: dict[tuple[str, str], tuple[float, float | None, str | None]] = {}
IDLE_CACHE_S = 600.0  # idle power is re-measured after this long (temperature drifts)


def measure_energy(fn: Callable[[int], Any], *, copies: int = 1, device: str | torch.device | None = None,
                   min_window_s: float = 1.0, time_per_call_s: float | None = None,
                   meter: str | PowerMeter = "auto", idle_s: float = 1.0) -> EnergyResult:
    """Energy of `fn(i)` (call i uses input copy i % copies, as benchmark workloads do) over >= min_window_s.

    Idle power is measured once per device and meter kind and reused for IDLE_CACHE_S seconds.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prof = Profiler(store=None, device=dev, meter=meter, min_window_s=min_window_s, idle_s=0)
    with prof:
        key = (str(prof.device), prof.meter.description)
        cached = _IDLE_CACHE.get(key)
        if cached is None or time.monotonic() - cached[0] > IDLE_CACHE_S:
            prof.idle_s = idle_s
            prof._measure_idle()
            _IDLE_CACHE[key] = cached = (time.monotonic(), prof.idle_power_w, prof.idle_power_w_unavailable_reason)
        prof.idle_power_w, prof.idle_power_w_unavailable_reason = cached[1], cached[2]
        if time_per_call_s is None:
            tm.synchronize(prof.device)
            t0 = time.perf_counter()
            fn(0)
            tm.synchronize(prof.device)
            time_per_call_s = time.perf_counter() - t0
        w, calls, _ = prof._energy_window(lambda i: fn(i), time_per_call_s)
        f = prof._energy_fields(w, calls)
        _pop_extra(f)
    reasons = {k.removesuffix("_unavailable_reason"): v for k, v in f.items()
               if k.endswith("_unavailable_reason") and v}
    throttle = f.get("throttle_reasons")
    return EnergyResult(
        energy_per_call_j=f.get("energy_j"), energy_j=None if f.get("energy_j") is None else f["energy_j"] * calls,
        window_s=w.time_s, calls=calls, avg_power_w=f.get("avg_power_w"), idle_power_w=f.get("idle_power_w"),
        sm_clock_mhz=f.get("sm_clock_mhz"), mem_clock_mhz=f.get("mem_clock_mhz"),
        temperature_c=f.get("temperature_c"),
        throttle_reasons=None if throttle is None else (",".join(throttle) or "none"),
        meter=prof.meter.description, unavailable_reasons=reasons)


def profile_step(fn: Callable[..., Any], *args: Any, steps: int = 10, warmup: int = 2,
                 profiler: Profiler | None = None, module: torch.nn.Module | None = None, **kwargs: Any) -> StepProfile:
    """`Profiler.profile_step` with a throwaway profiler (no store) unless one is given.

    Profiler options (store, device, meter, min_window_s, idle_s) may be passed here too.
    """
    prof_opts = {k: kwargs.pop(k) for k in ("store", "device", "meter", "min_window_s", "idle_s") if k in kwargs}
    if profiler is not None:
        return profiler.profile_step(fn, *args, steps=steps, warmup=warmup, module=module, **kwargs)
    with Profiler(**prof_opts) as prof:
        return prof.profile_step(fn, *args, steps=steps, warmup=warmup, module=module, **kwargs)
