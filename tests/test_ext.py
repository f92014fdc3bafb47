"""The compiled extension: loads, reports CUDA honestly, and degrades with a clear message when missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pyscale import _ext


def test_extension_loads_and_reports_cuda():
    status = _ext.extension_status()
    assert status["loaded"], status["error"]
    ext = _ext.extension()
    cuda = ext.cuda_status()
    assert set(cuda) == {"compiled", "device_count", "runtime_version", "driver_version", "error"}
    if cuda["compiled"] and cuda["device_count"] == 0:
        assert status["cuda_error"]  # no silent "no device": a reason is given


def test_missing_extension_warns_once_and_ops_explain_how_to_build():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules['pyscale._C'] = None  # makes `import pyscale._C` raise ImportError
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import pyscale
            import pyscale.ops as ops
        msgs = [str(w.message) for w in caught if 'pyscale._C' in str(w.message)]
        assert len(msgs) == 1, msgs
        import torch
        w = torch.randn(2, 32)
        out = ops.int4_quantize(w, 32)  # falls back to the reference on CPU
        with pyscale.backend('cpp'):
            try:
                ops.int4_quantize(w, 32)
            except ops.BackendError as e:
                assert 'pip install -e .' in str(e), e
            else:
                raise AssertionError('cpp backend ran without _C')
        print('ok')
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.gpu
def test_cuda_build_sees_the_gpu():
    status = _ext.extension_status()
    assert status["cuda_compiled"] and status["cuda_device_count"] >= 1
