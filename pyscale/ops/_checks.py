"""Argument checks whose messages name the argument (flash-attention style)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_tensor(name: str, t: object, *, dtypes: Iterable[torch.dtype] | None = None,
                 ndim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor: got {type(t).__name__}")
    if dtypes is not None:
        allowed = tuple(dtypes)
        if t.dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{name} must have dtype {names}: got {str(t.dtype).removeprefix('torch.')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D: got shape {tuple(t.shape)}")
    return t


def check_same_device(**tensors: torch.Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device: got {listing}")


def check_int(name: str, value: object, *, or_none: bool = False) -> None:
    """An int proper: bool and float are refused (True would count as 1, 2.0 slips through range checks)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int{' or None' if or_none else ''}: got {type(value).__name__}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}: got {value!r}")


def check_bias(bias: torch.Tensor | None, n: int, dtypes: Iterable[torch.dtype]) -> None:
    """An optional (N,) bias of one of `dtypes` (the GEMM ops' epilogue bias)."""
    if bias is None:
        return
    check_tensor("bias", bias, dtypes=dtypes, ndim=1)
    if bias.shape[0] != n:
        raise ValueError(f"bias must have N = {n} elements: got {bias.shape[0]}")
