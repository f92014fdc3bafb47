"""Reference grouped GEMM in plain PyTorch (the oracle of `pyscale.ops.grouped_gemm`): a per-expert loop over
the padded layout of `moe_align` (DESIGN.md section 8), forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
