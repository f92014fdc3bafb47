"""Reference moe_align in plain PyTorch (the oracle of `pyscale.ops.moe_align` and its CPU fallback).

Formats (DESIGN.md section 8): topk_ids int32 (T, k), slot s = t * k + j; the aligned layout is described in
csrc/ops/moe/moe_kernels.cuh and pyscale.ops.moe_align.
"""

from __future__ import annotations

import torch


def moe_align(topk_ids: torch.Tensor, n_experts: int, block_size: int, capacity: int | None = None
              ) -> tuple[torch.Tensor, ...]:
    """(sorted_ids, expert_ids, n_pad, slot_pos, offsets, counts, dropped, invalid), all int32, in the
    upper-bound layout of DESIGN.md section 8; capacity None = dropless, else each expert keeps its first
    `capacity` slots in slot order. Slots whose id lies outside 0..n_experts-1 are left out (slot_pos -1,
    not counted) and counted in `invalid`."""
    raw = topk_ids.reshape(-1).long()
    slots = raw.numel()
    dev = topk_ids.device
    valid = (raw >= 0) & (raw < n_experts)
    flat = torch.where(valid, raw, n_experts)  # invalid slots sort after every expert, in a bin of their own
    rows = slots + n_experts * (block_size - 1)
    blocks = -(-rows // block_size)
    counts = torch.bincount(flat, minlength=n_experts + 1)[:n_experts]
    kept = counts if capacity is None else counts.clamp(max=capacity)
    padded = (kept + block_size - 1) // block_size * block_size
    offsets = torch.zeros(n_experts + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)  # slot order within each expert
    order = order[: int(valid.sum())]
    expert_of = flat[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=dev) - first[expert_of]
    keep = rank < kept[expert_of]
    row = offsets[expert_of] + rank
    sorted_ids = torch.full((rows,), slots, dtype=torch.int32, device=dev)
    sorted_ids[row[keep]] = order[keep].to(torch.int32)
    slot_pos = torch.full((slots,), -1, dtype=torch.int32, device=dev)
    slot_pos[order[keep]] = row[keep].to(torch.int32)
    expert_ids = torch.full((blocks,), -1, dtype=torch.int32, device=dev)
    n_pad = int(offsets[-1])
    block_expert = torch.repeat_interleave(torch.arange(n_experts, device=dev), padded // block_size)
    expert_ids[: n_pad // block_size] = block_expert.to(torch.int32)
    dropped = (counts - kept).sum()
    as32 = lambda v: v.to(torch.int32).reshape(-1)
    invalid = (~valid).sum()
    return (sorted_ids, expert_ids, as32(offsets[-1:]), slot_pos, as32(offsets), as32(counts), as32(dropped),
            as32(invalid))
