"""quantize_model on the layers real models have: GPT-2's Conv1D (weight stored (in, out)), tied weights,
nn.Linear subclasses; the summary of what was converted and skipped; Hugging Face GPT-2 and Llama built
from configs (skipped when transformers is not installed).

SQNR floors of the logits against the unquantised model, set below what was measured (transformers
5.25.0, 2-layer models, d_model 64, random initialisation): GPT-2 int8 41.9 dB, fp8-row 29.9 dB,
w4a16-g32 21.8 dB; Llama w4a16-g32 16.2 dB (untied) and 18.6 dB (tied).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pyscale
from pyscale.nn import QATLinear, QuantLinear, quantize_model
from pyscale.testing.numerics import gpu_like_casts, sqnr_db  # noqa: F401

pytestmark = pytest.mark.usefixtures("gpu_like_casts")


class Conv1D(nn.Module):
    """GPT-2's linear as transformers defines it: y = x @ weight + bias, weight (in_features, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.05)
        self.bias = nn.Parameter(torch.randn(nf) * 0.05)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class TiedLM(nn.Module):
    def __init__(self, vocab=96, d=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = Conv1D(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.proj(self.embed(ids))))


@pytest.mark.parametrize("scheme", ["int8", "w4a16-g32"])
def test_conv1d_style_layer_is_quantised_like_its_linear(scheme):
    torch.manual_seed(0)
    conv = Conv1D(48, 64)
    x = torch.randn(3, 5, 64)
    q = QuantLinear.from_linear(conv, scheme)
    assert (q.in_features, q.out_features) == (64, 48)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    assert torch.equal(q(x), QuantLinear.from_linear(lin, scheme)(x))
    assert sqnr_db(conv(x), q(x)) >= 18.0
    assert QATLinear.from_linear(conv, "int4-g32").weight.shape == (48, 64)


def test_unsupported_layer_is_refused_with_its_type():
    with pytest.raises(ValueError, match=r"^linear must be an nn.Linear or a Conv1D-style linear .*: got "
                                         r"torch.nn.modules.conv.Conv1d"):
        QuantLinear.from_linear(nn.Conv1d(4, 4, 1), "int8")


def test_tied_weight_is_kept_and_reported():
    torch.manual_seed(1)
    model = TiedLM()
    ids = torch.randint(0, 96, (2, 7))
    before = model(ids)
    with pytest.warns(UserWarning, match=r"skipped 1 layer\(s\) the filter did not exclude: head: weight tied to "
                                         r"embed.weight"):
        out = quantize_model(model, "int8")
    assert out is model and isinstance(model.proj, QuantLinear) and type(model.head) is nn.Linear
    assert model.head.weight is model.embed.weight  # the tie holds
    summary = model.quantization_summary
    assert [d.name for d in summary.converted] == ["proj"]
    assert [(d.name, d.kind) for d in summary.skipped] == [("head", "Linear")]
    assert "skipped   head [Linear 64 -> 96]: weight tied to embed.weight" in str(summary)
    assert sqnr_db(before, model(ids)) >= 30.0


def test_summary_reports_filter_and_subclasses_and_warns_only_for_the_unexpected():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(64, 32), MyLinear(32, 32), nn.Linear(32, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the filter's own exclusions are no surprise: no warning
        quantize_model(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 8)), "int8",
                       filter=lambda name, mod: mod.out_features != 8)
    with pytest.warns(UserWarning, match="1: an nn.Linear subclass"):
        quantize_model(model, "int8", filter=lambda name, mod: name != "2")
    s = model.quantization_summary
    assert [d.name for d in s.converted] == ["0"]
    assert [(d.name, d.reason.split(":")[0]) for d in s.skipped] == [("1", "an nn.Linear subclass"),
                                                                     ("2", "excluded by the filter")]
    assert [d.name for d in s.unexpected] == ["1"]


def test_a_module_used_twice_is_replaced_everywhere_by_one_layer():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    quantize_model(model, "int8")
    assert isinstance(model[0], QuantLinear) and model[0] is model[2]
    assert len(model.quantization_summary.converted) == 1


def test_a_linear_model_is_returned_converted():
    out = quantize_model(nn.Linear(64, 16), "fp8-row")
    assert isinstance(out, QuantLinear) and [d.name for d in out.quantization_summary.converted] == [""]


# ----------------------------------------------------------------------------- Hugging Face models
# These test the integration, on the reference backend (fast); the kernels are tested op by op.

def _gpt2(transformers):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(2)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("scheme,floor", [("int8", 35.0), ("w4a16-g32", 16.0), ("fp8-row", 25.0)])
def test_hf_gpt2_conv1d_layers_and_tied_head(scheme, floor):
    transformers = pytest.importorskip("transformers")
    model = _gpt2(transformers)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(ids).logits
    with pytest.warns(UserWarning, match="lm_head: weight tied to transformer.wte.weight"), \
            pyscale.backend("reference"):
        quantize_model(model, scheme)
    summary = model.quantization_summary
    assert len(summary.converted) == 8 and all(d.kind.startswith("Conv1D") for d in summary.converted)
    assert [d.name for d in summary.skipped] == ["lm_head"]
    with torch.no_grad(), pyscale.backend("reference"):
        assert sqnr_db(before, model(ids).logits) >= floor
        model.tie_weights()  # what from_pretrained and resize_token_embeddings call: the next call still works
        assert model.lm_head.weight is model.transformer.wte.weight
        assert sqnr_db(before, model(ids).logits) >= floor
        assert model.generate(ids[:, :3], max_new_tokens=2, do_sample=False).shape == (2, 5)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_llama(tied):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(4)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(ids).logits
    with warnings.catch_warnings(record=True) as caught, pyscale.backend("reference"):
        warnings.simplefilter("always")
        quantize_model(model, "w4a16-g32")
    summary = model.quantization_summary
    assert len(summary.converted) == (14 if tied else 15)
    assert [d.name for d in summary.skipped] == (["lm_head"] if tied else [])
    assert any("lm_head: weight tied" in str(w.message) for w in caught) == tied
    with torch.no_grad(), pyscale.backend("reference"):
        assert sqnr_db(before, model(ids).logits) >= 12.0
