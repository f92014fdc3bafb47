"""The built-in GPT: exact parameter counts, FLOPs vs torch's counter, training, impl selection."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pyscale.models import GPTConfig, architecture_rules, config_for_params  # noqa: E402
from pyscale.models.gpt import (  # noqa: E402
    GPT,
    LOAD_BALANCING_COEF,
    Z_LOSS_COEF,
    TorchAttention,
    TorchMoE,
    build_optimizer,
    make_batch,
    train_step,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: with the 2 shared CI cores busy, OpenMP threads spin and fight,
    # making a step ~100x slower than single-threaded
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONFIGS = {
    "mha": GPTConfig(2, 64, 4, d_ff=96, vocab_size=97, seq_len=16),
    "gqa": GPTConfig(2, 64, 4, n_kv_heads=2, d_ff=96, vocab_size=97, seq_len=16),
    "mqa-wide-heads": GPTConfig(3, 64, 4, n_kv_heads=1, head_dim=24, d_ff=80, vocab_size=50, seq_len=12),
    "moe": GPTConfig(2, 64, 4, n_kv_heads=2, d_ff=96, vocab_size=97, seq_len=16, n_experts=4, top_k=2, d_ff_expert=48),
}


def _group(model: nn.Module, key: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if key in n)


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_is_exact(name: str, impl: str) -> None:
    cfg = CONFIGS[name]
    model = GPT(cfg, impl=impl)  # type: ignore[arg-type]
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    c = cfg.param_counts()
    assert model.embed.weight.numel() == c.embedding and model.lm_head.weight.numel() == c.lm_head
    assert _group(model, ".attn.") == c.attention
    assert _group(model, "norm") == c.norms
    assert _group(model, ".router.") == c.router
    assert _group(model, ".mlp.") == c.mlp + c.router


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flops_match_torch_counter(name: str) -> None:
    # The math SDPA backend runs attention as bmm's, which FlopCounterMode counts (it has no CPU
    # fused-attention formula); it computes every query-key pair, i.e. the non-causal count.
    cfg = CONFIGS[name]
    model = GPT(cfg, impl="torch")
    tokens, targets = make_batch(cfg, 3, generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = model.loss(tokens, targets)
        forward = counter.get_total_flops()
        loss.backward()
        total = counter.get_total_flops()
    want = cfg.executed_flops_breakdown(causal=False)
    n_tokens = tokens.numel()
    assert forward == want["forward"] * n_tokens
    assert total == want["total"] * n_tokens


@pytest.mark.parametrize("name", ["mha", "moe"])
def test_training_reduces_loss(name: str) -> None:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = GPT(cfg, impl="torch")
    opt = build_optimizer(model, lr=3e-3)
    tokens, targets = make_batch(cfg, 4, generator=torch.Generator().manual_seed(1))
    losses = [train_step(model, opt, tokens, targets) for _ in range(10)]
    assert all(isinstance(x, float) for x in losses)
    assert losses[0] == pytest.approx(torch.log(torch.tensor(97.0)).item(), rel=0.1)  # ≈ uniform at init
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True) ran


def test_moe_loss_adds_aux_terms() -> None:
    cfg = CONFIGS["moe"]
    model = GPT(cfg, impl="torch")
    tokens, targets = make_batch(cfg, 2, generator=torch.Generator().manual_seed(2))
    loss, parts = model.loss(tokens, targets)
    assert set(parts) == {"cross_entropy", "load_balancing", "z_loss"}
    want = parts["cross_entropy"] + LOAD_BALANCING_COEF * parts["load_balancing"] + Z_LOSS_COEF * parts["z_loss"]
    assert torch.allclose(loss, want)
    assert parts["load_balancing"] > 0 and parts["z_loss"] > 0
    dense_loss, dense_parts = GPT(CONFIGS["gqa"], impl="torch").loss(tokens, targets)
    assert set(dense_parts) == {"cross_entropy"} and torch.equal(dense_loss, dense_parts["cross_entropy"])


def test_moe_matches_dense_reference() -> None:
    # routing cross-check: the loop MoE equals Σ_j w_j · expert_{id_j}(x), token by token
    torch.manual_seed(3)
    moe = TorchMoE(16, 24, n_experts=5, top_k=2)
    x = torch.randn(11, 16)
    out, _ = moe(x)
    probs = moe.router(x).softmax(-1)
    w, ids = probs.topk(2, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    ref = torch.stack([sum(w[t, j] * moe.experts[int(ids[t, j])](x[t]) for j in range(2)) for t in range(11)])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", ["mha", "mqa-wide-heads"])
def test_attention_is_causal(name: str) -> None:
    cfg = CONFIGS[name]
    model = GPT(cfg, impl="torch").eval()
    tokens, _ = make_batch(cfg, 1, generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gqa_attention_equals_repeated_kv_mha() -> None:
    # GQA with kv head h//rep (DESIGN.md §8) must equal MHA whose k/v rows repeat per group
    torch.manual_seed(5)
    gqa = TorchAttention(32, 4, 2, head_dim=8)
    mha = TorchAttention(32, 4, 4, head_dim=8)
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for proj in ("k_proj", "v_proj"):
            w = getattr(gqa, proj).weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            getattr(mha, proj).weight.copy_(w)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gqa(x), mha(x))


def test_make_batch_shapes_and_determinism() -> None:
    cfg = CONFIGS["mha"]
    tokens, targets = make_batch(cfg, 5, generator=torch.Generator().manual_seed(7))
    assert tokens.shape == targets.shape == (5, 16) and tokens.dtype == torch.int64
    assert torch.equal(tokens[:, 1:], targets[:, :-1])
    assert int(tokens.max()) < cfg.vocab_size and int(tokens.min()) >= 0
    again, _ = make_batch(cfg, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(tokens, again)
    assert make_batch(cfg, 2, seq_len=3)[0].shape == (2, 3)
    with pytest.raises(ValueError, match="batch_size"):
        make_batch(cfg, 0)


def test_dtype_and_bad_impl() -> None:
    model = GPT(CONFIGS["gqa"], impl="torch", dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    tokens, _ = make_batch(CONFIGS["gqa"], 2)
    assert model(tokens).dtype == torch.float64
    with pytest.raises(ValueError, match="impl"):
        GPT(CONFIGS["gqa"], impl="triton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens"):
        model(tokens[0])


def _fake_pyscale_nn(monkeypatch: pytest.MonkeyPatch, attention: type, moe: type | None = None) -> None:
    fake = types.ModuleType("pyscale.nn")
    fake.Attention = attention  # type: ignore[attr-defined]
    if moe is not None:
        fake.MoE = moe  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyscale.nn", fake)


class _GoodAttention(TorchAttention):
    """Stands in for pyscale.nn.Attention with the documented signature."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, head_dim: int | None = None,
                 causal: bool = True, rope_theta: float = 10000.0) -> None:
        assert causal
        super().__init__(d_model, n_heads, n_kv_heads, head_dim=head_dim or d_model // n_heads, rope_theta=rope_theta)


class _BiasedAttention(_GoodAttention):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.extra = nn.Parameter(torch.zeros(3))


def test_auto_picks_pyscale_modules_when_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pyscale_nn(monkeypatch, _GoodAttention, TorchMoE)
    cfg = CONFIGS["moe"]
    model = GPT(cfg, impl="auto")
    assert model.impl_parts == {"attention": "pyscale", "moe": "pyscale"}
    assert all(isinstance(b.attn, _GoodAttention) for b in model.layers)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    loss, _ = model.loss(*make_batch(cfg, 2))
    assert torch.isfinite(loss)


def test_auto_falls_back_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pyscale_nn(monkeypatch, _BiasedAttention)  # wrong count, and no MoE at all
    model = GPT(CONFIGS["moe"], impl="auto")
    assert model.impl_parts == {"attention": "torch", "moe": "torch"}
    counts = CONFIGS["moe"].layer_param_counts()["attention"]
    assert f"has {counts + 3} parameters, the config counts {counts}" in model.impl_reasons["attention"]
    assert "MoE" in model.impl_reasons["moe"]
    assert sum(p.numel() for p in model.parameters()) == CONFIGS["moe"].n_params()
    with pytest.raises(RuntimeError, match="impl='pyscale'"):
        GPT(CONFIGS["moe"], impl="pyscale")


def test_impl_pyscale_for_real() -> None:
    cfg = CONFIGS["moe"]
    try:
        pnn = importlib.import_module("pyscale.nn")
        available = hasattr(pnn, "Attention") and hasattr(pnn, "MoE")
    except ImportError:
        available = False
    if not available:
        with pytest.raises(RuntimeError, match="pyscale"):
            GPT(cfg, impl="pyscale")
        assert "fell back to torch" in GPT(cfg).impl_reasons["attention"]
    else:  # once the kernels' modules land, the counts must still be exact
        model = GPT(cfg, impl="pyscale")
        assert sum(p.numel() for p in model.parameters()) == cfg.n_params()


@pytest.mark.parametrize(
    "cfg",
    [
        GPTConfig(32, 4096, 32),  # Llama-2-7B shape
        GPTConfig(32, 4096, 32, n_kv_heads=8, d_ff=14336, n_experts=8, top_k=2),  # Mixtral-8x7B shape
        config_for_params(1.3e10, gqa_ratio=4),
        config_for_params(2e9, n_experts=16, top_k=2, active=True),
        # what the planner picks: heads a multiple of 8 and 8 kv heads from 1e9 parameters
        config_for_params(7e9, rtol=0.05, **architecture_rules(7e9)),
        config_for_params(1.2e9, rtol=0.05, **architecture_rules(1.2e9)),
    ],
    ids=["llama7b", "mixtral", "13b-gqa", "moe", "planned-7b", "planned-1b"],
)
def test_full_size_counts_on_meta_device(cfg: GPTConfig) -> None:
    # the planner's configs are billions of parameters: build them without memory and count
    model = GPT(cfg, impl="torch", device="meta")
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("moe", [False, True])
def test_the_configs_matrices_and_vectors_are_the_models_parameters(moe):
    from pyscale.models.gpt import GPT

    extra = {"n_experts": 4, "top_k": 2} if moe else {}
    cfg = GPTConfig(n_layers=2, d_model=48, n_heads=4, n_kv_heads=2, vocab_size=100, seq_len=8, **extra)
    model = GPT(cfg, impl="torch")
    got = sorted(tuple(p.shape) for p in model.parameters())
    want = sorted([(m.out_features, m.in_features) for m in cfg.matrices() for _ in range(m.count)]
                  + [(v.size,) for v in cfg.vectors() for _ in range(v.count)])
    assert got == want
