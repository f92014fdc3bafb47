"""Reference sparse MoE layer in plain PyTorch: `pyscale.nn.MoE` as a per-expert Python loop (the test oracle).

Formats (DESIGN.md section 8): topk_ids int32 (T, k), topk_weights fp32 (T, k), slot s = t * k + j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyscale.reference.moe_route import moe_route


def moe_layer(x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
              w_down: torch.Tensor, top_k: int, *, scoring: str = "softmax", renormalize: bool = True,
              n_group: int | None = None, topk_group: int | None = None, bias: torch.Tensor | None = None,
              capacity: int | None = None, route_dtype: torch.dtype = torch.float32,
              topk_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole layer as a per-expert Python loop, op by op in the dtype of its inputs (the oracle when run
    in float64). x (T, d); router (E, d); w_gate, w_up (E, ff, d); w_down (E, d, ff).

    Routing (ids) comes from `moe_route` on logits computed in `route_dtype`; the weights are
    differentiable (gathered with autograd from the scores); `topk_ids` (T, k) overrides the choice, so an
    oracle in float64 can follow the routing of a lower-precision run. Returns (out (T, d), topk_ids, logits).
    """
    e = router.shape[0]
    logits = x.to(route_dtype) @ router.to(route_dtype).T
    if topk_ids is None:
        with torch.no_grad():
            _, topk_ids = moe_route(logits, top_k, scoring, renormalize, n_group, topk_group, bias)
    ids = topk_ids.long()
    s = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    weights = s.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    keep = torch.ones_like(ids, dtype=torch.bool)
    if capacity is not None:  # first `capacity` slots of each expert in slot order
        flat = ids.reshape(-1)
        seen = torch.zeros(e, dtype=torch.long)
        kflat = keep.reshape(-1)
        for s_idx in range(flat.numel()):
            ex = int(flat[s_idx])
            kflat[s_idx] = bool(seen[ex] < capacity)
            seen[ex] += 1
    out = torch.zeros_like(x)
    for ex in range(e):
        tok, j = torch.nonzero((ids == ex) & keep, as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        h = F.silu(xe @ w_gate[ex].T) * (xe @ w_up[ex].T)
        ye = h @ w_down[ex].T
        out = out.index_add(0, tok, ye * weights[tok, j].to(x.dtype)[:, None])
    return out, ids.to(torch.int32), logits
