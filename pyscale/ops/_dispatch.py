"""Backend choice for pyscale ops (DESIGN.md section 2).

CUDA tensors run the CUDA kernel of `_C` where the op has one, else Triton; CPU tensors run Triton
in the interpreter when TRITON_INTERPRET=1, else the C++ code of `_C`, else the PyTorch reference.
The `cuda` backend also runs when `_C` was built without CUDA, for ops registered with
`register_runtime_cuda`: their kernels are compiled at first use by CuPy's NVRTC (pyscale.cuda_runtime).
A forced backend (PYSCALE_BACKEND or `pyscale.backend(...)`) that cannot run raises, never falls back.
Triton launches in the interpreter run with GPU-like float casts (pyscale.ops._interpreter).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pyscale import _ext
from pyscale._backend import forced_backend, triton_interpreting

_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("triton", "cpp", "reference")}


class BackendError(RuntimeError):
    """The requested backend cannot run this op on these tensors."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


_RUNTIME_CUDA_OPS: set[str] = set()


def register_runtime_cuda(*ops: str) -> None:
    """Declare that these ops' `cuda` backend can also launch through the CuPy NVRTC runtime."""
    _RUNTIME_CUDA_OPS.update(ops)


def cuda_path(op: str | None = None) -> str | None:
    """Which CUDA kernels the `cuda` backend of `op` would run: "_C", "cupy" or None (neither)."""
    if _ext.has_cuda_build():
        return "_C"
    if op is not None and op not in _RUNTIME_CUDA_OPS:
        return None
    from pyscale import cuda_runtime

    return "cupy" if cuda_runtime.available()[0] else None


def _cuda_unavailable_reason(op: str | None) -> str:
    reason = "pyscale._C was built without CUDA (no nvcc at install time)"
    if op is not None and op not in _RUNTIME_CUDA_OPS:
        return reason + f", and {op} has no CuPy NVRTC runtime path"
    from pyscale import cuda_runtime

    return reason + f", and the CuPy NVRTC runtime cannot run: {cuda_runtime.available()[1]}"


def why_impossible(backend: str, device: torch.device, op: str | None = None) -> str | None:
    """None when `backend` can run `op` (any op when None) on `device`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, not {device.type}"
        return None if _ext.has_cpp() else "pyscale._C is not built; " + _ext.BUILD_HINT
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got {device.type}"
        return None if cuda_path(op) is not None else _cuda_unavailable_reason(op)
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if triton_interpreting() else (
                "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing pyscale.ops")
        return f"Triton does not run on {device.type} tensors"
    return f"unknown backend {backend!r}"


def select_backend(op: str, device: torch.device, implemented: Mapping[str, Any]) -> str:
    """The backend that runs `op` on `device`, given the backends the op implements."""
    forced = forced_backend()
    if forced is not None:
        if forced not in implemented:
            raise BackendError(f"pyscale.ops.{op} has no {forced!r} backend (it has: {', '.join(implemented)})")
        reason = why_impossible(forced, device, op)
        if reason is not None:
            raise BackendError(f"pyscale.ops.{op}: backend {forced!r} cannot run here: {reason}")
        return forced
    for name in _PREFERENCE.get(device.type, ("reference",)):
        if name in implemented and why_impossible(name, device, op) is None:
            return name
    raise BackendError(f"pyscale.ops.{op} has no backend for {device.type} tensors")


def dispatch(op: str, device: torch.device, implementations: Mapping[str, Callable[..., Any]],
             *args: Any, **kwargs: Any) -> Any:
    """Run `op` on the backend `select_backend` picks, inside an NVTX range when PYSCALE_NVTX=1."""
    name = select_backend(op, device, implementations)
    fn = implementations[name]
    if name == "triton" and device.type == "cpu":  # the interpreter: cast floats as a GPU does
        from pyscale.ops._interpreter import gpu_like_casts

        with gpu_like_casts():
            return fn(*args, **kwargs)
    if device.type == "cuda" and os.environ.get("PYSCALE_NVTX") == "1":
        with torch.cuda.nvtx.range(f"pyscale.{op}[{name}]"):
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


@contextlib.contextmanager
def cuda_stream_of(t: torch.Tensor):
    """Make t's device current and yield the raw handle of its current stream (for `_C` launchers)."""
    with torch.cuda.device(t.device):
        yield torch.cuda.current_stream(t.device).cuda_stream
