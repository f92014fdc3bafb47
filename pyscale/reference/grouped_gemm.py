"""Reference grouped GEMM in plain PyTorch (the oracle of `pyscale.ops.grouped_gemm`): a per-expert loop over
the routed slots of a `moe_align` layout (DESIGN.md section 8), forward and backward. Outputs have one row
per slot s = t * k + j; dropped slots get zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _routed_slots(sorted_ids: torch.Tensor, expert_ids: torch.Tensor, n_pad: torch.Tensor, align: int,
                  num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot, expert) of every row of the padded layout that holds a routed slot."""
    rows = sorted_ids.shape[0]
    row_expert = expert_ids.long().repeat_interleave(align)[:rows]
    sid = sorted_ids.long()
    valid = (sid < num_slots) & (row_expert >= 0) & (torch.arange(rows, device=sorted_ids.device) < n_pad.long())
    return sid[valid], row_expert[valid]


def _source_rows(slots: torch.Tensor, gather_k: int) -> torch.Tensor:
    return slots // gather_k if gather_k > 0 else slots


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, sorted_ids: torch.Tensor,
                 expert_ids: torch.Tensor, n_pad: torch.Tensor, gather_k: int, align: int, activation: str,
                 num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert loop: out[s] = A[row(s)] @ w[e(s)]^T (SwiGLU with w2) for every routed slot s, with
    row(s) = s // gather_k (gather_k > 0: A holds tokens) or s (A holds slots); zeros for dropped slots.
    Returns (out (T·k, N) in a.dtype, preact (T·k, 2N) = [gate | up] for SwiGLU else empty)."""
    n = w.shape[1]
    slots, experts = _routed_slots(sorted_ids, expert_ids, n_pad, align, num_slots)
    out = torch.zeros((num_slots, n), dtype=a.dtype, device=a.device)
    swiglu = activation == "swiglu"
    preact = torch.zeros((num_slots, 2 * n) if swiglu else (0,), dtype=a.dtype, device=a.device)
    for e in range(w.shape[0]):
        idx = slots[experts == e]
        if idx.numel() == 0:
            continue
        src = a[_source_rows(idx, gather_k)].float()
        g = src @ w[e].float().T
        if swiglu:
            u = src @ w2[e].float().T
            preact[idx, :n], preact[idx, n:] = g.to(a.dtype), u.to(a.dtype)
            g = F.silu(g) * u
        out[idx] = g.to(a.dtype)
    return out, preact


def grouped_gemm_backward(grad_out: torch.Tensor, a: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None,
                          preact: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
                          n_pad: torch.Tensor, gather_k: int, align: int, activation: str, num_slots: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-expert loop for the gradients of `grouped_gemm` (fp32 math): (grad_a, grad_w, grad_w2 or None).

    SwiGLU: with g, u the saved pre-activations, dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g);
    dA rows = dg w + du w2, dW = dg^T A, dW2 = du^T A; gathered rows are summed back per token.
    """
    n = w.shape[1]
    slots, experts = _routed_slots(sorted_ids, expert_ids, n_pad, align, num_slots)
    grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    swiglu = activation == "swiglu"
    grad_w2 = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if swiglu else None
    for e in range(w.shape[0]):
        idx = slots[experts == e]
        if idx.numel() == 0:
            continue
        src = _source_rows(idx, gather_k)
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
