"""A concrete architecture for every model size the planner's search prices.

Cost models price an architecture (its GEMM and attention shapes), not a parameter count. The plan's
final architecture comes from `config_for_params`, which scans every aligned width: up to ~0.2 s per call
near 1e13 parameters, too slow for the ~300 sizes one search prices. `search_config` shapes a size
directly by the same rules instead: d_model from the depth/width rule (`default_aspect_ratio`), aligned
as `candidate_configs` aligns it, then the layer count that comes closest. Its count is near the target,
not within 1 % of it (one layer is a big step for a shallow model), so the search takes only throughput
and power from it and FLOPs from the size itself.
"""

from __future__ import annotations

import functools
import math

from pyscale.models.config import (
    D_FF_MULTIPLE,
    GPTConfig,
    architecture_rules,
    default_aspect_ratio,
    default_head_dim,
    heads_unit,
    swiglu_d_ff,
)

TILE = 128  # candidate_configs' default alignment of d_model


def _fits(d: int, rules: dict) -> bool:
    unit = heads_unit(default_head_dim(d), gqa_ratio=rules["gqa_ratio"], n_kv_heads=rules["n_kv_heads"],
                      heads_multiple=rules["heads_multiple"])
    return d % TILE == 0 and d % unit == 0


def _aligned_width(x: float, rules: dict) -> int:
    """The aligned width (a multiple of TILE that whole groups of heads divide) nearest x, in ratio."""
    up = max(TILE, math.ceil(x / TILE) * TILE)
    while not _fits(up, rules):
        up += TILE
    down = _narrower_width(up, rules) if up > x else None
    return down if down is not None and x / down < up / x else up


def _narrower_width(d: int, rules: dict) -> int | None:
    """The next aligned width below d, if any."""
    for w in range(d - TILE, 0, -TILE):
        if _fits(w, rules):
            return w
    return None


@functools.lru_cache(maxsize=4096)
def search_config(n: float, *, embeddings: bool, vocab_size: int, seq_len: int, gqa_ratio: int | None = None,
                  heads_multiple: int | None = None, n_experts: int = 0, top_k: int = 0) -> GPTConfig:
    """A rule-shaped config whose active parameters (with or without embeddings) are near `n`, with the head
    constraints `architecture_rules(n, gqa_ratio=, heads_multiple=)` gives a model of that size."""
    rules = architecture_rules(n, gqa_ratio=gqa_ratio, heads_multiple=heads_multiple)

    def build(n_layers: int, d: int) -> GPTConfig:
        hd = default_head_dim(d)
        d_ff = swiglu_d_ff(d, math.lcm(D_FF_MULTIPLE, TILE))
        heads = d // hd
        kv = rules["n_kv_heads"] if rules["n_kv_heads"] is not None else heads // rules["gqa_ratio"]
        return GPTConfig(n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=kv, head_dim=hd, d_ff=d_ff,
                         vocab_size=vocab_size, seq_len=seq_len, n_experts=n_experts, top_k=top_k,
                         d_ff_expert=d_ff if n_experts else None)

    def per_layer_and_base(d: int) -> tuple[int, int]:
        one = build(1, d).n_active_params(embeddings)
        per_layer = build(2, d).n_active_params(embeddings) - one
        return per_layer, one - per_layer

    aspect = default_aspect_ratio(n)
    d = _aligned_width((aspect * n / 12.0) ** (1.0 / 3.0), rules)  # dense, embeddings aside: n ≈ 12·L·d²
    for _ in range(3):  # the per-layer size (MoE, GQA) and the embeddings' share both depend on d
        per_layer, base = per_layer_and_base(d)
        body = max(n - base, per_layer)  # n = base + L·per_layer with L = d / aspect
        d = _aligned_width((aspect * body * d * d / per_layer) ** (1.0 / 3.0), rules)
    # small models are mostly embeddings: the count wins over the shape (as in config_for_params)
    while sum(per_layer_and_base(d)) > n and (w := _narrower_width(d, rules)):
        d = w
    per_layer, base = per_layer_and_base(d)
    return build(max(1, round((n - base) / per_layer)), d)
