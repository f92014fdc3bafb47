"""pyscale.benchmark.cases.gemm: which formats and baselines a device gets."""

from __future__ import annotations


def test_gpu_gemm_cases_leave_out_what_the_baselines_refuse(monkeypatch):
    import torch

    from pyscale.benchmark.cases import gemm

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cases = gemm.cases("llama3-8b", "cuda")
    int_mm = {c.params_dict["m"] for c in cases if c.impl == "torch._int_mm"}
    pyscale_int8 = {c.params_dict["m"] for c in cases if c.impl == "pyscale" and c.dtype == "int8"}
    assert int_mm and min(int_mm) > 16 and min(pyscale_int8) <= 16  # decode M still measured for pyscale
    assert {c.dtype for c in cases if c.impl == "pyscale"} >= {"fp8-tensor", "fp8-row", "fp8-block", "int8"}
