"""The sweep runner: named shape sets -> cases -> measured rows in the store (what `pyscale bench` runs).

A *case* is one op at one shape and dtype with one implementation: pyscale's op or a baseline
(`torch.mm`, an SDPA backend, ...). Each op family lives in `pyscale.benchmark.cases.<family>`, which
turns a shape set (`pyscale.benchmark.shapes`, named after a model) into cases and builds a case's
*workload*: a callable over rotating input copies (cold L2) plus its FLOP and byte counts from the op's
formula.

`run_case` measures one case in the current process and returns plain records, so a sweep can run
locally or fan out to other processes (Ray) while one driver alone writes the store. A failing case (OOM,
kernel error) is recorded with its status and the sweep goes on; `resume=True` skips cases whose
canonical key already has an ok row.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyscale import store as st
from pyscale import sysinfo
from pyscale.benchmark.shapes import FAMILIES, check_shape_set


@dataclass(frozen=True)
class Case:
    family: str
    op: str  # the measured operation, e.g. "gemm_bf16", "attention_fwd"
    impl: str  # "pyscale" or a baseline, e.g. "torch.mm", "sdpa:flash"
    params: tuple[tuple[str, Any], ...]  # shape and options, hashable and ordered
    dtype: str
    shape_set: str = "quick"

    @staticmethod
    def make(family: str, op: str, impl: str, params: dict[str, Any], dtype: str, shape_set: str) -> Case:
        return Case(family, op, impl, tuple(sorted(params.items())), dtype, shape_set)

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def label(self) -> str:
        shape = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.op}[{self.impl}] {self.dtype} {shape}"


@dataclass
class Workload:
    """What to run for a case: `fn(*args)`, with the op's FLOP and byte formulas for one call.

    The profiler rotates copies of `args` (tensors) so that every timed call starts with a cold L2.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    flops: float
    model_flops: float | None = None
    bytes: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def family_module(family: str):
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}: got {family!r}")
    return importlib.import_module(f"pyscale.benchmark.cases.{family}")


def plan_cases(families: Iterable[str], shape_set: str = "quick", *, device: str = "cpu",
               impls: Sequence[str] | None = None) -> list[Case]:
    """Every case of the given families for one shape set on `device` ("cpu" or "cuda")."""
    check_shape_set(shape_set)
    out: list[Case] = []
    for family in families:  # a family without shapes in the set (MoE of a dense model) has no cases
        out.extend(family_module(family).cases(shape_set, device))
    if impls is not None:
        out = [c for c in out if c.impl in impls]
    return out


# --------------------------------------------------------------------------- one case

def _failure_device(device: str) -> st.DeviceRecord:
    """The device a case is recorded against when its worker gave no result: this machine's, or a
    placeholder when the driver has no such device (a Ray head without GPUs driving a GPU sweep)."""
    try:
        return sysinfo.device_record(device)
    except RuntimeError:
        return st.DeviceRecord(kind=device, name="unknown (the worker returned no result)", uuid=f"unknown-{device}")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_case(case: Case, *, device: str = "cpu", energy: bool = False, min_time_s: float = 0.05,
             energy_window_s: float = 1.0) -> tuple[st.DeviceRecord, st.MeasurementRecord]:
    """Measure one case here and return (device, measurement); failures come back as a status row.

    Timing and energy come from the profiler (CUDA events or a host timer, rotating cold-L2 inputs,
    energy windows of at least `energy_window_s` with idle power measured first when `energy`).
    """
    from pyscale.profile.profiler import Profiler

    device_record = sysinfo.device_record(device)
    params = {**case.params_dict, "shape_set": case.shape_set}
    base = dict(op=case.op, backend=case.impl, params=params, dtype=case.dtype)
    try:
        workload = family_module(case.family).workload(case, device)
        meter = "auto" if energy else "null"
        # without a meter there is no energy window to fill
        window_s = energy_window_s if energy else 1e-3
        # a CPU case rotates input copies past the last-level cache too: in a training step, whose data is
        # far larger, an op's operands come from memory (the timer's argument is named after a GPU's L2)
        cache = {"l2_bytes": cpu_last_level_cache_bytes()} if device == "cpu" else {}
        with cpu_measurement(device), Profiler(store=None, device=device, meter=meter, min_window_s=window_s,
                                            idle_s=1.0 if energy else 0.0, min_time_s=min_time_s, **cache) as prof:
            m = prof.window(case.label(), workload.fn, *workload.args, flops=workload.flops,
                            model_flops=workload.model_flops, bytes=workload.bytes, count_flops=False,
                            dtype=case.dtype, record=False)
        if not energy:
            m.energy_j_unavailable_reason = "energy not requested (pass --energy)"
            m.avg_power_w_unavailable_reason = "energy not requested (pass --energy)"
        record = m.to_record(op=case.op, backend=case.impl, params=params)
        record.params = params  # the case's own parameters are its identity (resume, retries)
        record.extra.update(workload.notes)
        if device == "cpu":
            record.extra["cpu_threads"] = cpu_thread_count()
    except Exception as exc:  # recorded as the case's status; the sweep goes on
        status = "oom" if _is_oom(exc) else "error"
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record = st.MeasurementRecord(**base, status=status, error=tail[-2000:],
                                      extra={"traceback": traceback.format_exc()[-4000:]})
    finally:
        _release_memory(device)
    return device_record, record


CPU_THREADS_ENV = "PYSCALE_BENCH_CPU_THREADS"


def cpu_last_level_cache_bytes() -> int | None:
    """The largest cache level sysfs reports for this CPU (L3, else L2), what CPU cases rotate past."""
    return sysinfo.cpu_cache_bytes(3) or sysinfo.cpu_cache_bytes(2)


def cpu_thread_count() -> int:
    """The threads CPU measurements run on: PYSCALE_BENCH_CPU_THREADS, default 1."""
    raw = os.environ.get(CPU_THREADS_ENV, "1")
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{CPU_THREADS_ENV} must be a whole number of threads >= 1: got {raw!r}")
    return count


@contextlib.contextmanager
def cpu_measurement(device: str) -> Iterator[None]:
    """The conditions of a CPU measurement, the same for benchmark cases and `pyscale profile` steps so that
    a step and the ops it is predicted from run alike: a fixed number of threads (`cpu_thread_count`: on
    small shapes an oversubscribed thread pool measures the machine's load, not the op), and a C heap that
    keeps what it frees (`pyscale.profile.timing.keep_freed_memory`, for the rest of the process)."""
    if device != "cpu":
        yield
        return
    import torch

    from pyscale.profile.timing import keep_freed_memory

    keep_freed_memory()
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_thread_count())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _release_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- sweeps

class Executor(Protocol):
    """Runs `run_case` over cases somewhere and yields (case, result or exception) as they finish."""

    def map_unordered(self, cases: Sequence[Case], **run_kwargs: Any
                      ) -> Iterator[tuple[Case, tuple[st.DeviceRecord, st.MeasurementRecord] | BaseException]]: ...


class LocalExecutor:
    """Runs every case in this process, in order."""

    def map_unordered(self, cases, **run_kwargs):
        for case in cases:
            try:
                yield case, run_case(case, **run_kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported per case by the sweep
                if isinstance(exc, KeyboardInterrupt):
                    raise
                yield case, exc


@dataclass
class SweepSummary:
    run_id: int
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def pending(cases: Sequence[Case], *, store: st.Store, device: str = "cpu", label: str = "") -> list[Case]:
    """The cases `store` has no current ok row of on `device` (at the GPU's power limit now): what a resumed
    sweep measures. `label`: a suffix of the backend (the campaign's A/B rows)."""
    device_id = store.register_device(sysinfo.device_record(device))
    limit = _power_limit_now(device)
    return [c for c in cases if not store.has_case(store.case_key_for(
        c.op, c.impl + label, {**c.params_dict, "shape_set": c.shape_set}, c.dtype, device_id=device_id,
        power_limit_w=limit))]


def _power_limit_now(device: str) -> float | None:
    """The enforced power limit of CUDA `device` (part of its cases' keys); None on a CPU or where NVML
    cannot say, as the profiler then records none either."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return None
    from pyscale.profile.power.nvml import enforced_power_limit_w

    return enforced_power_limit_w(int(index or 0))[0]


def sweep(cases: Sequence[Case], *, store: st.Store, device: str = "cpu", resume: bool = False,
          energy: bool = False, executor: Executor | None = None, progress: bool = True,
          command: str = "bench", arguments: dict[str, Any] | None = None,
          on_row: Callable[[dict[str, Any]], None] | None = None, retry_unstable: int = 0) -> SweepSummary:
    """Measure `cases` and write each result to `store` as soon as it arrives (this process is the writer).

    `retry_unstable`: passes that measure again the cases whose timing was not stable
    (`pyscale.profile.stability`); every attempt is stored, the newest current."""
    if retry_unstable < 0:
        raise ValueError(f"retry_unstable must be >= 0: got {retry_unstable}")
    executor = executor or LocalExecutor()
    run_id = store.start_run(command, arguments or {"cases": len(cases), "device": device})
    summary = SweepSummary(run_id)
    todo = list(cases)
    if resume:
        todo = pending(cases, store=store, device=device)
        summary.skipped = len(cases) - len(todo)
    status = "ok"
    bar = _progress(progress, len(todo))
    try:
        for case, result in _with_retries(executor, todo, retry_unstable, device=device, energy=energy):
            if isinstance(result, BaseException):
                device_record = _failure_device(device)
                record = st.MeasurementRecord(op=case.op, backend=case.impl,
                                              params={**case.params_dict, "shape_set": case.shape_set},
                                              dtype=case.dtype, status="error",
                                              error=f"worker failed: {type(result).__name__}: {result}")
            else:
                device_record, record = result
            device_id = store.register_device(device_record)
            store.record(record, device_id=device_id, run_id=run_id)
            row = {"case": case, "device": device_record, "record": record}
            summary.rows.append(row)
            if record.status == "ok":
                summary.measured += 1
            else:
                summary.failed += 1
            if on_row:
                on_row(row)
            bar.advance(case.label())
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        store.end_run(run_id, status)
    return summary


def _with_retries(executor: Executor, cases: Sequence[Case], passes: int, **run_kwargs: Any) -> Iterator[Any]:
    """The executor's results, then up to `passes` more passes over the cases measured ok but not stable."""
    todo = list(cases)
    for attempt in range(passes + 1):
        unstable = []
        for case, result in executor.map_unordered(todo, **run_kwargs):
            if (attempt < passes and not isinstance(result, BaseException) and result[1].status == "ok"
                    and result[1].extra.get("stable") is False):
                unstable.append(case)
            yield case, result
        if not unstable:
            return
        todo = unstable


class _progress:
    """A rich progress bar with ETA (or nothing when disabled or not a terminal)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar = None
        if enabled and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                 transient=True)
            self._task = self._bar.add_task("", total=total)
            self._bar.start()
        self._t0 = time.perf_counter()

    def advance(self, label: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=label[:60])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
