"""What the ops need to know about a CUDA device, asked once per device and process.

`torch.cuda.get_device_properties` costs microseconds of host time per call, which a decode step (a
few microseconds of GPU work per GEMM) cannot pay on every launch; the answers never change while the
process lives, so they are cached per device index.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class DeviceInfo(NamedTuple):
    name: str
    capability: tuple[int, int]
    sm_count: int


CPU = DeviceInfo("cpu", (0, 0), 0)  # what a CPU tensor (the interpreter) is planned for


@functools.cache
def _cuda_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(props.name, (props.major, props.minor), props.multi_processor_count)


def device_info(device: torch.device) -> DeviceInfo:
    """Name, compute capability and SM count of a CUDA device (cached); `CPU` for other devices."""
    if device.type != "cuda":
        return CPU
    return _cuda_info(device.index if device.index is not None else torch.cuda.current_device())


def clear_cache() -> None:
    """Forget every device's answers (tests that fake a device)."""
    _cuda_info.cache_clear()
