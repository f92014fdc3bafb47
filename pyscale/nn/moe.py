"""Sparse mixture-of-experts SwiGLU MLP on pyscale's fused MoE ops.

Per token: route (moe_route) -> align slots by expert (moe_align) -> one grouped GEMM over all experts
gathering token rows, with SwiGLU fused (w_gate, w_up) -> one grouped GEMM (w_down) -> weighted combine
back to token order (moe_combine). Expert e computes w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x)).
The forward never syncs the host: its value checks are counted on the device and read back later
(pyscale.ops._deferred_check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn

from pyscale.formulas import moe_layer_model_flops
from pyscale.ops._checks import check_choice, check_int
from pyscale.ops._deferred_check import DeferredCheck
from pyscale.ops.grouped_gemm import grouped_gemm
from pyscale.ops.moe_align import exact_capacity_factor, moe_align, moe_block_size
from pyscale.ops.moe_aux import (
    check_tokens_per_expert,
    load_balancing_loss,
    router_z_loss,
    update_expert_bias,
)
from pyscale.ops.moe_combine import moe_combine
from pyscale.ops.moe_route import SCORINGS, check_group_routing, moe_route


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        check_int(name, value)
        if value < 1:
            raise ValueError(f"{name} must be >= 1: got {value}")


def _check_rates(**rates: float) -> None:
    for name, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0: got {value!r}")


@dataclass
class MoEAux:
    """What a MoE forward reports besides its output.

    load_balancing_loss: 0-D fp32, α · E · Σ f_i P_i with α = `aux_loss_coef` (default 1: the bare loss, so a
        training loop such as pyscale.models.gpt applies its own coefficient, e.g. 1e-2).
    z_loss: 0-D fp32, β · mean logsumexp(logits)² with β = `z_loss_coef` (default 1; ST-MoE uses 1e-3).
    tokens_per_expert: (E,) int32 slots routed to each expert (before capacity drops).
    dropped: (1,) int32 slots dropped by the capacity limit (0 when dropless).
    """

    load_balancing_loss: torch.Tensor
    z_loss: torch.Tensor
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor


class MoE(nn.Module):
    """Top-k routed SwiGLU experts.

    Args:
        d_model: model width d.
        d_ff: expert hidden width.
        n_experts: E.
        top_k: experts per token (1..E).
        scoring: "softmax" or "sigmoid" router scores.
        renormalize: kept weights of a token sum to 1.
        n_group, topk_group: DeepSeek-V3 group-limited routing (see moe_route).
        capacity_factor: None (dropless) or cf > 0: each expert keeps ⌈cf · T · k / E⌉ slots (read-only
            after construction).
        aux_loss_coef: α of the load-balancing loss; z_loss_coef: β of the router z-loss (both 1 by default:
            MoEAux then holds the bare losses and the caller weighs them).
        expert_bias: keep a per-expert selection bias buffer (auxiliary-loss-free balancing), updated by
            `update_bias(aux.tokens_per_expert)` after each optimiser step.
        bias_update_rate: the step of that update.
        check_values: report NaN router logits, and expert ids out of range (what NaN logits route to), with
            a ValueError -- without a host sync: the counts are made on the device; on CUDA they are copied
            back asynchronously and the error comes from the first later forward that finds the copy done
            (or from `check_pending_values()`, which waits); on CPU from this forward. Off: no check, and
            an out-of-range id only drops its slot (moe_align never indexes with it).
    Parameters: router.weight (E, d) (router is a bias-free nn.Linear(d, E)); w_gate, w_up (E, d_ff, d);
    w_down (E, d, d_ff).
    forward(x (..., d)) -> (out (..., d) in x.dtype, MoEAux).
    FLOPs per token (model, active parameters): 2·d·E (router) + 2·k·3·d·d_ff; see `flops_per_token`.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int, *, scoring: str = "softmax",
                 renormalize: bool = True, n_group: int | None = None, topk_group: int | None = None,
                 capacity_factor: float | None = None, aux_loss_coef: float = 1.0, z_loss_coef: float = 1.0,
                 expert_bias: bool = False, bias_update_rate: float = 1e-3, check_values: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _check_sizes(d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=top_k)
        if top_k > n_experts:
            raise ValueError(f"top_k must lie in 1..n_experts = 1..{n_experts}: got {top_k}")
        # fail here, not at the first forward, with errors that name the argument
        check_choice("scoring", scoring, SCORINGS)
        check_group_routing(n_experts, top_k, n_group, topk_group)
        if capacity_factor is not None:
            exact_capacity_factor(capacity_factor)
        _check_rates(aux_loss_coef=aux_loss_coef, z_loss_coef=z_loss_coef, bias_update_rate=bias_update_rate)
        self.d_model, self.d_ff, self.n_experts, self.top_k = d_model, d_ff, n_experts, top_k
        self.scoring, self.renormalize = scoring, renormalize
        self.n_group, self.topk_group = n_group, topk_group
        self._capacity_factor = capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.bias_update_rate = bias_update_rate
        self.check_values = check_values
        self._value_checks = DeferredCheck((
            "pyscale.nn.MoE: the router logits of a forward held {count} NaN value(s) (check the layer's "
            "input and router weights)",
            "pyscale.nn.MoE: {count} routed slot(s) of a forward had an expert id outside 0..n_experts-1 and "
            "were left out (NaN router logits route there)"))
        kw = {"device": device, "dtype": dtype}
        # a bias-free Linear, as in Mixtral/DeepSeek checkpoints: router.weight (E, d) = (out, in) features
        self.router = nn.Linear(d_model, n_experts, bias=False, **kw)
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff, **kw))
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(n_experts, device=device, dtype=torch.float32))
        else:
            self.expert_bias = None
        self.reset_parameters()

    @property
    def capacity_factor(self) -> float | None:
        """Fixed at construction: validated there, and a constant that torch.compile can specialise on (the
        exact capacity needs one; a float changed between compiled calls would turn symbolic)."""
        return self._capacity_factor

    def reset_parameters(self) -> None:
        # nn.Linear's default bound, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for w, fan_in in ((self.router.weight, self.d_model), (self.w_gate, self.d_model), (self.w_up, self.d_model),
                          (self.w_down, self.d_ff)):
            nn.init.uniform_(w, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def flops_per_token(self) -> int:
        """Model FLOPs per token of the forward: router 2·d·E + experts 2·k·3·d·d_ff."""
        return moe_layer_model_flops(1, self.d_model, self.d_ff, self.n_experts, self.top_k)

    def check_pending_values(self) -> None:
        """Wait for the value checks of earlier forwards (a device sync) and raise if one found bad values."""
        self._value_checks.wait()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEAux]:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must end in d_model = {self.d_model}: got shape {tuple(x.shape)}")
        checking = self.check_values and not torch.compiler.is_compiling()
        if checking:
            self._value_checks.poll()  # an earlier forward's finding, if its copy is back; never waits
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.d_model)
        # The router runs in fp32: its logits decide discrete choices, and it is a tiny GEMM.
        logits = x2.float() @ self.router.weight.float().T
        # value checks off in the ops (each would sync): counted on the device below instead
        weights, ids = moe_route(logits, self.top_k, scoring=self.scoring, renormalize=self.renormalize,
                                 n_group=self.n_group, topk_group=self.topk_group, bias=self.expert_bias,
                                 check_values=False)
        block = moe_block_size(x2.shape[0], self.top_k, self.n_experts, x.device, x.dtype)
        al = moe_align(ids, self.n_experts, block, capacity_factor=self.capacity_factor, check_values=False)
        h = grouped_gemm(x2, self.w_gate, al, gather=True, w2=self.w_up, activation="swiglu")
        y = grouped_gemm(h, self.w_down, al)
        out = moe_combine(y, weights, al)
        aux = MoEAux(
            load_balancing_loss=load_balancing_loss(logits, al.tokens_per_expert, self.top_k, scoring=self.scoring,
                                                    coef=self.aux_loss_coef),
            z_loss=router_z_loss(logits, coef=self.z_loss_coef),
            tokens_per_expert=al.tokens_per_expert,
            dropped=al.dropped,
        )
        if checking:
            nan = torch.isnan(logits).sum(dtype=torch.int32).reshape(1)
            self._value_checks.submit(torch.cat([nan, al.invalid_ids]))
        return out.reshape(*lead, self.d_model), aux

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing step (DeepSeek-V3); a no-op without `expert_bias=True`."""
        check_tokens_per_expert(tokens_per_expert, self.n_experts)  # checked even when the update is a no-op
        if self.expert_bias is not None:
            update_expert_bias(self.expert_bias, tokens_per_expert, self.bias_update_rate)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"scoring={self.scoring}, capacity_factor={self.capacity_factor}")
