"""Build pyscale and its torch-free extension pyscale._C.

C++ sources (csrc/**/*.cpp) are always compiled. CUDA sources (csrc/**/*.cu) are compiled by nvcc
whenever it is found -- no GPU is needed -- and linked into the same module with a static cudart.
Environment:
  PYSCALE_SKIP_EXT=1        build no extension at all
  PYSCALE_CUDA_ARCHS="80;90a"  SM architectures for nvcc (PTX for the newest is embedded too)
  CUDA_HOME / CUDA_PATH     where to look for nvcc (else PATH, else /usr/local/cuda)
  MAX_JOBS                  parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCHS = "80;90a"


def _jobs() -> int:
    return max(1, int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))


def _find_nvcc() -> str | None:
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def _cuda_lib_dir(nvcc: str) -> str | None:
    """Directory of libcudart_static.a: next to nvcc, under CUDA_HOME/CUDA_PATH, or /usr/local/cuda."""
    homes = [Path(nvcc).resolve().parent.parent]
    homes += [Path(os.environ[e]) for e in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(e)]
    homes.append(Path("/usr/local/cuda"))
    for home in homes:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if (home / sub / "libcudart_static.a").exists():
                return str(home / sub)
    return None


def _gencode_flags(archs: str) -> list[str]:
    flags, numeric = [], []
    for arch in filter(None, (a.strip() for a in archs.replace(",", ";").split(";"))):
        num = arch.rstrip("a")
        if not num.isdigit():
            raise ValueError(f"PYSCALE_CUDA_ARCHS: cannot parse architecture {arch!r} (expected e.g. 80 or 90a)")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        numeric.append(int(num))
    # PTX for the newest plain architecture lets newer GPUs JIT the kernels.
    newest = max(numeric)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


class BuildExt(build_ext):
    """Compile .cu files with nvcc (in parallel), then the C++ sources, into one module."""

    def build_extension(self, ext: Extension) -> None:
        cu_sources = getattr(ext, "cu_sources", [])
        nvcc = _find_nvcc()
        lib_dir = _cuda_lib_dir(nvcc) if nvcc else None
        if cu_sources and nvcc and lib_dir:
            objects = self._compile_cuda(nvcc, cu_sources, ext)
            ext.extra_objects = [*ext.extra_objects, *objects]
            ext.define_macros = [*ext.define_macros, ("PYSCALE_WITH_CUDA", "1")]
            ext.library_dirs = [*ext.library_dirs, lib_dir]
            ext.libraries = [*ext.libraries, "cudart_static", "dl", "rt", "pthread"]
        elif cu_sources:
            why = "nvcc not found" if not nvcc else "libcudart_static.a not found next to nvcc"
            print(f"pyscale: building _C without CUDA ({why}); CPU ops only", file=sys.stderr)
        super().build_extension(ext)

    def _compile_cuda(self, nvcc: str, sources: list[str], ext: Extension) -> list[str]:
        archs = os.environ.get("PYSCALE_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
        out_dir = Path(self.build_temp) / "cuda"
        out_dir.mkdir(parents=True, exist_ok=True)
        base = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--threads", "0",
                "-DPYSCALE_WITH_CUDA=1", *(f"-I{d}" for d in ext.include_dirs), *_gencode_flags(archs)]

        def compile_one(src: str) -> str:
            obj = out_dir / (Path(src).relative_to("csrc").as_posix().replace("/", "_") + ".o")
            cmd = [*base, "-c", src, "-o", str(obj)]
            print(" ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True)
            return str(obj)

        with ThreadPoolExecutor(max_workers=_jobs()) as pool:
            return list(pool.map(compile_one, sources))


def _extensions() -> list[Extension]:
    if os.environ.get("PYSCALE_SKIP_EXT") == "1":
        print("pyscale: PYSCALE_SKIP_EXT=1, building no extension", file=sys.stderr)
        return []
    import pybind11
    from pybind11.setup_helpers import ParallelCompile

    ParallelCompile(default=_jobs()).install()
    rel = lambda p: p.relative_to(ROOT).as_posix()
    ext = Extension(
        "pyscale._C",
        sources=sorted(rel(p) for p in CSRC.rglob("*.cpp")),
        include_dirs=[pybind11.get_include(), "csrc"],
        extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
        # the NVML power sampler dlopen()s libnvidia-ml; glibc < 2.34 keeps dlopen in libdl
        libraries=["dl"] if sys.platform.startswith("linux") else [],
        language="c++",
    )
    ext.cu_sources = sorted(rel(p) for p in CSRC.rglob("*.cu"))
    return [ext]


setup(
    name="pyscale",
    version="0.1.0",
    description="GPU kernels, a profiler and scaling-law planning for LLM training on your own GPU",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # pyscale._csrc ships the kernel headers in wheels: the CuPy NVRTC path (pyscale.cuda_runtime)
    # compiles them at run time where _C was built without nvcc. Only headers, no .cu/.cpp.
    packages=[*find_packages(include=["pyscale", "pyscale.*"]), "pyscale.kernels", "pyscale._csrc"],
    package_dir={"pyscale.kernels": "kernels", "pyscale._csrc": "csrc"},
    package_data={"pyscale": ["data/profiles/*.json"], "pyscale._csrc": ["*.h", "**/*.h", "**/*.cuh"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "rich>=13",
    ],
    extras_require={
        # torch/triton are extras so `pyscale fit|plan` work without them; the README installs them.
        "torch": ["torch>=2.4", "triton>=3.2; platform_system == 'Linux'"],
        "nvml": ["nvidia-ml-py>=12"],
        "data": ["pandas>=2", "pyarrow>=14", "matplotlib>=3.7"],
        "costmodel": ["scikit-learn>=1.3"],
        "ray": ["ray>=2.9"],
        "dev": [
            "torch>=2.4", "triton>=3.2; platform_system == 'Linux'", "nvidia-ml-py>=12",
            "pandas>=2", "pyarrow>=14", "matplotlib>=3.7",
            "pytest>=7", "hypothesis>=6", "pytest-benchmark>=4", "ruff>=0.5", "build", "pybind11>=2.12",
            # NVRTC without a GPU for the header compile test (~66 MB of wheels, a few seconds).
            "cuda-bindings>=12.8; platform_system == 'Linux'", "nvidia-cuda-nvrtc; platform_system == 'Linux'",
        ],
    },
    entry_points={"console_scripts": ["pyscale=pyscale.cli:main"]},
    zip_safe=False,
)
