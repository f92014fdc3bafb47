"""Arrays from other libraries at op entry: CuPy (and NumPy, JAX, ...) through DLPack, without a copy."""

from __future__ import annotations

from typing import Any

import torch


def as_torch(x: Any, name: str = "input") -> Any:
    """A tensor viewing the same memory as `x` when `x` speaks DLPack; tensors and None pass through.

    Anything else is returned unchanged, so the op's own argument check reports it by name.
    """
    if x is None or isinstance(x, torch.Tensor) or not hasattr(x, "__dlpack__"):
        return x
    try:
        return torch.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be shared with torch through DLPack "
                         f"({type(x).__module__}.{type(x).__name__}): {exc}") from exc
