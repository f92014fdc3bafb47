"""GEMM shapes of named models: each linear layer's (N, K) at decode and prefill token counts M.

(N, K) = (out_features, in_features), from the models' published configurations (hidden size,
intermediate size, attention heads, kv heads, head dim; MoE expert sizes; DeepSeek-V3's MLA ranks):
fused qkv, attention output, fused gate+up, down. For MoE models M is the token count routed to one
expert's GEMM. Plain data: no torch, no pyscale imports.
"""

from __future__ import annotations

from typing import NamedTuple

SHAPE_SETS = ("quick", "llama3-8b", "llama3-70b", "mixtral-8x7b", "qwen3-moe", "deepseek-v3")

LAYERS: dict[str, dict[str, tuple[int, int]]] = {
    # hidden 4096, intermediate 14336, 32 heads, 8 kv heads, head dim 128
    "llama3-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
    # hidden 8192, intermediate 28672, 64 heads, 8 kv heads
    "llama3-70b": {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)},
    # hidden 4096, 32 heads, 8 kv heads, 8 experts of intermediate 14336
    "mixtral-8x7b": {"qkv": (6144, 4096), "o": (4096, 4096), "expert_gate_up": (28672, 4096),
                     "expert_down": (4096, 14336)},
    # Qwen3-30B-A3B: hidden 2048, 32 heads, 4 kv heads, head dim 128, 128 experts of intermediate 768
    "qwen3-moe": {"qkv": (5120, 2048), "o": (2048, 4096), "expert_gate_up": (1536, 2048),
                  "expert_down": (2048, 768)},
    # hidden 7168, dense intermediate 18432, 256 experts of intermediate 2048, 128 heads,
    # q_lora_rank 1536, q head dim 128 + 64 (rope), v head dim 128
    "deepseek-v3": {"q_b": (24576, 1536), "o": (7168, 16384), "dense_gate_up": (36864, 7168),
                    "dense_down": (7168, 18432), "expert_gate_up": (4096, 7168), "expert_down": (7168, 2048)},
    # tiny layers for CPU smoke runs
    "quick": {"a": (128, 128), "b": (256, 96)},
}
DECODE_M = (1, 4, 16, 64)
PREFILL_M = (1024, 4096, 8192)
QUICK_M = (1, 16, 64)


class GemmShape(NamedTuple):
    model: str
    layer: str
    m: int
    n: int
    k: int

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}:M{self.m}N{self.n}K{self.k}"


def gemm_shapes(shape_set: str) -> list[GemmShape]:
    """Every (layer, M) of one shape set, decode sizes first."""
    if shape_set not in LAYERS:
        raise ValueError(f"shape_set must be one of {', '.join(SHAPE_SETS)}: got {shape_set!r}")
    ms = QUICK_M if shape_set == "quick" else DECODE_M + PREFILL_M
    return [GemmShape(shape_set, layer, m, n, k) for layer, (n, k) in LAYERS[shape_set].items() for m in ms]
