"""moe_align: sort token slots by expert and pad each expert's segment to the GEMM block size.

Format (DESIGN.md section 8): slot s = t * k + j of topk_ids (T, k). Every output is int32 and allocated
at the upper bound U = T·k + E·(block_size − 1) rows (⌈U / block_size⌉ blocks), so shapes depend only on
input shapes and the fake implementation is exact:
  sorted_ids (U,)      slots grouped by expert, each expert's slots in slot order, each segment padded to a
                       multiple of block_size with the sentinel T·k (also past n_pad)
  expert_ids (⌈U/b⌉,)  expert of each block of sorted_ids; -1 past n_pad
  n_pad (1,)           the padded length (a tensor: no host sync)
  slot_pos (T·k,)      row of sorted_ids holding each slot; -1 when dropped
  offsets (E + 1,)     start of each expert's padded segment
  tokens_per_expert (E,)  slots routed to each expert, before any capacity drop
  dropped (1,)         slots dropped by the capacity limit
  invalid_ids (1,)     slots whose id lies outside 0..E-1: left out of the layout (slot_pos -1, not in
                       tokens_per_expert), never used as an index, only counted (a device-side flag that
                       costs no host sync; `pyscale.nn.MoE` raises from it)
Dropless by default; with capacity_factor cf each expert keeps its first ⌈cf · T · k / E⌉ slots in slot
(token) order and the rest are dropped (weight 0 in the combine).

Backends: `cuda` (pyscale._C, CUDA tensors), `cpp` (pyscale._C, CPU), `reference`; all bit-identical.
FLOPs: none (integer work: O(T·k + E) reads and writes).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from numbers import Real
from typing import NamedTuple

import torch

from pyscale import _ext
from pyscale.formulas import moe_align_rows
from pyscale.ops._autotune import bucket
from pyscale.ops._checks import check_tensor
from pyscale.ops._dispatch import cuda_stream_of, dispatch
from pyscale.reference import moe_align as ref

MAX_EXPERTS = 4096  # the CUDA path keeps one int32 counter per expert in shared memory


class MoEAlignment(NamedTuple):
    """The padded per-expert layout (see the module docstring) plus the ints the GEMMs need."""

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    n_pad: torch.Tensor
    slot_pos: torch.Tensor
    offsets: torch.Tensor
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor
    invalid_ids: torch.Tensor
    block_size: int
    top_k: int
    n_experts: int


def _empty_outputs(topk_ids: torch.Tensor, n_experts: int, block_size: int) -> tuple[torch.Tensor, ...]:
    slots = topk_ids.numel()
    rows = moe_align_rows(slots, n_experts, block_size)
    new = lambda n: topk_ids.new_empty((n,), dtype=torch.int32)
    return (new(rows), new(-(-rows // block_size)), new(1), new(slots), new(n_experts + 1), new(n_experts), new(1),
            new(1))


def _align_native(topk_ids, n_experts, block_size, capacity, device_kind):
    ids = topk_ids.contiguous()
    outs = _empty_outputs(ids, n_experts, block_size)
    args = (ids.data_ptr(), ids.numel(), n_experts, block_size, capacity, *(o.data_ptr() for o in outs))
    ext = _ext.extension()
    if device_kind == "cuda":
        workspace = torch.empty(ext.moe_align_cuda_workspace(ids.numel(), n_experts), dtype=torch.int32,
                                device=ids.device)
        with cuda_stream_of(ids) as stream:
            ext.moe_align_cuda(*args, workspace.data_ptr(), stream)
    else:
        ext.moe_align_cpu(*args)
    return outs


_ALIGN = {
    "cuda": lambda i, e, b, c: _align_native(i, e, b, c, "cuda"),
    "cpp": lambda i, e, b, c: _align_native(i, e, b, c, "cpu"),
    "reference": lambda i, e, b, c: ref.moe_align(i, e, b, None if c < 0 else c),
}


@torch.library.custom_op("pyscale::moe_align", mutates_args=())
def _moe_align_op(topk_ids: torch.Tensor, n_experts: int, block_size: int, capacity: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor]:
    return tuple(dispatch("moe_align", topk_ids.device, _ALIGN, topk_ids, n_experts, block_size, capacity))


@_moe_align_op.register_fake
def _(topk_ids, n_experts, block_size, capacity):
    return _empty_outputs(topk_ids, n_experts, block_size)


def exact_capacity_factor(capacity_factor: float | int | Fraction | Decimal) -> Fraction:
    """A validated capacity factor (finite, > 0) as an exact rational; a float counts as the decimal it prints as.

    Float arithmetic is off by one at exact multiples: 1.1 is stored as 1.1000000000000000888, so
    ⌈1.1 · 100 / 10⌉ comes out 12 where the user meant 11.
    """
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (Real, Decimal)):
        raise TypeError(f"capacity_factor must be a real number: got {type(capacity_factor).__name__}")
    if not math.isfinite(float(capacity_factor)):
        raise ValueError(f"capacity_factor must be finite: got {capacity_factor}")
    if isinstance(capacity_factor, (int, Fraction, Decimal)):
        exact = Fraction(capacity_factor)
    else:
        try:  # str, not float(): numpy's float32(1.1) prints as 1.1 but widens to 1.100000023841858
            exact = Fraction(str(capacity_factor))
        except ValueError:  # a Real whose str is not a plain number
            exact = Fraction(repr(float(capacity_factor)))
    if exact <= 0:
        raise ValueError(f"capacity_factor must be > 0 or None: got {capacity_factor}")
    return exact


# torch.compile calls this at trace time instead of tracing Fraction: the factor must be a constant there
# (nn.MoE fixes it at construction; a float that changes between calls becomes symbolic and fails).
@torch.compiler.assume_constant_result
def _factor_ratio(capacity_factor: float | int | Fraction | Decimal) -> tuple[int, int]:
    exact = exact_capacity_factor(capacity_factor)
    return exact.numerator, exact.denominator


def expert_capacity(tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Slots each expert keeps: ⌈capacity_factor · tokens · top_k / n_experts⌉, computed exactly.

    A float capacity_factor counts as the decimal it prints as (1.1 is 11/10, not 1.1000000000000000888).
    """
    num, den = _factor_ratio(capacity_factor)
    return -(-num * tokens * top_k // (den * n_experts))  # integer ceil: also right for symbolic tokens


def moe_align(topk_ids: torch.Tensor, n_experts: int, block_size: int, *, capacity_factor: float | None = None,
              check_values: bool = True) -> MoEAlignment:
    """Sort the slots of a top-k routing by expert, padded per expert to `block_size` (DESIGN.md section 8).

    Args:
        topk_ids: (T, k) int32 expert ids in 0..n_experts-1 (int64 is accepted and converted).
        n_experts: number of experts E (1..4096).
        block_size: row-block size of the grouped GEMM that consumes the layout (>= 1).
        capacity_factor: None for dropless, else > 0: each expert keeps its first
            ⌈capacity_factor · T · k / E⌉ slots in token order (computed exactly, see expert_capacity).
        check_values: reject ids outside 0..E-1 with a ValueError (reads the tensor: a device sync on CUDA;
            skipped under torch.compile). With the check off, such ids are left out of the layout and
            counted in `invalid_ids` on the device (every backend; no out-of-bounds access).
    Returns:
        MoEAlignment(sorted_ids, expert_ids, n_pad, slot_pos, offsets, tokens_per_expert, dropped, invalid_ids,
        block_size, top_k, n_experts); shapes and meaning in the module docstring.
    FLOPs: 0 (bytes: `pyscale.formulas.moe_align_bytes`).
    """
    check_tensor("topk_ids", topk_ids, ndim=2)
    if topk_ids.dtype.is_floating_point or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
        raise TypeError(f"topk_ids must hold integer expert ids (int32): got dtype "
                        f"{str(topk_ids.dtype).removeprefix('torch.')}")
    if not isinstance(n_experts, int) or not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"n_experts must be an int in 1..{MAX_EXPERTS}: got {n_experts!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int: got {block_size!r}")
    t, k = topk_ids.shape
    if k < 1 or k > n_experts:
        raise ValueError(f"topk_ids must have 1..n_experts = 1..{n_experts} columns (top_k): got {k}")
    if moe_align_rows(t * k, n_experts, block_size) >= 2**31:
        raise ValueError(f"T * k + E * (block_size - 1) must stay below 2**31 (int32 layout): got T={t}, k={k}")
    capacity = -1
    if capacity_factor is not None:
        capacity = expert_capacity(t, k, n_experts, capacity_factor)
    if check_values and not torch.compiler.is_compiling() and topk_ids.numel():
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= n_experts:
            raise ValueError(f"topk_ids must lie in 0..n_experts-1 = 0..{n_experts - 1}: got values in {lo}..{hi}")
    outs = _moe_align_op(topk_ids.to(torch.int32), n_experts, block_size, capacity)
    return MoEAlignment(*outs, block_size=block_size, top_k=k, n_experts=n_experts)


def moe_block_size(tokens: int, top_k: int, n_experts: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.bfloat16) -> int:
    """The row-block size the grouped GEMM will use for this routing (pass it to moe_align): its default
    row tile for the routed rows per expert, bucketed as its tuning key buckets them."""
    from pyscale.kernels import grouped_gemm as kern

    return kern.grouped_gemm_config(1, 1, bucket(tokens * top_k // max(n_experts, 1)), dtype)["BLOCK_M"]
