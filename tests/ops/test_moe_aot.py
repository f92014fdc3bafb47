"""Every MoE Triton kernel compiles ahead of time for sm_80, sm_89 and sm_90a with the configuration the
launchers pick on that arch (the largest shared-memory one), within the arch's shared-memory limit.

The specs are the compile report's (pyscale.testing.aot_specs.moe), aligned as Triton's launcher
specialises torch tensors, so CI compiles each once (tests/testing/test_compile_report.py holds the
no-spill rule: no MoE kernel spills on any arch)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")
from pyscale.testing import aot_specs  # noqa: E402
from pyscale.testing.aot import assert_pairs_compile  # noqa: E402


def test_moe_kernels_compile_ahead_of_time():
    """CI's set: per kernel and arch the largest configuration, the fused SwiGLU forward in bf16 and the
    fused SwiGLU backward in fp16, so both dtypes and every fused path compile, with no spill at all."""
    entries = aot_specs.entries(["moe"])
    results = assert_pairs_compile([(e.spec(a), a) for e in entries for a in e.archs], max_stack_bytes=0)
    gemm = [r for r in results if "fwd mode1" in r.spec]
    assert gemm and all(r.shared_bytes and r.shared_bytes > 0 for r in gemm)


def test_grouped_gemm_defaults_use_wgmma_on_hopper():
    """Every grouped-GEMM default CI compiles for sm_90a is pipelined (asynchronous copies) on wgmma,
    spill-free, and overlaps wgmma groups (a wait level > 0) wherever both operands come from shared
    memory; the SwiGLU-backward dX forms its A operand in registers, where Triton waits at level 0."""
    from pyscale.testing import compile_report

    rows = compile_report.rows([e for e in aot_specs.entries(["moe"]) if e.op.startswith("moe.grouped_gemm")
                                and "sm_90a" in e.archs], archs=("sm_90a",))
    gemms = [r for r in rows if r["op"] in ("moe.grouped_gemm", "moe.grouped_gemm_dw")]
    assert len(gemms) == 4, rows
    for r in gemms:
        assert r["ok"] and r["mma"] == "wgmma" and r["async_copies"] > 0 and r["spill_bytes"] == 0, r
        if r["params"]["mode"] != "swiglu_bwd" or r["op"] == "moe.grouped_gemm_dw":
            assert max(r["wgmma_wait_levels"]) > 0, r


@pytest.mark.slow
def test_every_grouped_gemm_launch_is_pipelined_and_fits():
    """Every grouped-GEMM launch (both dtypes, every mode and weight layout, split dW, every autotuning
    candidate): its K loop is software-pipelined (asynchronous copies in the PTX), its shared memory fits,
    no spill."""
    from pyscale.testing import compile_report

    rows = compile_report.rows([e for e in aot_specs.entries(["moe"], full=True)
                                if e.op in ("moe.grouped_gemm", "moe.grouped_gemm_dw")])
    assert rows
    bad = [r for r in rows if not r["ok"] or r["shared_bytes"] > r["smem_limit_bytes"] or r["async_copies"] == 0
           or r["spill_bytes"] > 0]
    assert not bad, bad
