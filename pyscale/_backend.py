"""Backend forcing, without torch: `PYSCALE_BACKEND=...` or `with pyscale.backend("reference"):`.

Which backends an op has and which are possible for a tensor is decided in pyscale.ops._dispatch;
this module only holds the user's choice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

BACKENDS = ("reference", "cpp", "triton", "cuda")
ENV_VAR = "PYSCALE_BACKEND"

_forced: ContextVar[str | None] = ContextVar("pyscale_backend", default=None)


def _validate(name: str, origin: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{origin} must be one of {', '.join(BACKENDS)}: got {name!r}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force every pyscale op in this context onto one backend; an impossible choice raises."""
    token = _forced.set(_validate(name, "backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str | None:
    """The backend forced by `backend(...)` or, failing that, by PYSCALE_BACKEND; None for automatic."""
    name = _forced.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR, "").strip()
    return _validate(env, ENV_VAR) if env else None


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET=1, i.e. @triton.jit kernels run on CPU tensors in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
