"""Benchmark shapes (DESIGN.md section 5): one registry entry per model, from which every op family's
shapes derive, and the list of shape-set names (`SHAPE_SETS`) that `pyscale bench --shapes` offers.

Each model entry holds its published sizes: attention heads and head dim, every linear layer's (N, K) =
(out_features, in_features), and its MoE layer (None for a dense model). From an entry:
- attention: causal, sequences 512 -> 16k at a constant 16k tokens per step (batch = 16384 // seq);
- GEMM: each layer at decode and prefill token counts M (for MoE models, M is the token count routed to
  one expert's GEMM);
- MoE: the layer at the entry's token counts (batch x sequence flattened).
Two sets are not models: `quick` (tiny shapes of every family, for CPU smoke runs) and `grid` (attention's
model-free coverage sweep: head dim 64 and 128, MHA and GQA 8:1, causal and not).
Plain data: no torch, no pyscale imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class MoELayer:
    d_model: int
    d_ff: int  # per expert
    n_experts: int
    top_k: int
    scoring: str  # "softmax" or "sigmoid"
    tokens: tuple[int, ...]  # token counts to sweep
    n_group: int | None = None  # group-limited routing (DeepSeek-V3)
    topk_group: int | None = None


@dataclass(frozen=True)
class ModelShapes:
    heads_q: int
    heads_kv: int
    head_dim: int
    layers: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # linear layer -> (N, K)
    moe: MoELayer | None = None  # None: a dense model


MODELS: dict[str, ModelShapes] = {
    # hidden 4096, intermediate 14336, 32 heads, 8 kv heads, head dim 128
    "llama3-8b": ModelShapes(
        32, 8, 128, {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}),
    # hidden 8192, intermediate 28672, 64 heads, 8 kv heads, head dim 128
    "llama3-70b": ModelShapes(
        64, 8, 128, {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)}),
    # hidden 4096, 32 heads, 8 kv heads (no sliding window in 8x7B), 8 experts of intermediate 14336, top-2
    "mixtral-8x7b": ModelShapes(
        32, 8, 128, {"qkv": (6144, 4096), "o": (4096, 4096), "expert_gate_up": (28672, 4096),
                     "expert_down": (4096, 14336)},
        MoELayer(4096, 14336, 8, 2, "softmax", tokens=(4096, 16384, 32768))),
    # Qwen3-30B-A3B: hidden 2048, 32 heads, 4 kv heads, head dim 128, 128 experts of intermediate 768, top-8
    "qwen3-moe": ModelShapes(
        32, 4, 128, {"qkv": (5120, 2048), "o": (2048, 4096), "expert_gate_up": (1536, 2048),
                     "expert_down": (2048, 768)},
        MoELayer(2048, 768, 128, 8, "softmax", tokens=(4096, 16384, 32768))),
    # hidden 7168, dense intermediate 18432, 256 routed experts of intermediate 2048 (top-8, sigmoid, 8 groups,
    # top-4 groups), 128 heads, q_lora_rank 1536, q head dim 128 + 64 (rope), v head dim 128.
    # MLA in training: pyscale's kernel takes one head dim, so attention runs at 192 with v padded to it
    # (as FlashAttention-2 MLA ports do).
    "deepseek-v3": ModelShapes(
        128, 128, 192, {"q_b": (24576, 1536), "o": (7168, 16384), "dense_gate_up": (36864, 7168),
                        "dense_down": (7168, 18432), "expert_gate_up": (4096, 7168), "expert_down": (7168, 2048)},
        # the MoE issue's 4k-32k tokens (bf16 weights 22.5 GB, + grads)
        MoELayer(7168, 2048, 256, 8, "sigmoid", tokens=(4096, 8192, 16384, 32768), n_group=8, topk_group=4)),
}

SHAPE_SETS = ("quick", *MODELS, "grid")
FAMILIES = ("attention", "gemm", "moe")  # the op families a shape set gives shapes for

SEQS = (512, 1024, 2048, 4096, 8192, 16384)
TOKENS_PER_STEP = 16384
PASSES = ("fwd", "bwd", "fwd+bwd")
DECODE_M = (1, 4, 16, 64)
PREFILL_M = (1024, 4096, 8192)
QUICK_M = (1, 16, 64)


def check_shape_set(shape_set: str) -> str:
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape_set must be one of {', '.join(SHAPE_SETS)}: got {shape_set!r}")
    return shape_set


# --------------------------------------------------------------------------- attention

class AttentionShape(NamedTuple):
    model: str
    batch: int
    seq: int  # seq_q == seq_k
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool

    def __str__(self) -> str:
        mask = "causal" if self.causal else "full"
        return (f"{self.model}:B{self.batch}S{self.seq}H{self.heads_q}/{self.heads_kv}D{self.head_dim}:{mask}")


QUICK_ATTENTION = (AttentionShape("quick", 1, 64, 4, 4, 32, True), AttentionShape("quick", 2, 128, 4, 1, 64, True),
                   AttentionShape("quick", 1, 128, 2, 2, 64, False))


def _grid() -> list[AttentionShape]:
    shapes = []
    for d in (64, 128):
        heads = 2048 // d  # constant width 2048
        for hkv in (heads, heads // 8):
            for causal in (True, False):
                shapes += [AttentionShape("grid", max(1, TOKENS_PER_STEP // s), s, heads, hkv, d, causal)
                           for s in SEQS]
    return shapes


def attention_shapes(shape_set: str) -> list[AttentionShape]:
    """Every attention case of one shape set, shortest sequences first."""
    if check_shape_set(shape_set) == "quick":
        return list(QUICK_ATTENTION)
    if shape_set == "grid":
        return _grid()
    m = MODELS[shape_set]
    return [AttentionShape(shape_set, max(1, TOKENS_PER_STEP // s), s, m.heads_q, m.heads_kv, m.head_dim, True)
            for s in SEQS]


# --------------------------------------------------------------------------- GEMM

class GemmShape(NamedTuple):
    model: str
    layer: str
    m: int
    n: int
    k: int

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}:M{self.m}N{self.n}K{self.k}"


QUICK_LAYERS = {"a": (128, 128), "b": (256, 96)}


def gemm_shapes(shape_set: str) -> list[GemmShape]:
    """Every (layer, M) of one shape set, decode sizes first (none in `grid`)."""
    if check_shape_set(shape_set) == "grid":
        return []
    layers, ms = (QUICK_LAYERS, QUICK_M) if shape_set == "quick" else (MODELS[shape_set].layers,
                                                                       DECODE_M + PREFILL_M)
    return [GemmShape(shape_set, layer, m, n, k) for layer, (n, k) in layers.items() for m in ms]


# --------------------------------------------------------------------------- MoE

QUICK_MOE = MoELayer(64, 128, 4, 2, "softmax", tokens=(64,))


def moe_shapes(shape_set: str) -> list[dict[str, Any]]:
    """The MoE cases of one shape set, one dict per token count (none for dense models and `grid`):
    d_model, d_ff (per expert), n_experts, top_k, scoring, tokens, and n_group/topk_group where set."""
    if check_shape_set(shape_set) == "grid":
        return []
    layer = QUICK_MOE if shape_set == "quick" else MODELS[shape_set].moe
    if layer is None:
        return []
    base = {"d_model": layer.d_model, "d_ff": layer.d_ff, "n_experts": layer.n_experts, "top_k": layer.top_k,
            "scoring": layer.scoring}
    if layer.n_group is not None:
        base.update(n_group=layer.n_group, topk_group=layer.topk_group)
    return [{**base, "tokens": t} for t in layer.tokens]

