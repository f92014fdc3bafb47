"""MoE-layer shapes of public model configurations, keyed by model name (plain data).

Each entry: d_model, d_ff (per expert), n_experts, top_k, scoring, optional n_group/topk_group, and the
token counts (batch x sequence flattened) to sweep. Sources: the models' published configs --
Mixtral-8x7B (hidden 4096, intermediate 14336, 8 experts, top-2, softmax);
Qwen3-30B-A3B (hidden 2048, moe_intermediate 768, 128 experts, top-8, softmax);
DeepSeek-V3 (hidden 7168, moe_intermediate 2048, 256 routed experts, top-8, sigmoid, 8 groups, top-4 groups).
Llama-3-8B is dense: no MoE shapes. `quick` is tiny, for CPU smoke runs.
"""

from __future__ import annotations

SHAPES: dict[str, list[dict]] = {
    "mixtral-8x7b": [
        {"d_model": 4096, "d_ff": 14336, "n_experts": 8, "top_k": 2, "scoring": "softmax", "tokens": t}
        for t in (4096, 16384, 32768)
    ],
    "qwen3-moe": [
        {"d_model": 2048, "d_ff": 768, "n_experts": 128, "top_k": 8, "scoring": "softmax", "tokens": t}
        for t in (4096, 16384, 32768)
    ],
    "deepseek-v3": [
        {"d_model": 7168, "d_ff": 2048, "n_experts": 256, "top_k": 8, "scoring": "sigmoid", "n_group": 8,
         "topk_group": 4, "tokens": t}
        for t in (4096, 8192, 16384, 32768)  # the 4k-32k range (bf16 weights 22.5 GB, + grads)
    ],
    "llama3-8b": [],
    "quick": [
        {"d_model": 64, "d_ff": 128, "n_experts": 4, "top_k": 2, "scoring": "softmax", "tokens": 64},
    ],
}


def moe_shapes(name: str) -> list[dict]:
    """The MoE cases of shape set `name` (an empty list for dense models)."""
    if name not in SHAPES:
        raise ValueError(f"shape set must be one of {', '.join(SHAPES)}: got {name!r}")
    return [dict(case) for case in SHAPES[name]]


def active_flops(case: dict, backward: bool = False) -> int:
    """Model FLOPs of one layer call on active parameters: router 2·T·d·E + experts 2·T·k·3·d·d_ff;
    forward+backward is 3x the forward."""
    t, d, ff, e, k = case["tokens"], case["d_model"], case["d_ff"], case["n_experts"], case["top_k"]
    fwd = 2 * t * d * e + 2 * t * k * 3 * d * ff
    return 3 * fwd if backward else fwd
