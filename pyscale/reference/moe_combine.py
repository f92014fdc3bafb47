"""Reference MoE combine in plain PyTorch (the oracle of `pyscale.ops.moe_combine`), forward and backward.

Formats (DESIGN.md section 8): topk_weights fp32 (T, k); y rows in the order of `moe_align`'s sorted_ids;
slot_pos -1 for dropped slots.
"""

from __future__ import annotations

import torch


def moe_combine(y: torch.Tensor, weights: torch.Tensor | None, slot_pos: torch.Tensor, top_k: int) -> torch.Tensor:
    """out[t] = sum_j w[t, j] y[slot_pos[t k + j]] (fp32 sum, returned in y.dtype); dropped slots add 0."""
    t = slot_pos.shape[0] // top_k
    pos = slot_pos.long().reshape(t, top_k)
    ok = pos >= 0
    gathered = y.float()[pos.clamp_min(0)] * ok[..., None]
    if weights is not None:
        gathered = gathered * weights.float()[..., None]
    return gathered.sum(dim=1).to(y.dtype)


def moe_combine_backward(grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, sorted_ids: torch.Tensor,
                         top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_y (rows, D) in y.dtype, grad_weights fp32 (T, k)) over the sorted rows: row r holding slot s of
    token t gets grad_y[r] = w[s] · grad_out[t] and grad_weights[s] = <grad_out[t], y[r]>; padding rows and
    dropped slots get 0."""
    slots = weights.numel()
    sid = sorted_ids.long()
    ok = sid < slots
    tok = torch.where(ok, sid // top_k, 0)
    go = grad_out.float()[tok] * ok[:, None]
    w = weights.float().reshape(-1)[torch.where(ok, sid, 0)] * ok
    grad_y = (w[:, None] * go).to(y.dtype)
    grad_w = torch.zeros(slots, dtype=torch.float32, device=y.device)
    grad_w[sid[ok]] = (go * y.float()).sum(dim=1)[ok]
    return grad_y, grad_w.reshape(weights.shape)
