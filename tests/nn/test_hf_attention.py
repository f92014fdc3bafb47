"""pyscale.nn.hf_attention: pyscale's attention as a transformers attention function, padded batches
routed through attention_varlen. The transformers test runs only where transformers is installed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pyscale.nn.hf_attention import hf_attention_forward

CAUSAL = SimpleNamespace(is_causal=True)


def _padded(lengths, seq, left=True):
    mask = torch.zeros(len(lengths), seq, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left:
            mask[b, seq - n:] = True
        else:
            mask[b, :n] = True
    return mask


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padded_prefill_matches_sdpa_per_sequence(left):
    gen = torch.Generator().manual_seed(0)
    lengths, seq = [17, 9, 1], 17
    q = torch.randn(3, 4, seq, 16, generator=gen, requires_grad=True)
    k = torch.randn(3, 2, seq, 16, generator=gen, requires_grad=True)
    v = torch.randn(3, 2, seq, 16, generator=gen, requires_grad=True)
    mask = _padded(lengths, seq, left)
    out, weights = hf_attention_forward(CAUSAL, q, k, v, mask, scaling=0.25)
    assert weights is None and out.shape == (3, seq, 4, 16)
    for b in range(3):
        rows = mask[b]
        want = F.scaled_dot_product_attention(q[b:b + 1, :, rows].double(), k[b:b + 1, :, rows].double(),
                                              v[b:b + 1, :, rows].double(), is_causal=True, scale=0.25,
                                              enable_gqa=True)
        assert (out[b, rows] - want[0].transpose(0, 1)).abs().max() < 1e-5
        assert torch.equal(out[b, ~rows], torch.zeros_like(out[b, ~rows]))  # padded query rows are 0
    out.square().sum().backward()
    for t in (k, v):  # pad keys get no gradient: nothing attended to them
        assert torch.equal(t.grad.transpose(1, 2)[~mask], torch.zeros_like(t.grad.transpose(1, 2)[~mask]))


def test_decode_step_with_left_padding_sees_only_real_keys():
    gen = torch.Generator().manual_seed(1)
    lengths, seq = [12, 5], 12
    q = torch.randn(2, 4, 1, 16, generator=gen)
    k, v = torch.randn(2, 4, seq, 16, generator=gen), torch.randn(2, 4, seq, 16, generator=gen)
    mask = _padded(lengths, seq)
    out, _ = hf_attention_forward(CAUSAL, q, k, v, mask)
    for b in range(2):
        rows = mask[b]
        want = F.scaled_dot_product_attention(q[b:b + 1].double(), k[b:b + 1, :, rows].double(),
                                              v[b:b + 1, :, rows].double())
        assert (out[b] - want[0].transpose(0, 1)).abs().max() < 1e-5
    # without the mask, the short sequence would attend to its pad keys too
    unmasked, _ = hf_attention_forward(CAUSAL, q, k, v, None)
    assert (unmasked[1] - out[1]).abs().max() > 1e-2


def test_bad_mask_and_dropout_raise():
    x = torch.zeros(1, 2, 4, 16)
    with pytest.raises(ValueError, match="attention_mask must be the"):
        hf_attention_forward(CAUSAL, x, x, x, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout must be 0"):
        hf_attention_forward(CAUSAL, x, x, x, None, dropout=0.1)


def test_transformers_llama_with_padding_matches_eager():
    transformers = pytest.importorskip("transformers")
    from pyscale.nn.hf_attention import register_hf_attention

    name = register_hf_attention()
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 101, (2, 13))
    mask = _padded([13, 6], 13).long()  # left padding, as for generation
    with torch.no_grad():
        model.set_attn_implementation("eager")
        want = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation(name)
        got = model(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() < 1e-4
        # The pitfall: an attention function registered without a mask function receives attention_mask=None,
        # so the padded sequence attends to its pad tokens.
        transformers.AttentionInterface.register("pyscale_without_mask", hf_attention_forward)
        model.set_attn_implementation("pyscale_without_mask")
        wrong = model(input_ids=ids, attention_mask=mask).logits
        assert (wrong[1][real[1]] - want[1][real[1]]).abs().max() > 1e-3
