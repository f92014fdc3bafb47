"""The profiler end to end on CPU into a temporary store, with a deterministic fake meter; unavailable
energy is None with a reason (never 0); step and module figures; the rank reduction (2-process gloo)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn

from pyscale.profile import power
from pyscale.profile import profiler as pr
from pyscale.store import Store

WATTS = 80.0


class FakeMeter(power.PowerMeter):
    """A constant-power meter: the counter (mJ) is WATTS x time.monotonic()."""

    name = "fake"

    def __init__(self, watts: float = WATTS):
        self.watts = watts

    def _read(self) -> power.MeterSnapshot:
        t = power.base.now_s()
        mj = int(self.watts * t * 1000)
        return power.MeterSnapshot(t, mj / 1000, power_w=self.watts, sm_clock_mhz=1500.0, temperature_c=55.0,
                                   throttle_reasons=("SwPowerCap",), counter=mj,
                                   unavailable_reasons={"mem_clock_mhz": "fake meter"})

    def energy_delta_j(self, start, end):
        return (end.counter - start.counter) / 1000


def make_profiler(tmp_path, **kw):
    kw.setdefault("meter", FakeMeter())
    kw.setdefault("min_window_s", 0.05)
    kw.setdefault("idle_s", 0.02)
    kw.setdefault("repeats", 10)
    kw.setdefault("max_warmup_s", 0.2)  # tiny ops on a shared CPU may never settle within 5 %
    return pr.Profiler(store=tmp_path / "p.db", **kw)


def test_window_measures_and_stores(tmp_path):
    a, b = torch.randn(32, 48), torch.randn(48, 16)
    with make_profiler(tmp_path) as prof:
        m = prof.window("mm", torch.mm, a, b, params={"m": 32})
    assert m.flops == m.model_flops == 2 * 32 * 48 * 16
    assert m.bytes == 4 * (32 * 48 + 48 * 16 + 32 * 16)
    assert m.time_s > 0 and m.time_s_p20 <= m.time_s <= m.time_s_p80 and m.repeats == 10
    assert m.window_s >= 0.05 and m.window_calls >= 1
    assert m.avg_power_w == pytest.approx(WATTS, rel=0.02)
    assert m.energy_j * m.window_calls == pytest.approx(WATTS * m.window_s, rel=0.02)
    assert m.idle_power_w == pytest.approx(WATTS, rel=0.05)  # reported as its own field ...
    assert m.energy_j * m.window_calls > 0.5 * WATTS * m.window_s  # ... and never subtracted
    assert m.sm_clock_mhz == 1500.0 and m.temperature_c == 55.0 and m.throttle_reasons == ("SwPowerCap",)
    assert m.mem_clock_mhz is None and m.mem_clock_mhz_unavailable_reason == "fake meter"
    assert m.mfu is None and "CPU" in m.mfu_unavailable_reason
    assert m.dtype == "float32" and not m.energy_attributed
    with Store(tmp_path / "p.db") as store:
        (row,) = store.measurements(op="mm")
        assert row["flops"] == m.flops and row["energy_j"] == pytest.approx(m.energy_j)
        assert row["params"]["m"] == 32 and row["rank"] == 0 and row["throttle_reasons"] == "SwPowerCap"
        assert row["extra"]["mfu"] is None and "CPU" in row["extra"]["mfu_unavailable_reason"]
        assert row["power_limit_w"] is None and "cpu" in row["unavailable_reasons"]["power_limit_w"]


def test_every_row_records_the_enforced_power_limit_and_is_keyed_by_it(tmp_path, monkeypatch):
    limits = iter([(300.0, None), (400.0, None)])
    monkeypatch.setattr(pr.Profiler, "_power_limit", lambda self: next(limits))  # a GPU's limit, read per window
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with make_profiler(tmp_path) as prof:
        at_300 = prof.window("mm", torch.mm, a, b, params={"m": 8})
        at_400 = prof.window("mm", torch.mm, a, b, params={"m": 8})
    assert (at_300.power_limit_w, at_400.power_limit_w) == (300.0, 400.0)
    with Store(tmp_path / "p.db") as store:
        rows = store.measurements(op="mm")  # two current rows: one case at two limits
        assert sorted(r["power_limit_w"] for r in rows) == [300.0, 400.0]


def test_unavailable_meter_reports_none_with_reason_never_zero(tmp_path):
    with make_profiler(tmp_path, meter="null") as prof:
        m = prof.window("mm", torch.mm, torch.randn(8, 8), torch.randn(8, 8))
    assert m.energy_j is None and m.avg_power_w is None and m.idle_power_w is None
    assert "meter='null'" in m.energy_j_unavailable_reason
    rec = m.to_record()
    assert rec.energy_j is None and rec.energy_j_unavailable_reason == m.energy_j_unavailable_reason
    assert rec.unavailable_reasons()["energy_j"] == m.energy_j_unavailable_reason
    with Store(tmp_path / "p.db") as store:
        (row,) = store.measurements(op="mm")
        assert row["energy_j"] is None and row["unavailable_reasons"]["energy_j"]
    with pytest.raises(ValueError, match="never 0"):
        pr.Measurement("x", time_s=1.0, energy_j=0.0)


def test_stale_counter_window_is_unavailable_not_zero(tmp_path):
    class Frozen(FakeMeter):
        def _read(self):
            snap = super()._read()
            return power.MeterSnapshot(snap.timestamp_s, 1.0, counter=1000)

    with make_profiler(tmp_path, meter=Frozen()) as prof:
        m = prof.window("mm", torch.mm, torch.randn(8, 8), torch.randn(8, 8))
    assert m.energy_j is None and "did not advance" in m.energy_j_unavailable_reason


def test_block_window_short_is_unavailable_long_is_measured(tmp_path):
    import time

    with make_profiler(tmp_path, min_window_s=0.2) as prof:  # far above an empty block, even on a busy CPU
        with prof.window("short", flops=10.0, model_flops=10.0) as short:
            pass
        with prof.window("long") as long:
            time.sleep(0.21)
    assert short.measurement.energy_j is None and "shorter than min_window_s" in short.measurement.energy_j_unavailable_reason
    assert short.measurement.flops == 10.0
    lm = long.measurement
    # The meter's snapshots and the window's clock are read at different instants: allow 10 ms of
    # scheduling skew between them (a loaded 2-core machine shows several ms).
    assert lm.time_s >= 0.21 and lm.energy_j == pytest.approx(WATTS * lm.window_s, abs=WATTS * 0.01)
    assert lm.flops is None and "block window" in lm.flops_unavailable_reason


def test_mfu_from_the_peak(tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "peak_flops_per_s", lambda device, dtype: (1e9, None))
    with make_profiler(tmp_path) as prof:
        m = prof.window("mm", torch.mm, torch.randn(16, 16), torch.randn(16, 16))
    assert m.mfu == pytest.approx(m.model_flops / m.time_s / 1e9)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.act = nn.GELU()
        self.down = nn.Linear(64, 8)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def test_profile_step_per_step_and_modules(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 32)

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    # a window far longer than a step (even on a busy CPU), so step energies are attributed
    with make_profiler(tmp_path, min_window_s=0.5) as prof:
        sp = prof.profile_step(step, steps=4, warmup=1, module=model)
    s = sp.summary
    fwd = 2 * 16 * (32 * 64 + 64 * 8)
    assert s.flops == fwd + 2 * 16 * 32 * 64 + 2 * 2 * 16 * 64 * 8  # layer 1 has no dX: its input needs no grad
    assert s.model_flops == 3 * fwd
    assert len(sp.steps) == 4 and all(m.time_s > 0 and m.energy_attributed for m in sp.steps)
    assert s.window_s >= 0.5 and s.energy_j == pytest.approx(WATTS * s.window_s / s.window_calls, rel=0.02)
    assert sum(m.energy_j for m in sp.steps) <= s.energy_j * s.window_calls * 1.001
    by_name = {m.extra["module"]: m for m in sp.modules}
    assert all(m.name == f"step/{m.extra['module']}" for m in sp.modules)
    assert set(by_name) == {"MLP", "MLP.up", "MLP.act", "MLP.down"}
    assert by_name["MLP.up"].flops == 2 * 16 * 32 * 64 * 2  # forward + dW
    assert by_name["MLP.act"].flops == 0
    for m in sp.modules:
        assert m.energy_attributed and m.time_s > 0 and 0 < m.extra["time_share"] <= 1
        # attributed = the step's energy x the module's share of the (hooked) step time
        assert m.energy_j == pytest.approx(s.energy_j * m.extra["time_share"])
        # one statistic throughout: the share (median over the hooked steps) of the step's median time
        assert m.extra["time_attributed"] and m.time_s == pytest.approx(s.time_s * m.extra["time_share"])
        assert m.time_s <= s.time_s and m.extra["hooked_steps"] == pr.Profiler.HOOKED_STEPS
    # x needs no gradient: the root's and the first layer's backward cannot be timed by hooks, and say so
    assert [n for n, m in by_name.items() if not m.extra["backward_timed"]] == ["MLP", "MLP.up"]
    # the statistics are of the 4 steps asked for; the window took more steps to last 0.5 s
    assert s.repeats == 4 and s.extra["steps_in_energy_window"] == s.window_calls > 4
    with Store(tmp_path / "p.db") as store:
        rows = store.measurements()
        assert len(rows) == 1 + 4 + 4
        assert {r["op"] for r in rows} >= {"step", "step[0]", "step/MLP.up"}
        assert all(r["extra"]["energy_attributed"] for r in rows if r["op"] != "step")


def test_without_a_meter_nothing_is_repeated_or_waited_for(monkeypatch):
    """No energy to measure: no idle wait, no window filled with repetitions (bench --energy without a meter
    took 2.5x as long for nothing); the reasons say why energy is absent."""
    import time

    slept = []
    monkeypatch.setattr(time, "sleep", lambda s: slept.append(s))
    calls = []
    a, b = torch.randn(8, 8), torch.randn(8, 8)

    def mm(x, y):
        calls.append(1)
        return x @ y

    with pr.Profiler(device="cpu", meter="null", min_window_s=1.0, idle_s=1.0, repeats=5, max_warmup_s=0.05) as prof:
        m = prof.window("mm", mm, a, b, flops=1024.0, count_flops=False, record=False)
        sp = prof.profile_step(lambda: mm(a, b), steps=3, warmup=1)
    assert slept == []
    assert m.window_calls == 0 and len(calls) >= m.repeats + m.extra["warmup_calls"]
    assert "no meter requested" in m.energy_j_unavailable_reason and "window" not in m.energy_j_unavailable_reason
    assert "no meter requested" in prof.idle_power_w_unavailable_reason
    s = sp.summary
    assert s.repeats == 3 and len(sp.steps) == 3 and s.extra["steps_in_energy_window"] == 0
    assert len(calls) - (m.repeats + m.extra["warmup_calls"]) <= 1 + 1 + 3  # warmup + counted + the 3 steps


def test_profile_step_function_without_store():
    sp = pr.profile_step(lambda: torch.randn(64, 64) @ torch.randn(64, 64), steps=2, warmup=0,
                         meter="null", min_window_s=0.01, idle_s=0)
    assert sp.summary.flops == 2 * 64**3 and sp.summary.energy_j is None
    assert sp.summary.idle_power_w_unavailable_reason == "idle power not measured (idle_s=0)"
    assert len(sp.steps) == 2 and sp.modules == []


def test_reduce_ranks():
    a = pr.Measurement("w", time_s=1.0, flops=10.0, model_flops=12.0, bytes=5.0, energy_j=3.0, avg_power_w=3.0,
                       mfu=0.5, rank=0, world_size=2)
    b = pr.Measurement("w", time_s=2.0, flops=20.0, model_flops=12.0, bytes=5.0, energy_j=4.0, avg_power_w=2.0,
                       mfu=0.125, rank=1, world_size=2)
    r = pr.reduce_ranks([a, b])
    assert (r.time_s, r.flops, r.model_flops, r.energy_j, r.avg_power_w) == (2.0, 30.0, 24.0, 7.0, 5.0)
    assert r.reduced and r.rank == 0
    # each rank's peak is model/time/mfu: 12/1/0.5 = 24 and 12/2/0.125 = 48 FLOP/s
    assert r.mfu == pytest.approx(24.0 / 2.0 / (24.0 + 48.0))
    c = pr.Measurement("w", time_s=1.0, energy_j_unavailable_reason="no meter on rank 1", rank=1)
    r2 = pr.reduce_ranks([a, c])
    assert r2.energy_j is None and "no meter on rank 1" in r2.energy_j_unavailable_reason


# --------------------------------------------------------------------------- two ranks, gloo on CPU

def _worker(rank: int, world: int, port: int, db: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = 16 * (rank + 1)  # different work per rank: sums and max must show it
        with pr.Profiler(store=db, meter=FakeMeter(50.0 * (rank + 1)), min_window_s=0.05, idle_s=0.01,
                         repeats=5, max_warmup_s=0.2) as prof:
            # FLOPs given: a FlopCounter's first use costs seconds of imports in each fresh process
            m = prof.window("mm", torch.mm, torch.randn(n, n), torch.randn(n, n), flops=2.0 * n**3,
                            model_flops=2.0 * n**3, bytes=12.0 * n * n)
        if rank == 0:
            assert m.reduced and m.flops == 2 * 16**3 + 2 * 32**3
        else:
            assert not m.reduced and m.flops == 2 * 32**3
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_gloo(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = str(tmp_path / "dist.db")
    torch.multiprocessing.spawn(_worker, args=(2, port, db), nprocs=2, join=True)
    with Store(db) as store:
        rows = store.measurements(op="mm")
    assert sorted((r["rank"], r["params"]["reduced"]) for r in rows) == [(0, False), (0, True), (1, False)]
    reduced = next(r for r in rows if r["params"]["reduced"])
    per_rank = {r["rank"]: r for r in rows if not r["params"]["reduced"]}
    assert reduced["flops"] == per_rank[0]["flops"] + per_rank[1]["flops"]
    assert reduced["energy_j"] == pytest.approx(per_rank[0]["energy_j"] + per_rank[1]["energy_j"])
    assert reduced["time_s_median"] == max(per_rank[0]["time_s_median"], per_rank[1]["time_s_median"])
    assert per_rank[1]["avg_power_w"] == pytest.approx(100.0, rel=0.02)
    assert reduced["extra"]["ranks"] == 2


def test_measure_energy_for_benchmark_workloads(monkeypatch):
    monkeypatch.setattr(pr, "_IDLE_CACHE", {})
    seen = []
    r = pr.measure_energy(lambda i: seen.append(i), copies=2, device="cpu", min_window_s=0.03,
                          time_per_call_s=1e-5, meter=FakeMeter(), idle_s=0.01)
    assert r.calls == len(seen) and seen[:4] == [0, 1, 2, 3] and r.window_s >= 0.03
    assert r.energy_j == pytest.approx(WATTS * r.window_s, rel=0.05)
    assert r.energy_per_call_j == pytest.approx(r.energy_j / r.calls)
    assert r.throttle_reasons == "SwPowerCap" and r.idle_power_w == pytest.approx(WATTS, rel=0.05)
    assert r.unavailable_reasons == {"mem_clock_mhz": "fake meter"}
    none = pr.measure_energy(lambda i: None, device="cpu", min_window_s=0.01, meter="null", idle_s=0.01)
    assert none.energy_per_call_j is None and none.energy_j is None
    assert {"energy_j", "avg_power_w", "idle_power_w"} <= set(none.unavailable_reasons)


def test_peak_from_hw_table(monkeypatch):
    from pyscale import hw

    name = hw.all_specs()[0].match[0]  # a device name the table knows
    spec = hw.lookup(name)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    cuda = torch.device("cuda", 0)
    for dtype in ("bfloat16", "float16"):
        peak, why = pr.peak_flops_per_s(cuda, dtype)
        assert peak is not None and peak == hw.peak_flops(spec, dtype) and why is None
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert pr.peak_flops_per_s(cuda, "float32")[0] == hw.peak_flops(spec, "tf32")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Imaginary GPU 9000")
    peak, why = pr.peak_flops_per_s(cuda, "bfloat16")
    assert peak is None and "not in hw.py" in why
    assert pr.peak_flops_per_s(torch.device("cpu"), "bfloat16")[0] is None


def test_per_device_energies_with_a_multi_meter(tmp_path):
    meter = power.MultiMeter([FakeMeter(30.0), FakeMeter(50.0)])
    # Each meter reads its own clock: a window long against a preemption between the two reads.
    with make_profiler(tmp_path, meter=meter, min_window_s=0.25) as prof:
        m = prof.window("mm", torch.mm, torch.randn(16, 16), torch.randn(16, 16))
    parts = m.extra["per_device_energy_j"]
    assert len(parts) == 2 and sum(parts) == pytest.approx(m.energy_j)
    assert parts[1] / parts[0] == pytest.approx(50.0 / 30.0, rel=0.05)
    assert m.avg_power_w == pytest.approx(80.0, rel=0.05)


def test_long_steps_get_measured_not_attributed_energy(tmp_path):
    import time

    with make_profiler(tmp_path, min_window_s=0.02) as prof:
        sp = prof.profile_step(lambda: time.sleep(0.03), steps=3, warmup=0)
    for m in sp.steps:
        assert not m.energy_attributed and m.window_s >= 0.03
        assert m.energy_j == pytest.approx(WATTS * m.window_s, rel=0.02)
        assert m.sm_clock_mhz == 1500.0
    # the summary's window covers every step: its per-step average matches the steps' own
    assert sp.summary.energy_j == pytest.approx(sum(m.energy_j for m in sp.steps) / 3, rel=0.1)
