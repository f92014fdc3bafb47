"""Every CUDA kernel header of csrc/ compiles through NVRTC, with no GPU, exactly as the CuPy path compiles it.

Headers are discovered by glob (`csrc/**/*_kernels.cuh`), so a new op family is covered when it lands.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pyscale import cuda_runtime
from pyscale.testing import nvrtc

ROOT = Path(__file__).resolve().parents[2] / "csrc"
HEADERS = sorted(ROOT.glob(cuda_runtime.HEADER_GLOB))

_reason = nvrtc.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"NVRTC is unavailable: {_reason}")


def test_headers_are_found():
    assert any(h.name == "int4_kernels.cuh" for h in HEADERS), HEADERS
    assert cuda_runtime.headers(ROOT) == HEADERS


@pytest.mark.parametrize("arch", nvrtc.ARCHS)
@pytest.mark.parametrize("header", HEADERS, ids=lambda h: h.relative_to(ROOT).as_posix())
def test_header_compiles_and_exports_its_kernels(header, arch):
    result = nvrtc.compile_header(header, arch, ROOT)
    assert result.ok, f"NVRTC {nvrtc.version()} failed on {header} for {arch}:\n{result.log}"
    entries = result.entries()
    expected = {name: sig for name, sig in cuda_runtime.signatures(ROOT).items() if sig.header == header}
    assert expected, f"{header} declares no extern \"C\" __global__ kernel"
    # C linkage: the names the runtime looks up are the names in the module, unmangled.
    assert set(expected) <= set(entries), (sorted(expected), sorted(entries))
    for name, sig in expected.items():
        # The launcher's parsed parameter list must agree with the compiler's, size by size.
        ours = [8 if kind == "pointer" else np.dtype(cuda_runtime.SCALAR_TYPES[kind]).itemsize
                for _, kind in sig.params]
        theirs = [int(t.lstrip(".ubsf")) // 8 for t in entries[name]]
        assert ours == theirs, f"{name}: runtime passes {ours} bytes per argument, PTX expects {theirs}"


def test_a_broken_header_fails_with_the_compiler_log(tmp_path):
    shutil.copy(ROOT / "common.h", tmp_path / "common.h")
    bad = tmp_path / "ops" / "bad" / "bad_kernels.cuh"
    bad.parent.mkdir(parents=True)
    bad.write_text('#include "../../common.h"\n'
                   'extern "C" __global__ void pyscale_bad_kernel(float* x) { x[0] = undeclared_name; }\n')
    result = nvrtc.compile_header(bad, "compute_80", tmp_path)
    assert not result.ok
    assert "undeclared_name" in result.log

