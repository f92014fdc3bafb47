"""Reference MoE combine in plain PyTorch (the oracle of `pyscale.ops.moe_combine`), forward and backward.

Formats (DESIGN.md section 8): topk_weights fp32 (T, k); y one row per slot s = t * k + j; slot_pos -1 for
dropped slots.
"""

from __future__ import annotations

import torch


def moe_combine(y: torch.Tensor, weights: torch.Tensor | None, slot_pos: torch.Tensor, top_k: int) -> torch.Tensor:
    """out[t] = sum_j w[t, j] y[t k + j] (fp32 sum, returned in y.dtype); dropped slots add 0."""
    t = slot_pos.shape[0] // top_k
    ok = (slot_pos >= 0).reshape(t, top_k)
    gathered = torch.where(ok[..., None], y.float().reshape(t, top_k, y.shape[1]), 0.0)
    if weights is not None:
        gathered = gathered * weights.float()[..., None]
    return gathered.sum(dim=1).to(y.dtype)


def moe_combine_backward(grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, slot_pos: torch.Tensor,
                         top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_y (T·k, D) in y.dtype, grad_weights fp32 (T, k)) per slot s of token t: grad_y[s] = w[s] ·
    grad_out[t] and grad_weights[s] = <grad_out[t], y[s]>; dropped slots get 0."""
    ok = (slot_pos >= 0)[:, None]
    go = torch.where(ok, grad_out.float().repeat_interleave(top_k, dim=0), 0.0)
    grad_y = (weights.float().reshape(-1, 1) * go).to(y.dtype)
    grad_w = torch.where(ok, go * y.float(), 0.0).sum(dim=1)
    return grad_y, grad_w.reshape(weights.shape)
