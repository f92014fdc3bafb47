"""The attention kernels compile ahead of time for sm_80, sm_89 and sm_90a at the configs the op picks,
as the JIT specialises aligned tensors: no register spills, shared memory within each arch's limit, and
on sm_90a a software-pipelined backward (asynchronous copies in every split backward kernel) on wgmma.
Specs: `pyscale.testing.aot_specs.attention`, shared with the compile report
(tests/testing/test_compile_report.py holds its rows: fused, TMA, varlen and the preprocess), so CI
compiles each kernel once.

CI compiles the forward and the split backward at one head dim per BLOCK_D bucket plus 80 and 96, fp32
at a small head dim, and the unaligned worst case on sm_89; every head dim, fp16 and the autotuning
candidates are `slow`.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("triton")

from pyscale.testing.aot import DEFAULT_ARCHS, assert_compiles, compile_kernels  # noqa: E402
from pyscale.testing.aot_specs import attention as specs  # noqa: E402


def _show(spec_list, results) -> None:
    for s, r in zip(spec_list, results):
        print(f"{s.label}: smem {r.shared_bytes} B, regs {r.registers}, local {r.local_bytes}, stack {r.stack_bytes}, "
              f"async {r.async_copies}, tma {r.tma}, mma {r.mma}, waits {r.wgmma_wait_levels}")


@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_defaults_compile_without_spills(arch):
    """Every default config compiles with no local memory or stack frame and fits shared memory, at every
    CI head dim; on sm_90a each split backward kernel streams its tiles with asynchronous copies and every
    kernel up to head dim 128 runs its products on wgmma (at 256 the dk/dv program's 32-key tile is
    mma.sync: a 64-key wgmma tile spills, see `bwd_config`)."""
    spec_list = specs.default_specs(arch)
    results = assert_compiles(spec_list, archs=(arch,))
    _show(spec_list, results)
    # fp32 (FMA dots, not a speed path) must compile with its fp64 row-statistic split; a few bytes of stack
    # on mma.sync archs are allowed there.
    fp32 = specs.fp32_specs(arch)
    _show(fp32, assert_compiles(fp32, archs=(arch,), max_stack_bytes=32))
    if arch != "sm_90a":
        return
    for s, r in zip(spec_list, results):
        if s.kernel.endswith(("_attn_bwd_dkdv", "_attn_bwd_dq")):
            assert r.async_copies > 0, (s.label, r)
        if s.constexprs["HEAD_DIM"] <= 128:
            assert r.mma == "wgmma", (s.label, r.mma)


def test_split_backward_is_the_pipelined_default():
    """The split kernels are pipelined (num_stages >= 2) on every arch at every CI head dim; the op runs the
    split variant unless PYSCALE_ATTN_BWD says otherwise."""
    from pyscale.kernels import attention_bwd as k

    assert k.DEFAULT_VARIANT == "split"
    for arch in DEFAULT_ARCHS:
        for d in specs.CI_HEAD_DIMS:
            cfg = specs.bwd_config(arch, d)
            assert min(cfg.num_stages, cfg.dq_launch[1]) >= 2, (arch, d, cfg)


def test_unaligned_inputs_compile_on_sm89():
    """Inputs whose pointers or strides are not multiples of 16 make the JIT compile scalar-load variants:
    they must compile and fit shared memory and registers too (fp16 at D=128 and bf16 at D=256, the
    largest tiles, on sm_89, which has the least shared memory). Their spills say nothing (assert_compiles
    judges spills of aligned specs only)."""
    largest = [specs.fwd_spec("sm_89", 128, "fp16"), *specs.bwd_specs("sm_89", 128, "fp16"),
               specs.fwd_spec("sm_89", 256), *specs.bwd_specs("sm_89", 256), specs.preprocess_spec(128, has_dlse=True)]
    unaligned = [dataclasses.replace(s, divisible_by_16=(), label=s.label + " unaligned") for s in largest]
    _show(unaligned, assert_compiles(unaligned, archs=("sm_89",)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_every_head_dim_compiles_without_spills(arch):
    """Multiples of 8 from 8 to 256: the forward, the split and the fused backward at their defaults."""
    spec_list = specs.default_specs(arch, head_dims=specs.ALL_HEAD_DIMS)
    for d in specs.CI_HEAD_DIMS:
        spec_list += specs.bwd_specs(arch, d, variant="fused")
    _show(spec_list, assert_compiles(spec_list, archs=(arch,)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_fp16_and_every_variant_compile(arch):
    """fp16 defaults (forward, both backward variants, varlen, the preprocess) and, on sm_90a, the TMA
    forward and split backward."""
    spec_list = specs.default_specs(arch, head_dims=(64, 128, 256), dtype="fp16")
    for d in (64, 128, 256):
        spec_list += specs.bwd_specs(arch, d, "fp16", variant="fused")
        spec_list += [specs.fwd_spec(arch, d, "fp16", varlen=True), *specs.bwd_specs(arch, d, "fp16", varlen=True)]
        if arch == "sm_90a":
            spec_list += [specs.fwd_spec(arch, d, "fp16", tma=True), *specs.bwd_specs(arch, d, "fp16", tma=True)]
    spec_list.append(specs.preprocess_spec(128, "fp16", has_dlse=True))
    _show(spec_list, assert_compiles(spec_list, archs=(arch,)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_autotune_candidates_compile(arch):
    """The op's tuning space per key: its default (the first candidate) fits; the others may be refused
    (the tuner skips them)."""
    import importlib

    import torch

    ops = importlib.import_module("pyscale.ops.attention")
    spec_list, first = [], set()
    for d in (64, 128, 256):
        for causal, seqlen in ((True, 512), (False, 8192)):
            key = ops.tuning_key(torch.bfloat16, d, causal, False, True, seqlen, seqlen, specs.capability(arch))
            for i, c in enumerate(ops.FWD_TUNING.candidates(key)):
                spec_list.append(specs.fwd_spec(arch, d, config=c, varlen=True))
                if i == 0:
                    first.add(spec_list[-1].label)
            for variant in specs.BWD_VARIANTS:
                for i, c in enumerate(ops.BWD_TUNING.candidates({**key, "variant": variant})):
                    new = specs.bwd_specs(arch, d, variant=variant, config=c, varlen=True)
                    spec_list += new
                    if i == 0:
                        first.update(s.label for s in new)
    results = dict(zip((s.label for s in spec_list), compile_kernels(spec_list, archs=(arch,))))
    for label in first:
        assert results[label].fits, results[label]
