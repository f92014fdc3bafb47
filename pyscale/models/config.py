"""Architecture configs of the built-in GPT/MoE model, with exact parameter and FLOP counts.

Pure Python (layer 1 of DESIGN.md §1): the planner imports this without torch, and a test holds
``GPTConfig.n_params()`` equal to ``sum(p.numel() for p in GPT(config).parameters())``.

The architecture is Llama-style (DESIGN.md §8): token embedding (V·d) → n_layers × [RMSNorm →
attention (q, k, v, o projections, no biases, rotary) → residual → RMSNorm → SwiGLU MLP or MoE →
residual] → RMSNorm → untied lm_head (V·d).

Conventions
-----------
* ``d_ff`` default: ``round_up(ceil(8·d_model/3), 256)``. A SwiGLU MLP has three d×d_ff matrices, so
  d_ff ≈ 8/3·d keeps it at ≈ 8·d² parameters like a 4·d two-matrix MLP (Shazeer 2020, "GLU
  Variants Improve Transformer"); the rounding to 256 is Llama's reference rule (``multiple_of``)
  and reproduces Llama-1's d_ff of 11008 / 13824 / 22016 for d_model 4096 / 5120 / 8192.
* non-embedding N = total − embedding − lm_head (Kaplan et al. 2020 exclude both embedding
  matrices). Norm weights and the MoE router are non-embedding parameters.
* The FLOP formulas themselves live in ``pyscale.formulas``; this module chooses their N.
* Model FLOPs (DESIGN.md §6, PaLM appendix B): ``6·N + 12·L·H·Q·T`` per token, with N the *active*
  parameters minus the input embedding table. PaLM's N is its parameter count with tied
  embeddings, whose single V·d matrix is used as the output projection (a matmul); the input
  lookup is a gather with no FLOPs. For our untied model that means N counts lm_head and not the
  embedding table. H is the number of *query* heads (they set the QKᵀ and AV matmul sizes, also
  under GQA), Q the head dim, T the sequence length; no causal discount; backward = 2× forward.
* Executed FLOPs: 2 FLOPs per multiply-add of every matmul that runs (projections, active experts,
  router, lm_head; norms, softmax and rotary are not matmuls and are left out), causal attention
  counted over exactly T·(T+1)/2 query-key pairs, backward = 2× forward (dgrad + wgrad), or
  2.5× for attention when its backward recomputes QKᵀ (flash-attention style).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pyscale import formulas

FlopConvention = Literal["palm", "6N", "kaplan"]

D_FF_MULTIPLE = 256  # Llama's `multiple_of`


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ ``x``."""
    return _ceil_div(x, multiple) * multiple


def swiglu_d_ff(d_model: int, multiple_of: int = D_FF_MULTIPLE) -> int:
    """Default SwiGLU hidden size: ``round_up(ceil(8·d_model/3), multiple_of)`` (see module doc)."""
    return round_up(_ceil_div(8 * d_model, 3), multiple_of)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    # bool is an int subclass; True layers is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int: got {value!r} ({type(value).__name__})")
    if value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}: got {value}")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number: got {value!r} ({type(value).__name__})")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite: got {value}")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter breakdown of a GPTConfig. Every figure is summed over all layers."""

    embedding: int  # input token table, V·d
    lm_head: int  # output projection, V·d (untied)
    attention: int  # q, k, v, o projections
    mlp: int  # SwiGLU MLP, or every expert of the MoE
    router: int  # MoE router (E·d per layer); 0 for dense models
    norms: int  # RMSNorm weights: 2 per layer + the final one
    total: int
    non_embedding: int  # total − embedding − lm_head (Kaplan's convention)
    active: int  # parameters a token uses: MoE counts top_k experts per layer
    active_non_embedding: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Matrix(NamedTuple):
    """One weight matrix of the built-in model, as ``models.gpt`` builds it with ``impl="torch"``."""

    name: str  # the parameter's name inside its block ("attn.q_proj.weight"), or in the model ("lm_head.weight")
    out_features: int
    in_features: int
    count: int  # how many the model holds (n_layers for a per-layer matrix, n_layers·n_experts for an expert's)


class Vector(NamedTuple):
    """One weight vector of the built-in model (the RMSNorm weights)."""

    name: str
    size: int
    count: int


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the built-in Llama-style GPT (dense or MoE). ``None`` fields get their defaults
    at construction, so a built config always holds concrete numbers.

    n_kv_heads: defaults to n_heads (multi-head attention); fewer gives grouped-query attention.
    head_dim: defaults to d_model // n_heads (must then divide); must be even (rotary).
    d_ff: SwiGLU hidden size, default ``swiglu_d_ff(d_model)``.
    n_experts: 0 for a dense MLP; otherwise the MoE has n_experts SwiGLU experts of hidden size
      d_ff_expert (default d_ff) and each token uses top_k of them.
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    vocab_size: int = 32000
    seq_len: int = 2048
    n_experts: int = 0
    top_k: int = 0
    d_ff_expert: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("n_experts", self.n_experts, minimum=0)
        _check_int("top_k", self.top_k, minimum=0)

        n_kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        _check_int("n_kv_heads", n_kv, minimum=1)
        if self.n_heads % n_kv:
            raise ValueError(
                f"n_heads must be a multiple of n_kv_heads: got n_heads={self.n_heads}, n_kv_heads={n_kv}"
            )
        object.__setattr__(self, "n_kv_heads", n_kv)

        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"head_dim: d_model must be divisible by n_heads when head_dim is not given: "
                    f"got d_model={self.d_model}, n_heads={self.n_heads}"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        _check_int("head_dim", self.head_dim, minimum=1)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary rotates pairs): got {self.head_dim}")

        if self.d_ff is None:
            object.__setattr__(self, "d_ff", swiglu_d_ff(self.d_model))
        _check_int("d_ff", self.d_ff, minimum=1)

        if self.n_experts == 0:
            if self.top_k != 0:
                raise ValueError(f"top_k must be 0 for a dense model (n_experts=0): got top_k={self.top_k}")
            if self.d_ff_expert is not None:
                raise ValueError(
                    f"d_ff_expert is only meaningful with n_experts > 0: got d_ff_expert={self.d_ff_expert}"
                )
        else:
            if not 1 <= self.top_k <= self.n_experts:
                raise ValueError(
                    f"top_k must be in [1, n_experts={self.n_experts}] for an MoE model: got top_k={self.top_k}"
                )
            if self.d_ff_expert is None:
                object.__setattr__(self, "d_ff_expert", self.d_ff)
            _check_int("d_ff_expert", self.d_ff_expert, minimum=1)

        _check_positive_float("rope_theta", self.rope_theta)
        _check_positive_float("norm_eps", self.norm_eps)

    # ----------------------------------------------------------------------------- shape helpers
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def d_attn(self) -> int:
        """Width of the query/output side of attention: n_heads · head_dim."""
        return self.n_heads * self.head_dim  # type: ignore[operator]

    @property
    def d_kv(self) -> int:
        """Width of each of k and v: n_kv_heads · head_dim."""
        return self.n_kv_heads * self.head_dim  # type: ignore[operator]

    @property
    def gqa_ratio(self) -> int:
        return self.n_heads // self.n_kv_heads  # type: ignore[operator]

    @property
    def aspect_ratio(self) -> float:
        """d_model / n_layers (the depth/width rule of ``config_for_params``)."""
        return self.d_model / self.n_layers

    # ------------------------------------------------------------------------ parameter counts
    def layer_param_counts(self) -> dict[str, int]:
        """Parameters of one transformer block, by part (what each ``GPT.layers[i]`` holds)."""
        d = self.d_model
        attention = 2 * d * self.d_attn + 2 * d * self.d_kv  # q and o; k and v
        if self.is_moe:
            mlp = self.n_experts * 3 * d * self.d_ff_expert  # type: ignore[operator]
            mlp_active = self.top_k * 3 * d * self.d_ff_expert  # type: ignore[operator]
            router = self.n_experts * d
        else:
            mlp = mlp_active = 3 * d * self.d_ff  # type: ignore[operator]
            router = 0
        return {"attention": attention, "mlp": mlp, "mlp_active": mlp_active, "router": router, "norms": 2 * d}

    def matrices(self) -> list[Matrix]:
        """Every weight matrix of the model (``impl="torch"``'s layout; the MoE experts as per-expert SwiGLUs),
        with its (out_features, in_features) and how many there are: what the step's GEMMs and the optimizer
        see. ``embed.weight`` is a (vocab, d_model) table, not a linear layer."""
        L, d = self.n_layers, self.d_model
        out = [Matrix("embed.weight", self.vocab_size, d, 1),
               Matrix("attn.q_proj.weight", self.d_attn, d, L), Matrix("attn.k_proj.weight", self.d_kv, d, L),
               Matrix("attn.v_proj.weight", self.d_kv, d, L), Matrix("attn.o_proj.weight", d, self.d_attn, L)]
        if self.is_moe:
            E, ff = self.n_experts, self.d_ff_expert
            out += [Matrix("mlp.router.weight", E, d, L), Matrix("mlp.experts.gate_proj.weight", ff, d, L * E),
                    Matrix("mlp.experts.up_proj.weight", ff, d, L * E),
                    Matrix("mlp.experts.down_proj.weight", d, ff, L * E)]  # type: ignore[arg-type]
        else:
            out += [Matrix("mlp.gate_proj.weight", self.d_ff, d, L), Matrix("mlp.up_proj.weight", self.d_ff, d, L),
                    Matrix("mlp.down_proj.weight", d, self.d_ff, L)]  # type: ignore[arg-type]
        return [*out, Matrix("lm_head.weight", self.vocab_size, d, 1)]

    def vectors(self) -> list[Vector]:
        """Every weight vector: the RMSNorm weights before attention and MLP in each block, and the final one."""
        L, d = self.n_layers, self.d_model
        return [Vector("attn_norm.weight", d, L), Vector("mlp_norm.weight", d, L), Vector("norm.weight", d, 1)]

    def param_counts(self) -> ParamCounts:
        L, d, V = self.n_layers, self.d_model, self.vocab_size
        layer = self.layer_param_counts()
        embedding = lm_head = V * d
        attention, mlp, router = L * layer["attention"], L * layer["mlp"], L * layer["router"]
        norms = L * layer["norms"] + d
        total = embedding + lm_head + attention + mlp + router + norms
        active = total - L * (layer["mlp"] - layer["mlp_active"])
        return ParamCounts(
            embedding=embedding,
            lm_head=lm_head,
            attention=attention,
            mlp=mlp,
            router=router,
            norms=norms,
            total=total,
            non_embedding=total - embedding - lm_head,
            active=active,
            active_non_embedding=active - embedding - lm_head,
        )

    def n_params(self, embeddings: bool = True) -> int:
        """Total parameters; ``embeddings=False`` drops the embedding table and lm_head (Kaplan)."""
        c = self.param_counts()
        return c.total if embeddings else c.non_embedding

    def n_active_params(self, embeddings: bool = True) -> int:
        """Parameters one token uses (MoE: top_k experts per layer); equals n_params when dense."""
        c = self.param_counts()
        return c.active if embeddings else c.active_non_embedding

    # ------------------------------------------------------------------------------------ FLOPs
    def _seq(self, seq_len: int | None) -> int:
        T = self.seq_len if seq_len is None else seq_len
        _check_int("seq_len", T, minimum=1)
        return T

    def flops_per_token(
        self, convention: FlopConvention = "palm", *, seq_len: int | None = None, embeddings: bool = True
    ) -> int:
        """Training FLOPs per token (forward + backward) under a published convention.

        ``"palm"`` (PaLM appendix B, DESIGN.md §6 model FLOPs): 6·N + 12·L·H·Q·T with
          N = active parameters − input embedding table (see the module doc for why).
        ``"6N"``: 6 · n_active_params(embeddings) — the C = 6ND of scaling laws; ``embeddings``
          picks Chinchilla's N (all parameters) or Kaplan's (non-embedding).
        ``"kaplan"`` (Kaplan et al. 2020, Table 1, forward ×3): 6·N + 6·L·T·d_attn with N the
          active non-embedding parameters and d_attn = n_heads · head_dim.
        """
        T = self._seq(seq_len)
        c = self.param_counts()
        if convention == "palm":
            return formulas.palm_model_flops_per_token(c.active - c.embedding, self.n_layers, self.n_heads,
                                                       self.head_dim, T)  # type: ignore[arg-type]
        if convention == "6N":
            return formulas.training_flops_per_token(self.n_active_params(embeddings))
        if convention == "kaplan":
            return formulas.kaplan_flops_per_token(c.active_non_embedding, self.n_layers, self.d_attn, T)
        raise ValueError(f"convention must be 'palm', '6N' or 'kaplan': got {convention!r}")

    def model_flops_per_token(self, seq_len: int | None = None) -> int:
        """Model FLOPs per token for MFU (PaLM convention, DESIGN.md §6): 6·N + 12·L·H·Q·T."""
        return self.flops_per_token("palm", seq_len=seq_len)

    def executed_flops_breakdown(
        self,
        *,
        seq_len: int | None = None,
        causal: bool = True,
        backward: bool = True,
        recompute_attention: bool = False,
    ) -> dict[str, int]:
        """Executed FLOPs per token, averaged over a sequence of ``seq_len`` tokens.

        Keys: linear_forward, attention_forward, linear_backward, attention_backward, forward,
        backward, total. Linear FLOPs are 2 per weight a token passes through (projections,
        top_k experts, router, lm_head). Attention is QKᵀ plus AV, 2·2·H·Q per query-key pair;
        causal attention has T·(T+1)/2 pairs per sequence, non-causal T². Backward is dgrad +
        wgrad (2× forward) for linears; for attention 2× forward (dQ, dK, dV, dP) or, with
        ``recompute_attention``, 2.5× (QKᵀ recomputed, as flash-attention's backward does).
        """
        T = self._seq(seq_len)
        c = self.param_counts()
        linear_fwd = formulas.matmul_flops_per_token(c.active - c.embedding - c.norms)
        # one sequence's attention per layer, divided by its T tokens: exact in integers (causal pairs
        # T·(T+1)/2 times an even factor)
        pairs = formulas.attention_pairs(T, T, causal=causal)
        heads, dim = self.n_heads, self.head_dim
        attn_fwd = self.n_layers * formulas.attention_forward_flops(pairs, heads, dim) // T  # type: ignore[arg-type]
        if backward:
            linear_bwd = 2 * linear_fwd
            attn_bwd = self.n_layers * formulas.attention_backward_flops(
                pairs, heads, dim, recompute=recompute_attention) // T  # type: ignore[arg-type]
        else:
            linear_bwd = attn_bwd = 0
        fwd, bwd = linear_fwd + attn_fwd, linear_bwd + attn_bwd
        return {
            "linear_forward": linear_fwd,
            "attention_forward": attn_fwd,
            "linear_backward": linear_bwd,
            "attention_backward": attn_bwd,
            "forward": fwd,
            "backward": bwd,
            "total": fwd + bwd,
        }

    def executed_flops_per_token(
        self,
        *,
        seq_len: int | None = None,
        causal: bool = True,
        backward: bool = True,
        recompute_attention: bool = False,
    ) -> int:
        """Total of ``executed_flops_breakdown`` (forward + backward unless ``backward=False``)."""
        return self.executed_flops_breakdown(
            seq_len=seq_len, causal=causal, backward=backward, recompute_attention=recompute_attention
        )["total"]

    # ---------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {unknown}")
        return cls(**data)

    def describe(self) -> str:
        """A few human-readable lines: shape, parameter counts and FLOPs per token."""
        c = self.param_counts()
        attn = "MHA" if self.n_kv_heads == self.n_heads else f"GQA {self.n_heads}:{self.n_kv_heads}"
        mlp = (
            f"MoE {self.n_experts} experts top-{self.top_k}, d_ff_expert={self.d_ff_expert}"
            if self.is_moe
            else f"SwiGLU d_ff={self.d_ff}"
        )
        lines = [
            f"GPT: {self.n_layers} layers, d_model={self.d_model}, {self.n_heads} heads × {self.head_dim} ({attn}), "
            f"{mlp}, vocab={self.vocab_size}, seq_len={self.seq_len}",
            f"  params: total {c.total:,} ({_human(c.total)}), non-embedding {c.non_embedding:,}, "
            f"active {c.active:,}",
            f"  parts: embedding {c.embedding:,}, lm_head {c.lm_head:,}, attention {c.attention:,}, "
            f"mlp {c.mlp:,}, router {c.router:,}, norms {c.norms:,}",
            f"  FLOPs/token: model (PaLM 6N+12LHQT) {self.model_flops_per_token():.4g}, "
            f"executed causal {self.executed_flops_per_token():.4g}",
        ]
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


# ------------------------------------------------------------------------------ architecture search
# Depth/width rule: d_model / n_layers grows from 64 to 128 as models grow. Published shapes sit
# on this band: GPT-3 Small 768/12 = 64 (Brown et al. 2020, Table 2.1), GPT-3 6.7B 4096/32 = 128 and
# 175B 12288/96 = 128, Llama-1 7B 4096/32 = 128. Kaplan et al. 2020 (§3.1, Fig. 5) find the loss
# depends only weakly on the aspect ratio over a wide range, so this is a convention, not an optimum.
_ASPECT_LO, _ASPECT_HI = 64.0, 128.0
_ASPECT_N_LO, _ASPECT_N_HI = 1e8, 1e10
_ASPECT_BAND = math.log(1.25)


def default_aspect_ratio(n_params: float) -> float:
    """Target d_model/n_layers: 64 below 1e8 parameters, 128 above 1e10, log-linear between."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive: got {n_params}")
    x = (math.log10(n_params) - math.log10(_ASPECT_N_LO)) / (math.log10(_ASPECT_N_HI) - math.log10(_ASPECT_N_LO))
    x = min(max(x, 0.0), 1.0)
    return _ASPECT_LO * (_ASPECT_HI / _ASPECT_LO) ** x


# Shapes a team can train at scale (from 1e9 parameters): query heads divisible by the usual tensor-parallel
# degree (8 GPUs a node), so every rank holds whole heads; grouped-query attention with 8 kv heads (Llama 2
# 70B, Llama 3 8B/70B, Mistral 7B use 8), which also divides over 8 ranks and shrinks the KV cache.
TRAINABLE_FROM_PARAMS = 1e9
TENSOR_PARALLEL_HEADS = 8
GQA_KV_HEADS = 8


def architecture_rules(n_params: float, *, gqa_ratio: int | None = None,
                       heads_multiple: int | None = None) -> dict[str, Any]:
    """The head constraints `candidate_configs` takes for a model of `n_params`: from TRAINABLE_FROM_PARAMS on,
    heads a multiple of TENSOR_PARALLEL_HEADS and GQA_KV_HEADS kv heads, unless the caller chooses.

    gqa_ratio: query heads per kv head (1 = multi-head attention); None = the default (GQA_KV_HEADS kv heads
    from 1e9 parameters, MHA below). heads_multiple: query heads divisible by it; None = the default
    (TENSOR_PARALLEL_HEADS from 1e9 parameters, 1 below).
    """
    big = n_params >= TRAINABLE_FROM_PARAMS
    for name, value in (("gqa_ratio", gqa_ratio), ("heads_multiple", heads_multiple)):
        if value is not None:
            _check_int(name, value, minimum=1)
    multiple = (TENSOR_PARALLEL_HEADS if big else 1) if heads_multiple is None else heads_multiple
    if gqa_ratio is None and big:
        return {"gqa_ratio": 1, "n_kv_heads": GQA_KV_HEADS, "heads_multiple": multiple}
    return {"gqa_ratio": 1 if gqa_ratio is None else gqa_ratio, "n_kv_heads": None, "heads_multiple": multiple}


def heads_unit(head_dim: int, *, gqa_ratio: int = 1, n_kv_heads: int | None = None, heads_multiple: int = 1) -> int:
    """The step of d_model that keeps whole heads under the constraints: d_model / head_dim must be a multiple
    of the kv-head group (gqa_ratio, or n_kv_heads when that is fixed) and of heads_multiple."""
    group = n_kv_heads if n_kv_heads is not None else gqa_ratio
    return head_dim * math.lcm(group, heads_multiple)


def default_head_dim(d_model: int) -> int:
    """64 up to d_model 1024, else 128 — the kv_size of the Chinchilla family (Hoffmann et al.
    2022, Table A9) and Llama's head dim."""
    return 64 if d_model <= 1024 else 128


WIDTH_BAND = 4.0  # candidate_configs' band around the depth/width rule for huge targets
_MAX_WIDTH_STEPS = 2_000


def candidate_configs(
    n_params: float,
    *,
    embeddings: bool = True,
    active: bool = False,
    vocab_size: int = 32000,
    seq_len: int = 2048,
    aspect_ratio: float | None = None,
    head_dim: int | None = None,
    gqa_ratio: int = 1,
    n_kv_heads: int | None = None,
    heads_multiple: int = 1,
    tile: int = 128,
    n_experts: int = 0,
    top_k: int = 0,
    rtol: float = 0.01,
    limit: int | None = 20,
) -> list[GPTConfig]:
    """Aligned configs near ``n_params``, best first.

    Counted as ``n_params(embeddings)`` (``n_active_params`` when ``active``). Every candidate
    has d_model a multiple of ``tile`` and of ``heads_unit`` (whole kv groups, heads a multiple of
    ``heads_multiple``), n_heads = d_model / head_dim, n_kv_heads = n_heads / gqa_ratio (or the fixed
    ``n_kv_heads``, which must divide n_heads) and d_ff (and d_ff_expert) = round_up(ceil(8d/3), lcm(256, tile)).
    ``architecture_rules(n_params)`` gives the constraints of a trainable model of that size.
    For each aligned d_model the two layer counts around the target are tried. Ranking: first
    those within ``rtol`` of the target, by closeness of d_model/n_layers to ``aspect_ratio``
    (default ``default_aspect_ratio(n_params)``), then the rest by relative error.

    Raises ValueError if ``n_params`` is below the smallest aligned model (1 layer, d_model =
    the alignment step) by more than ``rtol``.
    """
    _check_positive_float("n_params", n_params)
    for name, value in (("tile", tile), ("gqa_ratio", gqa_ratio), ("vocab_size", vocab_size), ("seq_len", seq_len),
                        ("heads_multiple", heads_multiple)):
        _check_int(name, value, minimum=1)
    if n_kv_heads is not None:
        _check_int("n_kv_heads", n_kv_heads, minimum=1)
        if gqa_ratio != 1:
            raise ValueError(f"n_kv_heads={n_kv_heads} and gqa_ratio={gqa_ratio} both fix the kv heads: give one")
    if head_dim is not None:
        _check_int("head_dim", head_dim, minimum=2)
    _check_positive_float("rtol", rtol)
    target_aspect = default_aspect_ratio(n_params) if aspect_ratio is None else aspect_ratio
    _check_positive_float("aspect_ratio", target_aspect)
    ff_multiple = math.lcm(D_FF_MULTIPLE, tile)

    def build(n_layers: int, d: int, hd: int) -> GPTConfig:
        d_ff = swiglu_d_ff(d, ff_multiple)
        n_heads = d // hd
        return GPTConfig(
            n_layers=n_layers,
            d_model=d,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads if n_kv_heads is not None else n_heads // gqa_ratio,
            head_dim=hd,
            d_ff=d_ff,
            vocab_size=vocab_size,
            seq_len=seq_len,
            n_experts=n_experts,
            top_k=top_k,
            d_ff_expert=d_ff if n_experts else None,
        )

    def count(cfg: GPTConfig) -> int:
        return cfg.n_active_params(embeddings) if active else cfg.n_params(embeddings)

    scored: list[tuple[tuple[bool, float, float], GPTConfig]] = []
    smallest: int | None = None
    d, d_max, step = 0, math.inf, tile
    # Every aligned width is tried, up to where one layer alone overshoots: ~sqrt(N/12)/tile widths. Past
    # ~1e14 parameters that is millions of configs, while embeddings are negligible and a width far off the
    # depth/width rule cannot win: there the sweep keeps to WIDTH_BAND x around the rule's width (N ~ 12·L·d²
    # with d/L = aspect) in _MAX_WIDTH_STEPS steps, each a multiple of the alignment.
    if math.sqrt(n_params / 12) / tile > _MAX_WIDTH_STEPS:
        d_rule = (n_params * target_aspect / 12) ** (1 / 3)
        hd_big = default_head_dim(int(d_rule)) if head_dim is None else head_dim
        unit = math.lcm(tile, heads_unit(hd_big, gqa_ratio=gqa_ratio, n_kv_heads=n_kv_heads,
                                         heads_multiple=heads_multiple))
        step = unit * max(1, round(d_rule * WIDTH_BAND / unit / _MAX_WIDTH_STEPS))
        d = step * int(d_rule / WIDTH_BAND / step)
        d_max = d_rule * WIDTH_BAND
    while d + step <= d_max:
        d += step
        hd = default_head_dim(d) if head_dim is None else head_dim
        if d % heads_unit(hd, gqa_ratio=gqa_ratio, n_kv_heads=n_kv_heads, heads_multiple=heads_multiple):
            continue
        one = count(build(1, d, hd))
        per_layer = count(build(2, d, hd)) - one
        if smallest is None:
            smallest = one
        if one > n_params * (1 + rtol):
            # count(L=1) grows with d, so no wider model can come closer
            break
        layers_real = (n_params - (one - per_layer)) / per_layer
        for n_layers in {max(1, math.floor(layers_real)), max(1, math.ceil(layers_real))}:
            cfg = build(n_layers, d, hd)
            err = abs(count(cfg) / n_params - 1.0)
            # shapes within ±25 % of the rule count as equally good, so the count decides among them
            aspect_dev = max(0.0, abs(math.log(cfg.aspect_ratio / target_aspect)) - _ASPECT_BAND)
            ok = err <= rtol
            scored.append(((not ok, aspect_dev if ok else err, err), cfg))
    if not scored:
        raise ValueError(
            f"n_params={n_params:.4g} is below the smallest aligned model ({smallest:,} parameters "
            f"with 1 layer, d_model={tile}, vocab_size={vocab_size}, embeddings={embeddings})"
        )
    scored.sort(key=lambda item: item[0])
    configs = [cfg for _, cfg in scored]
    return configs if limit is None else configs[:limit]


def config_for_params(n_params: float, **kwargs: Any) -> GPTConfig:
    """The best of ``candidate_configs(n_params, **kwargs)``.

    Error bound: its count is within ``rtol`` (default 1 %) of ``n_params`` whenever some aligned
    config is — tests check a log grid of dense targets from 1e7 to 4e11 and GQA, MoE and
    non-embedding targets at 3e8, 7e9 and 1.3e11; otherwise it is the closest aligned config.
    Among those within ``rtol`` it is the one whose d_model/n_layers is closest to the depth/width
    rule (``default_aspect_ratio``; any shape within ±25 % of it counts as on the rule). Above ~1e9
    parameters the rule holds to ±25 %; below ~1e8 a 32k-vocabulary model is mostly embeddings,
    and with d_model in steps of ``tile`` the count wins over the shape (e.g. 1e7 → 7 × 128).
    """
    return candidate_configs(n_params, limit=1, **kwargs)[0]
