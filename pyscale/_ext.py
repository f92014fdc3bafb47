"""Loading of the compiled extension pyscale._C (torch-free).

A missing or broken extension never breaks `import pyscale`: it warns once, and the ops that need
it raise ExtensionUnavailable with the way to build it.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

BUILD_HINT = (
    "build it with `pip install -e .` from the pyscale source tree (a C++ compiler and pybind11 are "
    "needed; nvcc adds the CUDA kernels), and make sure PYSCALE_SKIP_EXT is not set"
)


class ExtensionUnavailable(RuntimeError):
    """pyscale._C (or its CUDA part) is not available in this installation."""


_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _load() -> ModuleType | None:
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            _module = importlib.import_module("pyscale._C")
        except ImportError as exc:
            _error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"pyscale._C could not be loaded ({_error}); C++/CUDA ops are unavailable; {BUILD_HINT}",
                          RuntimeWarning, stacklevel=3)
    return _module


def extension() -> ModuleType:
    """The loaded pyscale._C module, or ExtensionUnavailable saying how to build it."""
    module = _load()
    if module is None:
        raise ExtensionUnavailable(f"pyscale._C is not available ({_error}); {BUILD_HINT}")
    return module


def has_cpp() -> bool:
    return _load() is not None


def has_cuda_build() -> bool:
    module = _load()
    return bool(module is not None and module.has_cuda)


def extension_status() -> dict[str, object]:
    """What the extension offers here: loaded, built with CUDA, devices the CUDA runtime sees."""
    module = _load()
    if module is None:
        return {"loaded": False, "error": _error, "cuda_compiled": False, "cuda_device_count": 0,
                "cuda_error": "pyscale._C is not loaded"}
    cuda = module.cuda_status()
    if cuda["compiled"] and cuda["driver_version"] == 0:
        cuda["error"] = "no NVIDIA driver found (this machine has no usable GPU)"
    return {"loaded": True, "error": None, "cuda_compiled": bool(cuda["compiled"]),
            "cuda_device_count": int(cuda["device_count"]), "cuda_error": cuda["error"] or None,
            "cuda_runtime_version": cuda["runtime_version"], "cuda_driver_version": cuda["driver_version"]}


_load()
