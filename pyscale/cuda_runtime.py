"""The CUDA kernels of `csrc/`, compiled at first use through CuPy's NVRTC (no nvcc needed at install).

When `pyscale._C` was built without CUDA (no nvcc on the machine that installed pyscale) but the machine
has a GPU and CuPy, the same kernels run through this path: every op family keeps its device code in
`csrc/ops/<family>/<family>_kernels.cuh` with `extern "C" __global__` entry points (NVRTC compiles
device code only), the nvcc-built launchers include those headers, and this module compiles them with
`cupy.RawModule`. CuPy caches the binary on disk keyed by the source text, which here carries a hash of
every header, so an edited header is recompiled and an unchanged one is loaded from the cache.

Layer 1-2: imports neither torch nor pyscale.ops. Callers pass raw device addresses, sizes and the raw
handle of the stream to launch on (e.g. `torch.cuda.current_stream().cuda_stream`).

The headers are found in the installed package (`pyscale/_csrc`, shipped as package data) or, in a
source checkout or editable install, in `csrc/` next to the package.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER_GLOB = "**/*_kernels.cuh"
COMPILE_OPTIONS = ("-std=c++17",)
INSTALL_HINT = "pip install cupy-cuda12x or cupy-cuda13x, after the CUDA major version of the driver"

# Op families whose `cuda` backend launches through this module when _C lacks CUDA (their ops call
# pyscale.ops._dispatch.register_runtime_cuda; a test keeps the two in step). A family with a header but
# not listed here still has its header compile-tested, and `pyscale info` says it has no runtime path.
WIRED_FAMILIES = ("int4",)

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_DIRS = (_PACKAGE_DIR / "_csrc", _PACKAGE_DIR.parent / "csrc")


class RuntimeUnavailable(RuntimeError):
    """The CuPy NVRTC path cannot run here (no CuPy, no GPU, or no kernel sources)."""


# --------------------------------------------------------------------------- sources (no CuPy needed)

def source_dir() -> Path | None:
    """The directory holding common.h and ops/*/..._kernels.cuh, or None when neither location has them."""
    for candidate in _SOURCE_DIRS:
        if (candidate / "common.h").is_file():
            return candidate
    return None


def headers(root: Path | None = None) -> list[Path]:
    """Every kernel header (`*_kernels.cuh`) under the source directory, sorted."""
    root = root or source_dir()
    return sorted(root.glob(HEADER_GLOB)) if root is not None else []


def kernel_families(root: Path | None = None) -> list[str]:
    """Op families with device code in a header, named after their folder (e.g. "int4")."""
    return [h.parent.name for h in headers(root)]


_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

# Scalar parameter types the launcher knows how to pass, mapped to numpy scalar types by name.
SCALAR_TYPES = {"int64_t": "int64", "long long": "int64", "int": "int32", "int32_t": "int32",
                "unsigned int": "uint32", "uint32_t": "uint32", "float": "float32", "double": "float64",
                "bool": "bool_"}


@dataclass(frozen=True)
class KernelSignature:
    name: str
    header: Path
    params: tuple[tuple[str, str], ...]  # (name, kind): kind is "pointer" or a key of SCALAR_TYPES


def _parse_param(text: str, kernel: str) -> tuple[str, str]:
    text = " ".join(text.replace("__restrict__", " ").split())
    if "*" in text:
        return text.rsplit("*", 1)[1].strip(), "pointer"
    words = [w for w in text.split() if w != "const"]
    if len(words) < 2:
        raise ValueError(f"cannot parse parameter {text!r} of kernel {kernel}")
    ctype = " ".join(words[:-1])
    if ctype not in SCALAR_TYPES:
        raise ValueError(f"kernel {kernel}: parameter {words[-1]!r} has type {ctype!r}, which the runtime "
                         f"launcher cannot pass (known: pointers and {', '.join(SCALAR_TYPES)})")
    return words[-1], ctype


def signatures(root: Path | None = None) -> dict[str, KernelSignature]:
    """The `extern "C" __global__` entry points of every header, by kernel name."""
    out: dict[str, KernelSignature] = {}
    for header in headers(root):
        text = re.sub(r"//[^\n]*", "", header.read_text())
        for match in _ENTRY.finditer(text):
            name, params = match.group(1), match.group(2).strip()
            parsed = tuple(_parse_param(p, name) for p in params.split(",")) if params else ()
            if name in out:
                raise ValueError(f"kernel {name} is defined in both {out[name].header} and {header}")
            out[name] = KernelSignature(name, header, parsed)
    return out


def sources_digest(root: Path | None = None) -> str:
    """sha256 over every header and .h file of the source tree (what a compiled module depends on)."""
    root = root or source_dir()
    digest = hashlib.sha256()
    if root is not None:
        for path in sorted([*root.rglob("*.h"), *root.rglob("*.cuh")]):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def module_source(header: Path, root: Path | None = None) -> str:
    """The NVRTC translation unit for one header: an include plus the hash that keys CuPy's disk cache."""
    root = root or source_dir()
    rel = header.resolve().relative_to(root.resolve()).as_posix()
    return f"// pyscale kernel sources sha256={sources_digest(root)}\n#include \"{rel}\"\n"


def compile_options(header: Path, root: Path | None = None) -> tuple[str, ...]:
    """NVRTC options: the source root for the include above and the header's folder for its own includes."""
    root = root or source_dir()
    return (*COMPILE_OPTIONS, f"-I{root}", f"-I{header.resolve().parent}")


# --------------------------------------------------------------------------- availability

@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    root = source_dir()
    if root is None:
        return False, f"kernel headers not found (looked in {', '.join(str(d) for d in _SOURCE_DIRS)})"
    if not headers(root):
        return False, f"no {HEADER_GLOB} under {root}"
    if importlib.util.find_spec("cupy") is None:
        return False, f"CuPy is not installed: {INSTALL_HINT}"
    try:
        import cupy

        if not cupy.cuda.is_available():
            return False, "CuPy sees no CUDA device"
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # a broken CuPy or driver is a reason, not a crash
        return False, f"CuPy cannot use the GPU ({type(exc).__name__}: {exc})"
    return True, f"CuPy {cupy.__version__}, {count} device(s), NVRTC compiles {root} at first use"


def available() -> tuple[bool, str]:
    """(True, what will be used) when kernels can be compiled and launched here, else (False, why not)."""
    return _probe()


# --------------------------------------------------------------------------- compile and launch

_lock = threading.Lock()
_modules: dict[Path, Any] = {}


def _module(header: Path):
    with _lock:
        module = _modules.get(header)
        if module is None:
            import cupy

            root = source_dir()
            # Compilation is deferred by CuPy until get_function; the disk cache makes later processes fast.
            module = cupy.RawModule(code=module_source(header, root), options=compile_options(header, root))
            _modules[header] = module
        return module


def _external_stream(handle: int, device: int):
    """A CuPy view of a stream someone else owns (torch's current stream); `device` must be current."""
    import cupy

    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:  # CuPy >= 14: the CUDA stream protocol
        return from_external(_StreamHandle(handle))
    return cupy.cuda.ExternalStream(handle, device)


class _StreamHandle:
    """A raw stream address speaking the CUDA stream protocol (`__cuda_stream__` -> (version, handle))."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


class RuntimeKernel:
    """One `extern "C" __global__` kernel of a header, launched with typed arguments on a given stream."""

    def __init__(self, signature: KernelSignature) -> None:
        self.signature = signature
        self._functions: dict[int, Any] = {}  # device -> CuPy kernel (loaded per device)

    @property
    def name(self) -> str:
        return self.signature.name

    def convert_args(self, args: Sequence[Any]) -> tuple[Any, ...]:
        """Python values -> numpy scalars of the parameter types (pointers as uint64 addresses)."""
        import numpy as np

        params = self.signature.params
        if len(args) != len(params):
            raise TypeError(f"{self.name} takes {len(params)} arguments "
                            f"({', '.join(n for n, _ in params)}): got {len(args)}")
        out = []
        for (_, kind), value in zip(params, args):
            if kind == "pointer":
                out.append(np.uint64(int(value)))
            else:
                out.append(getattr(np, SCALAR_TYPES[kind])(value))
        return tuple(out)

    def __call__(self, *args: Any, grid: int | tuple[int, ...], block: int | tuple[int, ...], stream: int,
                 device: int, shared_mem: int = 0) -> None:
        ok, reason = available()
        if not ok:
            raise RuntimeUnavailable(f"cannot launch {self.name} through the CuPy NVRTC runtime: {reason}")
        import cupy

        typed = self.convert_args(args)
        grid = grid if isinstance(grid, tuple) else (grid,)
        block = block if isinstance(block, tuple) else (block,)
        with cupy.cuda.Device(device):
            function = self._functions.get(device)
            if function is None:
                function = self._functions[device] = _module(self.signature.header).get_function(self.name)
            with _external_stream(stream, device):
                function(grid, block, typed, shared_mem=shared_mem)


@functools.cache
def kernel(name: str) -> RuntimeKernel:
    """The kernel `name` (e.g. "pyscale_int4_quantize_kernel"), compiled at its first launch."""
    found = signatures()
    if name not in found:
        raise KeyError(f"no kernel {name!r} in the headers under {source_dir()} (have: {', '.join(sorted(found))})")
    return RuntimeKernel(found[name])


def launch_1d(name: str, work: int, *args: Any, stream: int, device: int, threads: int = 256) -> None:
    """Launch `name` with one thread per work item (the convention of the nvcc launchers); no-op when empty."""
    if work <= 0:
        return
    kernel(name)(*args, grid=(work + threads - 1) // threads, block=threads, stream=stream, device=device)
