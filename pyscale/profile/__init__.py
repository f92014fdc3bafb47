"""The profiler: FLOPs (executed and model), time and energy of kernels and training steps, into the store.

    with pyscale.profile.Profiler(store=...) as prof:
        m = prof.window("gemm", fn, a, b, flops=2 * M * N * K)

Submodules load lazily so the meters (`pyscale.profile.power`) work without torch:
`flops` (dispatch-level counting), `timing` (CUDA events / host timer), `power` (NVML, RAPL, null
meters, native sampler), `profiler` (windows -> Measurement -> store rows).
Layering: imports hw, store, sysinfo, formulas and _ext only -- never an op or a model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Profiler": "profiler", "Measurement": "profiler", "StepProfile": "profiler", "profile_step": "profiler",
    "measure_energy": "profiler", "EnergyResult": "profiler",
    "FlopCounter": "flops", "FlopCounts": "flops", "count_flops": "flops", "register_flop_formula": "flops",
    "Timing": "timing", "time_fn": "timing",
}
_SUBMODULES = frozenset({"flops", "timing", "power", "profiler"})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"pyscale.profile.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pyscale.profile.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pyscale.profile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
