"""pyscale.nn.MoE vs the per-expert Python loop: output and every gradient (input, router, expert weights)
by the DESIGN.md section 3 rule; skewed, empty-expert, one-token, top_k = E and capacity-overflow cases;
aux outputs; torch.compile(fullgraph=True); bad input."""

from __future__ import annotations

import pytest
import torch

import pyscale
from pyscale.nn import MoE, MoEAux
from pyscale.ops import moe_route
from pyscale.ops.moe_align import expert_capacity
from pyscale.reference import moe_layer as ref
from pyscale.testing.numerics import assert_within_reference_error


def _module(d, ff, e, k, dtype, seed=0, **kw):
    torch.manual_seed(seed)
    return MoE(d, ff, e, k, **kw).to(dtype)


def _compare(m: MoE, x: torch.Tensor, *, skew_expert: int | None = None):
    """Run the module, the loop in m's dtype and the loop in float64 (all on the module's routing), and
    assert the rule for out and grads of x, router, w_gate, w_up, w_down."""
    dtype = x.dtype
    if skew_expert is not None:  # a router that sends every token to one expert first
        with torch.no_grad():
            m.router.weight.zero_()
            m.router.weight[skew_expert] = x.float().mean(0).sign().to(dtype) * 4
    t = x.shape[0]
    cap = None if m.capacity_factor is None else expert_capacity(t, m.top_k, m.n_experts, m.capacity_factor)
    xs = x.detach().clone().requires_grad_(True)
    out, aux = m(xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    out.backward(g)
    mine = [out, xs.grad, m.router.weight.grad, m.w_gate.grad, m.w_up.grad, m.w_down.grad]
    # the module's routing decision (fp32 logits of the dtype-rounded inputs), shared by both loops
    with torch.no_grad():
        _, ids = moe_route(x.float() @ m.router.weight.float().T, m.top_k, scoring=m.scoring, renormalize=m.renormalize,
                           n_group=m.n_group, topk_group=m.topk_group)
    results = []
    for prec in (dtype, torch.float64):
        params = [p.detach().clone().to(prec).requires_grad_(True) for p in (x, m.router.weight, m.w_gate, m.w_up,
                                                                              m.w_down)]
        o, ids_used, _ = ref.moe_layer(*params, m.top_k, scoring=m.scoring, renormalize=m.renormalize,
                                       n_group=m.n_group, topk_group=m.topk_group, capacity=cap,
                                       route_dtype=torch.float32 if prec != torch.float64 else torch.float64,
                                       topk_ids=ids)
        o.backward(g.to(prec))
        results.append([o] + [p.grad for p in params])
    low, oracle = results
    names = ["out", "x", "router", "w_gate", "w_up", "w_down"]
    for i, (a, b, c) in enumerate(zip(mine, low, oracle)):
        assert_within_reference_error(names[i], a, b, c, gradient=i > 0)
    return aux, ids


CASES = [  # (tokens, d, ff, experts, top_k, dtype, extra)
    (48, 32, 64, 4, 2, torch.float32, {}),
    (48, 32, 64, 4, 2, torch.float16, {}),
    (33, 32, 48, 8, 2, torch.float16, {"scoring": "sigmoid", "n_group": 4, "topk_group": 2}),
    (20, 32, 64, 4, 4, torch.float16, {}),  # top_k = n_experts
    (1, 32, 64, 4, 2, torch.float32, {}),  # one token
    (40, 32, 64, 4, 2, torch.float16, {"capacity_factor": 0.5}),  # capacity overflow
    (24, 32, 64, 4, 2, torch.bfloat16, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v).removeprefix("torch.") for v in c[:6])
                         + ("-" + "-".join(f"{k}={v}" for k, v in c[6].items()) if c[6] else ""))
def test_moe_matches_per_expert_loop(case):
    t, d, ff, e, k, dtype, extra = case
    m = _module(d, ff, e, k, dtype, **extra)
    x = torch.randn(t, d, generator=torch.Generator().manual_seed(1)).to(dtype)
    aux, ids = _compare(m, x)
    assert isinstance(aux, MoEAux)
    counts = torch.bincount(ids.reshape(-1).long(), minlength=e)
    assert torch.equal(aux.tokens_per_expert.long(), counts)
    if "capacity_factor" in extra:
        cap = expert_capacity(t, k, e, extra["capacity_factor"])
        assert int(aux.dropped) == int((counts - counts.clamp(max=cap)).sum()) > 0
    else:
        assert int(aux.dropped) == 0


def test_skewed_load_and_empty_experts():
    m = _module(32, 64, 8, 1, torch.float16)
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(2)).abs().to(torch.float16)
    aux, ids = _compare(m, x, skew_expert=5)
    assert torch.all(ids == 5)
    assert aux.tokens_per_expert.tolist() == [0, 0, 0, 0, 0, 40, 0, 0]
    assert torch.all(m.w_gate.grad[[0, 1, 2, 3, 4, 6, 7]] == 0)


def test_aux_losses_backpropagate_to_router():
    m = _module(32, 64, 4, 2, torch.float32, aux_loss_coef=0.1, z_loss_coef=0.01)
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    _, aux = m(x)
    (aux.load_balancing_loss + aux.z_loss).backward()
    logits = (x @ m.router.weight.detach().T).requires_grad_(True)
    p = torch.softmax(logits, -1)
    f = aux.tokens_per_expert.float() / (16 * 2)
    expected = 0.1 * 4 * (f * p.mean(0)).sum() + 0.01 * torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(aux.load_balancing_loss + aux.z_loss, expected.detach(), rtol=1e-5, atol=1e-6)
    (g_logits,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(m.router.weight.grad, g_logits.T @ x, rtol=1e-4, atol=1e-6)
    assert m.w_gate.grad is None  # the aux losses do not touch the experts


def test_expert_bias_changes_selection_only():
    m = _module(32, 64, 4, 1, torch.float32, expert_bias=True, bias_update_rate=0.5)
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(4))
    _, aux = m(x)
    m.update_bias(aux.tokens_per_expert)
    assert m.expert_bias.abs().sum() > 0
    _, aux2 = m(x)
    # the most loaded expert gets less after its bias went down
    top = int(aux.tokens_per_expert.argmax())
    assert int(aux2.tokens_per_expert[top]) <= int(aux.tokens_per_expert[top])
    assert "expert_bias" in m.state_dict()


def test_leading_dims_and_dtype():
    m = _module(32, 64, 4, 2, torch.float16)
    x = torch.randn(2, 5, 32).half()
    out, _ = m(x)
    assert out.shape == (2, 5, 32) and out.dtype == torch.float16


def test_parameter_shapes():
    m = MoE(24, 40, 6, 2)
    assert m.router.weight.shape == (6, 24) and m.w_gate.shape == (6, 40, 24)
    assert m.w_up.shape == (6, 40, 24) and m.w_down.shape == (6, 24, 40)
    assert m.flops_per_token() == 2 * 24 * 6 + 2 * 2 * 3 * 24 * 40


@pytest.mark.parametrize("backend", [None, "reference"])
def test_torch_compile_fullgraph(backend):
    m = _module(32, 64, 4, 2, torch.float32)
    x = torch.randn(12, 32, generator=torch.Generator().manual_seed(5), requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")

    def run(fn):
        xs = x.detach().clone().requires_grad_(True)
        out, aux = fn(xs)
        (out.square().sum() + aux.load_balancing_loss + aux.z_loss).backward()
        grads = [xs.grad] + [p.grad.clone() for p in m.parameters()]
        m.zero_grad(set_to_none=True)
        return out.detach(), grads

    ctx = pyscale.backend(backend) if backend else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with ctx:
        out_c, grads_c = run(compiled)
        out_e, grads_e = run(m)
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        MoE(32, 64, 4, 5)
    with pytest.raises(ValueError, match="top_k"):
        MoE(32, 64, 4, 0)
    m = MoE(32, 64, 4, 2)
    with pytest.raises(ValueError, match="x must end in d_model"):
        m(torch.randn(3, 31))
    with torch.no_grad():
        m.router.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(torch.randn(3, 32))


# ops whose result the host must wait for on a GPU (a read of a device value or a data-dependent shape)
SYNCING_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
               "aten::unique", "aten::_unique2", "aten::repeat_interleave")


def test_default_path_never_reads_device_values():
    """Forward and backward of the default module (value checks on) run no op that would sync a GPU; the
    only host reads are the deferred checks' own (on CPU they read at once, inside their profiler label)."""
    from torch.profiler import ProfilerActivity, profile

    from pyscale.ops._deferred_check import READ_LABEL

    m = _module(32, 64, 4, 2, torch.float32, capacity_factor=1.0)
    x = torch.randn(24, 32, generator=torch.Generator().manual_seed(11), requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, aux = m(x)
        (out.square().sum() + aux.load_balancing_loss + aux.z_loss).backward()
    events = prof.events()
    assert any(e.name == "pyscale::grouped_gemm_backward" for e in events)  # the whole step was recorded

    def under_read(e):
        while e is not None:
            if e.name == READ_LABEL:
                return True
            e = e.cpu_parent
        return False

    syncs = [e.name for e in events if e.name.startswith(SYNCING_OPS) and not under_read(e)]
    assert syncs == []
    # the same profile does see a sync where there is one: the op-level check moe_route makes by default
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        moe_route(torch.randn(8, 4), 2)
    assert any(e.name.startswith(SYNCING_OPS) for e in prof.events())


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's max over a NaN row
def test_nan_tokens_with_checks_off_only_lose_themselves():
    """Checks off: a token with NaN input routes to no expert (its ids fall outside 0..E-1 and moe_align
    leaves them out), the other tokens come out as if it were not there, and nothing raises."""
    m = _module(32, 64, 4, 2, torch.float32, check_values=False)
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(12))
    bad = x.clone()
    bad[4] = float("nan")
    with torch.no_grad():
        out, _ = m(bad)
        clean, _ = m(torch.cat([x[:4], x[5:]]))
    torch.testing.assert_close(torch.cat([out[:4], out[5:]]), clean)
    m.check_values = True
    with pytest.raises(ValueError, match="NaN value"):
        m(bad)


@pytest.mark.gpu
def test_gpu_checks_are_deferred_not_synced():
    """On CUDA a NaN forward returns without syncing; the error comes once the device has caught up."""
    m = _module(64, 128, 8, 2, torch.bfloat16).cuda()
    x = torch.randn(256, 64, device="cuda", dtype=torch.bfloat16)
    m(x)  # warm up (allocations, autotune lookups)
    torch.cuda.synchronize()
    x[3] = float("nan")
    torch.cuda.set_sync_debug_mode("error")
    try:
        m(x)  # must not sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="NaN value"):
        m.check_pending_values()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"scoring": "softplus"}, ValueError, "scoring must be one of softmax, sigmoid"),
    ({"capacity_factor": 0.0}, ValueError, "capacity_factor must be > 0"),
    ({"capacity_factor": -1.5}, ValueError, "capacity_factor must be > 0"),
    ({"capacity_factor": float("inf")}, ValueError, "capacity_factor must be finite"),
    ({"capacity_factor": "1.25"}, TypeError, "capacity_factor must be a real number"),
    ({"n_group": 4}, ValueError, "n_group and topk_group go together"),
    ({"topk_group": 2}, ValueError, "n_group and topk_group go together"),
    ({"n_group": 3, "topk_group": 1}, ValueError, "n_group must divide n_experts = 8"),
    ({"n_group": 0, "topk_group": 1}, ValueError, "n_group must divide"),
    ({"n_group": 4, "topk_group": 5}, ValueError, "topk_group must lie in 1..n_group"),
    ({"n_group": 4, "topk_group": 0}, ValueError, "topk_group must lie in 1..n_group"),
    ({"n_group": 4.0, "topk_group": 2}, TypeError, "n_group must be an int"),
    ({"n_group": 8, "topk_group": 1}, ValueError, "top_k = 2 exceeds the experts of the kept groups"),
    ({"aux_loss_coef": float("nan")}, ValueError, "aux_loss_coef must be a finite number"),
    ({"z_loss_coef": -1.0}, ValueError, "z_loss_coef must be a finite number >= 0"),
    ({"bias_update_rate": float("inf")}, ValueError, "bias_update_rate must be a finite number"),
])
def test_constructor_validates_routing_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoE(32, 64, 8, 2, **kwargs)


@pytest.mark.parametrize("sizes,error,match", [((0, 64, 8, 2), ValueError, "d_model must be >= 1"),
                                               ((32, 0, 8, 2), ValueError, "d_ff must be >= 1"),
                                               ((32, 64, 0, 1), ValueError, "n_experts must be >= 1"),
                                               ((32, 64, 8, 2.0), TypeError, "top_k must be an int"),
                                               ((32, 64, 8, True), TypeError, "top_k must be an int")])
def test_constructor_validates_sizes(sizes, error, match):
    with pytest.raises(error, match=match):
        MoE(*sizes)


def test_valid_routing_options_construct():
    m = MoE(32, 64, 8, 4, scoring="sigmoid", n_group=4, topk_group=2, capacity_factor=1.1, z_loss_coef=0.0)
    assert m.capacity_factor == 1.1 and m.n_group == 4
    with pytest.raises(AttributeError):
        m.capacity_factor = 2.0  # fixed at construction (validated; a constant for torch.compile)


def test_update_bias_checks_tokens_per_expert():
    m = MoE(32, 64, 4, 1, expert_bias=True)
    with pytest.raises(ValueError, match="tokens_per_expert must have n_experts = 4 entries: got 5"):
        m.update_bias(torch.ones(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="tokens_per_expert must be 1-D"):
        m.update_bias(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="tokens_per_expert must have n_experts"):
        MoE(32, 64, 4, 1).update_bias(torch.ones(3))  # checked even without a bias to update
    assert m.expert_bias.abs().sum() == 0  # nothing was half-applied
    m.update_bias(torch.tensor([4, 0, 0, 0], dtype=torch.int32))
    assert m.expert_bias[0] < 0 < m.expert_bias[1]


def test_exact_capacity_under_compile():
    """capacity 0.56 · 100 · 1 / 4 = 14 exactly, eager and compiled (float arithmetic says 14.000000000000002,
    so 15; under torch.compile the factor is a constant)."""
    m = _module(16, 32, 4, 1, torch.float32, capacity_factor=0.56)
    with torch.no_grad():  # every token to expert 2 first
        m.router.weight.zero_()
        m.router.weight[2] = 1.0
    x = torch.rand(100, 16, generator=torch.Generator().manual_seed(6)) + 0.1
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out_e, aux_e = m(x)
        out_c, aux_c = compiled(x)
    assert int(aux_e.dropped) == int(aux_c.dropped) == 100 - 14
    torch.testing.assert_close(out_c, out_e)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,d,ff,e,k", [(2048, 1024, 512, 64, 8), (1024, 512, 1792, 8, 2)])
def test_moe_gpu(dtype, t, d, ff, e, k):
    m = _module(d, ff, e, k, dtype).cuda()
    x = torch.randn(t, d, device="cuda").to(dtype)
    out, aux = m(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert int(aux.tokens_per_expert.sum()) == t * k


@pytest.mark.gpu
@pytest.mark.slow
def test_moe_gpu_more_than_2_31_elements():
    """x with more than 2**31 elements: int64 offsets everywhere. Routing is per token, so the first tokens'
    outputs must equal those of a small run on those tokens alone."""
    t, d = 2**31 // 2048 + 4099, 2048
    m = _module(d, 256, 8, 2, torch.bfloat16).cuda()
    x = torch.randn(t, d, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out, aux = m(x)
        head = 513
        small, _ = m(x[:head].clone())
        tail, _ = m(x[-head:].clone())
    assert int(aux.tokens_per_expert.sum()) == t * 2
    torch.testing.assert_close(out[:head], small)
    torch.testing.assert_close(out[-head:], tail)
