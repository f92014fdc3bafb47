from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from pyscale.testing.aot import KernelSpec, assert_compiles, compile_kernels  # noqa: E402

HERE = Path(__file__).parent
MOD = "aot_sample_kernels"


@pytest.fixture(autouse=True)
def _importable(monkeypatch, tmp_path_factory):
    # The compile subprocess imports the sample module by name; cache into a per-session dir.
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", f"{HERE}:{':'.join(sys.path)}")
    monkeypatch.setenv("PYSCALE_AOT_CACHE", str(tmp_path_factory.getbasetemp() / "aot"))


SCALE = KernelSpec(f"{MOD}:scale_kernel", {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "factor": "fp32",
                                           "BLOCK": "constexpr"}, {"BLOCK": 1024})
FP8 = KernelSpec(f"{MOD}:fp8_dot_kernel", {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*fp32",
                                           "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
                 {"BM": 64, "BN": 64, "BK": 64})


def _hog(bk: int) -> KernelSpec:
    return KernelSpec(f"{MOD}:smem_hog_kernel", {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "K": "i32",
                                                 "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
                      {"BM": 256, "BN": 256, "BK": bk}, num_warps=8, num_stages=4)


def test_simple_kernel_compiles_for_every_arch():
    results = assert_compiles([SCALE])
    assert [r.arch for r in results] == ["sm_80", "sm_89", "sm_90a"]
    assert all(r.ok and r.registers and r.registers <= 255 for r in results)


def test_fp8_refused_on_sm80_only():
    results = assert_compiles([FP8], expect_refused=lambda r: r.arch == "sm_80")
    assert not results[0].ok and "fp8" in results[0].error.lower()
    with pytest.raises(AssertionError, match="sm_80: compile failed"):
        assert_compiles([FP8])


def test_shared_memory_overflow_is_caught_per_arch():
    results = compile_kernels([_hog(128)], archs=("sm_89", "sm_90a"))
    by_arch = {r.arch: r for r in results}
    # 4 stages of 256x128 + 128x256 fp16 tiles need far more than sm_89's 99 KB.
    assert by_arch["sm_89"].shared_bytes is None or not by_arch["sm_89"].fits
    with pytest.raises(AssertionError, match="sm_89"):
        assert_compiles([_hog(128)], archs=("sm_89",))


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="archs: unknown architecture"):
        compile_kernels([SCALE], archs=("sm_70",))


def test_spills_fail_only_specs_that_state_their_alignment(monkeypatch):
    """Unaligned specs compile scalar loads the JIT never runs: their stack frames are not judged."""
    import dataclasses

    from pyscale.testing import aot

    aligned = dataclasses.replace(SCALE, label="aligned", divisible_by_16=("x_ptr", "y_ptr"))
    plain = dataclasses.replace(SCALE, label="plain")

    def fake_compile(pairs):
        return [aot.AotResult(s.describe(), a, True, 1024, 99 * 1024, 64, 0, 32) for s, a in pairs]

    monkeypatch.setattr(aot, "compile_pairs", fake_compile)
    assert_compiles([plain], archs=("sm_90a",))
    with pytest.raises(AssertionError, match=r"aligned.*spills \(0 B local, 32 B stack\)"):
        assert_compiles([aligned, plain], archs=("sm_90a",))
    assert_compiles([aligned], archs=("sm_90a",), max_stack_bytes=32)
