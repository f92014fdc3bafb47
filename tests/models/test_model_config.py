"""Exact parameter and FLOP counts of GPTConfig, and the architecture search."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from pyscale.models import GPTConfig, candidate_configs, config_for_params, default_aspect_ratio, swiglu_d_ff


def hand_count(L: int, d: int, h: int, kv: int, hd: int, ff: int, V: int, E: int = 0, k: int = 0) -> dict[str, int]:
    """The DESIGN.md §8 formulas, written out independently of config.py."""
    attn = d * h * hd + d * kv * hd + d * kv * hd + h * hd * d  # q, k, v, o
    mlp_layer = E * 3 * d * ff if E else 3 * d * ff
    router = E * d
    total = 2 * V * d + L * (attn + mlp_layer + router + 2 * d) + d
    active = total - (L * (E - k) * 3 * d * ff if E else 0)
    return {"total": total, "non_embedding": total - 2 * V * d, "active": active}


@pytest.mark.parametrize(
    "kw, E, k",
    [
        (dict(n_layers=3, d_model=96, n_heads=6, d_ff=160, vocab_size=101), 0, 0),
        (dict(n_layers=2, d_model=128, n_heads=8, n_kv_heads=2, d_ff=200, vocab_size=50), 0, 0),
        (dict(n_layers=4, d_model=64, n_heads=4, n_kv_heads=1, head_dim=48, d_ff=96, vocab_size=77), 0, 0),
        (dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, n_experts=8, top_k=2, d_ff_expert=40,
              vocab_size=33), 8, 2),
    ],
)
def test_param_counts_match_hand_formulas(kw: dict, E: int, k: int) -> None:
    cfg = GPTConfig(**kw)
    ff = kw.get("d_ff_expert", kw["d_ff"]) if E else kw["d_ff"]
    hd = kw.get("head_dim", kw["d_model"] // kw["n_heads"])
    want = hand_count(kw["n_layers"], kw["d_model"], kw["n_heads"], kw.get("n_kv_heads", kw["n_heads"]), hd, ff,
                      kw["vocab_size"], E, k)
    c = cfg.param_counts()
    assert c.total == cfg.n_params() == want["total"]
    assert c.non_embedding == cfg.n_params(embeddings=False) == want["non_embedding"]
    assert c.active == cfg.n_active_params() == want["active"]
    assert c.active_non_embedding == want["active"] - 2 * kw["vocab_size"] * kw["d_model"]
    assert c.embedding + c.lm_head + c.attention + c.mlp + c.router + c.norms == c.total
    assert (c.active < c.total) == (E > k > 0)


def test_published_llama_mistral_mixtral_totals() -> None:
    # Totals of the released checkpoints (sum of tensor sizes, as the Hugging Face hub lists them):
    # Llama-2-7B 6,738,415,616; Llama-13B 13,015,864,320; Mistral-7B-v0.1 7,241,732,096;
    # Mixtral-8x7B-v0.1 46,702,792,704. Shapes from their config.json files.
    assert GPTConfig(32, 4096, 32).n_params() == 6_738_415_616
    assert GPTConfig(40, 5120, 40).n_params() == 13_015_864_320
    assert GPTConfig(32, 4096, 32, n_kv_heads=8, d_ff=14336).n_params() == 7_241_732_096
    mixtral = GPTConfig(32, 4096, 32, n_kv_heads=8, d_ff=14336, n_experts=8, top_k=2)
    assert mixtral.n_params() == 46_702_792_704
    # active: 6 of the 8 experts idle in each of the 32 layers
    assert mixtral.n_active_params() == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336


@pytest.mark.parametrize("d_model, d_ff", [(4096, 11008), (5120, 13824), (6656, 17920), (8192, 22016)])
def test_default_d_ff_reproduces_llama(d_model: int, d_ff: int) -> None:
    # intermediate_size of Llama-1 7B / 13B / 33B / 65B (their config.json files)
    assert swiglu_d_ff(d_model) == d_ff
    assert GPTConfig(2, d_model, d_model // 128).d_ff == d_ff


# Hoffmann et al. 2022 ("Chinchilla"), Table A9: (parameters, d_model, ffw_size, kv_size, n_heads,
# n_layers) of all 50 models, as transcribed in karpathy/nanoGPT scaling_laws.ipynb.
CHINCHILLA_A9 = [
    (44e6, 512, 2048, 64, 8, 8), (57e6, 576, 2304, 64, 9, 9), (74e6, 640, 2560, 64, 10, 10),
    (90e6, 640, 2560, 64, 10, 13), (106e6, 640, 2560, 64, 10, 16), (117e6, 768, 3072, 64, 12, 12),
    (140e6, 768, 3072, 64, 12, 15), (163e6, 768, 3072, 64, 12, 18), (175e6, 896, 3584, 64, 14, 14),
    (196e6, 896, 3584, 64, 14, 16), (217e6, 896, 3584, 64, 14, 18), (251e6, 1024, 4096, 64, 16, 16),
    (278e6, 1024, 4096, 64, 16, 18), (306e6, 1024, 4096, 64, 16, 20), (425e6, 1280, 5120, 128, 10, 18),
    (489e6, 1280, 5120, 128, 10, 21), (509e6, 1408, 5632, 128, 11, 18), (552e6, 1280, 5120, 128, 10, 24),
    (587e6, 1408, 5632, 128, 11, 21), (632e6, 1536, 6144, 128, 12, 19), (664e6, 1408, 5632, 128, 11, 24),
    (724e6, 1536, 6144, 128, 12, 22), (816e6, 1536, 6144, 128, 12, 25), (893e6, 1792, 7168, 128, 14, 20),
    (1018e6, 1792, 7168, 128, 14, 23), (1143e6, 1792, 7168, 128, 14, 26), (1266e6, 2048, 8192, 128, 16, 22),
    (1424e6, 2176, 8704, 128, 17, 22), (1429e6, 2048, 8192, 128, 16, 25), (1593e6, 2048, 8192, 128, 16, 28),
    (1609e6, 2176, 8704, 128, 17, 25), (1731e6, 2304, 9216, 128, 18, 24), (1794e6, 2176, 8704, 128, 17, 28),
    (2007e6, 2304, 9216, 128, 18, 28), (2283e6, 2304, 9216, 128, 18, 32), (2298e6, 2560, 10240, 128, 20, 26),
    (2639e6, 2560, 10240, 128, 20, 30), (2980e6, 2560, 10240, 128, 20, 34), (3530e6, 2688, 10752, 128, 22, 36),
    (3802e6, 2816, 11264, 128, 22, 36), (4084e6, 2944, 11776, 128, 22, 36), (4516e6, 3072, 12288, 128, 24, 36),
    (6796e6, 3584, 14336, 128, 28, 40), (9293e6, 4096, 16384, 128, 32, 42), (11452e6, 4352, 17408, 128, 32, 47),
    (12295e6, 4608, 18432, 128, 36, 44), (12569e6, 4608, 18432, 128, 32, 47), (13735e6, 4864, 19456, 128, 32, 47),
    (14940e6, 4992, 19968, 128, 32, 49), (16183e6, 5120, 20480, 128, 40, 47),
]


def count_params_classic(n_layers: int, d_model: int, ffw: int, n_heads: int, kv_size: int, vocab: int = 32000,
                         relative_positions: bool = True) -> int:
    """Gopher/Chinchilla-style count: q, k, v, o (taken from GPTConfig, whose attention is the same
    four matrices), a two-matrix GELU MLP, one shared V·d embedding (vocab 32000, the notebook's
    assumption, borne out by the 1 % agreement), and — Gopher uses Transformer-XL relative positions (Rae et al. 2021) — one more d×(h·k)
    projection per layer for the relative keys. Biases and norms are < 0.1 % and left out."""
    attn = GPTConfig(n_layers, d_model, n_heads, head_dim=kv_size).param_counts().attention
    assert attn == n_layers * 4 * d_model * n_heads * kv_size
    rel = n_layers * d_model * n_heads * kv_size if relative_positions else 0
    return attn + rel + n_layers * 2 * d_model * ffw + vocab * d_model


@pytest.mark.parametrize("row", CHINCHILLA_A9, ids=lambda r: f"{r[0] / 1e6:.0f}M")
def test_chinchilla_table_a9_parameter_counts(row: tuple) -> None:
    params, d, ffw, kv, heads, layers = row
    assert count_params_classic(layers, d, ffw, heads, kv) == pytest.approx(params, rel=0.01)
    # without the relative-position keys every row is 5-8 % short: that term is real
    assert count_params_classic(layers, d, ffw, heads, kv, relative_positions=False) < 0.96 * params


def test_chinchilla_and_gopher_table_rows() -> None:
    # Hoffmann et al. 2022, Table 4: Chinchilla 70B (80 layers, 64 heads, kv 128, d_model 8192) and
    # Gopher 280B (80 layers, 128 heads, kv 128, d_model 16384); feed-forward 4·d_model in both.
    assert count_params_classic(80, 8192, 4 * 8192, 64, 128) == pytest.approx(70e9, rel=0.01)
    assert count_params_classic(80, 16384, 4 * 16384, 128, 128) == pytest.approx(280e9, rel=0.01)


@pytest.mark.parametrize(
    "cfg",
    [
        GPTConfig(32, 4096, 32),
        GPTConfig(4, 256, 8, n_kv_heads=2, seq_len=512),
        GPTConfig(4, 256, 8, n_kv_heads=2, seq_len=512, n_experts=8, top_k=2, d_ff_expert=512),
    ],
    ids=["llama7b", "gqa", "moe"],
)
def test_model_flops_follow_palm_appendix_b(cfg: GPTConfig) -> None:
    # PaLM (Chowdhery et al. 2022) appendix B: 6N + 12·L·H·Q·T per token; H query heads, Q head dim
    L, H, Q, T = cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.seq_len
    N = cfg.n_active_params() - cfg.vocab_size * cfg.d_model  # lm_head in, embedding lookup out
    assert cfg.model_flops_per_token() == 6 * N + 12 * L * H * Q * T
    assert cfg.model_flops_per_token(seq_len=7) == 6 * N + 12 * L * H * Q * 7
    assert cfg.flops_per_token("palm") == cfg.model_flops_per_token()
    assert cfg.flops_per_token("6N") == 6 * cfg.n_active_params()
    assert cfg.flops_per_token("6N", embeddings=False) == 6 * cfg.n_active_params(embeddings=False)
    assert cfg.flops_per_token("kaplan") == 6 * cfg.n_active_params(embeddings=False) + 6 * L * T * H * Q
    with pytest.raises(ValueError, match="convention"):
        cfg.flops_per_token("chinchilla")  # type: ignore[arg-type]


def test_executed_flops_count_causal_pairs_exactly() -> None:
    cfg = GPTConfig(3, 128, 4, n_kv_heads=2, d_ff=256, vocab_size=300, seq_len=9)
    T = cfg.seq_len
    pairs = sum(1 for i in range(T) for j in range(T) if j <= i)  # bottom-right causal, Sq = Sk
    linear = 2 * (cfg.n_params() - cfg.param_counts().embedding - cfg.param_counts().norms)
    attn = cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * pairs / T
    b = cfg.executed_flops_breakdown()
    assert b["linear_forward"] == linear and b["attention_forward"] == attn
    assert b["backward"] == 2 * b["forward"] and b["total"] == 3 * (linear + attn)
    full = cfg.executed_flops_breakdown(causal=False)
    assert full["attention_forward"] == cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * T
    rec = cfg.executed_flops_breakdown(recompute_attention=True)
    assert rec["attention_backward"] == 2.5 * attn and rec["linear_backward"] == 2 * linear
    assert cfg.executed_flops_per_token(backward=False) == linear + attn
    # one token: causal and full attention are the same single pair
    assert cfg.executed_flops_per_token(seq_len=1) == cfg.executed_flops_per_token(seq_len=1, causal=False)


def test_moe_executed_flops_use_top_k_experts() -> None:
    dense = GPTConfig(2, 128, 4, d_ff=256, vocab_size=100)
    moe = GPTConfig(2, 128, 4, d_ff=256, vocab_size=100, n_experts=8, top_k=2)
    extra = moe.executed_flops_breakdown()["linear_forward"] - dense.executed_flops_breakdown()["linear_forward"]
    # per layer one more active expert and the router; 2 FLOPs per weight, 2 layers
    assert extra == 2 * 2 * (3 * 128 * 256 + 8 * 128)


def test_to_dict_round_trip_and_describe() -> None:
    cfg = GPTConfig(4, 256, 8, n_kv_heads=4, n_experts=4, top_k=1)
    d = cfg.to_dict()
    assert d["n_kv_heads"] == 4 and d["head_dim"] == 32 and d["d_ff_expert"] == cfg.d_ff == 768
    assert GPTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig fields: \\['bogus'\\]"):
        GPTConfig.from_dict({**d, "bogus": 1})
    text = cfg.describe()
    assert f"{cfg.n_params():,}" in text and "MoE 4 experts top-1" in text and "GQA 8:4" in text


@pytest.mark.parametrize(
    "kw, exc, field",
    [
        (dict(n_layers=0), ValueError, "n_layers"),
        (dict(d_model=-64), ValueError, "d_model"),
        (dict(n_layers=2.0), TypeError, "n_layers"),
        (dict(n_heads=True), TypeError, "n_heads"),
        (dict(n_kv_heads=3), ValueError, "n_heads must be a multiple of n_kv_heads"),
        (dict(n_heads=5), ValueError, "head_dim"),
        (dict(head_dim=15), ValueError, "head_dim"),
        (dict(d_ff=0), ValueError, "d_ff"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(seq_len=0), ValueError, "seq_len"),
        (dict(top_k=1), ValueError, "top_k"),
        (dict(n_experts=4, top_k=5), ValueError, "top_k"),
        (dict(n_experts=4, top_k=0), ValueError, "top_k"),
        (dict(n_experts=-1), ValueError, "n_experts"),
        (dict(d_ff_expert=64), ValueError, "d_ff_expert"),
        (dict(rope_theta=0.0), ValueError, "rope_theta"),
        (dict(norm_eps=float("nan")), ValueError, "norm_eps"),
    ],
)
def test_validation_names_the_field(kw: dict, exc: type, field: str) -> None:
    base = dict(n_layers=2, d_model=64, n_heads=4)
    with pytest.raises(exc, match=field):
        GPTConfig(**{**base, **kw})


TARGETS = [10 ** (7 + i * (math.log10(4e11) - 7) / 30) for i in range(31)]  # 1e7 … 4e11


def _check_aligned(cfg: GPTConfig, tile: int, gqa_ratio: int) -> None:
    assert cfg.d_model % tile == 0 and cfg.d_ff % tile == 0
    assert cfg.n_heads * cfg.head_dim == cfg.d_model
    assert cfg.n_heads == gqa_ratio * cfg.n_kv_heads


@pytest.mark.parametrize("target", TARGETS, ids=lambda n: f"{n:.2g}")
def test_config_for_params_hits_targets(target: float) -> None:
    cfg = config_for_params(target)
    assert abs(cfg.n_params() / target - 1) <= 0.01
    _check_aligned(cfg, 128, 1)
    if target >= 1e9:  # above the embedding-dominated range the depth/width rule holds to ±25 %
        assert abs(math.log(cfg.aspect_ratio / default_aspect_ratio(target))) <= math.log(1.25)


@pytest.mark.parametrize("target", [3e8, 7e9, 1.3e11])
def test_config_for_params_variants(target: float) -> None:
    gqa = config_for_params(target, gqa_ratio=4, head_dim=128, tile=256, vocab_size=128256)
    assert abs(gqa.n_params() / target - 1) <= 0.01 and gqa.vocab_size == 128256
    _check_aligned(gqa, 256, 4)
    nonemb = config_for_params(target, embeddings=False)
    assert abs(nonemb.n_params(embeddings=False) / target - 1) <= 0.01
    moe = config_for_params(target, n_experts=8, top_k=2)
    assert moe.n_experts == 8 and abs(moe.n_params() / target - 1) <= 0.01
    active = config_for_params(target, n_experts=8, top_k=2, active=True)
    assert abs(active.n_active_params() / target - 1) <= 0.01 and active.n_params() > 2 * target


def test_candidate_configs_are_ranked_and_impossible_targets_raise() -> None:
    cands = candidate_configs(1e9, limit=None)
    errs = [abs(c.n_params() / 1e9 - 1) for c in cands]
    within = [e <= 0.01 for e in errs]
    assert within[0] and within == sorted(within, reverse=True)  # all hits before the misses
    assert cands[0] == config_for_params(1e9) and len(cands) > 10
    smallest = GPTConfig(1, 128, 2, d_ff=512).n_params()
    with pytest.raises(ValueError, match="n_params=.*below the smallest aligned model"):
        config_for_params(smallest / 2)
    with pytest.raises(ValueError, match="n_params"):
        config_for_params(-5)


def test_default_aspect_ratio_rule() -> None:
    assert default_aspect_ratio(1e7) == default_aspect_ratio(1e8) == 64
    assert default_aspect_ratio(1e10) == default_aspect_ratio(4e11) == 128
    assert default_aspect_ratio(1e9) == pytest.approx(64 * 2**0.5)
    grid = [default_aspect_ratio(n) for n in TARGETS]
    assert grid == sorted(grid)


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, pyscale.models as m; m.GPTConfig(2, 64, 4).n_params(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_architecture_rules_make_trainable_shapes() -> None:
    from pyscale.models.config import architecture_rules

    assert architecture_rules(5e8) == {"gqa_ratio": 1, "n_kv_heads": None, "heads_multiple": 1}
    assert architecture_rules(2e9) == {"gqa_ratio": 1, "n_kv_heads": 8, "heads_multiple": 8}
    assert architecture_rules(2e9, gqa_ratio=1) == {"gqa_ratio": 1, "n_kv_heads": None, "heads_multiple": 8}
    assert architecture_rules(2e9, gqa_ratio=4, heads_multiple=1)["heads_multiple"] == 1
    for target in (1e9, 3e9, 7e9, 3e10, 7e10, 4e11):
        cfg = config_for_params(target, rtol=0.05, **architecture_rules(target))
        assert abs(cfg.n_params() / target - 1) <= 0.05, target
        assert cfg.n_heads % 8 == 0 and cfg.n_kv_heads == 8 and cfg.head_dim in (64, 128)
        assert cfg.d_model % 128 == 0 and cfg.d_ff % 128 == 0 and cfg.n_heads * cfg.head_dim == cfg.d_model
        mha = config_for_params(target, rtol=0.05, **architecture_rules(target, gqa_ratio=1))
        assert mha.n_kv_heads == mha.n_heads and mha.n_heads % 8 == 0
    with pytest.raises(ValueError, match="both fix the kv heads"):
        candidate_configs(1e9, n_kv_heads=8, gqa_ratio=2)
    with pytest.raises(ValueError, match="heads_multiple"):
        candidate_configs(1e9, heads_multiple=0)
    with pytest.raises(ValueError, match="gqa_ratio"):
        architecture_rules(1e9, gqa_ratio=0)


@pytest.mark.parametrize("n", [2e14, 1e19])
def test_huge_targets_keep_the_rule_and_the_alignment(n):
    """Beyond any real model (a plan for 1e40 FLOPs asks for ~1e19 parameters) the width sweep keeps to a
    band around the depth/width rule instead of trying millions of widths; what it returns is still aligned,
    within rtol and on the rule."""
    from pyscale.models.config import WIDTH_BAND, default_aspect_ratio

    cfg = config_for_params(n, n_kv_heads=8, heads_multiple=8)
    assert abs(cfg.n_params() / n - 1) <= 0.01
    assert cfg.d_model % 128 == 0 and cfg.n_heads % 8 == 0 and cfg.n_kv_heads == 8
    assert 1 / WIDTH_BAND**3 <= cfg.aspect_ratio / default_aspect_ratio(n) <= WIDTH_BAND**3
