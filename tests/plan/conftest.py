"""Synthetic device profiles for the planner tests: made-up GEMM and attention timings, no GPU numbers."""

from __future__ import annotations

import pytest

from pyscale.costmodel import fit_device_profile
from pyscale.store import DeviceRecord, MeasurementRecord, Store

# A made-up device: 400 TFLOP/s at 70 % efficiency, 3 TB/s at 80 %, 5 us launch overhead. Synthetic.
RATE, BW, T0 = 400e12 * 0.7, 3e12 * 0.8, 5e-6
PEAK = 400e12
# a synthetic row measures time and power only; the store wants every other field explained
UNMEASURED = {f"{k}_unavailable_reason": "synthetic row: not measured" for k in ("idle_power_w", "sm_clock_mhz", "mem_clock_mhz",
                                                         "temperature_c")}


def _record(store: Store, dev: int, op: str, backend: str, params: dict, flops: float, nbytes: float,
            slowdown: float, watts: float, limits: dict[float, tuple[float, float]] | None = None) -> None:
    t = (max(flops / RATE, nbytes / BW) + T0) * slowdown
    for limit, (s, p) in (limits or {None: (1.0, 1.0)}).items():
        store.record(MeasurementRecord(op=op, backend=backend, params=params, dtype="bf16", time_s=t * s,
                                       flops=flops, bytes=nbytes, energy_j=t * s * watts * p, avg_power_w=watts * p,
                                       power_limit_w=limit, **UNMEASURED), device_id=dev)


def synthetic_profile(path, *, slowdown: float = 1.0, watts: float = 300.0, name: str = "Synthetic GPU",
                      attention_backends: dict[str, float] | None = None,
                      power_limits: dict[float, tuple[float, float]] | None = None):
    """A fitted profile of a made-up device; `slowdown` stretches every time (same power, so more J).

    attention_backends: backend name -> extra slowdown of its attention ({} for a GEMM-only profile).
    power_limits: GPU power limit (W) -> (slowdown, power ratio) against the largest, every op measured at each
    (None: rows without a recorded limit).
    """
    backends = {"pyscale": 1.0} if attention_backends is None else attention_backends
    with Store(path) as store:
        dev = store.register_device(DeviceRecord(kind="cuda", name=name, uuid=f"GPU-{name}"))
        for m in (16, 64, 256, 1024, 4096, 16384):
            for n, k in ((1024, 1024), (4096, 1024), (1024, 4096), (32000, 1024), (8192, 8192)):
                _record(store, dev, "gemm", "torch.mm", {"m": m, "n": n, "k": k}, 2.0 * m * n * k,
                        2.0 * (m * k + n * k + m * n), slowdown, watts, power_limits)
        for backend, extra in backends.items():
            for op, mult in (("attention_fwd", 1.0), ("attention_bwd", 2.5)):
                for s in (256, 1024, 4096):
                    for heads in (8, 16, 32):
                        params = {"batch": 1, "heads": heads, "seq_q": s, "seq_k": s, "head_dim": 128,
                                  "causal": True}
                        _record(store, dev, op, backend, params, mult * 4.0 * s * (s + 1) / 2 * heads * 128,
                                4.0 * s * heads * 128 * 2, slowdown * extra, watts, power_limits)
        return fit_device_profile(store, device=name)


@pytest.fixture(scope="session")
def profile(tmp_path_factory):
    """The default synthetic profile, fitted once per session (no test changes it)."""
    return synthetic_profile(tmp_path_factory.mktemp("profile") / "Synthetic GPU.db")


@pytest.fixture
def make_profile(tmp_path):
    """synthetic_profile(...) in this test's tmp_path, one store per device name."""
    def make(name: str = "Synthetic GPU", **kwargs):
        return synthetic_profile(tmp_path / f"{name}.db", name=name, **kwargs)
    return make


@pytest.fixture(scope="session")
def session_profile(tmp_path_factory):
    """synthetic_profile(...) in a folder of its own that lasts the session (for module-scoped fixtures)."""
    def make(name: str = "Synthetic GPU", **kwargs):
        return synthetic_profile(tmp_path_factory.mktemp("profiles") / f"{name}.db", name=name, **kwargs)
    return make
