"""The attention kernels compile ahead of time for sm_80, sm_89 and sm_90a at the configs their launchers
pick (`fwd_config` / `bwd_config`), as the JIT specialises aligned tensors: no register spills, shared
memory within each arch's limit, and on sm_90a a software-pipelined backward (asynchronous copies in
every backward kernel) on wgmma. Specs: `pyscale.testing.aot_attention` (the compile report lists the
same ones, so CI compiles each once).

CI compiles the forward and the split backward at one head dim per BLOCK_D bucket plus 80 and 96, the
fused backward, the TMA forward and varlen at 64 and 128; every head dim and the autotuning candidates
are `slow`.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from pyscale.testing import aot_attention as specs  # noqa: E402
from pyscale.testing.aot import DEFAULT_ARCHS, assert_compiles, compile_kernels  # noqa: E402


def _by_label(spec_list, results):
    return {s.label: r for s, r in zip(spec_list, results)}


def _show(spec_list, results) -> None:
    for s, r in zip(spec_list, results):
        print(f"{s.label}: smem {r.shared_bytes} B, regs {r.registers}, local {r.local_bytes}, stack {r.stack_bytes}, "
              f"ptx {r.ptx_counts}")


@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_defaults_compile_without_spills(arch):
    """Every default config compiles with no local memory or stack frame and fits shared memory; on sm_90a
    each split backward kernel streams its tiles with asynchronous copies and every kernel up to head dim
    128 runs its products on wgmma (at 256 the dk/dv program's 32-key tile is mma.sync: a 64-key wgmma
    tile spills, see `bwd_config`)."""
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
        counts, kernel = r.ptx_counts, s.kernel.split(":")[1]
        if kernel == "_attn_bwd_preprocess":
            continue  # a row reduction: no matmul, nothing to pipeline
        if kernel in ("_attn_bwd_dkdv", "_attn_bwd_dq"):
            assert counts["cp_async"] + counts["tma"] + counts["bulk"] > 0, (s.label, counts)
        if s.constexprs["HEAD_DIM"] <= 128 and s.constexprs["PRECISION"] != "ieee":  # fp32: FMA dots
            assert counts["wgmma"] > 0 and counts["mma_sync"] == 0, (s.label, counts)


def test_split_backward_is_the_pipelined_default():
    """The split kernels are pipelined (num_stages >= 2) on every arch at every CI head dim; the fused one
    is not, which is why split is the default."""
    from pyscale.kernels import attention_bwd as k

    assert k.DEFAULT_VARIANT == "split"
    for arch in DEFAULT_ARCHS:
        for d in specs.CI_HEAD_DIMS:
            cfg = k.bwd_config(d, specs.capability(arch))
            assert min(cfg.num_stages, cfg.dq_launch[1]) >= 2, (arch, d, cfg)


def test_unaligned_largest_tiles_compile_on_sm89():
    """Unaligned tensors (strides not multiples of 16) make the JIT compile scalar loads: the largest
    shared-memory configs must still compile and fit sm_89's 99 KB (their spills are not judged)."""
    import dataclasses

    unaligned = [dataclasses.replace(s, divisible_by_16=(), label=s.label + " unaligned")
                 for s in [specs.fwd_spec("sm_89", 256), *specs.bwd_specs("sm_89", 256)]]
    assert_compiles(unaligned, archs=("sm_89",))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_every_head_dim_compiles_without_spills(arch):
    """Multiples of 8 from 8 to 256: the forward, the split and the fused backward at their defaults."""
    spec_list = [specs.fwd_spec(arch, d) for d in specs.ALL_HEAD_DIMS]
    for d in specs.ALL_HEAD_DIMS:
        spec_list += specs.bwd_specs(arch, d)
    for d in specs.CI_HEAD_DIMS:
        spec_list += specs.bwd_specs(arch, d, variant="fused")
    _show(spec_list, assert_compiles(spec_list, archs=(arch,)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_tma_backward_and_other_dtypes_compile(arch):
    """fp16 defaults, and (sm_90a) the split backward streaming through tensor descriptors."""
    spec_list = specs.default_specs(arch, head_dims=(64, 128, 256), dtype="fp16")
    if arch == "sm_90a":
        for d in (64, 128):
            spec_list += specs.bwd_specs(arch, d, tma=True)
    _show(spec_list, assert_compiles(spec_list, archs=(arch,)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_autotune_candidates_compile(arch):
    """Each candidate space's default (its first entry) fits; the others may be refused (the tuner skips
    them)."""
    from pyscale.kernels import attention as k

    cap = specs.capability(arch)
    spec_list, first = [], set()
    for d in (64, 128, 256):
        for causal, seqlen in ((True, 512), (False, 8192)):
            for i, c in enumerate(k.fwd_candidates(d, cap, causal=causal, seqlen=seqlen)):
                spec_list.append(specs.fwd_spec(arch, d, config=c, varlen=True))
                if i == 0:
                    first.add(spec_list[-1].label)
            for variant in specs.BWD_VARIANTS:
                for i, c in enumerate(k.bwd_candidates(d, cap, variant=variant, causal=causal, seqlen=seqlen)):
                    new = specs.bwd_specs(arch, d, variant=variant, config=c, varlen=True)
                    spec_list += new
                    if i == 0:
                        first.update(s.label for s in new)
    by_label = _by_label(spec_list, compile_kernels(spec_list, archs=(arch,)))
    for label in first:
        assert by_label[label].fits, by_label[label]
