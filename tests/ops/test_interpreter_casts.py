"""pyscale.ops runs its Triton kernels in the interpreter with GPU-like float casts (pyscale.ops._interpreter),
without any test fixture; kernels launched outside pyscale.ops keep the interpreter's own casts."""

from __future__ import annotations

import pytest
import torch

from pyscale import ops
from pyscale._backend import triton_interpreting
from pyscale.reference import quantize as ref

pytestmark = pytest.mark.skipif(not triton_interpreting(), reason="only the Triton interpreter casts differently")


def _x():
    # many values land between fp8 codes, where truncation and round-to-nearest differ
    return torch.randn(48, 256, generator=torch.Generator().manual_seed(0)) * 3


def test_ops_cast_as_a_gpu_does_in_the_interpreter():
    x = _x()
    q, s = ops.quantize_fp8(x, "row")  # the Triton kernel, in the interpreter, no fixture
    rq, rs = ref.quantize_fp8(x, "row")
    assert ops.select_backend("quantize_fp8", x.device, {"triton": 1, "reference": 1}) == "triton"
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert torch.equal(ops.fake_quantize(x, "fp8-row"), ref.dequantize(rq, rs, "row"))


def test_kernels_launched_outside_pyscale_ops_keep_the_interpreter_casts():
    from pyscale.kernels import quantize as kq
    from pyscale.ops._interpreter import available, gpu_like_casts

    assert available() == (True, None)
    x = _x()
    rq, rs = ref.quantize_fp8(x, "row")

    def launch():
        q = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
        s = torch.empty((x.shape[0], 1))
        kq.launch_quantize(x, q, s, qmax=448.0, is_int=False, group_rows=1, group_k=x.shape[1])
        return q.view(torch.uint8)

    wrong = (launch() != rq.view(torch.uint8)).float().mean().item()
    assert wrong > 0.005  # triton 3.6's own conversion: measured 2-4 % of fp8 values off
    with gpu_like_casts():
        assert torch.equal(launch(), rq.view(torch.uint8))
