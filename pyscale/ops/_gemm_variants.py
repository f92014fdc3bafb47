"""The structural variants of the quantised GEMMs: selectable until a GPU measurement picks the defaults.

Each variant changes the kernel's structure, not just its tiles, so it is part of the op's tuning key
(tuned configs are kept per variant) and autotuning only tunes tiles within it. Defaults come from the
environment; `with pyscale.ops.gemm_variants(...)` overrides them for the calls in the context (how the
benchmark compares variants in one process):

  PYSCALE_GEMM_TMA=0|1              FP8 and int8 load their tiles through tensor descriptors (TMA) on
                                    sm_90+ (default 0; inputs TMA cannot read take the pointer path)
  PYSCALE_GEMM_PERSISTENT=0|1       with TMA: FP8 and int8 run one program per SM that walks the output
                                    tiles, its loop flattened so the next tile's loads overlap this tile's
                                    epilogue (default 0; without TMA the flattened loop spills)
  PYSCALE_GEMM_FP8_BLOCK=step|group block-wise FP8 promotes every K step (default) or once per 128-wide
                                    K group, keeping the group's other wgmmas in flight
                                    (pyscale.kernels.gemm_fp8)
  PYSCALE_W4A16_SWAP_AB=0|1         W4A16 computes out^T = W x^T, the dequantised weights being the MMA's
                                    first operand, which wgmma reads from registers and keeps in flight
                                    (default 0; pyscale.kernels.gemm_w4a16)
  PYSCALE_W4A16_DENSE_MIN_M=N|off   W4A16 with at least N rows dequantises the weights into a scratch
                                    buffer and calls torch.mm (cuBLAS) on CUDA; default 1024, an estimate
                                    not yet measured (pyscale.ops.gemm_w4a16)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

TMA_ENV = "PYSCALE_GEMM_TMA"
PERSISTENT_ENV = "PYSCALE_GEMM_PERSISTENT"
FP8_BLOCK_ENV = "PYSCALE_GEMM_FP8_BLOCK"
W4A16_DENSE_ENV = "PYSCALE_W4A16_DENSE_MIN_M"
W4A16_SWAP_ENV = "PYSCALE_W4A16_SWAP_AB"
FP8_BLOCK_CHOICES = ("step", "group")
# Unmeasured: dequantising costs ~4.5 bytes per weight on top of cuBLAS's bf16 GEMM, about 480 / M of
# its time on an H100 (3.35 TB/s, ~700 dense TFLOP/s reached); at M = 1024 that is under half, against an
# in-register dequantising kernel whose wgmmas wait on every step. A GPU run should move it.
W4A16_DENSE_MIN_M = 1024
INTERPRETER_SMS = 3  # a persistent launch in the interpreter: few programs, each walking several tiles
NEVER = 2**62  # "off": no M reaches it


@dataclass(frozen=True)
class GemmVariants:
    tma: bool = False
    persistent: bool = False
    fp8_block: str = "step"
    w4a16_dense_min_m: int = W4A16_DENSE_MIN_M
    w4a16_swap_ab: bool = False


_override: ContextVar[GemmVariants | None] = ContextVar("pyscale_gemm_variants", default=None)
_parsed: dict[tuple[str, ...], GemmVariants] = {}


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "on"):
        return True
    if value.lower() in ("0", "false", "off", ""):
        return False
    raise ValueError(f"{name} must be 0 or 1: got {value!r}")


def _min_m(value: str, name: str) -> int:
    if value.lower() == "off":
        return NEVER
    try:
        m = int(value)
    except ValueError:
        m = -1
    if m < 1:
        raise ValueError(f"{name} must be a positive number of rows or 'off': got {value!r}")
    return m


def _fp8_block(value: str, name: str) -> str:
    if value not in FP8_BLOCK_CHOICES:
        raise ValueError(f"{name} must be one of {', '.join(FP8_BLOCK_CHOICES)}: got {value!r}")
    return value


def from_environment() -> GemmVariants:
    """The variants the environment selects (parsed once per distinct setting)."""
    names = (TMA_ENV, PERSISTENT_ENV, FP8_BLOCK_ENV, W4A16_DENSE_ENV, W4A16_SWAP_ENV)
    raw = tuple(os.environ.get(name, "").strip() for name in names)
    if raw not in _parsed:
        tma, persistent, block, dense, swap = raw
        _parsed[raw] = GemmVariants(
            tma=_flag(tma, TMA_ENV), persistent=_flag(persistent, PERSISTENT_ENV),
            fp8_block=_fp8_block(block, FP8_BLOCK_ENV) if block else "step",
            w4a16_dense_min_m=_min_m(dense, W4A16_DENSE_ENV) if dense else W4A16_DENSE_MIN_M,
            w4a16_swap_ab=_flag(swap, W4A16_SWAP_ENV))
    return _parsed[raw]


def current() -> GemmVariants:
    """The variants in force: `gemm_variants(...)`'s, else the environment's."""
    forced = _override.get()
    return forced if forced is not None else from_environment()


@contextlib.contextmanager
def gemm_variants(*, tma: bool | None = None, persistent: bool | None = None, fp8_block: str | None = None,
                  w4a16_dense_min_m: int | str | None = None, w4a16_swap_ab: bool | None = None
                  ) -> Iterator[GemmVariants]:
    """Select GEMM variants for the calls in this context (unnamed ones keep their current value).

    tma: FP8/int8 tiles through tensor descriptors on sm_90+. persistent: FP8/int8 with one program per SM
    walking the tiles. fp8_block: "step" or "group" (block-wise
    FP8 promotion). w4a16_dense_min_m: rows from which W4A16 dequantises and calls torch.mm, or "off".
    w4a16_swap_ab: W4A16's weights as the MMA's first operand.
    """
    base = current()
    changes = {}
    if tma is not None:
        changes["tma"] = bool(tma)
    if persistent is not None:
        changes["persistent"] = bool(persistent)
    if fp8_block is not None:
        changes["fp8_block"] = _fp8_block(fp8_block, "fp8_block")
    if w4a16_dense_min_m is not None:
        changes["w4a16_dense_min_m"] = _min_m(str(w4a16_dense_min_m), "w4a16_dense_min_m")
    if w4a16_swap_ab is not None:
        changes["w4a16_swap_ab"] = bool(w4a16_swap_ab)
    chosen = dataclasses.replace(base, **changes)
    token = _override.set(chosen)
    try:
        yield chosen
    finally:
        _override.reset(token)
