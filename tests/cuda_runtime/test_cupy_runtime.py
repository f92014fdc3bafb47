"""pyscale.cuda_runtime: the CuPy NVRTC path of the CUDA kernels, its dispatch, `pyscale info` and DLPack.

Without a GPU this checks what can be checked (the reasons given, the launch arguments, the source
lookup and cache key, DLPack inputs); the `gpu` tests compare the CuPy path with the nvcc-built `_C`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyscale
from pyscale import _ext, cuda_runtime, ops, sysinfo
from pyscale.ops import _dispatch
from pyscale.ops import int4 as int4_ops

ROOT = Path(__file__).resolve().parents[2] / "csrc"


# ------------------------------------------------------------------ sources

def test_source_dir_is_the_tree_the_headers_live_in():
    root = cuda_runtime.source_dir()
    assert root is not None and (root / "common.h").is_file()
    assert "int4" in cuda_runtime.kernel_families()


def test_signatures_parse_every_kernel_of_the_int4_header():
    sigs = cuda_runtime.signatures(ROOT)
    quant = sigs["pyscale_int4_quantize_kernel"]
    assert [kind for _, kind in quant.params] == ["pointer", "int64_t", "int64_t", "int", "int", "int",
                                                  "pointer", "pointer", "pointer"]
    assert {"pyscale_int4_pack_kernel", "pyscale_int4_unpack_kernel", "pyscale_int4_dequantize_kernel"} <= set(sigs)


def test_unknown_parameter_types_are_refused_by_name(tmp_path):
    shutil.copy(ROOT / "common.h", tmp_path / "common.h")
    header = tmp_path / "ops" / "x" / "x_kernels.cuh"
    header.parent.mkdir(parents=True)
    header.write_text('extern "C" __global__ void pyscale_x_kernel(float* a, short s) {}\n')
    with pytest.raises(ValueError, match=r"pyscale_x_kernel.*'s'.*'short'"):
        cuda_runtime.signatures(tmp_path)


def test_the_translation_unit_tracks_every_header(tmp_path):
    # CuPy keys its disk cache by source text: an edit to common.h must change every module's text.
    for path in ROOT.rglob("*"):
        if path.suffix in (".h", ".cuh"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
    header = cuda_runtime.headers(tmp_path)[0]
    before = cuda_runtime.module_source(header, tmp_path)
    assert f'#include "{header.relative_to(tmp_path).as_posix()}"' in before
    (tmp_path / "common.h").write_text((tmp_path / "common.h").read_text() + "\n// edited\n")
    assert cuda_runtime.module_source(header, tmp_path) != before


def test_kernel_arguments_are_checked_and_typed():
    k = cuda_runtime.kernel("pyscale_int4_pack_kernel")
    typed = k.convert_args((0x7F0000001000, 3, 64, 0x7F0000002000))
    assert [type(v) for v in typed] == [np.uint64, np.int64, np.int64, np.uint64]
    with pytest.raises(TypeError, match="takes 4 arguments"):
        k.convert_args((1, 2, 3))
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        cuda_runtime.kernel("nope")


# ------------------------------------------------------------------ without a GPU

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages given without a GPU")
def test_without_a_gpu_the_runtime_says_why():
    ok, reason = cuda_runtime.available()
    assert not ok
    assert "CuPy" in reason  # "CuPy is not installed (pip install ...)" or "CuPy sees no CUDA device"
    with pytest.raises(cuda_runtime.RuntimeUnavailable, match="pyscale_int4_pack_kernel.*CuPy"):
        cuda_runtime.kernel("pyscale_int4_pack_kernel")(0, 0, 0, 0, grid=1, block=1, stream=0, device=0)


def test_cuda_backend_reason_names_both_paths(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda_build", lambda: False)
    monkeypatch.setattr(cuda_runtime, "available", lambda: (False, "CuPy sees no CUDA device"))
    reason = _dispatch.why_impossible("cuda", torch.device("cuda"), "int4_pack")
    assert "built without CUDA" in reason and "CuPy sees no CUDA device" in reason
    # An op without a runtime path must not be promised one.
    assert "no CuPy NVRTC runtime path" in _dispatch.why_impossible("cuda", torch.device("cuda"), "other_op")
    monkeypatch.setattr(cuda_runtime, "available", lambda: (True, "fake"))
    assert _dispatch.why_impossible("cuda", torch.device("cuda"), "int4_pack") is None
    assert _dispatch.cuda_path("int4_pack") == "cupy" and _dispatch.cuda_path("other_op") is None
    assert _dispatch.select_backend("int4_pack", torch.device("cuda"), int4_ops._PACK) == "cuda"
    assert int4_ops._cuda_ext() is int4_ops._RUNTIME


def test_runtime_launchers_match_the_kernel_signatures(monkeypatch):
    """The _C-shaped launchers pass each kernel exactly its parameters, over ceil(work / 256) blocks."""
    launched = []

    class Recorder:
        def __init__(self, name):
            self.real = cuda_runtime.RuntimeKernel(cuda_runtime.signatures()[name])

        def __call__(self, *args, grid, block, stream, device):
            launched.append((self.real.name, self.real.convert_args(args), grid, block, stream, device))

    monkeypatch.setattr(cuda_runtime, "kernel", Recorder)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    rt = int4_ops._RUNTIME
    n, k, g = 3, 256, 64
    rt.int4_quantize_cuda(1000, n, k, g, False, 2, 2000, 3000, 4000, 77)
    rt.int4_pack_cuda(1000, n, k, 2000, 77)
    rt.int4_unpack_cuda(1000, n, k, 2000, 77)
    rt.int4_dequantize_cuda(1000, 2000, 0, n, k, g, 3000, 77)
    rt.int4_pack_cuda(1000, 0, k, 2000, 77)  # empty: nothing launched, like the nvcc launchers
    names = [x[0] for x in launched]
    assert names == ["pyscale_int4_quantize_kernel", "pyscale_int4_pack_kernel", "pyscale_int4_unpack_kernel",
                     "pyscale_int4_dequantize_kernel"]
    grids = [x[2] for x in launched]
    assert grids == [1, (n * k // 2 + 255) // 256, (n * k // 2 + 255) // 256, (n * k + 255) // 256]
    assert all(x[3] == 256 and x[4] == 77 and x[5] == 0 for x in launched)
    assert launched[0][1][4] == np.int32(0)  # symmetric=False reaches the kernel as int 0


def test_launch_plumbing_against_a_stand_in_cupy(monkeypatch):
    """What reaches CuPy: the header's translation unit and options, the device, torch's stream, typed args."""
    import types

    calls = []

    class Function:
        def __call__(self, grid, block, args, *, shared_mem=0):
            calls.append(("launch", grid, block, args, shared_mem))

    class RawModule:
        def __init__(self, code, options):
            calls.append(("compile", code, options))

        def get_function(self, name):
            calls.append(("get_function", name))
            return Function()

    class Context:
        def __init__(self, what):
            self.what = what

        def __enter__(self):
            calls.append(("enter", self.what))

        def __exit__(self, *exc):
            calls.append(("exit", self.what))

    class Stream:
        @staticmethod
        def from_external(obj):
            return Context(("stream", obj.__cuda_stream__()))

    fake = types.ModuleType("cupy")
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(Device=lambda i: Context(("device", i)), Stream=Stream)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_runtime, "available", lambda: (True, "stand-in"))
    monkeypatch.setattr(cuda_runtime, "_modules", {})
    sig = cuda_runtime.signatures()["pyscale_int4_unpack_kernel"]
    kern = cuda_runtime.RuntimeKernel(sig)
    for _ in range(2):
        kern(4096, 3, 64, 8192, grid=1, block=256, stream=0xABC, device=1)
    compiles = [c for c in calls if c[0] == "compile"]
    assert len(compiles) == 1  # compiled once per process (and cached on disk by CuPy)
    assert compiles[0][1] == cuda_runtime.module_source(sig.header)
    assert compiles[0][2] == cuda_runtime.compile_options(sig.header)
    launches = [c for c in calls if c[0] == "launch"]
    assert len(launches) == 2 and launches[0][1:3] == ((1,), (256,))
    assert [type(a) for a in launches[0][3]] == [np.uint64, np.int64, np.int64, np.uint64]
    # The launch happens inside the tensor's device and torch's stream, in that order.
    i = calls.index(launches[0])
    assert calls[i - 1] == ("enter", ("stream", (0, 0xABC)))
    assert ("enter", ("device", 1)) in calls[:i - 1]


# ------------------------------------------------------------------ pyscale info

def test_info_reports_the_cupy_runtime_and_each_family_path():
    names = {p.name: p for p in sysinfo.probes()}
    assert "CuPy NVRTC runtime" in names
    runtime = names["CuPy NVRTC runtime"]
    assert runtime.available == cuda_runtime.available()[0] and runtime.detail == cuda_runtime.available()[1]
    family = names["int4 CUDA kernels"]
    if _ext.has_cuda_build():
        assert "_C" in family.detail
    else:
        assert "CuPy NVRTC runtime" in family.detail


def test_info_claims_the_runtime_path_only_for_wired_families(monkeypatch):
    monkeypatch.setattr(_ext, "extension_status", lambda: {"cuda_compiled": False, "cuda_device_count": 0,
                                                           "cuda_error": "not compiled"})
    monkeypatch.setattr(cuda_runtime, "available", lambda: (True, "stand-in"))
    monkeypatch.setattr(cuda_runtime, "kernel_families", lambda root=None: ["int4", "newop"])
    probes = {p.name: p for p in sysinfo.probe_cuda_kernel_paths()}
    assert probes["int4 CUDA kernels"].available and "CuPy NVRTC runtime" in probes["int4 CUDA kernels"].detail
    assert not probes["newop CUDA kernels"].available
    assert "no CuPy NVRTC path" in probes["newop CUDA kernels"].detail


def test_wired_families_are_the_ones_whose_ops_registered():
    import importlib

    for family in cuda_runtime.WIRED_FAMILIES:
        importlib.import_module(f"pyscale.ops.{family}")
    registered = {op.split("_", 1)[0] for op in _dispatch._RUNTIME_CUDA_OPS}
    assert registered == set(cuda_runtime.WIRED_FAMILIES)
    assert set(cuda_runtime.WIRED_FAMILIES) <= set(cuda_runtime.kernel_families(ROOT))


def test_info_json_lists_the_runtime_probe():
    out = subprocess.run([sys.executable, "-m", "pyscale", "info", "--json"], capture_output=True, text=True,
                         check=True)
    assert '"CuPy NVRTC runtime"' in out.stdout and '"int4 CUDA kernels"' in out.stdout


# ------------------------------------------------------------------ DLPack

def test_dlpack_inputs_are_used_without_a_copy():
    codes = np.arange(64, dtype=np.uint8).reshape(4, 16) % 16
    from pyscale.ops._interop import as_torch

    seen = as_torch(codes)
    assert isinstance(seen, torch.Tensor) and seen.data_ptr() == codes.ctypes.data
    packed = ops.int4_pack(codes)
    assert torch.equal(packed, ops.int4_pack(torch.from_numpy(codes.copy())))
    assert torch.equal(ops.int4_unpack(packed.numpy()), torch.from_numpy(codes))


def test_non_arrays_still_get_the_ops_own_message():
    with pytest.raises((TypeError, ValueError), match="codes"):
        ops.int4_pack([[1, 2]])


# ------------------------------------------------------------------ on a GPU

def _runtime_vs_c(monkeypatch, fn):
    """fn() through the nvcc-built _C, then through the CuPy path on the same inputs."""
    if not _ext.has_cuda_build():
        pytest.skip("this _C was built without CUDA: nothing to compare the CuPy path with")
    ok, reason = cuda_runtime.available()
    if not ok:
        pytest.skip(f"CuPy NVRTC runtime unavailable: {reason}")
    with pyscale.backend("cuda"):
        want = fn()
        monkeypatch.setattr(int4_ops._ext, "has_cuda_build", lambda: False)
        assert int4_ops._cuda_ext() is int4_ops._RUNTIME
        got = fn()
    return want, got


@pytest.mark.gpu
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 128])
def test_cupy_path_equals_c_bit_for_bit(monkeypatch, symmetric, dtype, group_size):
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(37, 512, generator=gen) * 3).to(dtype).cuda()

    def run():
        q = ops.int4_quantize(w, group_size, symmetric=symmetric)
        return (*q, ops.int4_dequantize(*q, group_size=group_size), ops.int4_unpack(q.qweight),
                ops.int4_pack(ops.int4_unpack(q.qweight)))

    want, got = _runtime_vs_c(monkeypatch, run)
    for a, b in zip(want, got):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.gpu
def test_cupy_path_runs_on_a_side_stream(monkeypatch):
    codes = (torch.arange(4096, device="cuda") % 16).to(torch.uint8).reshape(8, 512)
    stream = torch.cuda.Stream()

    def run():
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = ops.int4_pack(codes)
        stream.synchronize()
        return out

    want, got = _runtime_vs_c(monkeypatch, run)
    assert torch.equal(want, got)


@pytest.mark.gpu
def test_cupy_arrays_enter_the_ops_without_a_copy():
    cupy = pytest.importorskip("cupy")
    codes = (cupy.arange(2048, dtype=cupy.uint8) % 16).reshape(4, 512)
    from pyscale.ops._interop import as_torch

    t = as_torch(codes)
    assert t.is_cuda and t.data_ptr() == codes.data.ptr
    packed = ops.int4_pack(codes)
    assert torch.equal(ops.int4_unpack(packed), t)
