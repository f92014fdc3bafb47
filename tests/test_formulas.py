"""pyscale.formulas: closed-form attention pair counts against brute force, the registry the profiler reads
(built-in ops, user registrations, the deprecated FLOP_FORMULAS tables), byte formulas equal to the
counter's generic inputs-plus-outputs count on real op calls, the benchmark's counts equal to the ops' own,
and no torch behind formulas, the planner or a plan."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyscale
from pyscale import formulas
from pyscale.profile import flops as fl


def _brute_pairs(sq: int, sk: int, causal: bool, left: int, right: int, align: str) -> int:
    """The definition, one pair at a time: key j is allowed for query i when -left <= j - i - offset <= right."""
    offset = sk - sq if align == "bottom_right" else 0
    count = 0
    for i in range(sq):
        for j in range(sk):
            d = j - i - offset
            ok = (left < 0 or d >= -left) and (right < 0 or d <= right) and (not causal or d <= 0)
            count += ok
    return count


@given(sq=st.integers(0, 37), sk=st.integers(0, 37), causal=st.booleans(), left=st.integers(-1, 40),
       right=st.integers(-1, 40), align=st.sampled_from(formulas.ALIGNMENTS))
def test_pair_count_matches_brute_force(sq, sk, causal, left, right, align):
    assert formulas.attention_pairs(sq, sk, causal=causal, window=(left, right), align=align) == \
        _brute_pairs(sq, sk, causal, left, right, align)


@pytest.mark.parametrize("sq, sk", [(1, 1), (1, 17), (17, 1), (113, 67), (67, 113), (300, 31), (31, 300)])
@pytest.mark.parametrize("window", [None, (0, 0), (5, -1), (-1, 3), (31, 7), (2000, 2000)])
def test_pair_count_odd_shapes_both_alignments(sq, sk, window):
    left, right = window or (-1, -1)
    for align in formulas.ALIGNMENTS:
        for causal in (False, True):
            got = formulas.attention_pairs(sq, sk, causal=causal, window=window, align=align)
            assert got == _brute_pairs(sq, sk, causal, left, right, align), (align, causal)


def test_pair_count_edges_and_bad_input():
    assert formulas.attention_pairs(0, 9) == formulas.attention_pairs(9, 0) == 0
    assert formulas.attention_pairs(9, 4, causal=True) == 4 * 5 // 2  # bottom-right: 5 rows see nothing
    assert formulas.attention_pairs(9, 4, causal=True, align="top_left") == 4 * 5 // 2 + 5 * 4
    assert formulas.attention_pairs(1 << 20, 1 << 20, causal=True) == (1 << 20) * ((1 << 20) + 1) // 2  # no loop
    with pytest.raises(ValueError, match="align"):
        formulas.attention_pairs(4, 4, align="center")
    with pytest.raises(ValueError, match="window"):
        formulas.attention_pairs(4, 4, window=(-2, 0))
    with pytest.raises(TypeError, match="window"):
        formulas.attention_pairs(4, 4, window=(1.0, 0))


def test_varlen_and_gqa_flops_are_sums_over_sequences():
    lens_q, lens_k = [0, 1, 17, 113], [5, 1, 30, 64]
    f = formulas.attention_varlen_flops(lens_q, lens_k, 6, 64, causal=True, window=(8, 0), pass_="fwd+bwd")
    pairs = sum(formulas.attention_pairs(a, b, causal=True, window=(8, 0)) for a, b in zip(lens_q, lens_k))
    assert f.executed == 14 * pairs * 6 * 64
    assert f.model == 12 * sum(a * b for a, b in zip(lens_q, lens_k)) * 6 * 64
    # GQA: kv heads move bytes, not FLOPs
    assert formulas.attention_bytes(2, 17, 17, 6, 2, 64, 2) < formulas.attention_bytes(2, 17, 17, 6, 6, 64, 2)


def test_formulas_and_plans_run_without_torch(tmp_path):
    """pyscale.formulas, `pyscale plan` and a plan priced by a cost model (the step model's formulas) never
    import torch."""
    code = textwrap.dedent(f"""
        import sys
        import pyscale.formulas as f
        assert f.attention_pairs(5, 3, causal=True) == 6 and 'torch' not in sys.modules
        sys.path.insert(0, {str(Path(__file__).parent / "plan")!r})
        from conftest import synthetic_profile
        from pyscale import cli
        from pyscale.plan import Budget, plan
        from pyscale.plan.step_model import hardware_from_profile
        assert cli.main(["plan", "--kwh", "2e5", "--gpu", "H100 SXM", "--mfu", "0.4", "--power-w", "650"]) == 0
        hw = hardware_from_profile(synthetic_profile({str(tmp_path / "p.db")!r}), micro_batch=4,
                                   peak_flops_per_s=400e12, memory_bytes=80 * 2**30)
        assert plan(Budget("flops", 1e21), hardware=hw, seq_len=1024).time_s > 0
        assert 'torch' not in sys.modules, 'torch was imported'
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- the registry

@torch.library.custom_op("pyscale_test::scaled_copy", mutates_args=())
def _scaled_copy(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_register_flop_formula_is_public_and_counted():
    assert pyscale.profile.register_flop_formula is formulas.register_flop_formula is fl.register_flop_formula
    formulas.register_flop_formula("pyscale_test::scaled_copy", executed=lambda a, k, o: 11,
                                   model=lambda a, k, o: 5, bytes=lambda a, k, o: 99)
    try:
        counts = fl.count_flops(_scaled_copy, torch.ones(3))
        assert (counts.flops, counts.forward_model_flops, counts.bytes) == (11, 5, 99)
        assert formulas.formulas_for("pyscale_test::scaled_copy").model(None, None, None) == 5
    finally:
        formulas.unregister_flop_formula("pyscale_test::scaled_copy")
    assert formulas.formulas_for("pyscale_test::scaled_copy") is None
    with pytest.raises(ValueError, match="namespace::name"):
        formulas.register_flop_formula("scaled_copy", executed=lambda a, k, o: 1)
    with pytest.raises(ValueError, match="bytes must be a callable"):
        formulas.register_flop_formula("pyscale_test::scaled_copy", executed=lambda a, k, o: 1, bytes=3)


def test_registration_overrides_a_builtin_until_unregistered():
    builtin = formulas.formulas_for("pyscale::gemm_int8")
    formulas.register_flop_formula("pyscale::gemm_int8", executed=lambda a, k, o: 1)
    try:
        assert formulas.formulas_for("pyscale::gemm_int8").executed(None, None, None) == 1
    finally:
        formulas.unregister_flop_formula("pyscale::gemm_int8")
    assert formulas.formulas_for("pyscale::gemm_int8") is builtin


def test_deprecated_formula_tables_are_still_read_with_a_warning():
    name = "pyscale.ops._legacy_table_test"
    module = types.ModuleType(name)
    module.FLOP_FORMULAS = {"pyscale_test::scaled_copy": lambda a, k, o: 7}
    module.BYTE_FORMULAS = {"pyscale_test::scaled_copy": lambda a, k, o: 70}
    sys.modules[name] = module
    try:
        with pytest.warns(DeprecationWarning, match=r"_legacy_table_test declares FLOP_FORMULAS, BYTE_FORMULAS.*"
                                                    r"register_flop_formula"):
            counts = fl.count_flops(_scaled_copy, torch.ones(3))
    finally:
        del sys.modules[name]
    assert (counts.flops, counts.forward_model_flops, counts.bytes) == (7, 7, 70)


def test_every_builtin_op_exists_and_nothing_else_declares_tables():
    import pyscale.ops  # noqa: F401  (registers the ops)

    for op in formulas.BUILTIN_FORMULAS:
        assert hasattr(torch.ops.pyscale, op.split("::")[1]), op
    tables = [n for n, m in sys.modules.items() if n.startswith("pyscale.ops")
              and any(hasattr(m, t) for t in ("FLOP_FORMULAS", "MODEL_FLOP_FORMULAS", "BYTE_FORMULAS"))]
    assert tables == []


# --------------------------------------------------------------------------- bytes: one definition

def _counted(fn, *args) -> dict:
    """op -> (bytes by the op's formula, bytes by the generic inputs-plus-outputs rule, plus the attention
    backward's delta) of each pyscale op `fn` runs."""
    seen = {}

    class Both(fl.FlopCounter):
        def _count(self, func, a, kw, out):
            got = super()._count(func, a, kw, out)
            name = str(func._schema.name)
            if name.startswith("pyscale::"):
                generic = fl.default_bytes(func, a, kw, out)
                if name.startswith("pyscale::attention") and name.endswith("_bwd"):
                    generic += 2 * a[5].numel() * 4  # delta: one fp32 per lse entry, written and read
                seen[name] = (got[2], generic)
            return got

    with pyscale.backend("reference"), Both(modules=False):
        fn(*args)
    return seen


def test_byte_formulas_equal_the_generic_count_on_real_calls():
    """The ops' closed-form bytes are what the counter measured generically before: nothing changed there."""
    from pyscale import ops

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 256, generator=g)
    w = torch.randn(20, 256, generator=g)
    calls = []
    for gran_a, gran_b in (("tensor", "tensor"), ("row", "row"), ("block1x128", "block128x128")):
        qa, qb = ops.quantize_fp8(x, gran_a), ops.quantize_fp8(w, gran_b)
        calls.append((lambda a, b, c, d: ops.gemm_fp8(a, b, c, d, bias=torch.zeros(20, dtype=torch.bfloat16)),
                      qa.data, qb.data, qa.scale, qb.scale))
    qa, qb = ops.quantize_int8(x), ops.quantize_int8(w)
    calls.append((lambda a, b, c, d: ops.gemm_int8(a, b, c, d, bias=torch.zeros(20)), qa.data, qb.data, qa.scale,
                  qb.scale))
    for symmetric in (True, False):
        q = ops.int4_quantize(w.half(), 64, symmetric=symmetric)
        calls.append((lambda xx, qw, s, z: ops.gemm_w4a16(xx, qw, s, z, group_size=64,
                                                          bias=torch.zeros(20, dtype=torch.float16)),
                      x.half(), q.qweight, q.scales, q.zeros))
    q, k = torch.randn(2, 9, 6, 32, generator=g, requires_grad=True), torch.randn(2, 13, 2, 32, generator=g)
    calls.append((lambda a, b: ops.attention(a, b, b, causal=True, window=(3, 0)).sum().backward(), q, k))
    cu_q, cu_k = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 6, 13], dtype=torch.int32)
    qv = q[0].detach().requires_grad_(True)
    calls.append((lambda a, b: ops.attention_varlen(a, b, b, cu_q, cu_k, 5, 7, causal=True).sum().backward(), qv,
                  k[0]))
    logits = torch.randn(11, 8, generator=g)
    calls.append((lambda lg: ops.moe_align(ops.moe_route(lg, 3, bias=torch.zeros(8))[1], 8, 16), logits))
    for fn, *args in calls:
        counted = _counted(fn, *args)
        assert counted, fn
        for op, (by_formula, generic) in counted.items():
            if formulas.formulas_for(op).bytes is not None:
                assert by_formula == generic, op


def test_benchmark_bytes_are_the_ops_own():
    """A pyscale benchmark case reports the bytes that the profiler counts for the ops it runs."""
    from pyscale import benchmark
    from pyscale.benchmark.cases import attention as attention_cases
    from pyscale.benchmark.cases import gemm as gemm_cases
    from pyscale.benchmark.cases import moe as moe_cases

    modules = {"attention": attention_cases, "gemm": gemm_cases, "moe": moe_cases}
    checked = set()
    for case in benchmark.plan_cases(["attention", "gemm", "moe"], "quick", device="cpu"):
        if case.impl != "pyscale" or case.op in ("moe_fwd", "moe_fwd_bwd", "moe_fwd_bwd_hot") or (case.op, case.dtype) in checked:
            continue  # baselines share the pyscale case's count; the MoE layer counts its weights only
        with pyscale.backend("reference"):  # the interpreter would only be slower
            w = modules[case.family].workload(case, "cpu")
        counted = _counted(w.fn, *w.args)
        assert w.bytes == sum(b for b, _ in counted.values()), (case.family, case.op, case.dtype)
        checked.add((case.op, case.dtype))
    assert {"attention_fwd", "attention_bwd", "attention_fwd_bwd", "gemm", "moe_route"} == {op for op, _ in checked}


def test_planner_prices_the_benchmarked_attention_and_gemm_counts():
    from pyscale.models.config import GPTConfig
    from pyscale.plan.step_model import gpt_op_breakdown

    cfg = GPTConfig(n_layers=2, d_model=192, n_heads=6, n_kv_heads=2, seq_len=40, vocab_size=100)
    calls = {c.op: c for c in gpt_op_breakdown(cfg, 3)}
    for op, pass_ in (("attention_fwd", "fwd"), ("attention_bwd", "bwd")):
        assert calls[op].flops == formulas.attention_flops(3, 40, 40, 6, 32, causal=True, pass_=pass_).executed
        assert calls[op].bytes == formulas.attention_bytes(3, 40, 40, 6, 2, 32, 2, pass_=pass_)
    lm_head = [c for c in gpt_op_breakdown(cfg, 3) if c.features == {"m": 120, "n": 100, "k": 192}]
    assert lm_head and lm_head[0].bytes == formulas.gemm_bytes(120, 100, 192, 2)
