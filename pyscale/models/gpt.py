"""The built-in Llama-style GPT (dense or MoE) and its training step — what the profiler measures.

Layer 3 (DESIGN.md §1): imports torch, ``pyscale.nn`` when it is there, and ``models.config``.

``GPT(config, impl=...)`` builds: embed → n_layers × [attn_norm → attention (GQA, rotary, causal) →
residual → mlp_norm → SwiGLU MLP or MoE → residual] → norm → lm_head, with exactly
``config.n_params()`` parameters.

impl:
* ``"torch"``: plain PyTorch — ``F.scaled_dot_product_attention`` (``enable_gqa``), ``nn.Linear``,
  a per-expert loop MoE. The comparison baseline, and what runs before the kernels land.
* ``"pyscale"``: ``pyscale.nn.Attention`` and ``pyscale.nn.MoE`` (an error if they are missing or
  their parameter counts disagree with the config).
* ``"auto"``: pyscale's module per part where importable and consistent, else torch; why each part
  got what it got is in ``model.impl_reasons``.

MoE auxiliary losses (added to the cross-entropy by ``GPT.loss`` and ``train_step``), averaged
over MoE layers so the coefficients do not scale with depth:
* load balancing ``E · Σ_e f_e · P_e`` (Switch Transformer, Fedus et al. 2021), coefficient 1e-2;
* router z-loss ``mean(logsumexp(logits)²)`` (ST-MoE, Zoph et al. 2022), coefficient 1e-3 —
  the values ST-MoE recommends.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pyscale.models.config import GPTConfig

Impl = Literal["auto", "pyscale", "torch"]

LOAD_BALANCING_COEF = 1e-2
Z_LOSS_COEF = 1e-3
INIT_STD = 0.02


class RMSNorm(nn.Module):
    """RMSNorm with a weight and no bias, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rotary_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim // 2), fp32: angle t · theta^(−2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (x[..., :d/2], x[..., d/2:]) pairs (the GPT-NeoX / Llama-HF layout).

    x: (batch, seq, heads, head_dim); cos, sin: (seq, head_dim // 2).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)


class TorchAttention(nn.Module):
    """Causal GQA self-attention with rotary embeddings: q/k/v/o projections without biases.

    forward(x: (batch, seq, d_model)) → (batch, seq, d_model).
    """

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, *, head_dim: int, rope_theta: float = 10000.0
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def _cos_sin(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # cached outside the state dict: recomputed when longer sequences or a new device show up
        if self._rope is None or self._rope[0].shape[0] < seq_len or self._rope[0].device != device:
            self._rope = rotary_cos_sin(seq_len, self.head_dim, self.rope_theta, device)
        return self._rope[0][:seq_len], self._rope[1][:seq_len]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        cos, sin = self._cos_sin(t, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # SDPA wants (batch, heads, seq, dim)
        if self.n_kv_heads != self.n_heads:
            try:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except TypeError:  # torch < 2.5 has no enable_gqa
                rep = self.n_heads // self.n_kv_heads
                out = F.scaled_dot_product_attention(
                    q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=True
                )
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up, the SwiGLU activation between the up- and down-projections."""
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)): three d×d_ff matrices, no biases (Shazeer 2020)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


@dataclass
class MoEAux:
    """Auxiliary router losses of one MoE layer (scalars)."""

    load_balancing_loss: torch.Tensor
    z_loss: torch.Tensor


class TorchMoE(nn.Module):
    """Top-k MoE of SwiGLU experts with a bias-free linear router, computed by a per-expert loop.

    forward(x: (tokens, d_model)) → (out (tokens, d_model), MoEAux). Softmax over all experts,
    top-k, weights renormalised over the chosen k (Mixtral's routing).
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEAux]:
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(ids == e)
            if token_idx.numel() == 0:
                continue
            y = expert(x[token_idx]) * weights[token_idx, slot, None].to(x.dtype)
            out.index_add_(0, token_idx, y)
        # f_e: share of the tokens·k routing slots that went to e; P_e: mean router probability
        counts = torch.zeros(self.n_experts, device=x.device, dtype=torch.float32)
        counts.index_add_(0, ids.reshape(-1), torch.ones(ids.numel(), device=x.device, dtype=torch.float32))
        frac = counts / max(ids.numel(), 1)
        lb = self.n_experts * (frac * probs.mean(dim=0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out, MoEAux(load_balancing_loss=lb, z_loss=z)


class Block(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module, d_model: int, eps: float, is_moe: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps)
        self.attn = attn
        self.mlp_norm = RMSNorm(d_model, eps)
        self.mlp = mlp
        self.is_moe = is_moe

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        x = x + self.attn(self.attn_norm(x))
        h = self.mlp_norm(x)
        if not self.is_moe:
            return x + self.mlp(h), None
        # MoE layers take token-major (tokens, d_model) input (DESIGN.md §8 routes per token)
        out, aux = self.mlp(h.reshape(-1, h.shape[-1]))
        return x + out.reshape(h.shape), aux


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pyscale_module(name: str) -> Any:
    # imported lazily: the kernels' modules may not exist yet
    return getattr(importlib.import_module("pyscale.nn"), name)


class GPT(nn.Module):
    """The built-in model. ``forward(tokens (batch, seq) int64) → logits (batch, seq, vocab)``.

    ``impl``: "auto" | "pyscale" | "torch" (module doc). ``dtype``/``device``: where and in what
    parameters are created (allocated in place, not moved). After construction ``impl_parts``
    says which implementation each part uses and ``impl_reasons`` why.
    """

    def __init__(
        self,
        config: GPTConfig,
        *,
        impl: Impl = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if impl not in ("auto", "pyscale", "torch"):
            raise ValueError(f"impl must be 'auto', 'pyscale' or 'torch': got {impl!r}")
        self.config = config
        self.impl = impl
        self.impl_parts: dict[str, str] = {}
        self.impl_reasons: dict[str, str] = {}
        ctx = torch.device(device) if device is not None else _NullContext()
        with ctx:
            self._build(config, impl)
            self._init_weights()
        if dtype is not None:
            self.to(dtype=dtype)

    # ------------------------------------------------------------------------------ construction
    def _choose(self, part: str, impl: Impl, make_pyscale: Any, make_torch: Any, expected: int) -> Any:
        """Return a factory for one part, recording which implementation and why."""
        if impl == "torch":
            self.impl_parts[part], self.impl_reasons[part] = "torch", "impl='torch' requested"
            return make_torch
        try:
            probe = make_pyscale()
            got = _n(probe)
            if got != expected:
                raise ValueError(
                    f"pyscale.nn module for {part} has {got} parameters, the config counts {expected}"
                )
        except Exception as exc:  # ImportError, AttributeError, a signature or count mismatch
            if impl == "pyscale":
                raise RuntimeError(f"impl='pyscale' but the pyscale {part} module is unusable: {exc}") from exc
            self.impl_parts[part] = "torch"
            self.impl_reasons[part] = f"fell back to torch: {type(exc).__name__}: {exc}"
            return make_torch
        self.impl_parts[part] = "pyscale"
        self.impl_reasons[part] = "pyscale.nn module available" + (" (impl='auto')" if impl == "auto" else "")
        first = [probe]

        def factory() -> nn.Module:
            return first.pop() if first else make_pyscale()

        return factory

    def _build(self, cfg: GPTConfig, impl: Impl) -> None:
        layer = cfg.layer_param_counts()
        d = cfg.d_model

        def torch_attn() -> nn.Module:
            return TorchAttention(d, cfg.n_heads, cfg.n_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta)

        def pyscale_attn() -> nn.Module:
            return _pyscale_module("Attention")(
                d, cfg.n_heads, cfg.n_kv_heads, head_dim=cfg.head_dim, causal=True, rope_theta=cfg.rope_theta
            )

        make_attn = self._choose("attention", impl, pyscale_attn, torch_attn, layer["attention"])

        if cfg.is_moe:

            def torch_mlp() -> nn.Module:
                return TorchMoE(d, cfg.d_ff_expert, cfg.n_experts, cfg.top_k)

            def pyscale_mlp() -> nn.Module:
                return _pyscale_module("MoE")(d, cfg.d_ff_expert, cfg.n_experts, cfg.top_k)

            make_mlp = self._choose("moe", impl, pyscale_mlp, torch_mlp, layer["mlp"] + layer["router"])
        else:
            self.impl_parts["mlp"], self.impl_reasons["mlp"] = "torch", "dense SwiGLU is nn.Linear in every impl"

            def make_mlp() -> nn.Module:
                return SwiGLU(d, cfg.d_ff)

        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.layers = nn.ModuleList(
            Block(make_attn(), make_mlp(), d, cfg.norm_eps, cfg.is_moe) for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02), residual-output projections scaled by 1/sqrt(2·n_layers)
        resid_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm weights stay at 1
            std = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else INIT_STD
            nn.init.normal_(p, mean=0.0, std=std)

    # ---------------------------------------------------------------------------------- forward
    def forward_with_aux(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """logits (batch, seq, vocab) and the MoE layers' aux objects (empty when dense)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq): got shape {tuple(tokens.shape)}")
        x = self.embed(tokens)
        auxes = []
        for block in self.layers:
            x, aux = block(x)
            if aux is not None:
                auxes.append(aux)
        return self.lm_head(self.norm(x)), auxes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(tokens)[0]

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss = cross-entropy + 1e-2·load balancing + 1e-3·z-loss (MoE only; module doc).

        Returns (loss, parts) with parts "cross_entropy", and for MoE "load_balancing", "z_loss"
        (each the mean over MoE layers, before its coefficient).
        """
        logits, auxes = self.forward_with_aux(tokens)
        ce = cross_entropy(logits, targets)
        parts = {"cross_entropy": ce}
        loss = ce
        if auxes:
            lb = torch.stack([a.load_balancing_loss.float() for a in auxes]).mean()
            z = torch.stack([a.z_loss.float() for a in auxes]).mean()
            parts["load_balancing"], parts["z_loss"] = lb, z
            loss = loss + LOAD_BALANCING_COEF * lb + Z_LOSS_COEF * z
        return loss, parts


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (..., vocab), in fp32 whatever the logits' dtype."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def make_batch(
    config: GPTConfig,
    batch_size: int,
    *,
    seq_len: int | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens and their next-token targets, both (batch_size, seq_len) int64.

    One (batch, seq_len + 1) draw, shifted by one, so targets[:, :-1] == tokens[:, 1:].
    ``generator`` must live on ``device`` (torch's rule for randint).
    """
    t = config.seq_len if seq_len is None else seq_len
    if batch_size < 1 or t < 1:
        raise ValueError(f"batch_size and seq_len must be positive: got batch_size={batch_size}, seq_len={t}")
    seq = torch.randint(0, config.vocab_size, (batch_size, t + 1), device=device, generator=generator)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def build_optimizer(
    model: nn.Module,
    lr: float = 3e-4,
    *,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with Llama's β = (0.9, 0.95) and weight decay 0.1 (Touvron et al. 2023, §2.3),
    decay applied to matrices only (norm weights are not decayed — common practice, e.g. GPT-2/nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def adamw_implementation(optimizer: torch.optim.Optimizer) -> str:
    """Which of torch's implementations `optimizer.step()` runs: "fused", "foreach" or "for-loop" (one
    tensor at a time). Unset flags follow torch's own default for the optimizer's parameters."""
    flags = {**optimizer.defaults, **(optimizer.param_groups[0] if optimizer.param_groups else {})}
    if flags.get("fused"):
        return "fused"
    if flags.get("foreach") is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        try:  # torch's rule: foreach when every parameter is a CUDA (or other foreach-capable) tensor
            from torch.optim.optimizer import _default_to_fused_or_foreach

            fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        except (ImportError, TypeError):  # a torch without the private helper: its documented default
            fused, foreach = False, bool(params) and all(p.is_cuda for p in params)
        return "fused" if fused else "foreach" if foreach else "for-loop"
    return "foreach" if flags["foreach"] else "for-loop"


def train_step(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    *,
    grad_clip: float | None = None,
) -> float:
    """One step: forward, loss (cross-entropy + MoE aux), backward, optional clipping, optimizer
    step, zero_grad. Returns the loss as a float (``.item()`` synchronises the device)."""
    model.train()
    loss, _ = model.loss(tokens, targets)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach().item())
