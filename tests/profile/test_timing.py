"""Timing: statistics, warm-up, rotating inputs for a cold L2, the host timer on CPU; events/graphs on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyscale.profile import timing as tm


def test_statistics_match_numpy():
    xs = (0.5, 0.1, 0.3, 0.9, 0.2, 0.7, 0.4)
    t = tm.Timing(xs, "perf_counter", 0, True)
    for q, prop in ((0.5, t.median_s), (0.2, t.p20_s), (0.8, t.p80_s)):
        assert prop == pytest.approx(float(np.percentile(xs, q * 100)))
    assert t.mean_s == pytest.approx(np.mean(xs)) and t.min_s == 0.1 and t.repeats == 7


def test_time_fn_cpu_counts_calls_and_stabilises():
    calls = []

    def fn(x):
        calls.append(x)
        return x * 2

    t = tm.time_fn(fn, torch.ones(4), repeats=11, warmup_batch=3, stable_rel=1e9)
    assert t.method == "perf_counter" and t.repeats == 11 and all(x > 0 for x in t.times_s)
    assert t.warmup_converged and t.warmup_calls == 6  # two batches are needed to compare medians
    assert len(calls) == t.warmup_calls + t.repeats
    assert not t.cold_l2 and t.rotating_copies == 1  # no L2 size for the CPU unless given


def test_time_fn_fills_min_time():
    import time

    # each call sleeps >= 2 ms, so filling 20 ms takes at most 10 repeats (3 at least, min_repeats)
    t = tm.time_fn(lambda: time.sleep(0.002), min_time_s=0.02, min_repeats=3, max_warmup_s=0.1, stable_rel=10.0)
    assert 3 <= t.repeats <= 10 and t.min_s >= 0.002


def test_rotating_inputs_exceed_target_and_are_distinct():
    a = torch.randn(256, requires_grad=True)  # 1 KiB
    b = torch.randn(128)
    copies, note = tm.rotating_inputs((a, 3), {"b": b}, target_bytes=10_000)
    per_copy = a.numel() * 4 + b.numel() * 4
    assert len(copies) == -(-10_000 // per_copy) and note is None
    assert len(copies) * per_copy >= 10_000
    ptrs = {c[0][0].data_ptr() for c in copies}
    assert len(ptrs) == len(copies)  # every copy has its own memory
    assert all(c[0][0].requires_grad and c[0][1] == 3 and torch.equal(c[1]["b"], b) for c in copies)
    capped, note = tm.rotating_inputs((a,), {}, target_bytes=10**9, max_copies=4)
    assert len(capped) == 4 and "cold L2 incomplete" in note


def test_time_fn_rotates_through_copies_with_given_l2():
    seen = set()
    x = torch.randn(1024)
    t = tm.time_fn(lambda v: seen.add(v.data_ptr()), x, repeats=20, l2_bytes=8192, stable_rel=10.0)
    assert t.rotating_copies == len(seen) == 2 * 8192 // (1024 * 4)


@pytest.mark.gpu
def test_cuda_events_cold_l2_and_graphs():
    a = torch.randn(2048, 2048, device="cuda")
    t = tm.time_fn(torch.mm, a, a, repeats=20)
    assert t.method == "cuda_events" and t.cold_l2 and t.rotating_copies >= 2
    g = tm.time_fn(torch.mm, a, a, repeats=20, cuda_graph=True)
    assert g.method == "cuda_graph_events"
    # same work: graph replay is not slower than eager by more than launch noise
    assert g.median_s < 1.5 * t.median_s


def test_indexed_copies_mode_for_benchmark_workloads():
    seen = []
    t = tm.time_fn(lambda i: seen.append(i), copies=3, repeats=7, stable_rel=10.0)
    assert t.timer == t.method == "perf_counter" and t.rotating_copies == 3
    assert seen == [i % 3 for i in range(len(seen))]  # call i gets index i (mod copies)
    assert len(seen) == t.warmup_calls + 7
    with pytest.raises(ValueError, match="copies=N"):
        tm.time_fn(lambda i: None, 1, copies=2)


def test_cpu_timings_carry_their_cpu_time_and_cpu_measurements_keep_freed_memory():
    from pyscale.profile.timing import keep_freed_memory

    a = torch.randn(128, 128)
    t = tm.time_fn(torch.mm, a, a, device="cpu", min_time_s=0.01)
    assert len(t.cpu_times_s) == t.repeats and all(c >= 0 for c in t.cpu_times_s)
    assert t.wall_s > 0 and t.cpu_time_s >= 0 and t.threads == torch.get_num_threads()
    assert keep_freed_memory() is keep_freed_memory()  # set once per process; True with glibc
