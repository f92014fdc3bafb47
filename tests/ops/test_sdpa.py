"""pyscale.ops.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention:
(B, H, S, D) layout, top-left `is_causal` on Sq != Sk both ways, GQA, scale, forward and backward, by the
DESIGN section 3 rule (error against a float64 oracle within 2x / 3x SDPA's own fp32 error plus a floor);
unsupported arguments raise naming themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyscale.ops import scaled_dot_product_attention as sdpa

ULPS = 4


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _close(name: str, got: torch.Tensor, lowp: torch.Tensor, oracle: torch.Tensor, factor: float,
           magnitude: float) -> None:
    # The floor scales with the problem's magnitude: a gradient that is exactly 0 in the oracle (one key
    # visible: softmax is constant) still carries the rounding of do.v - do.o in any fused kernel.
    floor = ULPS * torch.finfo(got.dtype).eps * magnitude
    bound = factor * _err(lowp, oracle) + floor
    assert _err(got, oracle) <= bound, f"{name}: error {_err(got, oracle):.3g} > bound {bound:.3g}"


CASES = [  # (batch, heads_q, heads_kv, seq_q, seq_k, head_dim)
    pytest.param(2, 4, 4, 17, 17, 32, id="square17"),
    pytest.param(1, 4, 4, 17, 113, 16, id="sq<sk"),
    pytest.param(1, 2, 2, 113, 17, 16, id="sq>sk"),
    pytest.param(1, 6, 2, 17, 33, 16, id="gqa6:2"),
    pytest.param(2, 2, 2, 1, 17, 16, id="sq1"),
    pytest.param(1, 8, 1, 17, 1, 16, id="sk1-mqa8:1"),
]


@pytest.mark.parametrize("b,hq,hkv,sq,sk,d", CASES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_torch_sdpa_forward_and_backward(b, hq, hkv, sq, sk, d, causal):
    gen = torch.Generator().manual_seed(sq * 7 + sk)
    q, k, v = (torch.randn(b, h, s, d, generator=gen) for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    do = torch.randn(b, hq, sq, d, generator=gen)
    gqa = hq != hkv

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves, is_causal=causal, enable_gqa=gqa)
        return out, torch.autograd.grad(out, leaves, do.to(dtype))

    ours, ours_g = run(sdpa, torch.float32)
    lowp, lowp_g = run(F.scaled_dot_product_attention, torch.float32)
    oracle, oracle_g = run(F.scaled_dot_product_attention, torch.float64)
    assert ours.shape == (b, hq, sq, d)
    magnitude = max(t.abs().max().item() for t in (oracle, *oracle_g))
    _close("out", ours, lowp, oracle, 2, magnitude)
    for name, g, lg, og in zip(("dq", "dk", "dv"), ours_g, lowp_g, oracle_g):
        _close(name, g, lg, og, 3, magnitude)


def test_scale_and_three_dim_inputs():
    gen = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(3, 9, 16, generator=gen), torch.randn(3, 12, 16, generator=gen), \
        torch.randn(3, 12, 16, generator=gen)
    for causal in (False, True):
        got = sdpa(q, k, v, is_causal=causal, scale=0.3)
        want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, scale=0.3)
        assert got.shape == (3, 9, 16) and _err(got, want) < 1e-5
    extra = torch.randn(2, 3, 2, 9, 16, generator=gen)  # two batch dimensions
    assert _err(sdpa(extra, extra, extra, is_causal=True),
                F.scaled_dot_product_attention(extra.double(), extra.double(), extra.double(), is_causal=True)) < 1e-5


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"attn_mask": torch.ones(5, 7, dtype=torch.bool)}, ValueError, "^attn_mask is not supported"),
    ({"dropout_p": 0.1}, ValueError, "^dropout_p must be 0.0"),
    ({"key": torch.zeros(1, 2, 7, 16), "value": torch.zeros(1, 2, 7, 16)}, ValueError, "pass enable_gqa=True"),
    ({"key": torch.zeros(1, 3, 7, 16), "value": torch.zeros(1, 3, 7, 16), "enable_gqa": True}, ValueError,
     "must be a multiple of key/value heads"),
    ({"value": torch.zeros(1, 4, 7, 32)}, ValueError, "^value must have the shape of key"),
    ({"key": torch.zeros(2, 4, 7, 16), "value": torch.zeros(2, 4, 7, 16)}, ValueError,
     "^key must have the batch dimensions of query"),
    ({"query": torch.zeros(5, 16)}, ValueError, "^query must be"),
    ({"key": torch.zeros(1, 4, 7, 16, dtype=torch.float16)}, TypeError, "^key must have the dtype of query"),
    ({"key": torch.zeros(1, 4, 7, 8)}, ValueError, "^key must have the head_dim of query"),
])
def test_bad_arguments_name_themselves(kwargs, exc, match):
    args = {"query": torch.zeros(1, 4, 5, 16), "key": torch.zeros(1, 4, 7, 16), "value": torch.zeros(1, 4, 7, 16)}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sdpa(**args)
