"""Compile the kernel headers of `csrc/` through NVRTC with no GPU (what the CuPy path does at run time).

Uses `cuda.bindings.nvrtc` with the NVRTC library of the `nvidia-cuda-nvrtc` wheel (or a CUDA toolkit),
and the very translation unit and options `pyscale.cuda_runtime` hands CuPy, so a header that compiles
here compiles on a GPU machine without nvcc. Each compile runs in a subprocess: importing cuda.bindings
changes process-wide state that breaks `torch.load(weights_only=True)` of float8 tensors afterwards, and
a test process must not carry that into unrelated tests.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from pyscale import cuda_runtime

ARCHS = ("compute_80", "compute_90")


def unavailable_reason() -> str | None:
    """None when NVRTC can be driven from Python here, else why not (for a pytest skip)."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-bindings is not installed (pip install cuda-bindings nvidia-cuda-nvrtc)"
    return _in_subprocess({"what": "reason"})["reason"]


def _unavailable_reason_here() -> str | None:
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-bindings is not installed (pip install cuda-bindings nvidia-cuda-nvrtc)"
    try:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings load libnvrtc lazily: a missing library shows up here
        return f"NVRTC cannot be loaded ({type(exc).__name__}: {exc}); pip install nvidia-cuda-nvrtc"
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return f"nvrtcVersion failed: {err}"
    return None


def version() -> tuple[int, int]:
    return tuple(_in_subprocess({"what": "version"})["version"])


def _version_here() -> tuple[int, int]:
    from cuda.bindings import nvrtc

    _, major, minor = nvrtc.nvrtcVersion()
    return int(major), int(minor)


@dataclass
class Compiled:
    header: Path
    arch: str
    ok: bool
    log: str
    ptx: str

    def entries(self) -> dict[str, list[str]]:
        """Kernel name -> PTX parameter types (".u64", ".u32", ".f32", ...) of every `.entry`."""
        out = {}
        for match in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", self.ptx):
            out[match.group(1)] = re.findall(r"\.param\s+(?:\.align\s+\d+\s+)?(\.\w+)", match.group(2))
        return out


def _check(result, what: str) -> None:
    from cuda.bindings import nvrtc

    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}")


def compile_header(header: Path, arch: str, root: Path | None = None) -> Compiled:
    """Compile one `*_kernels.cuh` for a virtual architecture (e.g. "compute_90") to PTX (in a subprocess)."""
    out = _in_subprocess({"what": "compile", "header": str(header), "arch": arch,
                          "root": None if root is None else str(root)})
    return Compiled(Path(header), arch, out["ok"], out["log"], out["ptx"])


def _in_subprocess(request: dict) -> dict:
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pyscale.testing.nvrtc"], input=json.dumps(request), text=True,
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"NVRTC subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main() -> None:
    import json
    import sys

    req = json.loads(sys.stdin.read())
    if req["what"] == "reason":
        out: dict = {"reason": _unavailable_reason_here()}
    elif req["what"] == "version":
        out = {"version": list(_version_here())}
    else:
        c = _compile_here(Path(req["header"]), req["arch"], None if req["root"] is None else Path(req["root"]))
        out = {"ok": c.ok, "log": c.log, "ptx": c.ptx}
    print(json.dumps(out))


def _compile_here(header: Path, arch: str, root: Path | None = None) -> Compiled:
    from cuda.bindings import nvrtc

    source = cuda_runtime.module_source(header, root).encode()
    options = [o.encode() for o in (*cuda_runtime.compile_options(header, root), f"--gpu-architecture={arch}")]
    err, prog = nvrtc.nvrtcCreateProgram(source, f"{header.stem}_runtime.cu".encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check(err, "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        ok = status == nvrtc.nvrtcResult.NVRTC_SUCCESS
        ptx = b""
        if ok:
            err, size = nvrtc.nvrtcGetPTXSize(prog)
            _check(err, "nvrtcGetPTXSize")
            ptx = b" " * size
            _check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        text = lambda b: b.rstrip(b"\x00 ").decode(errors="replace")
        return Compiled(header, arch, ok, text(log), text(ptx))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


if __name__ == "__main__":
    _main()
