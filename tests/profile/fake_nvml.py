"""A fake NVML for the power-limit tests, shared by a test, the processes it starts and their guard
processes: its state is a JSON file named by $FAKE_NVML_STATE (limit, constraints, what to refuse), and every
set is appended to the file's log with the pid that made it. No real GPU is ever touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_GPU_IS_LOST = 15
UUID = "GPU-fake-0"


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__({3: "Not Supported", 4: "Insufficient Permissions"}.get(value, f"error {value}"))
        self.value = value


def init(path: Path, *, limit_w: float = 350.0, min_w: float = 100.0, max_w: float = 700.0,
         cap_w: float | None = None, refuse: int | None = None) -> Path:
    """Write a fresh state: the limit now, the constraints, a lower cap the GPU enforces (cap_w), and an
    NVML error code that every set raises (refuse)."""
    state = {"limit_mw": int(limit_w * 1000), "min_mw": int(min_w * 1000), "max_mw": int(max_w * 1000),
             "cap_mw": None if cap_w is None else int(cap_w * 1000), "refuse": refuse, "log": []}
    path.write_text(json.dumps(state))
    return path


def state() -> dict:
    return json.loads(Path(os.environ["FAKE_NVML_STATE"]).read_text())


def _save(s: dict) -> None:
    path = Path(os.environ["FAKE_NVML_STATE"])
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(s))
    os.replace(tmp, path)


def sets() -> list[float]:
    """Every limit set so far, in W."""
    return [mw / 1000 for _, mw in state()["log"]]


def nvmlInit() -> None:
    state()  # fails without $FAKE_NVML_STATE, as NVML does without a driver


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetHandleByIndex(index: int) -> str:
    return f"handle-{index}"


def nvmlDeviceGetHandleByUUID(uuid: str) -> str:
    if uuid != UUID:
        raise NVMLError(2)
    return "handle-0"


def nvmlDeviceGetUUID(handle: str) -> str:
    return UUID


def nvmlDeviceGetPowerManagementLimitConstraints(handle: str) -> tuple[int, int]:
    s = state()
    return s["min_mw"], s["max_mw"]


def nvmlDeviceGetPowerManagementLimit(handle: str) -> int:
    return state()["limit_mw"]


def nvmlDeviceGetEnforcedPowerLimit(handle: str) -> int:
    s = state()
    return s["limit_mw"] if s["cap_mw"] is None else min(s["limit_mw"], s["cap_mw"])


def nvmlDeviceSetPowerManagementLimit(handle: str, limit_mw: int) -> None:
    s = state()
    if s["refuse"] is not None:
        raise NVMLError(s["refuse"])
    if not s["min_mw"] <= limit_mw <= s["max_mw"]:
        raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
    s["limit_mw"] = int(limit_mw)
    s["log"].append([os.getpid(), int(limit_mw)])
    _save(s)
