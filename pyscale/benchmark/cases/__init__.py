"""Per-family benchmark cases: `cases(shape_set, device) -> list[Case]`, `workload(case, device) -> Workload`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def cold_copies(bytes_per_copy: float, device: str) -> int:
    """How many independent copies of a call's data exceed twice the device's L2 (a CPU's last-level cache; at
    most the timer's
    MAX_ROTATING_COPIES): workloads that cannot be re-run on cloned arguments (a backward through its own
    graph, an optimizer with its state) rotate through this many copies themselves."""
    from pyscale.benchmark.runner import cpu_last_level_cache_bytes
    from pyscale.profile import timing

    if device == "cuda":
        import torch

        l2, _ = timing.l2_cache_bytes(torch.device("cuda", torch.cuda.current_device()))
    else:
        l2 = cpu_last_level_cache_bytes()
    if not l2 or bytes_per_copy <= 0:
        return 1
    return max(1, min(timing.MAX_ROTATING_COPIES, math.ceil(2 * l2 / bytes_per_copy)))


def round_robin(calls: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that runs the next of `calls` each time (a workload's own rotation of cold copies)."""
    state = {"next": 0}

    def run() -> Any:
        i = state["next"]
        state["next"] = (i + 1) % len(calls)
        return calls[i]()
    return run
