"""moe_align: C++ (and CUDA on a GPU) bit-identical to the reference; layout invariants; capacity mode;
out-of-range ids with the check off (left out and counted, never used as an index)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyscale
from pyscale.ops import moe_align
from pyscale.ops.moe_align import expert_capacity

FIELDS = ("sorted_ids", "expert_ids", "n_pad", "slot_pos", "offsets", "tokens_per_expert", "dropped", "invalid_ids")


def _ids(t, k, e, seed=0, skew=None):
    g = torch.Generator().manual_seed(seed)
    if skew is not None:  # every token to expert `skew` first, then k - 1 other distinct experts
        rows = []
        for _ in range(t):
            others = [x for x in torch.randperm(e, generator=g).tolist() if x != skew][: k - 1]
            rows.append([skew, *others])
        return torch.tensor(rows, dtype=torch.int32).reshape(t, k)
    return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32).reshape(t, k)


def _both(ids, e, block, cf=None, check=True):
    a = moe_align(ids, e, block, capacity_factor=cf, check_values=check)
    with pyscale.backend("reference"):
        b = moe_align(ids, e, block, capacity_factor=cf, check_values=check)
    return a, b


def _check_invariants(al, ids, e, block, capacity):
    t, k = ids.shape
    slots = t * k
    rows = slots + e * (block - 1)
    flat = ids.reshape(-1).long()
    invalid = (flat < 0) | (flat >= e)
    assert int(al.invalid_ids) == int(invalid.sum())
    assert torch.all(al.slot_pos[invalid] == -1)
    flat = torch.where(invalid, e, flat)  # an expert of its own that no segment holds
    assert al.sorted_ids.shape == (rows,) and al.expert_ids.shape == (math.ceil(rows / block),)
    assert al.slot_pos.shape == (slots,) and al.offsets.shape == (e + 1,) and al.n_pad.shape == (1,)
    for f in FIELDS:
        assert getattr(al, f).dtype == torch.int32
    counts = torch.bincount(flat, minlength=e + 1)[:e]
    assert torch.equal(al.tokens_per_expert.long(), counts)
    kept = counts if capacity is None else counts.clamp(max=capacity)
    assert int(al.dropped) == int((counts - kept).sum())
    n_pad = int(al.n_pad)
    assert n_pad == int(al.offsets[-1]) and n_pad % block == 0
    sid = al.sorted_ids.long()
    assert torch.all(sid[n_pad:] == slots)
    for ex in range(e):
        lo, hi = int(al.offsets[ex]), int(al.offsets[ex + 1])
        assert hi - lo == -(-int(kept[ex]) // block) * block
        seg = sid[lo:hi]
        real = seg[seg < slots]
        # slots of this expert, in slot order, the first `kept` of them
        expected = torch.nonzero(flat == ex).flatten()[: int(kept[ex])]
        assert torch.equal(real, expected)
        assert torch.all(seg[len(real):] == slots)  # padding at the end of the segment
        assert torch.all(al.expert_ids[lo // block: hi // block] == ex)
    assert torch.all(al.expert_ids[n_pad // block:] == -1)
    pos = al.slot_pos.long()
    ok = pos >= 0
    assert int((~ok).sum()) == int(al.dropped) + int(al.invalid_ids)
    assert torch.equal(sid[pos[ok]], torch.nonzero(ok).flatten())


@pytest.mark.parametrize("t,k,e,block", [(37, 2, 8, 16), (64, 8, 16, 16), (1, 1, 4, 16), (5, 4, 4, 3),
                                         (100, 3, 7, 64), (0, 2, 4, 16)])
def test_align_matches_reference_and_invariants(t, k, e, block):
    ids = _ids(t, k, e) if t else torch.empty(0, k, dtype=torch.int32)
    a, b = _both(ids, e, block)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    _check_invariants(a, ids, e, block, None)


def test_skewed_and_empty_experts():
    ids = torch.full((50, 1), 3, dtype=torch.int32)  # every token to expert 3, the others empty
    a, b = _both(ids, 8, 16)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    _check_invariants(a, ids, 8, 16, None)
    assert a.tokens_per_expert.tolist() == [0, 0, 0, 50, 0, 0, 0, 0]
    assert int(a.n_pad) == 64


@pytest.mark.parametrize("cf", [0.25, 0.5, 1.0, 1.5])
def test_capacity_mode(cf):
    ids = _ids(40, 2, 8, seed=5, skew=2)  # expert 2 overflows
    a, b = _both(ids, 8, 16, cf)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    cap = expert_capacity(40, 2, 8, cf)
    assert cap == math.ceil(cf * 40 * 2 / 8)
    _check_invariants(a, ids, 8, 16, cap)
    assert int(a.dropped) > 0  # expert 2 got all 40 tokens, more than any of these capacities


def _decimal_capacity(cf_text, t, k, e):
    """⌈cf · t · k / e⌉ in integers, cf read digit by digit from its decimal text (no Fraction, no float)."""
    whole, _, frac = cf_text.partition(".")
    num, den = int(whole + frac), 10 ** len(frac)
    return -(-num * t * k // (den * e))


# (cf, T, k, E): the first ones are where float arithmetic lands just above an integer and rounds up
CAPACITY_CASES = [("1.1", 100, 1, 10), ("0.56", 100, 1, 4), ("0.28", 50, 2, 4), ("0.55", 100, 8, 10),
                  ("1.25", 40, 2, 8), ("0.3", 10, 1, 3), ("2.3", 100, 1, 23), ("1.0", 37, 3, 7), ("0.01", 5, 1, 64),
                  ("3", 4096, 8, 128)]


@pytest.mark.parametrize("cf_text,t,k,e", CAPACITY_CASES)
def test_expert_capacity_is_exact(cf_text, t, k, e):
    expected = _decimal_capacity(cf_text, t, k, e)
    assert expert_capacity(t, k, e, float(cf_text)) == expected
    assert expert_capacity(t, k, e, Decimal(cf_text)) == expected
    assert expert_capacity(t, k, e, Fraction(cf_text)) == expected
    assert expert_capacity(t, k, e, np.float32(cf_text)) == expected  # prints as cf_text, though wider


def test_expert_capacity_float_trap():
    # the case of the report: float arithmetic gives 1.1 · 100 / 10 = 11.000000000000002 -> 12
    assert math.ceil(1.1 * 100 * 1 / 10) == 12
    assert expert_capacity(100, 1, 10, 1.1) == 11
    ids = torch.zeros(100, 1, dtype=torch.int32)  # all to expert 0: it keeps exactly the capacity
    a, b = _both(ids, 10, 16, 1.1)
    assert int(a.dropped) == int(b.dropped) == 89
    assert a.slot_pos.tolist() == list(range(11)) + [-1] * 89


@pytest.mark.parametrize("cf,error,match", [(float("inf"), ValueError, "capacity_factor must be finite"),
                                            (float("nan"), ValueError, "capacity_factor must be finite"),
                                            (-0.5, ValueError, "capacity_factor must be > 0"),
                                            (0, ValueError, "capacity_factor must be > 0"),
                                            (True, TypeError, "capacity_factor must be a real number"),
                                            ("1.1", TypeError, "capacity_factor must be a real number")])
def test_bad_capacity_factor(cf, error, match):
    with pytest.raises(error, match=match):
        expert_capacity(10, 1, 2, cf)
    with pytest.raises(error, match=match):
        moe_align(_ids(8, 2, 4), 4, 16, capacity_factor=cf)


def test_capacity_keeps_first_tokens():
    ids = torch.zeros(10, 1, dtype=torch.int32)
    a = moe_align(ids, 2, 16, capacity_factor=0.4)  # capacity ceil(0.4 * 10 / 2) = 2
    assert a.slot_pos.tolist() == [0, 1] + [-1] * 8 and int(a.dropped) == 8


@given(t=st.integers(0, 40), k=st.integers(1, 4), e=st.integers(4, 12), block=st.sampled_from([1, 4, 16, 32]),
       cf=st.sampled_from([None, 0.5, 1.25]), seed=st.integers(0, 10**6))
def test_align_property(t, k, e, block, cf, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, e, (t, k), generator=g, dtype=torch.int32)  # repeats allowed: the op does not care
    a, b = _both(ids, e, block, cf)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    _check_invariants(a, ids, e, block, None if cf is None else expert_capacity(t, k, e, cf))


# ids far outside 0..E-1 on both sides (an unchecked native path would index shared memory with them)
BAD_IDS = [-1, 8, 2**31 - 1, -2**31, 1000, -7]


@pytest.mark.parametrize("cf", [None, 0.5])
def test_out_of_range_ids_are_left_out_and_counted(cf):
    """With the check off, the C++ backend (the CUDA kernels' shared code) and the reference agree bit for
    bit: bad slots get slot_pos -1, sit in no segment, count in invalid_ids and in no expert."""
    ids = _ids(30, 3, 8, seed=7)
    g = torch.Generator().manual_seed(8)
    where = torch.randperm(90, generator=g)[: len(BAD_IDS) * 2]
    flat = ids.reshape(-1).clone()
    flat[where] = torch.tensor(BAD_IDS * 2, dtype=torch.int32)
    bad = flat.reshape(30, 3)
    a, b = _both(bad, 8, 16, cf, check=False)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert int(a.invalid_ids) == len(BAD_IDS) * 2
    _check_invariants(a, bad, 8, 16, None if cf is None else expert_capacity(30, 3, 8, cf))
    assert int(moe_align(ids, 8, 16).invalid_ids) == 0


def test_every_id_out_of_range():
    ids = torch.full((5, 2), 99, dtype=torch.int32)
    a, b = _both(ids, 4, 16, check=False)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert int(a.invalid_ids) == 10 and int(a.n_pad) == 0 and torch.all(a.slot_pos == -1)
    assert torch.all(a.expert_ids == -1) and int(a.tokens_per_expert.sum()) == 0


@given(t=st.integers(0, 30), k=st.integers(1, 3), e=st.integers(3, 9), block=st.sampled_from([1, 4, 16]),
       cf=st.sampled_from([None, 0.5]), seed=st.integers(0, 10**6))
def test_out_of_range_property(t, k, e, block, cf, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-3, e + 3, (t, k), generator=g, dtype=torch.int32)
    a, b = _both(ids, e, block, cf, check=False)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    _check_invariants(a, ids, e, block, None if cf is None else expert_capacity(t, k, e, cf))


def test_int64_ids_accepted():
    ids = _ids(9, 2, 4).long()
    assert torch.equal(moe_align(ids, 4, 16).sorted_ids, moe_align(ids.int(), 4, 16).sorted_ids)


def test_opcheck():
    ids = _ids(21, 2, 8)
    torch.library.opcheck(torch.ops.pyscale.moe_align.default, (ids, 8, 16, -1))
    torch.library.opcheck(torch.ops.pyscale.moe_align.default, (ids, 8, 16, 3))


def test_bad_inputs():
    ids = _ids(8, 2, 4)
    with pytest.raises(TypeError, match="topk_ids must hold integer expert ids"):
        moe_align(ids.float(), 4, 16)
    with pytest.raises(ValueError, match=r"topk_ids must lie in 0..n_experts-1"):
        moe_align(ids, 3, 16)
    with pytest.raises(ValueError, match=r"topk_ids must lie in 0..n_experts-1"):
        moe_align(ids - 1, 4, 16)
    with pytest.raises(ValueError, match="topk_ids must be 2-D"):
        moe_align(ids.reshape(-1), 4, 16)
    with pytest.raises(ValueError, match="block_size"):
        moe_align(ids, 4, 0)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe_align(ids, 4, 16, capacity_factor=0.0)
    with pytest.raises(ValueError, match="columns"):
        moe_align(torch.zeros(3, 5, dtype=torch.int32), 4, 16)
    with pytest.raises(ValueError, match="n_experts"):
        moe_align(ids, 0, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("t,k,e,cf", [(4096, 8, 128, None), (3000, 2, 8, 1.0), (1, 1, 256, None),
                                      (8192, 8, 256, 0.5)])
def test_cuda_matches_cpp(t, k, e, cf):
    ids = torch.randint(0, e, (t, k), dtype=torch.int32)
    cpu = moe_align(ids, e, 64, capacity_factor=cf)
    gpu = moe_align(ids.cuda(), e, 64, capacity_factor=cf)
    for f in FIELDS:
        assert torch.equal(getattr(cpu, f), getattr(gpu, f).cpu()), f


@pytest.mark.gpu
@pytest.mark.parametrize("e", [8, 256, 4096])
def test_cuda_out_of_range_ids_match_cpp(e):
    """The unchecked CUDA path with bad ids: no out-of-bounds access (a later sync would report it), and
    the same bytes as the C++ backend."""
    ids = torch.randint(0, e, (3000, 4), dtype=torch.int32)
    ids.view(-1)[torch.randperm(ids.numel())[:300]] = torch.tensor(BAD_IDS * 50, dtype=torch.int32)
    cpu = moe_align(ids, e, 64, check_values=False)
    gpu = moe_align(ids.cuda(), e, 64, check_values=False)
    torch.cuda.synchronize()
    for f in FIELDS:
        assert torch.equal(getattr(cpu, f), getattr(gpu, f).cpu()), f
    assert int(gpu.invalid_ids) == 300
