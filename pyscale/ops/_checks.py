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


def check_group_scales(scales: torch.Tensor, zeros: torch.Tensor | None, n: int, k: int, group_size: int) -> None:
    """Group-wise int4 scales (N, K/group_size) and optional uint8 zero points of the same shape (DESIGN.md §8)."""
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales must have shape (N, K/group_size) = {(n, k // group_size)}: got {tuple(scales.shape)}")
    if zeros is not None:
        check_tensor("zeros", zeros, dtypes=(torch.uint8,), ndim=2)
        if zeros.shape != scales.shape:
            raise ValueError(f"zeros must have the shape of scales {tuple(scales.shape)}: got {tuple(zeros.shape)}")


def check_bias(bias: torch.Tensor | None, n: int, dtypes: Iterable[torch.dtype]) -> None:
    """An optional (N,) bias of one of `dtypes` (the GEMM ops' epilogue bias)."""
    if bias is None:
        return
    check_tensor("bias", bias, dtypes=dtypes, ndim=1)
    if bias.shape[0] != n:
        raise ValueError(f"bias must have N = {n} elements: got {bias.shape[0]}")
