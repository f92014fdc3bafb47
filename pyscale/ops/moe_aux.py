"""MoE auxiliary losses and auxiliary-loss-free balancing (differentiable PyTorch; tiny next to the GEMMs).

- Switch load-balancing loss: α · E · Σ_i f_i · P_i, with f_i = (slots routed to expert i) / (T · k),
  detached, and P_i the mean over tokens of expert i's router probability (softmax scoring: softmax of
  the logits; sigmoid scoring: the sigmoid scores normalised to sum 1 per token). 1·α at perfect balance.
- Router z-loss (ST-MoE): β · mean_t logsumexp(logits_t)².
- DeepSeek-V3's auxiliary-loss-free balancing: after each step, bias_i += rate · sign(mean load − load_i);
  the bias enters `moe_route(bias=...)`, selection only.

FLOPs (`pyscale.formulas.load_balancing_loss_flops`, `router_z_loss_flops`): load balancing ≈ 4·T·E (scores
and their mean) + 2·E; z-loss ≈ 4·T·E (logsumexp) + 2·T. These are plain PyTorch, not custom ops: the profiler
sees their elementwise aten ops, which count no FLOPs.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_choice, check_int, check_tensor


def check_tokens_per_expert(tokens_per_expert: torch.Tensor, n_experts: int) -> None:
    """An (E,) count per expert, as moe_align returns it."""
    check_tensor("tokens_per_expert", tokens_per_expert, ndim=1)
    if tokens_per_expert.shape[0] != n_experts:
        raise ValueError(f"tokens_per_expert must have n_experts = {n_experts} entries: "
                         f"got {tokens_per_expert.shape[0]}")


def load_balancing_loss(logits: torch.Tensor, tokens_per_expert: torch.Tensor, top_k: int, *,
                        scoring: str = "softmax", coef: float = 1.0) -> torch.Tensor:
    """Switch-Transformer load-balancing loss (a 0-D fp32 tensor, differentiable in logits).

    Args:
        logits: (T, E) router logits.
        tokens_per_expert: (E,) integer slots routed to each expert (moe_align's tokens_per_expert).
        top_k: experts per token (f_i is normalised by T · top_k).
        scoring: "softmax" or "sigmoid", as in moe_route.
        coef: α.
    """
    check_tensor("logits", logits, ndim=2)
    t, e = logits.shape
    check_tokens_per_expert(tokens_per_expert, e)
    check_choice("scoring", scoring, ("softmax", "sigmoid"))
    check_int("top_k", top_k)
    if not 1 <= top_k <= e:  # f_i divides by T · top_k: a wrong k scales the loss silently
        raise ValueError(f"top_k must lie in 1..n_experts = 1..{e}: got {top_k}")
    if t == 0:
        return logits.new_zeros((), dtype=torch.float32)
    x = logits.float()
    if scoring == "softmax":
        p = torch.softmax(x, dim=-1)
    else:
        s = torch.sigmoid(x)
        p = s / s.sum(dim=-1, keepdim=True)
    f = tokens_per_expert.detach().float() / (t * top_k)
    return coef * e * (f * p.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor, *, coef: float = 1.0) -> torch.Tensor:
    """ST-MoE router z-loss coef · mean_t logsumexp(logits_t)² (0-D fp32, differentiable)."""
    check_tensor("logits", logits, ndim=2)
    if logits.shape[0] == 0:
        return logits.new_zeros((), dtype=torch.float32)
    return coef * torch.logsumexp(logits.float(), dim=-1).square().mean()


@torch.no_grad()
def update_expert_bias(bias: torch.Tensor, tokens_per_expert: torch.Tensor, rate: float) -> torch.Tensor:
    """In place: bias_i += rate · sign(mean load − load_i) (under-loaded experts become more attractive)."""
    check_tensor("bias", bias, ndim=1)
    check_tensor("tokens_per_expert", tokens_per_expert, ndim=1)
    if tokens_per_expert.shape[0] != bias.shape[0]:  # a wrong length would broadcast or fail obscurely
        raise ValueError(f"tokens_per_expert must have one entry per expert (bias has {bias.shape[0]}): "
                         f"got {tokens_per_expert.shape[0]}")
    load = tokens_per_expert.float().to(bias.device)
    bias.add_(rate * torch.sign(load.mean() - load).to(bias.dtype))
    return bias
