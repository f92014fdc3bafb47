"""grouped_gemm: forward and gradients vs a per-expert loop by the DESIGN.md section 3 rule; layouts with
skewed loads, empty experts, dropped slots, one token, top-1 to top-8 and up to 256 experts; work sized to
the real routing (nothing past n_pad is read); the split weight gradient (deterministic, independent of
other experts' loads); opcheck; bad input."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import pyscale
from pyscale.ops import grouped_gemm, moe_align
from pyscale.testing.numerics import assert_within_reference_error


def _routing(t, k, e, seed, skew=False):
    g = torch.Generator().manual_seed(seed)
    if skew:
        ids = torch.zeros(t, k, dtype=torch.int32)
        ids[:, 1:] = torch.arange(1, k, dtype=torch.int32)  # every token to experts 0..k-1, the rest empty
        return ids
    return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32).reshape(t, k)


def _loop(a, w, w2, al, gather, activation):
    """Per-expert loop over the slots of each expert's segment, op by op in the dtype of the inputs
    (differentiable); one output row per slot, zeros for dropped slots."""
    n, slots = w.shape[1], al.slot_pos.shape[0]
    out = torch.zeros(slots, n, dtype=a.dtype)
    for e in range(w.shape[0]):
        lo, hi = int(al.offsets[e]), int(al.offsets[e + 1])
        sid = al.sorted_ids[lo:hi].long()
        sid = sid[sid < slots]
        if sid.numel() == 0:
            continue
        src = a[sid // al.top_k] if gather else a[sid]
        h = src @ w[e].T
        if activation == "swiglu":
            h = F.silu(h) * (src @ w2[e].T)
        out = out.index_copy(0, sid, h)
    return out


def _errors(dtype, tensors, run):
    """Errors of run(*tensors in dtype) [pyscale] and of the loop in dtype vs the float64 loop, for the
    output and every gradient."""
    g = torch.Generator().manual_seed(7)
    low = [x.detach().clone().to(dtype).requires_grad_(True) for x in tensors]
    ref = [x.detach().clone().to(dtype).requires_grad_(True) for x in tensors]
    hi = [x.double().requires_grad_(True) for x in tensors]
    out = run(low, "pyscale")
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    r_out = run(ref, "loop")
    r_out.backward(grad)
    o_out = run(hi, "loop")
    o_out.backward(grad.double())
    results = [(out, r_out, o_out)] + [(a.grad, b.grad, c.grad) for a, b, c in zip(low, ref, hi)]
    return results


def _assert_rule(results):
    """results from `_errors`: the output first, then the gradients of the inputs."""
    for i, (mine, ref, oracle) in enumerate(results):
        assert_within_reference_error("out" if i == 0 else f"grad {i - 1}", mine, ref, oracle, gradient=i > 0)


CASES = [  # (dtype, activation, gather, skew, capacity_factor)
    (torch.float32, "swiglu", True, False, None),
    (torch.float32, "none", False, False, None),
    (torch.float16, "swiglu", True, False, None),
    (torch.float16, "none", True, True, None),
    (torch.float16, "none", False, False, 0.5),
    (torch.bfloat16, "swiglu", True, False, None),
    (torch.float16, "swiglu", True, True, 0.75),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).removeprefix("torch.") for x in c))
def test_grouped_gemm_vs_loop(case):
    dtype, activation, gather, skew, cf = case
    t, k, e, kdim, n = 29, 2, 4, 48, 40
    ids = _routing(t, k, e, seed=1, skew=skew)
    al = moe_align(ids, e, 16, capacity_factor=cf)
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(t if gather else t * k, kdim, generator=gen)
    w = torch.randn(e, n, kdim, generator=gen) / kdim**0.5
    w2 = torch.randn(e, n, kdim, generator=gen) / kdim**0.5
    tensors = [a, w, w2] if activation == "swiglu" else [a, w]

    def run(ts, which):
        aa, ww = ts[0], ts[1]
        ww2 = ts[2] if activation == "swiglu" else None
        act = None if activation == "none" else activation
        if which == "pyscale":
            return grouped_gemm(aa, ww, al, gather=gather, w2=ww2, activation=act)
        return _loop(aa, ww, ww2, al, gather, activation)

    results = _errors(dtype, tensors, run)
    out = results[0][0]
    assert out.shape == (t * k, n)  # one row per slot: nothing allocated for padding
    dropped = al.slot_pos < 0
    assert torch.all(out[dropped] == 0)  # dropped slots are exactly zero
    if not gather:  # and get no gradient
        assert torch.all(results[1][0][dropped] == 0)
    assert dropped.any() == (cf is not None)
    _assert_rule(results)


def test_inference_skips_preactivations():
    ids = _routing(13, 2, 4, seed=6)
    al = moe_align(ids, 4, 16)
    a, w, w2 = torch.randn(13, 32), torch.randn(4, 48, 32), torch.randn(4, 48, 32)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    out_train, preact = torch.ops.pyscale.grouped_gemm(a, w, w2, *lay, 2, 16, "swiglu", True)
    out_infer, none = torch.ops.pyscale.grouped_gemm(a, w, w2, *lay, 2, 16, "swiglu", False)
    assert preact.shape == (13 * 2, 96) and none.numel() == 0
    assert torch.equal(out_train, out_infer)
    with torch.no_grad():
        assert torch.equal(grouped_gemm(a, w, al, gather=True, w2=w2, activation="swiglu"), out_train)


def test_empty_experts_get_zero_weight_gradient():
    ids = torch.zeros(9, 1, dtype=torch.int32)  # experts 1..3 empty
    al = moe_align(ids, 4, 16)
    a = torch.randn(9, 32, requires_grad=True)
    w = torch.randn(4, 32, 32, requires_grad=True)
    grouped_gemm(a, w, al, gather=True).sum().backward()
    assert torch.all(w.grad[1:] == 0) and w.grad[0].abs().sum() > 0


def test_reference_backend_agrees():
    ids = _routing(17, 2, 4, seed=3)
    al = moe_align(ids, 4, 16)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(17, 32, generator=gen), torch.randn(4, 48, 32, generator=gen),
              torch.randn(4, 48, 32, generator=gen)]
    grad = torch.randn(17 * 2, 48, generator=gen)
    results = []
    for backend in (None, "reference"):
        ts = [x.clone().requires_grad_(True) for x in inputs]
        with pyscale.backend(backend) if backend else contextlib.nullcontext():
            out = grouped_gemm(ts[0], ts[1], al, gather=True, w2=ts[2], activation="swiglu")
            out.backward(grad)
        results.append([out.detach()] + [x.grad for x in ts])
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_opcheck():
    ids = _routing(11, 2, 4, seed=4)
    al = moe_align(ids, 4, 16)
    a = torch.randn(11, 32, requires_grad=True)
    w = torch.randn(4, 32, 32, requires_grad=True)
    w2 = torch.randn(4, 32, 32, requires_grad=True)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    op = torch.ops.pyscale.grouped_gemm.default
    torch.library.opcheck(op, (a, w, w2, *lay, 2, 16, "swiglu", True))
    torch.library.opcheck(op, (torch.randn(22, 32, requires_grad=True), w, None, *lay, 0, 16, "none", False))
    out, preact = op(a.detach(), w.detach(), w2.detach(), *lay, 2, 16, "swiglu", True)
    torch.library.opcheck(torch.ops.pyscale.grouped_gemm_backward.default,
                          (torch.randn_like(out), a.detach(), w.detach(), w2.detach(), preact, *lay, 2, 16, "swiglu"))


def test_bad_inputs():
    ids = _routing(8, 2, 4, seed=5)
    al = moe_align(ids, 4, 16)
    a, w = torch.randn(8, 32), torch.randn(4, 16, 32)
    with pytest.raises(ValueError, match="a must have K"):
        grouped_gemm(torch.randn(8, 31), w, al, gather=True)
    with pytest.raises(ValueError, match="one matrix per expert"):
        grouped_gemm(a, torch.randn(3, 16, 32), al, gather=True)
    with pytest.raises(ValueError, match="one row per token"):
        grouped_gemm(torch.randn(9, 32), w, al, gather=True)
    with pytest.raises(ValueError, match="one row per slot"):
        grouped_gemm(a, w, al)
    with pytest.raises(ValueError, match="w2"):
        grouped_gemm(a, w, al, gather=True, activation="swiglu")
    with pytest.raises(ValueError, match="activation"):
        grouped_gemm(a, w, al, gather=True, activation="gelu")
    with pytest.raises(TypeError, match="w must have the dtype of a"):
        grouped_gemm(a, w.half(), al, gather=True)
    with pytest.raises(ValueError, match="power of two"):
        grouped_gemm(a, w, moe_align(ids, 4, 24), gather=True)
    with pytest.raises(TypeError, match="alignment"):
        grouped_gemm(a, w, tuple(al), gather=True)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,k,e,d,ff", [(4096, 8, 128, 2048, 768), (4096, 2, 8, 1024, 3584), (1, 1, 8, 256, 512)])
def test_grouped_gemm_gpu(dtype, t, k, e, d, ff):
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32).cuda()
    al = moe_align(ids, e, 64)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(t, d, generator=gen)
    w = torch.randn(e, ff, d, generator=gen) / d**0.5
    w2 = torch.randn(e, ff, d, generator=gen) / d**0.5

    def run(ts, which):
        ts = [x.cuda() for x in ts]
        if which == "pyscale":
            return grouped_gemm(ts[0], ts[1], al, gather=True, w2=ts[2], activation="swiglu").cpu()
        al_cpu = al._replace(**{f: getattr(al, f).cpu() for f in ("sorted_ids", "expert_ids", "n_pad", "slot_pos",
                                                                   "offsets", "tokens_per_expert", "dropped",
                                                                   "invalid_ids")})
        return _loop(*[x.cpu() for x in ts], al_cpu, True, "swiglu")

    _assert_rule(_errors(dtype, [a, w, w2], run))


SHAPES = [  # (tokens, top_k, experts, K, N): one token, top-1 to top-8, up to 256 experts, sizes off the tiles
    (1, 1, 4, 40, 24),
    (1, 8, 256, 24, 40),
    (6, 8, 16, 17, 33),
    (9, 3, 8, 72, 65),
    (12, 1, 2, 33, 16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "t{}-k{}-e{}-K{}-N{}".format(*s))
def test_routing_shapes_vs_loop(shape):
    t, k, e, kdim, n = shape
    ids = _routing(t, k, e, seed=8)
    al = moe_align(ids, e, 16)
    gen = torch.Generator().manual_seed(9)
    tensors = [torch.randn(t, kdim, generator=gen), torch.randn(e, n, kdim, generator=gen) / kdim**0.5,
               torch.randn(e, n, kdim, generator=gen) / kdim**0.5]

    def run(ts, which):
        if which == "pyscale":
            return grouped_gemm(ts[0], ts[1], al, gather=True, w2=ts[2], activation="swiglu")
        return _loop(ts[0], ts[1], ts[2], al, True, "swiglu")

    results = _errors(torch.float32, tensors, run)
    _assert_rule(results)
    used = torch.zeros(e, dtype=torch.bool)
    used[ids.reshape(-1).long()] = True
    assert torch.all(results[2][0][~used] == 0)  # experts nobody routed to get a zero weight gradient


def _poisoned(al):
    """The layout with every row past n_pad pointing at slot 0 and every block past it at expert 0: a kernel
    that read past the real padded length would compute and store slot 0 from the wrong rows."""
    n_pad = int(al.n_pad)
    sorted_ids, expert_ids = al.sorted_ids.clone(), al.expert_ids.clone()
    sorted_ids[n_pad:] = 0
    expert_ids[n_pad // al.block_size:] = 0
    return al._replace(sorted_ids=sorted_ids, expert_ids=expert_ids)


@pytest.mark.parametrize("gather", [True, False])
def test_nothing_past_n_pad_is_read(gather):
    e, t, k = 8, 10, 2
    ids = torch.stack([torch.tensor([7, 6 - (i % 3)]) for i in range(t)]).to(torch.int32)  # slot 0 -> expert 7
    al = moe_align(ids, e, 16)
    assert int(al.n_pad) < al.sorted_ids.shape[0] // 2  # most of the upper bound is past the real length
    gen = torch.Generator().manual_seed(10)
    a = torch.randn(t if gather else t * k, 24, generator=gen)
    w, w2 = torch.randn(e, 40, 24, generator=gen), torch.randn(e, 40, 24, generator=gen)
    grad = torch.randn(t * k, 40, generator=gen)
    results = []
    for layout in (al, _poisoned(al)):
        ts = [x.clone().requires_grad_(True) for x in (a, w, w2)]
        out = grouped_gemm(ts[0], ts[1], layout, gather=gather, w2=ts[2], activation="swiglu")
        out.backward(grad)
        results.append([out.detach()] + [x.grad for x in ts])
    for clean, poisoned in zip(*results):
        assert torch.equal(clean, poisoned)


def _dw(al, grad, x, splits, gather=True):
    """dW of a plain grouped GEMM through the kernel launcher with a given number of row splits."""
    from pyscale.kernels import grouped_gemm as kern
    from pyscale.ops.grouped_gemm import default_config, tuning_key

    key = tuning_key("dw", kern.MODE_PLAIN, x.dtype, x.device, grad.shape[1], x.shape[1], al.n_experts,
                     al.slot_pos.shape[0], al.top_k, al.block_size)
    cfg = {**default_config(key, True), "SPLITS": splits}
    dw, _ = kern.dw_outputs(al.n_experts, grad.shape[1], x.shape[1], x.dtype, x.device, kern.MODE_PLAIN)
    kern.launch_dw(grad, None, x, dw, None, al.sorted_ids, al.offsets, x_div=al.top_k if gather else 1,
                   mode=kern.MODE_PLAIN, config=cfg)
    return dw, default_config(key, True)["SPLITS"]


def test_split_weight_gradient_is_deterministic_and_per_expert():
    """A hot expert (every token's first choice) split over 4 row ranges: bitwise the same on every run,
    unchanged when the other experts' loads change, and within the rule of the unsplit loop."""
    t, k, e = 40, 2, 4
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(t, 48, generator=gen)
    grad = torch.randn(t * k, 40, generator=gen)
    ids = torch.stack([torch.zeros(t, dtype=torch.int32), torch.randint(1, e, (t,), generator=gen,
                                                                        dtype=torch.int32)], 1)
    al = moe_align(ids, e, 16)
    dw, default_splits = _dw(al, grad, x, 4)
    assert default_splits > 1  # this small layer splits by default: the tests exercise the reduction
    assert torch.equal(dw, _dw(al, grad, x, 4)[0])
    others = ids.clone()
    others[:, 1] = torch.randint(1, e, (t,), generator=gen, dtype=torch.int32)
    assert not torch.equal(others, ids)
    assert torch.equal(dw[0], _dw(moe_align(others, e, 16), grad, x, 4)[0][0])
    ref = torch.zeros(e, 40, 48, dtype=torch.float64)
    for s in range(t * k):
        ref[int(ids.reshape(-1)[s])] += grad[s].double()[:, None] * x[s // k].double()[None, :]
    one, _ = _dw(al, grad, x, 1)
    assert_within_reference_error("dW split", dw, one, ref, gradient=True)


def test_dw_splits_knob(monkeypatch):
    from pyscale.kernels import grouped_gemm as kern
    from pyscale.ops.grouped_gemm import default_config, tuning_key

    key = tuning_key("dw", kern.MODE_PLAIN, torch.float32, torch.device("cpu"), 40, 48, 4, 80, 2, 16)
    monkeypatch.setenv("PYSCALE_MOE_DW_SPLITS", "3")
    assert default_config(key, True)["SPLITS"] == 3
    monkeypatch.setenv("PYSCALE_MOE_DW_SPLITS", "zero")
    with pytest.raises(ValueError, match="PYSCALE_MOE_DW_SPLITS must be an integer"):
        default_config(key, True)


def test_dw_row_splits_follow_the_shapes():
    """Large experts fill the GPU with their own tiles (no split, no workspace); small ones split, within
    the workspace budget."""
    from pyscale.kernels import grouped_gemm as kern

    cfg = kern.grouped_gemm_config(768, 2048, 256, torch.bfloat16, (9, 0), kind="dw", mode=kern.MODE_SWIGLU_BWD,
                                   interpret=False)
    assert kern.dw_row_splits(768, 2048, 128, 8, 32768, cfg, 132, outputs=2) == 1  # qwen3-moe's w_gate/w_up
    small = kern.grouped_gemm_config(256, 512, 256, torch.bfloat16, (9, 0), kind="dw", interpret=False)
    splits = kern.dw_row_splits(256, 512, 16, 2, 8192, small, 132)
    assert 1 < splits <= 16
    assert kern.dw_row_splits(256, 512, 16, 2, 64, small, 132) == 1  # never more splits than row steps
    assert kern.dw_row_splits(4096, 4096, 64, 1, 10**6, small, 132) == 1  # partials would not fit the budget


def _gpu_key(kind, mode, n, k, e, slots, top_k, align):
    """The tuning key an H100 would build for this launch."""
    from pyscale.ops._autotune import bucket

    return {"kind": kind, "mode": mode, "dtype": "float32", "capability": [9, 0], "n": n, "k": k, "experts": e,
            "top_k": top_k, "align": align, "rows_per_expert": bucket(slots // e), "sms": 132}


def test_tuning_keys_bucket_rows_per_expert():
    from pyscale.ops.grouped_gemm import tuning_key

    cpu = torch.device("cpu")
    assert tuning_key("fwd", 1, torch.float16, cpu, 64, 32, 8, 300, 2, 64) == \
        tuning_key("fwd", 1, torch.float16, cpu, 64, 32, 8, 500, 2, 64)  # 37 and 62 rows per expert: bucket 64
    assert tuning_key("fwd", 1, torch.float16, cpu, 64, 32, 8, 300, 2, 64)["rows_per_expert"] == 64
    assert tuning_key("fwd", 1, torch.float16, cpu, 64, 32, 8, 600, 2, 64)["rows_per_expert"] == 128


@pytest.mark.parametrize("kind,mode", [("fwd", 0), ("fwd", 1), ("dw", 0)])
def test_every_tuning_candidate_computes_the_same(kind, mode):
    """The tuner may pick any candidate of the GPU space: each one (run here in the interpreter, launched as
    the tuner would, twice, into the same outputs) gives the default config's result."""
    from pyscale.kernels import grouped_gemm as kern
    from pyscale.ops.grouped_gemm import TUNING_DW, TUNING_FWD

    t, k, e, kdim, align = 20, 2, 4, 72, 128
    n = 136 if kind == "fwd" else 120  # dW: one output tile per (expert, split), or the grid grows large
    ids = _routing(t, k, e, seed=12)
    al = moe_align(ids, e, align, capacity_factor=0.75)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(t, kdim, generator=gen)
    w, w2 = torch.randn(e, n, kdim, generator=gen) / 8, torch.randn(e, n, kdim, generator=gen) / 8
    grad = torch.randn(t * k, n, generator=gen)
    tunable = TUNING_FWD if kind == "fwd" else TUNING_DW
    key = _gpu_key(kind, mode, n, kdim, e, t * k, k, align)
    candidates = tunable.candidates(key)
    assert len(candidates) >= 3 and all(c["BLOCK_M"] <= align for c in candidates)
    if kind == "dw":
        assert {c["SPLITS"] for c in candidates} >= {1, 2, 4, 8}

    def run(cfg):
        if kind == "fwd":
            out, preact = kern.fwd_outputs(t * k, n, x.dtype, x.device, mode, True)
            for _ in range(2):
                kern.launch_fwd(x, w, w2 if mode else None, out, preact, al.sorted_ids, al.expert_ids, al.n_pad,
                                al.slot_pos, a_div=k, align=align, mode=mode, transpose_w=False, save_preact=True,
                                zero_dropped=True, config=cfg)
            return [out] + ([preact] if mode else [])
        dw, _ = kern.dw_outputs(e, n, kdim, x.dtype, x.device, mode)
        for _ in range(2):
            kern.launch_dw(grad, None, x, dw, None, al.sorted_ids, al.offsets, x_div=k, mode=mode, config=cfg)
        return [dw]

    expected = run(candidates[0])
    # every tile shape, and of the dW splits the largest (the others cut the same rows fewer ways)
    for cfg in [c for c in candidates[1:] if c.get("SPLITS", 1) in (candidates[0].get("SPLITS", 1), 8)]:
        for got, want in zip(run(cfg), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, cfg=cfg: f"{cfg}: {m}")
