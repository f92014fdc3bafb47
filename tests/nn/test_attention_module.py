"""pyscale.nn.Attention: parameters, rotary, agreement with a hand-built reference, torch.compile."""

from __future__ import annotations

import pytest
import torch

import pyscale
from pyscale.nn import Attention
from pyscale.nn.attention import apply_rotary, rotary_cos_sin
from pyscale.reference import attention as ref


def _manual(m: Attention, x: torch.Tensor) -> torch.Tensor:
    """Projections + rotary (rotate-half) + float64 reference attention, written independently."""
    b, s, _ = x.shape
    x = x.double()
    q = (x @ m.q_proj.weight.double().T).view(b, s, m.n_heads, m.head_dim)
    k = (x @ m.k_proj.weight.double().T).view(b, s, m.n_kv_heads, m.head_dim)
    v = (x @ m.v_proj.weight.double().T).view(b, s, m.n_kv_heads, m.head_dim)
    half = m.head_dim // 2
    freqs = m.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / m.head_dim)
    ang = torch.arange(s, dtype=torch.float64)[:, None] * freqs  # (s, half)
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rot(t):
        a, c = t[..., :half], t[..., half:]
        return torch.cat((a * cos - c * sin, c * cos + a * sin), dim=-1)

    left, right = (-1, -1) if m.window is None else m.window
    out, _ = ref.attention(rot(q), rot(k), v, causal=m.causal, window_left=left, window_right=right)
    return out.reshape(b, s, -1) @ m.o_proj.weight.double().T


def test_parameters_and_shapes():
    m = Attention(64, 8, 2, head_dim=16)
    n = sum(p.numel() for p in m.parameters())
    assert n == 64 * 16 * (2 * 8 + 2 * 2)
    assert all(mod.bias is None for mod in (m.q_proj, m.k_proj, m.v_proj, m.o_proj))
    assert m(torch.randn(2, 5, 64)).shape == (2, 5, 64)
    assert set(m.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}


@pytest.mark.parametrize("kwargs", [{}, {"causal": False}, {"window": (3, 0)}], ids=["causal", "full", "window"])
def test_matches_manual_reference(kwargs):
    torch.manual_seed(0)
    m = Attention(48, 6, 2, **kwargs)
    x = torch.randn(2, 21, 48)
    got = m(x)  # Triton interpreter on CPU in CI
    assert (got.double() - _manual(m, x)).abs().max().item() < 1e-5


def test_matches_the_built_in_models_torch_attention():
    """Same parameters, same math as models.gpt.TorchAttention (SDPA): drop-in for the built-in model."""
    gpt = pytest.importorskip("pyscale.models.gpt")
    torch.manual_seed(4)
    ours = Attention(64, 8, 2, head_dim=16)
    theirs = gpt.TorchAttention(64, 8, 2, head_dim=16)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 33, 64)
    assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq, pk):
        cq, sq = rotary_cos_sin(torch.tensor([pq]), 32)
        ck, sk = rotary_cos_sin(torch.tensor([pk]), 32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert abs(score(7, 3) - score(104, 100)) < 1e-4
    assert abs(score(7, 3) - score(3, 7)) > 1e-3  # and the rotation is not trivial


def test_gradients_match_reference_backend():
    torch.manual_seed(2)
    m = Attention(32, 4, 1)
    x = torch.randn(1, 19, 32, requires_grad=True)
    m(x).square().sum().backward()
    grads = [x.grad.clone(), *(p.grad.clone() for p in m.parameters())]
    x.grad = None
    m.zero_grad()
    with pyscale.backend("reference"):
        m(x).square().sum().backward()
    for a, b in zip(grads, [x.grad, *(p.grad for p in m.parameters())]):
        assert (a - b).abs().max().item() < 1e-4 * (1 + b.abs().max().item())


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(3)
    m = Attention(32, 4, 2)
    x = torch.randn(2, 12, 32, requires_grad=True)
    with pyscale.backend("reference"):
        eager = m(x)
        eager.sum().backward()
        g_eager = x.grad.clone()
        x.grad = None
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager")  # raises on any graph break
        out = compiled(x)
        out.sum().backward()
    assert (out - eager).abs().max().item() < 1e-5
    assert (x.grad - g_eager).abs().max().item() < 1e-5


@pytest.mark.parametrize("args,kwargs,match", [
    ((64, 6, 4), {}, "n_heads must be a positive multiple of n_kv_heads"),
    ((60, 8, 8), {}, "d_model must be divisible by n_heads"),
    ((64, 4, 4), {"head_dim": 15}, "head_dim must be even"),
])
def test_bad_configuration(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attention(*args, **kwargs)
