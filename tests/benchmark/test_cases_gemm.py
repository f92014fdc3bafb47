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


def test_variant_cases_ab_in_one_run(monkeypatch):
    """On CUDA every structural variant is a case of its own next to the default; TMA only from sm_90."""
    import torch

    from pyscale.benchmark.cases import gemm

    for cap, tma in (((9, 0), True), ((8, 9), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        impls = {(c.dtype, c.impl) for c in gemm.cases("llama3-8b", "cuda")}
        assert {("fp8-block", "pyscale:group"), ("w4a16-g128", "pyscale:swap"), ("w4a16-g128", "pyscale:dense"),
                ("w4a16-g128", "pyscale:fused")} <= impls
        assert (("fp8-row", "pyscale:tma") in impls) == tma and (("int8", "pyscale:tma") in impls) == tma


def test_variant_workload_runs_the_op_in_its_variant(monkeypatch):
    import torch

    from pyscale import ops
    from pyscale.benchmark.cases import gemm
    from pyscale.benchmark.runner import Case

    chosen = []
    real = ops.gemm_variants
    monkeypatch.setattr(ops, "gemm_variants", lambda **kw: chosen.append(kw) or real(**kw))
    params = {"layer": "qkv", "m": 5, "n": 48, "k": 64}
    base = gemm.workload(Case.make("gemm", "gemm", "pyscale", params, "int8", "quick"), "cpu")
    variant = gemm.workload(Case.make("gemm", "gemm", "pyscale:tma", params, "int8", "quick"), "cpu")
    assert variant.notes["variants"] == {"tma": True} and "variants" not in base.notes
    assert chosen == []  # chosen at call time, not when the workload is built
    assert torch.equal(variant.fn(*variant.args), base.fn(*base.args)) and chosen == [{"tma": True}]


def test_variant_rows_compare_with_the_default_and_the_baselines():
    from types import SimpleNamespace

    from pyscale.benchmark.rows import bench_rows
    from pyscale.store import DeviceRecord, MeasurementRecord

    device = DeviceRecord(kind="cuda", name="NVIDIA H100 80GB HBM3", uuid="GPU-test")
    raw = [{"case": SimpleNamespace(params_dict={"k": 64, "m": 16, "n": 32}), "device": device,
            "record": MeasurementRecord(op="gemm", backend=impl, params={}, dtype="fp8-row", time_s=t, flops=1e6,
                                        bytes=1e3).explain_missing("synthetic row")}
           for impl, t in (("torch._scaled_mm", 2e-4), ("pyscale", 1e-4), ("pyscale:tma", 0.5e-4))]
    rows = {r["impl"]: r for r in bench_rows(raw)}
    assert rows["pyscale"]["speedup"] == {"torch._scaled_mm": 2.0}  # variants are not the default's baselines
    assert rows["pyscale:tma"]["speedup"] == {"torch._scaled_mm": 4.0, "pyscale": 2.0}
