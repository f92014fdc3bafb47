"""`torch.library.opcheck` of every pyscale custom op with contiguous, transposed and sliced inputs.

The fake (meta) implementations declare the outputs' shapes, dtypes and strides; they must agree with
what each backend returns for any input layout, or torch.compile (inductor) and `opcheck` fail. Every
op is checked on its default backend here (the Triton interpreter, `_C` or the reference) and on the
reference. Contiguous inputs get the full opcheck in each op's own tests. Inputs are tiny: this runs in CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch

import pyscale
from pyscale import ops
from pyscale.ops import moe_align
from pyscale.ops import quantize as q_ops
from pyscale.testing.numerics import gpu_like_casts  # noqa: F401

pytestmark = pytest.mark.usefixtures("gpu_like_casts")

# Contiguous inputs get the full opcheck in each op's own test file; here the layouts that differ.
LAYOUTS = ("transposed", "sliced")
# test_faketensor compares the fake outputs' strides with the real ones; test_aot_dispatch_dynamic traces
# the op (and its backward) as torch.compile does. test_schema and test_autograd_registration do not
# depend on the layout and run with the contiguous checks.
CHECKS = {None: ("test_faketensor",), "reference": ("test_faketensor",)}


def lay(t: torch.Tensor, layout: str, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """The values of t in another memory layout.

    transposed: `dims` swapped in memory (a 1-D tensor stays contiguous); sliced: a view into a larger
    buffer, with a storage offset and a padded innermost stride (a stride-2 view when 1-D).
    """
    requires_grad = t.requires_grad
    t = t.detach()
    if layout == "transposed" and t.dim() >= 2:
        out = t.transpose(*dims).contiguous().transpose(*dims)
    elif layout == "sliced" and t.dim() >= 1:
        if t.dim() == 1:
            big = torch.zeros(2 * t.shape[0] + 1, dtype=t.dtype)
            out = big[1::2]
        else:
            big = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)
            out = big[..., 1:1 + t.shape[-1]]
        out.copy_(t)
    else:
        out = t.clone()
    return out.requires_grad_(requires_grad)


def _fp8(m, n, k, granularity, layout):
    parts = {"tensor": ("tensor", "tensor"), "row": ("row", "row"), "block": ("block1x128", "block128x128")}
    g = torch.Generator().manual_seed(0)
    ga, gb = parts[granularity]
    qa, sa = q_ops.ref.quantize_fp8(torch.randn(m, k, generator=g), ga)
    qb, sb = q_ops.ref.quantize_fp8(torch.randn(n, k, generator=g) / 3, gb)
    return (lay(qa, layout), lay(qb, layout), lay(sa, layout), lay(sb, layout), granularity, torch.float32,
            lay(torch.zeros(n), layout))


def _int8(layout):
    g = torch.Generator().manual_seed(1)
    qa, sa = q_ops.ref.quantize_int8(torch.randn(5, 40, generator=g))
    qb, sb = q_ops.ref.quantize_int8(torch.randn(12, 40, generator=g))
    return (lay(qa, layout), lay(qb, layout), lay(sa, layout), lay(sb, layout), torch.float16,
            lay(torch.randn(12, generator=g).half(), layout))


def _w4a16(symmetric, layout):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 64, generator=g).half()
    q = ops.int4_quantize((torch.randn(12, 64, generator=g) / 8).half(), 32, symmetric=symmetric)
    zeros = None if q.zeros is None else lay(q.zeros, layout)
    return (lay(x, layout), lay(q.qweight, layout), lay(q.scales, layout), zeros, 32,
            lay(torch.randn(12, generator=g).half(), layout))


def _int4_dequantize(symmetric, layout):
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(3))
    q = ops.int4_quantize(w, 32, symmetric=symmetric)
    return (lay(q.qweight, layout), lay(q.scales, layout), None if q.zeros is None else lay(q.zeros, layout), 32)


def _moe(t=9, k=2, e=4, d=32, seed=4):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    return ids, moe_align(ids, e, 16)


def _grouped_gemm(layout):
    ids, al = _moe()
    g = torch.Generator().manual_seed(5)
    a = torch.randn(9, 32, generator=g, requires_grad=True)
    w = torch.randn(4, 16, 32, generator=g, requires_grad=True)
    w2 = torch.randn(4, 16, 32, generator=g, requires_grad=True)
    layout_args = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    return (lay(a, layout), lay(w, layout), lay(w2, layout), *layout_args, 2, 16, "swiglu", True)


def _grouped_gemm_backward(layout):
    a, w, w2, *rest = _grouped_gemm("contiguous")
    layout_args, tail = rest[:5], rest[5:]
    out, preact = torch.ops.pyscale.grouped_gemm.default(a.detach(), w.detach(), w2.detach(), *layout_args, *tail)
    a, w, w2 = a.detach(), w.detach(), w2.detach()  # backward ops have no gradient of their own
    return (lay(torch.randn_like(out), layout), lay(a, layout), lay(w, layout), lay(w2, layout),
            lay(preact, layout), *layout_args, *tail[:3])


def _moe_combine(layout):
    ids, al = _moe()
    g = torch.Generator().manual_seed(6)
    y = torch.randn(9 * 2, 16, generator=g, requires_grad=True)
    w = torch.rand(9, 2, generator=g, requires_grad=True)
    return lay(y, layout), lay(w, layout), al.slot_pos, 2


def _moe_combine_backward(layout):
    y, w, slot_pos, k = _moe_combine("contiguous")
    return lay(torch.randn(9, 16), layout), lay(y.detach(), layout), lay(w.detach(), layout), slot_pos, k


def _moe_route(layout):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(11, 8, generator=g, requires_grad=True)
    return lay(logits, layout), 2, "sigmoid", True, 4, 2, lay(torch.randn(8, generator=g) * 0.3, layout)


def _moe_route_backward(layout):
    logits = torch.randn(11, 8, generator=torch.Generator().manual_seed(8))
    w, ids = ops.moe_route(logits, 2)
    return lay(torch.randn(11, 2), layout), lay(logits, layout), lay(w, layout), lay(ids, layout), "softmax", True


def _attention(layout, backward=False):
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, s, h, 16, generator=g) for s, h in ((5, 4), (7, 2), (7, 2)))
    fwd = (q, k, v, True, 0.25, -1, -1)
    # the common strided layout of attention inputs is (batch, heads, seq, dim) memory: swap seq and heads
    L = lambda t: lay(t, layout, (1, 2))
    if not backward:
        return (*map(L, (q, k, v)), *fwd[3:])
    out, lse = torch.ops.pyscale.attention_fwd.default(*fwd)
    return (L(torch.randn_like(out)), *map(L, (q, k, v, out)), lay(lse, layout), True, 0.25, -1, -1)


def _attention_varlen(layout, backward=False):
    g = torch.Generator().manual_seed(10)
    cu_q = torch.tensor([0, 0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    q, k, v = torch.randn(9, 4, 16, generator=g), torch.randn(10, 2, 16, generator=g), torch.randn(10, 2, 16, generator=g)
    L = lambda t: lay(t, layout, (0, 1))  # (heads, total, dim) memory
    fwd = (q, k, v, cu_q, cu_k, 5, 7, True, 0.25, -1, -1)
    if not backward:
        return (*map(L, (q, k, v)), *fwd[3:])
    out, lse = torch.ops.pyscale.attention_varlen_fwd.default(*fwd)
    return (L(torch.randn_like(out)), *map(L, (q, k, v, out)), lay(lse, layout), *fwd[3:])


def _x(m=6, k=64, seed=11, dtype=torch.float32):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


# op name -> [(case id, args builder(layout))]
CASES: dict[str, list[tuple[str, Callable[[str], tuple]]]] = {
    "quantize_fp8": [(g, lambda lo, g=g: (lay(_x(), lo), g, torch.float8_e4m3fn)) for g in ("tensor", "block128x128")],
    "quantize_int8": [("", lambda lo: (lay(_x(), lo),))],
    "fake_quantize": [(s, lambda lo, s=s: (lay(_x().requires_grad_(), lo), s, None))
                      for s in ("int4-g32-asym", "int8-channel", "fp8-row")],
    "int4_quantize": [("", lambda lo: (lay(_x(dtype=torch.float16), lo), 32, False, torch.bfloat16))],
    "int4_pack": [("", lambda lo: (lay(torch.randint(0, 16, (4, 64), dtype=torch.uint8), lo),))],
    "int4_unpack": [("", lambda lo: (lay(torch.randint(0, 256, (4, 32), dtype=torch.uint8), lo),))],
    "int4_dequantize": [("", lambda lo: _int4_dequantize(False, lo))],
    "gemm_fp8": [(g, lambda lo, g=g: _fp8(5, 12, 140, g, lo)) for g in ("row", "block")],
    "gemm_int8": [("", _int8)],
    "gemm_w4a16": [("", lambda lo: _w4a16(False, lo))],
    "grouped_gemm": [("", _grouped_gemm)],
    "grouped_gemm_backward": [("", _grouped_gemm_backward)],
    "moe_align": [("", lambda lo: (lay(_moe()[0], lo), 4, 16, -1))],
    "moe_combine": [("", _moe_combine)],
    "moe_combine_backward": [("", _moe_combine_backward)],
    "moe_route": [("", _moe_route)],
    "moe_route_backward": [("", _moe_route_backward)],
    "attention_fwd": [("", _attention)],
    "attention_bwd": [("", lambda lo: _attention(lo, backward=True))],
    "attention_varlen_fwd": [("", _attention_varlen)],
    "attention_varlen_bwd": [("", lambda lo: _attention_varlen(lo, backward=True))],
}
PARAMS = [pytest.param(op, build, layout, id=f"{op}{'-' + cid if cid else ''}-{layout}")
          for op, cases in CASES.items() for cid, build in cases for layout in LAYOUTS]


def test_every_custom_op_is_covered():
    import pyscale.nn  # noqa: F401  (every op module is imported by pyscale.ops)

    ours = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyscale::")}
    ours = {n for n in ours if not n.startswith("_")}  # tests register private ops of their own (_profiler_...)
    assert ours == set(CASES), f"ops without a layout opcheck: {sorted(ours - set(CASES))}"


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("op,build,layout", PARAMS)
def test_opcheck_layout(op, build, layout, backend):
    args = build(layout)
    with pyscale.backend(backend) if backend else contextlib.nullcontext():
        torch.library.opcheck(getattr(torch.ops.pyscale, op).default, args, test_utils=CHECKS[backend])
