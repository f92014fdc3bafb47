"""Attention shapes of named models for benchmarks: (batch, seq, heads_q, heads_kv, head_dim, causal).

Heads and head dims come from the models' published configurations; each model's training attention is
causal, and sequences run 512 -> 16k at a constant 16k tokens per step (batch = 16384 // seq). `grid`
is the model-free coverage sweep of the attention issue (head dim 64 and 128, MHA and GQA 8:1, causal
and not); `quick` is tiny, for CPU smoke runs. Plain data: no torch, no pyscale imports.
"""

from __future__ import annotations

from typing import NamedTuple

SHAPE_SETS = ("quick", "llama3-8b", "llama3-70b", "mixtral-8x7b", "qwen3-moe", "deepseek-v3", "grid")

# (heads_q, heads_kv, head_dim) per model.
HEADS: dict[str, tuple[int, int, int]] = {
    "llama3-8b": (32, 8, 128),  # hidden 4096, 32 heads, 8 kv heads
    "llama3-70b": (64, 8, 128),  # hidden 8192, 64 heads, 8 kv heads
    "mixtral-8x7b": (32, 8, 128),  # hidden 4096, 32 heads, 8 kv heads (no sliding window in 8x7B)
    "qwen3-moe": (32, 4, 128),  # Qwen3-30B-A3B: 32 heads, 4 kv heads, head dim 128
    # DeepSeek-V3 MLA in training: 128 heads, q/k head dim 128 + 64 (rope) = 192, v head dim 128; pyscale's
    # kernel takes one head dim, so v is benchmarked padded to 192 (as FlashAttention-2 MLA ports do).
    "deepseek-v3": (128, 128, 192),
}
SEQS = (512, 1024, 2048, 4096, 8192, 16384)
TOKENS_PER_STEP = 16384
PASSES = ("fwd", "bwd", "fwd+bwd")


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


def _model_set(model: str) -> list[AttentionShape]:
    hq, hkv, d = HEADS[model]
    return [AttentionShape(model, max(1, TOKENS_PER_STEP // s), s, hq, hkv, d, True) for s in SEQS]


def _grid() -> list[AttentionShape]:
    shapes = []
    for d in (64, 128):
        heads = 2048 // d  # constant width 2048
        for hkv in (heads, heads // 8):
            for causal in (True, False):
                shapes += [AttentionShape("grid", max(1, TOKENS_PER_STEP // s), s, heads, hkv, d, causal)
                           for s in SEQS]
    return shapes


def _quick() -> list[AttentionShape]:
    return [AttentionShape("quick", 1, 64, 4, 4, 32, True), AttentionShape("quick", 2, 128, 4, 1, 64, True),
            AttentionShape("quick", 1, 128, 2, 2, 64, False)]


def attention_shapes(shape_set: str) -> list[AttentionShape]:
    """Every attention case of one shape set, shortest sequences first."""
    if shape_set == "quick":
        return _quick()
    if shape_set == "grid":
        return _grid()
    if shape_set not in HEADS:
        raise ValueError(f"shape_set must be one of {', '.join(SHAPE_SETS)}: got {shape_set!r}")
    return _model_set(shape_set)
