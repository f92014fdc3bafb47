"""Timing of a callable: CUDA events on a GPU, `time.perf_counter_ns` on the CPU.

- Warm-up until stable: batches of calls until two consecutive batch medians agree within `stable_rel`
  (or `max_warmup_s` runs out; `Timing.warmup_converged` says which). Whether the timed repetitions
  themselves were taken on a quiet machine is `pyscale.profile.stability`'s verdict, from the process CPU
  time, wall time and threads recorded here.
- Cold L2 (GPU): the tensor arguments are copied until the copies together exceed twice the L2 size
  (from `hw.py`, else `torch.cuda.get_device_properties().L2_cache_size`), and repetitions rotate through
  them -- no flush kernel, whose own work and energy would pollute the measurement.
- Cold caches (CPU, when the caller gives a cache size): the same rotation past it.
- Warm memory (CPU, `keep_freed_memory`): the C heap keeps what it frees, as a GPU's caching allocator
  does, so neither a training step nor an op timed in a loop pays page faults for memory it frees and
  allocates again (glibc would otherwise hand a step's freed activations back to the kernel each step while
  a loop of one op reuses warm pages: the two would not add up).
- Optional CUDA-graph mode: one graph per input copy, each replay timed by events.
- Statistics over repetitions: median, p20, p80, mean, min (seconds), in a `Timing` dataclass.
A host clock never brackets GPU work: GPU timings come from events, read after a synchronize.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

#: copies above this many would cost too much memory for little gain; the shortfall is reported
MAX_ROTATING_COPIES = 64


@dataclass(frozen=True)
class Timing:
    """Per-call times in seconds and their statistics."""

    times_s: tuple[float, ...]
    method: str  # "cuda_events", "cuda_graph_events" or "perf_counter"
    warmup_calls: int
    warmup_converged: bool
    rotating_copies: int = 1
    cold_l2: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    cpu_time_s: float | None = None  # process CPU time over the timed repetitions (all threads)
    cpu_times_s: tuple[float, ...] = ()  # CPU (host-timed) calls: the process CPU time of each
    wall_s: float | None = None  # host wall time over the same repetitions
    threads: int | None = None  # torch's CPU threads while they ran

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    @property
    def timer(self) -> str:
        """Alias of `method` (what benchmark rows record)."""
        return self.method

    def quantile_s(self, q: float) -> float:
        """Linear-interpolated quantile (numpy's default method)."""
        xs = sorted(self.times_s)
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def median_s(self) -> float:
        return self.quantile_s(0.5)

    @property
    def p20_s(self) -> float:
        return self.quantile_s(0.2)

    @property
    def p80_s(self) -> float:
        return self.quantile_s(0.8)

    @property
    def mean_s(self) -> float:
        return sum(self.times_s) / len(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)


# --------------------------------------------------------------------------- devices

def infer_device(args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> torch.device:
    """The CUDA device of the first CUDA tensor among the arguments, else the CPU."""
    leaves, _ = tree_flatten((tuple(args), kwargs or {}))
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.is_cuda:
            return leaf.device
    return torch.device("cpu")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for all GPU work on `device` (nothing to do on the CPU)."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)


def l2_cache_bytes(device: torch.device) -> tuple[int | None, str]:
    """(bytes, source) of the device's L2: hw.py's spec first, else torch's device properties."""
    if device.type != "cuda":
        return None, "not a CUDA device"
    try:
        from pyscale import hw

        spec = hw.lookup(torch.cuda.get_device_name(device))
        size = getattr(spec, "l2_cache_bytes", None)
        if size:
            return int(size), "hw.py"
    except (ImportError, AttributeError):
        pass
    size = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0)
    return (size, "torch.cuda.get_device_properties") if size > 0 else (None, "L2 size unknown")


def _tensor_bytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(x.numel() * x.element_size() for x in leaves if isinstance(x, torch.Tensor))


def rotating_inputs(args: tuple, kwargs: dict, target_bytes: int | None,
                    max_copies: int = MAX_ROTATING_COPIES) -> tuple[list[tuple[tuple, dict]], str | None]:
    """Input copies whose total exceeds `target_bytes` (the originals are copy 0) and a note if capped."""
    per_copy = _tensor_bytes((args, kwargs))
    if not target_bytes or per_copy == 0:
        return [(args, kwargs)], None
    wanted = max(1, math.ceil(target_bytes / per_copy))
    count = min(wanted, max_copies)

    def clone(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().clone().requires_grad_(x.requires_grad)
        return x

    copies = [(args, kwargs)] + [tree_map(clone, (args, kwargs)) for _ in range(count - 1)]
    note = None
    if count < wanted:
        note = (f"cold L2 incomplete: {count} input copies of {per_copy} B cover {count * per_copy} B, "
                f"less than the {target_bytes} B target")
    return copies, note


def prepare_inputs(args: Sequence[Any], kwargs: dict[str, Any], device: torch.device, *, cold_l2: bool = True,
                   l2_bytes: int | None = None) -> tuple[list[tuple[tuple, dict]], tuple[str, ...], bool]:
    """(rotating input copies, notes, whether the copies exceed 2x L2) for `device`."""
    notes: list[str] = []
    target = None
    if cold_l2 and device.type == "cuda":
        size, source = (l2_bytes, "argument") if l2_bytes else l2_cache_bytes(device)
        if size:
            target = 2 * size
        else:
            notes.append(f"cold L2 not arranged: {source}")
    elif cold_l2 and l2_bytes:
        target = 2 * l2_bytes  # CPU caches only when the caller gives a size
    inputs, note = rotating_inputs(tuple(args), dict(kwargs), target)
    if note:
        notes.append(note)
    return inputs, tuple(notes), bool(target) and note is None


# --------------------------------------------------------------------------- timing loops

_HEAP_KEPT: bool | None = None
# glibc's mallopt parameters (malloc.h) and the values that keep freed memory mapped
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_NEVER_TRIM = 2**31 - 1  # bytes free at the top before the heap shrinks (mallopt takes a C int)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit: larger blocks are always mapped afresh


def keep_freed_memory() -> bool:
    """Make this process's C heap keep the memory it frees (glibc mallopt: no trimming, blocks up to 32 MiB
    from the heap); once set it holds for the process. False (and nothing changed) without glibc."""
    global _HEAP_KEPT
    if _HEAP_KEPT is None:
        import ctypes

        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _HEAP_KEPT = bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)) and bool(
                mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
        except (OSError, AttributeError):
            _HEAP_KEPT = False
    return _HEAP_KEPT


def _time_calls_host(fn: Callable[..., Any], inputs: list[tuple[tuple, dict]], n: int, offset: int = 0,
                     cpu_times: list[float] | None = None) -> list[float]:
    """Wall time of each call; with `cpu_times`, the process CPU time of each call is appended to it (read
    outside the wall-clock bracket, so the wall time carries no extra cost)."""
    out = []
    for i in range(n):
        a, k = inputs[(offset + i) % len(inputs)]
        c0 = time.process_time_ns() if cpu_times is not None else 0
        t0 = time.perf_counter_ns()
        fn(*a, **k)
        out.append((time.perf_counter_ns() - t0) * 1e-9)
        if cpu_times is not None:
            cpu_times.append((time.process_time_ns() - c0) * 1e-9)
    return out


def _time_calls_cuda(calls: list[Callable[[], Any]], n: int, offset: int = 0) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        starts[i].record()
        calls[(offset + i) % len(calls)]()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]  # ms -> s


def time_fn(fn: Callable[..., Any], *args: Any, kwargs: dict[str, Any] | None = None,
            device: torch.device | str | None = None, repeats: int | None = None,
            min_time_s: float = 0.1, min_repeats: int = 5, max_repeats: int = 1000,
            warmup_batch: int = 3, max_warmup_s: float = 2.0, stable_rel: float = 0.05,
            cold_l2: bool = True, l2_bytes: int | None = None, cuda_graph: bool = False,
            inputs: list[tuple[tuple, dict]] | None = None, copies: int | None = None) -> Timing:
    """Time `fn(*args, **kwargs)`; see the module docstring. `repeats` fixes the count, else it fills `min_time_s`.

    `inputs` (from `prepare_inputs`) replaces args/kwargs by ready rotating copies. `copies=N` is the
    indexed form used by benchmark workloads: call i runs `fn(i)`, and fn itself picks input copy i % N
    (the caller arranged copies exceeding the L2).
    """
    kwargs = dict(kwargs or {})
    dev = torch.device(device) if device is not None else infer_device(args, kwargs)
    on_gpu = dev.type == "cuda"
    if copies is not None:
        if copies < 1 or args or kwargs or inputs is not None:
            raise ValueError("copies=N takes fn(i) alone: no args, kwargs or inputs, and N >= 1")
        inputs = [((i,), {}) for i in range(copies)]
        prep_notes, cold = (), copies > 1
    elif inputs is None:
        inputs, prep_notes, cold = prepare_inputs(args, kwargs, dev, cold_l2=cold_l2, l2_bytes=l2_bytes)
    else:
        prep_notes, cold = (), len(inputs) > 1
    notes = list(prep_notes)

    # Events and graphs belong to the current device: make it the measured one for the duration.
    with device_context(dev):
        return _time_on_device(fn, inputs, on_gpu, cuda_graph, repeats, min_time_s, min_repeats, max_repeats,
                               warmup_batch, max_warmup_s, stable_rel, notes, cold)


def device_context(device: torch.device) -> Any:
    """`torch.cuda.device(device)` for a CUDA device, else a no-op context."""
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _time_on_device(fn: Callable[..., Any], inputs: list[tuple[tuple, dict]], on_gpu: bool, cuda_graph: bool,
                    repeats: int | None, min_time_s: float, min_repeats: int, max_repeats: int, warmup_batch: int,
                    max_warmup_s: float, stable_rel: float, notes: list[str], cold: bool) -> Timing:
    method = "perf_counter"
    calls: list[Callable[[], Any]] = [lambda a=a, k=k: fn(*a, **k) for a, k in inputs]
    if on_gpu:
        method = "cuda_events"
        if cuda_graph:
            calls = _capture_graphs(fn, inputs)
            method = "cuda_graph_events"

    def batch(n: int, offset: int, cpu_times: list[float] | None = None) -> list[float]:
        if on_gpu:
            return _time_calls_cuda(calls, n, offset)
        return _time_calls_host(fn, inputs, n, offset, cpu_times)

    # Warm-up until two consecutive batch medians agree (compiles, autotuning, clocks settle).
    warm = 0
    converged = False
    previous = None
    t_end = time.perf_counter() + max_warmup_s
    while True:
        times = batch(warmup_batch, warm)
        warm += warmup_batch
        med = statistics.median(times)
        if previous is not None and abs(med - previous) <= stable_rel * max(previous, 1e-12):
            converged = True
            break
        previous = med
        if time.perf_counter() > t_end:
            notes.append(f"warm-up did not stabilise within {max_warmup_s} s ({warm} calls)")
            break
    if repeats is None:
        repeats = int(min(max_repeats, max(min_repeats, math.ceil(min_time_s / max(med, 1e-9)))))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    per_call_cpu: list[float] = []
    times = batch(repeats, warm, per_call_cpu)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return Timing(tuple(times), method, warm, converged, len(inputs), bool(cold), tuple(notes),
                  cpu_time_s=cpu_s, wall_s=wall_s, threads=torch.get_num_threads(), cpu_times_s=tuple(per_call_cpu))


def _capture_graphs(fn: Callable[..., Any], inputs: list[tuple[tuple, dict]]) -> list[Callable[[], Any]]:
    """One CUDA graph per input copy (replays read the copy's own memory, keeping the L2 cold)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # graph capture needs warm, allocated kernels: run each once off-graph
        for a, k in inputs:
            fn(*a, **k)
    torch.cuda.current_stream().wait_stream(stream)
    graphs = []
    for a, k in inputs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(*a, **k)
        graphs.append(g)
    return [g.replay for g in graphs]


__all__ = ["Timing", "device_context", "infer_device", "keep_freed_memory", "l2_cache_bytes", "prepare_inputs",
           "rotating_inputs", "synchronize", "time_fn"]
