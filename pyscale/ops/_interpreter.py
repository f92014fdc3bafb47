"""GPU-like float casts for pyscale's kernels when Triton runs them in its interpreter (TRITON_INTERPRET=1).

Triton 3.6's interpreter converts fp32 to bf16 by truncation and gets 2-4 % of fp32 -> fp8 conversions
wrong; GPUs round to nearest even (fp8 saturating to the largest finite value). While `gpu_like_casts()`
is active, the interpreter's float conversion is done by torch instead, which rounds as a GPU does, so
interpreted kernels agree with the GPU and with the references bit for bit.

`pyscale.ops` activates it around every Triton launch it makes on CPU tensors (see _dispatch.dispatch).
The replacement is installed once and consults a context variable, so it is thread-safe and a user's own
interpreted kernels, outside pyscale's ops, keep the interpreter's own conversion. Conversions with an
explicit round-toward-zero mode, and types torch lacks, always keep the interpreter's code. With a Triton
whose interpreter has no `_convert_float` nothing is replaced (`available()` says why).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_active: ContextVar[bool] = ContextVar("pyscale_gpu_like_casts", default=False)
_lock = threading.Lock()
_state: dict[str, object] = {"installed": False, "reason": None}

# largest finite value of each fp8 format: GPU conversions use .satfinite, so finite overflow saturates
_SATURATE = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
_STORAGE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _torch_dtype_of(tl_dtype) -> torch.dtype | None:
    import triton.language as tl

    table = {tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16,
             tl.float64: torch.float64, tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}
    return table.get(tl_dtype)


def _install() -> bool:
    """Replace the interpreter's float conversion by the switchable one (once); False when impossible."""
    with _lock:
        if _state["installed"]:
            return True
        try:
            import numpy as np
            from triton._C.libtriton import ir
            from triton.runtime import interpreter

            original = interpreter._convert_float
            rtz = ir.ROUNDING_MODE.RTZ
        except (ImportError, AttributeError) as exc:
            _state["reason"] = f"this Triton's interpreter has no replaceable float conversion ({exc})"
            return False

        def convert(input, input_dtype, output_dtype, rounding_mode):
            if not _active.get():
                return original(input, input_dtype, output_dtype, rounding_mode)
            src, dst = _torch_dtype_of(input_dtype), _torch_dtype_of(output_dtype)
            if src is None or dst is None or rounding_mode == rtz:
                return original(input, input_dtype, output_dtype, rounding_mode)
            arr = np.ascontiguousarray(input)
            src_bytes = torch.empty((), dtype=src).element_size()
            values = torch.from_numpy(arr.reshape(-1).view(f"i{src_bytes}").copy()).view(src)
            if dst in _SATURATE:
                limit = _SATURATE[dst]
                values = values.to(torch.promote_types(src, torch.float32)).clamp(-limit, limit)  # NaN stays NaN
            out = values.to(dst)
            dst_bytes = out.element_size()
            return out.view(_STORAGE[dst_bytes]).numpy().view(f"u{dst_bytes}").reshape(arr.shape)

        interpreter._convert_float = convert
        _state["installed"] = True
        return True


def available() -> tuple[bool, str | None]:
    """(True, None) when the casts can be fixed, else (False, the reason). Installs the replacement."""
    ok = _install()
    return ok, None if ok else str(_state["reason"])


@contextlib.contextmanager
def gpu_like_casts() -> Iterator[None]:
    """Inside the context, the Triton interpreter converts between float types as a GPU does. Nests."""
    _install()
    token = _active.set(True)
    try:
        yield
    finally:
        _active.reset(token)
