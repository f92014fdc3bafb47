"""Tests for pyscale/hw.py: the GPU spec table, lookup, registration and peak_flops."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from pyscale import hw
from pyscale.hw import GPUSpec, UnknownGPU

# Device names exactly as torch.cuda.get_device_name() reports them -> canonical spec name.
KNOWN_DEVICES = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA A100-SXM4-80GB": "A100 SXM4 80GB",
    "NVIDIA A100-SXM4-40GB": "A100 SXM4 40GB",
    "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
    "NVIDIA GeForce RTX 4090": "GeForce RTX 4090",
    "NVIDIA GeForce RTX 4070": "GeForce RTX 4070",
    "NVIDIA B200": "B200",
}

HOPPER_ADA = ["H100 SXM", "H100 PCIe", "H200 SXM", "L4", "L40S", "GeForce RTX 4090", "GeForce RTX 4070"]
DATACENTER = ["A100 SXM4 80GB", "A100 SXM4 40GB", "A100 PCIe 80GB", "A100 PCIe 40GB", "H100 SXM",
              "H100 PCIe", "H200 SXM", "B200", "L4", "L40S"]


def _spec(name: str) -> GPUSpec:
    spec = hw.lookup(name)
    assert isinstance(spec, GPUSpec), spec
    return spec


@pytest.fixture
def clean_registry():
    """Leave no user-registered spec behind."""
    before = dict(hw._USER_SPECS)
    yield
    hw._USER_SPECS.clear()
    hw._USER_SPECS.update(before)


def _custom(name: str = "Foo GPU", **overrides) -> GPUSpec:
    fields = dict(
        name=name, match=("foo gpu",), architecture="sm_89", compute_capability=(8, 9),
        peak_flops_per_s={"fp32": 1e13, "tf32": 2e13, "bf16": 4e13, "fp16": 4e13, "fp8": None, "int8": 8e13},
        memory_bandwidth_bytes_per_s=5e11, memory_bytes=8 * 2**30, tdp_w=100.0, sm_count=10,
        max_shared_memory_per_block_bytes=99 * 1024, l2_cache_bytes=None, sources={"tdp_w": "made up"},
    )
    fields.update(overrides)
    return GPUSpec(**fields)


# ------------------------------------------------------------------------------ lookup


@pytest.mark.parametrize(("device", "expected"), sorted(KNOWN_DEVICES.items()))
def test_known_devices(device, expected):
    assert _spec(device).name == expected


def test_lookup_is_case_and_separator_insensitive():
    assert _spec("nvidia a100 sxm4 80gb").name == "A100 SXM4 80GB"
    assert _spec("  NVIDIA GEFORCE RTX 4090 ").name == "GeForce RTX 4090"
    assert _spec("H100 SXM").name == "H100 SXM"  # canonical names match too


def test_variants_are_distinguished():
    # The 40 GB and 80 GB A100s differ in bandwidth; SXM and PCIe H100s in everything.
    assert _spec("NVIDIA A100-SXM4-80GB").memory_bandwidth_bytes_per_s == pytest.approx(2039e9)
    assert _spec("NVIDIA A100-SXM4-40GB").memory_bandwidth_bytes_per_s == pytest.approx(1555e9)
    assert _spec("NVIDIA A100-PCIE-40GB").tdp_w < _spec("NVIDIA A100 80GB PCIe").tdp_w
    sxm, pcie = _spec("NVIDIA H100 80GB HBM3"), _spec("NVIDIA H100 PCIe")
    assert pcie.peak_flops_per_s["bf16"] < sxm.peak_flops_per_s["bf16"]
    assert pcie.sm_count < sxm.sm_count


@pytest.mark.parametrize("device", [
    "Foo GPU", "NVIDIA GeForce RTX 4070 Ti", "NVIDIA GeForce RTX 4070 SUPER", "NVIDIA H100 NVL",
    "NVIDIA L40", "NVIDIA GeForce RTX 4090 Laptop GPU", "NVIDIA A100", "", "AMD Instinct MI300X",
])
def test_unknown_devices_are_explicit(device):
    # Near neighbours have other figures: they must be unknown, not borrow a similar card's row.
    spec = hw.lookup(device)
    assert isinstance(spec, UnknownGPU)
    assert spec.known is False and spec.name == device
    assert "pyscale.hw.register" in spec.reason
    assert hw.peak_flops(spec, "bf16") is None
    assert hw.spec_to_dict(spec) == {"known": False, "name": device, "reason": spec.reason}


def test_lookup_rejects_non_string():
    with pytest.raises(ValueError, match="device_name"):
        hw.lookup(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ table invariants


def test_required_gpus_present():
    names = {s.name for s in hw.all_specs()}
    assert set(KNOWN_DEVICES.values()) <= names


def _numbers(spec: GPUSpec):
    yield "memory_bandwidth_bytes_per_s", spec.memory_bandwidth_bytes_per_s
    yield "memory_bytes", spec.memory_bytes
    yield "tdp_w", spec.tdp_w
    yield "sm_count", spec.sm_count
    yield "max_shared_memory_per_block_bytes", spec.max_shared_memory_per_block_bytes
    yield "l2_cache_bytes", spec.l2_cache_bytes
    for key, value in spec.peak_flops_per_s.items():
        yield f"peak[{key}]", value


@pytest.mark.parametrize("spec", hw.all_specs(), ids=lambda s: s.name)
def test_every_number_positive_or_none(spec):
    for what, value in _numbers(spec):
        assert value is None or (math.isfinite(value) and value > 0), (spec.name, what, value)


@pytest.mark.parametrize("spec", hw.all_specs(), ids=lambda s: s.name)
def test_spec_shape(spec):
    assert tuple(spec.peak_flops_per_s) == hw.DTYPES
    assert spec.match and all(m == m.lower() for m in spec.match)
    assert spec.architecture == "sm_{}{}".format(*spec.compute_capability)
    # The CUDA guide's opt-in maximum per block is fixed by the compute capability.
    expected_smem = {(8, 0): 163, (8, 9): 99, (9, 0): 227, (10, 0): 227}[spec.compute_capability]
    assert spec.max_shared_memory_per_block_bytes == expected_smem * 1024
    # Every peak, the memory figures and the power carry a citation.
    for key in ("peak_flops_per_s", "memory_bandwidth_bytes_per_s", "memory_bytes", "tdp_w", "sm_count",
                "l2_cache_bytes", "max_shared_memory_per_block_bytes"):
        assert spec.sources.get(key), (spec.name, key)
    # Every built-in GPU here has tensor cores for everything but fp8 on Ampere.
    for key in ("fp32", "tf32", "bf16", "fp16", "int8"):
        assert spec.peak_flops_per_s[key] is not None


@pytest.mark.parametrize("name", ["A100 SXM4 80GB", "A100 SXM4 40GB", "A100 PCIe 80GB", "A100 PCIe 40GB"])
def test_fp8_is_none_on_ampere(name):
    spec = _spec(name)
    assert spec.peak_flops_per_s["fp8"] is None  # not 0
    assert hw.peak_flops(spec, "fp8") is None


def test_h100_sxm_dense_bf16_is_half_the_sparse_datasheet_figure():
    spec = _spec("NVIDIA H100 80GB HBM3")
    assert spec.peak_flops_per_s["bf16"] == pytest.approx(1979e12 / 2)
    assert spec.peak_flops_per_s["bf16"] == pytest.approx(989e12, rel=2e-3)
    assert spec.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)


def test_spot_figures():
    assert _spec("NVIDIA A100-SXM4-80GB").peak_flops_per_s["bf16"] == pytest.approx(312e12)
    assert _spec("NVIDIA H200").memory_bandwidth_bytes_per_s == pytest.approx(4.8e12)
    assert _spec("NVIDIA H200").memory_bytes == 141 * 2**30
    assert _spec("NVIDIA B200").peak_flops_per_s["fp8"] == pytest.approx(4.5e15)
    # GeForce: the FP32-accumulate figure (half the FP16-accumulate 330.3).
    assert _spec("NVIDIA GeForce RTX 4090").peak_flops_per_s["fp16"] == pytest.approx(165.2e12)
    # RTX 4070 is derived; it must reproduce NVIDIA's published 29 TFLOPS and 466 AI TOPS (sparse).
    rtx4070 = _spec("NVIDIA GeForce RTX 4070")
    assert rtx4070.peak_flops_per_s["fp32"] == pytest.approx(29e12, rel=0.01)
    assert 2 * rtx4070.peak_flops_per_s["int8"] == pytest.approx(466e12, rel=0.01)
    assert rtx4070.memory_bandwidth_bytes_per_s == pytest.approx(504e9)


@pytest.mark.parametrize("name", HOPPER_ADA)
def test_fp8_is_twice_bf16_on_hopper_and_ada(name):
    peaks = _spec(name).peak_flops_per_s
    # The L40S datasheet prints 733 dense FP8 against 362.05 dense BF16 (1.2% off): its own rounding.
    assert peaks["fp8"] == pytest.approx(2 * peaks["bf16"], rel=0.015)


@pytest.mark.parametrize("name", DATACENTER)
def test_tf32_is_half_bf16_on_datacenter_parts(name):
    peaks = _spec(name).peak_flops_per_s
    # B200's datasheet TF32 (2.2 PF sparse) is NVIDIA's rounding of 2.25: within 2.5%.
    assert peaks["tf32"] == pytest.approx(peaks["bf16"] / 2, rel=0.025)
    assert peaks["fp16"] == peaks["bf16"]


@pytest.mark.parametrize("name", ["GeForce RTX 4090", "GeForce RTX 4070"])
def test_geforce_runs_fp32_accumulate_at_half_the_int8_rate(name):
    # On GeForce Ada, INT8 runs at the FP16-accumulate rate, twice the FP32-accumulate FP16 figure.
    peaks = _spec(name).peak_flops_per_s
    assert peaks["int8"] == pytest.approx(4 * peaks["bf16"], rel=1e-3)
    assert peaks["tf32"] == pytest.approx(peaks["bf16"] / 2, rel=1e-3)


def test_specs_are_read_only():
    spec = _spec("NVIDIA L4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tdp_w = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.peak_flops_per_s["bf16"] = 1.0  # type: ignore[index]


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"peak_flops_per_s": {"fp32": 1e13}}, "exactly the keys"),
    ({"peak_flops_per_s": {"fp32": 1e13, "tf32": 2e13, "bf16": 4e13, "fp16": 4e13, "fp8": 0, "int8": 1}},
     r"peak_flops_per_s\['fp8'\]"),
    ({"tdp_w": 0}, "tdp_w"),
    ({"l2_cache_bytes": -1}, "l2_cache_bytes"),
    ({"memory_bytes": float("nan")}, "memory_bytes"),
    ({"compute_capability": (9,)}, "compute_capability"),
    ({"match": "foo gpu"}, "match"),
    ({"name": ""}, "name"),
])
def test_invalid_spec_raises(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        _custom(**overrides)


# ------------------------------------------------------------------------------ registration


def test_register_and_lookup(clean_registry):
    spec = _custom()
    assert isinstance(hw.lookup("NVIDIA Foo GPU"), UnknownGPU)
    hw.register(spec)
    assert hw.lookup("NVIDIA Foo GPU") is spec
    assert hw.lookup("foo-gpu") is spec
    assert spec in hw.all_specs()
    assert hw.peak_flops(spec, "fp8") is None


def test_register_duplicate_raises_and_replace_overrides(clean_registry):
    hw.register(_custom())
    with pytest.raises(ValueError, match="already registered"):
        hw.register(_custom(tdp_w=200.0))
    with pytest.raises(ValueError, match="already registered"):
        hw.register(_custom(name="foo gpu"))  # names compare case-insensitively
    hw.register(_custom(tdp_w=200.0), replace=True)
    assert hw.lookup("Foo GPU").tdp_w == 200.0
    assert [s.name for s in hw.all_specs()].count("Foo GPU") == 1


def test_registered_spec_takes_precedence_over_builtin(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        hw.register(_custom(name="L4", match=("l4",)))
    mine = _custom(name="L4", match=("l4",), tdp_w=70.0)
    hw.register(mine, replace=True)
    assert hw.lookup("NVIDIA L4") is mine
    assert sum(s.name == "L4" for s in hw.all_specs()) == 1
    # A new name claiming a built-in device name also wins the tie.
    other = _custom(name="My L40S", match=("l40s",))
    hw.register(other)
    assert hw.lookup("NVIDIA L40S") is other


def test_prefix_pattern_is_less_specific_than_exact(clean_registry):
    loose = _custom(name="Any RTX 40", match=("rtx 40*",))
    hw.register(loose)
    assert hw.lookup("NVIDIA GeForce RTX 4080") is loose
    assert hw.lookup("NVIDIA GeForce RTX 4090").name == "GeForce RTX 4090"  # exact beats prefix


def test_register_rejects_non_spec():
    with pytest.raises(ValueError, match="GPUSpec"):
        hw.register({"name": "x"})  # type: ignore[arg-type]


def test_register_from_json_round_trip(tmp_path, clean_registry):
    original = _custom(name="Bar GPU", match=("bar gpu", "bar-gpu-64gb"), l2_cache_bytes=64 * 2**20)
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([hw.spec_to_dict(original)]))
    (loaded,) = hw.register_from_json(path)
    assert loaded == original
    assert hw.lookup("NVIDIA Bar-GPU-64GB") == original
    # spec_to_dict is JSON-ready and marks known specs.
    assert json.loads(json.dumps(hw.spec_to_dict(loaded)))["known"] is True


def test_register_from_json_peak_tflops(tmp_path, clean_registry):
    data = hw.spec_to_dict(_custom(name="Baz GPU", match=("baz gpu",)))
    del data["peak_flops_per_s"], data["sources"], data["known"]
    data["peak_tflops"] = {"fp32": 10, "tf32": 20, "bf16": 40, "fp16": 40, "fp8": None, "int8": 80}
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([data]))
    (spec,) = hw.register_from_json(path)
    assert hw.peak_flops(spec, "bf16") == pytest.approx(40e12)
    assert spec.peak_flops_per_s["fp8"] is None
    assert dict(spec.sources) == {}


def test_register_from_json_all_or_nothing(tmp_path, clean_registry):
    good = hw.spec_to_dict(_custom(name="Good GPU", match=("good gpu",)))
    bad = hw.spec_to_dict(_custom(name="Bad GPU", match=("bad gpu",)))
    bad["tdp_w"] = 0
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError, match="tdp_w"):
        hw.register_from_json(path)
    assert isinstance(hw.lookup("Good GPU"), UnknownGPU)

    path.write_text(json.dumps(hw.spec_to_dict(_custom())))  # an object, not a list
    with pytest.raises(ValueError, match="JSON list"):
        hw.register_from_json(path)

    dup = hw.spec_to_dict(_custom(name="L4", match=("l4",)))
    path.write_text(json.dumps([dup]))
    with pytest.raises(ValueError, match="already registered"):
        hw.register_from_json(path)
    assert hw.register_from_json(path, replace=True)[0].name == "L4"


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d.pop("tdp_w"), "missing field"),
    (lambda d: d.update(watts=3), "unknown field"),
    (lambda d: d.update(peak_tflops={"fp32": 1}), "not both"),
])
def test_spec_from_dict_errors(mutate, needle):
    data = hw.spec_to_dict(_custom())
    mutate(data)
    with pytest.raises(ValueError, match=needle):
        hw.spec_from_dict(data)


# ------------------------------------------------------------------------------ peak_flops


class _FakeDtype:
    """Stands in for a torch.dtype: peak_flops compares by str(), as torch prints 'torch.bfloat16'."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"torch.{self.name}"


@pytest.mark.parametrize(("dtype", "key"), [
    ("bf16", "bf16"), ("bfloat16", "bf16"), ("BF16", "bf16"), (_FakeDtype("bfloat16"), "bf16"),
    ("fp16", "fp16"), ("float16", "fp16"), ("half", "fp16"), (_FakeDtype("float16"), "fp16"),
    ("fp32", "fp32"), ("float32", "fp32"), (_FakeDtype("float32"), "fp32"),
    ("tf32", "tf32"),
    ("fp8", "fp8"), ("float8_e4m3fn", "fp8"), ("float8_e5m2", "fp8"), (_FakeDtype("float8_e4m3fn"), "fp8"),
    ("int8", "int8"), (_FakeDtype("int8"), "int8"),
])
def test_peak_flops_aliases(dtype, key):
    spec = _spec("NVIDIA H100 80GB HBM3")
    assert hw.peak_flops(spec, dtype) == spec.peak_flops_per_s[key]


@pytest.mark.parametrize("dtype", ["float64", "int4", "", "bf17", _FakeDtype("complex64")])
def test_peak_flops_bad_dtype(dtype):
    with pytest.raises(ValueError, match="dtype"):
        hw.peak_flops(_spec("NVIDIA L4"), dtype)
    with pytest.raises(ValueError, match="dtype"):  # checked even when the GPU is unknown
        hw.peak_flops(hw.lookup("Foo"), dtype)


def test_peak_flops_with_real_torch_dtype():
    torch = pytest.importorskip("torch")
    spec = _spec("NVIDIA GeForce RTX 4070")
    assert hw.peak_flops(spec, torch.bfloat16) == spec.peak_flops_per_s["bf16"]
    assert hw.peak_flops(spec, torch.float8_e4m3fn) == spec.peak_flops_per_s["fp8"]
    with pytest.raises(ValueError, match="dtype"):
        hw.peak_flops(spec, torch.float64)


# ------------------------------------------------------------------------------ serialisation, device


@pytest.mark.parametrize("spec", hw.all_specs(), ids=lambda s: s.name)
def test_spec_to_dict_round_trips_every_builtin(spec):
    data = json.loads(json.dumps(hw.spec_to_dict(spec)))
    assert data["known"] is True
    assert hw.spec_from_dict(data) == spec


def test_current_device_spec():
    torch = pytest.importorskip("torch")
    spec = hw.current_device_spec()
    if not torch.cuda.is_available():
        assert isinstance(spec, UnknownGPU) and "CUDA" in spec.reason
        return
    assert isinstance(hw.current_device_spec(torch.cuda.device_count()), UnknownGPU)
    if isinstance(spec, GPUSpec):
        assert spec.compute_capability == tuple(torch.cuda.get_device_capability(0))


@pytest.mark.gpu
def test_current_device_is_in_the_table():
    spec = hw.current_device_spec()
    assert isinstance(spec, GPUSpec), spec


def test_import_does_not_import_torch():
    code = "import pyscale.hw, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
