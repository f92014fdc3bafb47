"""Reference MoE routing in plain PyTorch (the oracle of `pyscale.ops.moe_route`): scores, group-limited
top-k selection and the gradient back to the logits.

Formats (DESIGN.md section 8): logits (T, E); topk_weights fp32 (T, k), topk_ids int32 (T, k).
"""

from __future__ import annotations

import torch


def router_scores(logits: torch.Tensor, scoring: str) -> torch.Tensor:
    """fp32 (T, E) scores: softmax over experts or elementwise sigmoid."""
    x = logits.float()
    return torch.softmax(x, dim=-1) if scoring == "softmax" else torch.sigmoid(x)


def moe_route(logits: torch.Tensor, top_k: int, scoring: str = "softmax", renormalize: bool = True,
              n_group: int | None = None, topk_group: int | None = None, bias: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights fp32 (T, k), topk_ids int32 (T, k)); ties go to the lower expert id."""
    t, e = logits.shape
    s = router_scores(logits, scoring)
    grouped = n_group is not None and n_group > 1
    if bias is None and not grouped:
        key = logits.float()  # same order as the scores, decided on exact inputs
    else:
        key = s + (bias.float() if bias is not None else 0.0)
    if grouped:
        per_group = key.reshape(t, n_group, e // n_group)
        gscore = per_group.topk(min(2, e // n_group), dim=-1).values.sum(dim=-1)
        chosen = torch.sort(gscore, dim=-1, descending=True, stable=True).indices[:, :topk_group]
        group_keep = torch.zeros_like(gscore, dtype=torch.bool).scatter_(1, chosen, True)
        keep = group_keep.repeat_interleave(e // n_group, dim=1)
        key = key.masked_fill(~keep, float("-inf"))
    ids = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights = s.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return weights, ids.to(torch.int32)


def moe_route_backward(grad_w: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                       scoring: str, renormalize: bool) -> torch.Tensor:
    """Gradient of the router logits (fp32 (T, E)) from that of topk_weights (T, k), ids held fixed.

    With r_j the kept scores and R their sum, w_j = r_j / R gives dL/dr_j = (dL/dw_j - Σ_l dL/dw_l w_l) / R;
    then through softmax (s ⊙ (g - <g, s>)) or sigmoid (g ⊙ s ⊙ (1 - s)).
    """
    s = router_scores(logits, scoring)
    gw = grad_w.float()
    idx = ids.long()
    if renormalize:
        total = s.gather(1, idx).sum(dim=-1, keepdim=True)
        gr = (gw - (gw * weights.float()).sum(dim=-1, keepdim=True)) / total
    else:
        gr = gw
    gs = torch.zeros_like(s).scatter_add_(1, idx, gr)
    if scoring == "softmax":
        return s * (gs - (gs * s).sum(dim=-1, keepdim=True))
    return gs * s * (1 - s)
