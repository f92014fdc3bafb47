"""Reference sparse MoE in plain PyTorch: routing, alignment, grouped GEMM on the padded layout, combine,
and the whole layer as a per-expert Python loop (the test oracle).

Formats (DESIGN.md section 8): topk_ids int32 (T, k), topk_weights fp32 (T, k), slot s = t * k + j;
the aligned layout is described in csrc/ops/moe/moe_kernels.cuh and pyscale.ops.moe_align.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def moe_align(topk_ids: torch.Tensor, n_experts: int, block_size: int, capacity: int | None = None
              ) -> tuple[torch.Tensor, ...]:
    """(sorted_ids, expert_ids, n_pad, slot_pos, offsets, counts, dropped), all int32, in the upper-bound
    layout of DESIGN.md section 8; capacity None = dropless, else each expert keeps its first `capacity`
    slots in slot order."""
    flat = topk_ids.reshape(-1).long()
    slots = flat.numel()
    dev = topk_ids.device
    rows = slots + n_experts * (block_size - 1)
    blocks = -(-rows // block_size)
    counts = torch.bincount(flat, minlength=n_experts)
    kept = counts if capacity is None else counts.clamp(max=capacity)
    padded = (kept + block_size - 1) // block_size * block_size
    offsets = torch.zeros(n_experts + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)  # slot order within each expert
    expert_of = flat[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(slots, device=dev) - first[expert_of]
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
    return (sorted_ids, expert_ids, as32(offsets[-1:]), slot_pos, as32(offsets), as32(counts), as32(dropped))


def _row_experts(sorted_ids: torch.Tensor, expert_ids: torch.Tensor, n_pad: torch.Tensor, align: int,
                 num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = sorted_ids.shape[0]
    row_expert = expert_ids.long().repeat_interleave(align)[:rows]
    valid = (sorted_ids.long() < num_slots) & (row_expert >= 0) & (torch.arange(rows, device=sorted_ids.device)
                                                                    < n_pad.long())
    return row_expert, valid


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, sorted_ids: torch.Tensor,
                 expert_ids: torch.Tensor, n_pad: torch.Tensor, gather_k: int, align: int, activation: str,
                 num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert loop over the padded layout: out[r] = A[row(r)] @ w[e]^T (SwiGLU with w2); zeros elsewhere.
    Returns (out (rows, N) in a.dtype, preact (rows, 2N) = [gate | up] for SwiGLU else empty)."""
    rows, n = sorted_ids.shape[0], w.shape[1]
    row_expert, valid = _row_experts(sorted_ids, expert_ids, n_pad, align, num_slots)
    out = torch.zeros((rows, n), dtype=a.dtype, device=a.device)
    swiglu = activation == "swiglu"
    preact = torch.zeros((rows, 2 * n) if swiglu else (0,), dtype=a.dtype, device=a.device)
    for e in range(w.shape[0]):
        idx = torch.nonzero(valid & (row_expert == e)).flatten()
        if idx.numel() == 0:
            continue
        src = a[sorted_ids[idx].long() // gather_k] if gather_k > 0 else a[idx]
        g = src.float() @ w[e].float().T
        if swiglu:
            u = src.float() @ w2[e].float().T
            preact[idx, :n], preact[idx, n:] = g.to(a.dtype), u.to(a.dtype)
            g = F.silu(g) * u
        out[idx] = g.to(a.dtype)
    return out, preact


def moe_combine(y: torch.Tensor, weights: torch.Tensor | None, slot_pos: torch.Tensor, top_k: int) -> torch.Tensor:
    """out[t] = sum_j w[t, j] y[slot_pos[t k + j]] (fp32 sum, returned in y.dtype); dropped slots add 0."""
    t = slot_pos.shape[0] // top_k
    pos = slot_pos.long().reshape(t, top_k)
    ok = pos >= 0
    gathered = y.float()[pos.clamp_min(0)] * ok[..., None]
    if weights is not None:
        gathered = gathered * weights.float()[..., None]
    return gathered.sum(dim=1).to(y.dtype)


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


def grouped_gemm_backward(grad_out: torch.Tensor, a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None,
                          preact: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
                          n_pad: torch.Tensor, gather_k: int, align: int, activation: str, num_slots: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-expert loop for the gradients of `grouped_gemm` (fp32 math): (grad_a, grad_w, grad_w2 or None).

    SwiGLU: with g, u the saved pre-activations, dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g);
    dA rows = dg w + du w2, dW = dg^T A, dW2 = du^T A; gathered rows are summed back per token.
    """
    n = w.shape[1]
    row_expert, valid = _row_experts(sorted_ids, expert_ids, n_pad, align, num_slots)
    grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    swiglu = activation == "swiglu"
    grad_w2 = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if swiglu else None
    for e in range(w.shape[0]):
        idx = torch.nonzero(valid & (row_expert == e)).flatten()
        if idx.numel() == 0:
            continue
        src = sorted_ids[idx].long() // gather_k if gather_k > 0 else idx
        x = a[src].float()
        dh = grad_out[idx].float()
        if swiglu:
            g, u = preact[idx, :n].float(), preact[idx, n:].float()
            sg = torch.sigmoid(g)
            dg, du = dh * u * (sg * (1 + g * (1 - sg))), dh * g * sg
            grad_x = dg @ w[e].float() + du @ w2[e].float()
            grad_w[e] = dg.T @ x
            grad_w2[e] = du.T @ x
        else:
            grad_x = dh @ w[e].float()
            grad_w[e] = dh.T @ x
        grad_a.index_add_(0, src, grad_x)
    return grad_a, grad_w, grad_w2
