"""Helpers shared by the Triton kernels (pure Triton, nothing from pyscale)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import triton
import triton.language as tl


def interpreting() -> bool:
    """True when @triton.jit kernels run in the interpreter (TRITON_INTERPRET=1, fixed at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def grouped_pid(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile (pid_m, pid_n) of program `pid` in grouped order: GROUP_M row-tiles share their B tiles in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    return pid_m, pid_n


@triton.jit
def gemm_tile(tile, a_ptr, b_ptr, M, N, stride_am, stride_ak, stride_bn, stride_bk, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile number `tile` (int64) of c (M, N) = a (M, K) @ b (N, K)^T in grouped order: its row and column
    block, row and column offsets, the first K offsets, the row and column masks, and pointers to its
    first a tile and b^T tile (BLOCK_K, BLOCK_N)."""
    pid_m, pid_n = grouped_pid(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    return pid_m, pid_n, offs_m, offs_n, offs_k, offs_m < M, offs_n < N, a_ptrs, b_ptrs


def tma_compatible(*tensors) -> bool:
    """Whether these tensors can be read through tensor descriptors (the TMA unit's rules): the last
    dimension contiguous, a 16-byte aligned base and every other stride a multiple of 16 bytes."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


def ensure_tma_allocator(device) -> None:
    """Descriptors made inside a kernel need global scratch from triton's allocator: install one when none
    is set (on the current device, where triton launches; torch's caching allocator, so CUDA graphs capture
    the allocations)."""
    if device.type != "cuda":
        return
    try:
        from triton.runtime._allocation import NullAllocator, _allocator
        missing = isinstance(_allocator.get(), NullAllocator)
    except (ImportError, AttributeError):  # private API moved: set ours
        missing = True
    if missing:
        import torch

        triton.set_allocator(lambda size, alignment, stream: torch.empty(
            size, dtype=torch.int8, device=torch.cuda.current_device()))


def tile_count(m: int, n: int, config: dict) -> int:
    """Output tiles of an (m, n) GEMM under `config`: the grid of a non-persistent launch."""
    return triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"])


def persistent_grid(m: int, n: int, config: dict, num_sms: int | None) -> int:
    """Programs of a persistent launch: one per SM (each walks tiles program_id, + grid, ...), no more
    than there are tiles."""
    if not num_sms:
        raise ValueError("num_sms is required for a persistent launch")
    return max(1, min(tile_count(m, n, config), num_sms))


def gemm_configs(tiles: Sequence[tuple[int, int, int, int, int]]) -> list[dict]:
    """An autotuning space (config dicts) from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tiles,
    grouped by 8 row blocks (the GEMM kernels' `grouped_pid` order)."""
    return [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}
            for bm, bn, bk, warps, stages in tiles]


def gemm_default_config(m: int, *, interpret: bool | None = None) -> dict:
    """The GEMM kernels' config without autotuning (1-byte operands, 128-deep K steps).

    Interpreter: small tiles and one stage, since each program step costs ~1 ms regardless of size. GPU:
    4 stages keep 3 tiles of 128x128 + 128x128 bytes in flight, 96 KB, inside sm_89's 99 KB; 64-row tiles
    when M is small, which wastes fewer rows. `interpret` defaults to TRITON_INTERPRET=1 (the compile report
    asks for GPU configs from inside an interpreted test run).
    """
    if interpreting() if interpret is None else interpret:
        bm = 32 if m <= 32 else 64
        return {"BLOCK_M": bm, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 4, "num_warps": 4, "num_stages": 1}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}
