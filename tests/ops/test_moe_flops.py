"""FLOP formulas of the MoE ops in pyscale.formulas (consumed by the profiler)."""

from __future__ import annotations

import torch

from pyscale.formulas import BUILTIN_FORMULAS, formulas_for
from pyscale.ops import moe_align

OPS = ("pyscale::grouped_gemm", "pyscale::grouped_gemm_backward", "pyscale::moe_align", "pyscale::moe_combine",
       "pyscale::moe_combine_backward", "pyscale::moe_route", "pyscale::moe_route_backward")


def _formulas(kind: str) -> dict:
    """op -> its `kind` formula ("executed" or "model") for the MoE ops that have one."""
    return {op: getattr(formulas_for(op), kind) for op in OPS if getattr(formulas_for(op), kind) is not None}


def test_every_custom_op_has_a_formula():
    assert {op for op in BUILTIN_FORMULAS if op.split("::")[1].startswith(("moe_", "grouped_gemm"))} == set(OPS)
    for name in OPS:
        assert hasattr(torch.ops.pyscale, name.split("::")[1])


def test_grouped_gemm_flops_count_padded_rows():
    ids = torch.tensor([[0, 1], [0, 2], [0, 1]], dtype=torch.int32)
    al = moe_align(ids, 4, 16)
    n_pad = 3 * 16  # experts 0, 1, 2 each pad to one 16-row block
    assert int(al.n_pad) == n_pad
    w = torch.empty(4, 40, 24)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    f = _formulas("executed")
    assert f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None) == 2 * n_pad * 40 * 24
    assert f["pyscale::grouped_gemm"]((None, w, w, *lay, 2, 16, "swiglu"), {}, None) == \
        2 * 2 * n_pad * 40 * 24 + 4 * n_pad * 40
    assert f["pyscale::grouped_gemm_backward"]((None, None, w, None, None, *lay, 0, 16, "none"), {}, None) == \
        2 * 2 * n_pad * 40 * 24


def test_grouped_gemm_model_flops_count_routed_slots():
    """Model FLOPs (active parameters): T·k rows, not n_pad; no elementwise SwiGLU; backward 2x forward."""
    ids = torch.tensor([[0, 1], [0, 2], [0, 1]], dtype=torch.int32)  # T·k = 6 slots, n_pad = 48
    al = moe_align(ids, 4, 16)
    w = torch.empty(4, 40, 24)
    lay = (al.sorted_ids, al.expert_ids, al.n_pad, al.offsets, al.slot_pos)
    f = _formulas("model")
    assert set(f) == {"pyscale::grouped_gemm", "pyscale::grouped_gemm_backward"}
    assert f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None) == 2 * 6 * 40 * 24
    assert f["pyscale::grouped_gemm"]((None, w, w, *lay, 2, 16, "swiglu"), {}, None) == 2 * 2 * 6 * 40 * 24
    assert f["pyscale::grouped_gemm_backward"]((None, None, w, w, None, *lay, 2, 16, "swiglu"), {}, None) == \
        2 * 2 * 2 * 6 * 40 * 24
    executed = _formulas("executed")["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None)
    assert executed == 8 * f["pyscale::grouped_gemm"]((None, w, None, *lay, 2, 16, "none"), {}, None)


def test_combine_and_route_flops():
    y, w = torch.empty(21, 32), torch.empty(7, 3)
    slot_pos = torch.empty(21, dtype=torch.int32)
    assert _formulas("executed")["pyscale::moe_combine"]((y, w, slot_pos, 3), {}, None) == 2 * 21 * 32
    logits = torch.empty(7, 8)
    assert _formulas("executed")["pyscale::moe_route"]((logits, 3), {}, None) == 5 * 56 + 2 * 56 * 3 + 21
