"""Stand-ins for `pyscale.benchmark.runner.run_case` that Ray workers run in the executor tests.

They measure nothing: the "time" is a pure function of the case, so a serial run and a Ray run must
produce identical rows, and the worker's environment and process id are reported back in `extra`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyscale import store as st
from pyscale.benchmark.runner import Case

DEVICE = st.DeviceRecord(kind="cpu", name="fake CPU", uuid="cpu-fake-0")
ENV_SEEN = ("TRITON_INTERPRET", "PYSCALE_BACKEND", "PYSCALE_TEST_TAG")
MARKERS_ENV = "PYSCALE_TEST_MARKERS"


def fake_time_s(case: Case) -> float:
    p = case.params_dict
    return 1e-6 + 2.0 * p["m"] * p["n"] * p["k"] * 1e-15


def fake_run(case: Case, *, device: str = "cpu", energy: bool = False) -> tuple[st.DeviceRecord, st.MeasurementRecord]:
    t = fake_time_s(case)
    record = st.MeasurementRecord(
        op=case.op, backend=case.impl, params={**case.params_dict, "shape_set": case.shape_set}, dtype=case.dtype,
        time_s=t, time_s_p20=t, time_s_p80=t, repeats=1,
        energy_j_unavailable_reason="fake run", avg_power_w_unavailable_reason="fake run",
        extra={"env": {k: os.environ.get(k) for k in ENV_SEEN}, "pid": os.getpid(), "device_arg": device}
    ).explain_missing("fake run")
    return DEVICE, record


def fake_gpu_run(case: Case, **kwargs) -> tuple[st.DeviceRecord, st.MeasurementRecord]:
    """A "GPU" named after the accelerator type the executor pinned this task to."""
    gpu_type = os.environ.get("PYSCALE_RAY_ACCELERATOR_TYPE", "unpinned")
    _, record = fake_run(case, **kwargs)
    record.extra["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return st.DeviceRecord(kind="cuda", name=f"fake {gpu_type}", uuid=f"GPU-fake-{gpu_type}"), record


def _is_target(case: Case) -> bool:
    """One case of the quick sweep (a layer and M hold one case per format: pick the baseline's)."""
    p = case.params_dict
    return p.get("layer") == "a" and p.get("m") == 16 and case.impl == "torch.mm"


def _attempt(case: Case) -> int:
    """Count this attempt at the target case in a file (workers share the filesystem with the test)."""
    log = Path(os.environ[MARKERS_ENV]) / "attempts"
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(log.read_text().splitlines())


def crash_first_attempt(case: Case, **kwargs):
    """Kill the worker process in the middle of the target case's first attempt."""
    if _is_target(case) and _attempt(case) == 1:
        os._exit(17)
    return fake_run(case, **kwargs)


def always_crash(case: Case, **kwargs):
    if _is_target(case):
        _attempt(case)
        os._exit(17)
    return fake_run(case, **kwargs)


def raise_on_target(case: Case, **kwargs):
    if _is_target(case):
        _attempt(case)
        raise ValueError("boom from the worker")
    return fake_run(case, **kwargs)
