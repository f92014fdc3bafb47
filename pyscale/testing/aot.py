"""Compile Triton kernels ahead of time for GPUs that are not here (sm_80, sm_89, sm_90a).

The interpreter cannot see shared-memory overflow, unsupported layouts or register pressure; a real
compile can, and needs no GPU: `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`.
Compiles run in a subprocess without TRITON_INTERPRET (the variable is fixed at @triton.jit time) and
are cached by the kernel module's source, the spec and the triton version. Each result carries the
cubin's resource usage (cuobjdump: registers, stack and local bytes) and counts read from the PTX:
asynchronous copies (cp.async and TMA), the MMA instruction kind and the `wgmma.wait_group` levels
(all of them, and those inside loops: the main loop's are what says whether MMAs overlap).

    specs = [KernelSpec("pyscale.kernels.moe_route:_route_kernel", signature={...}, constexprs={...})]
    results = assert_compiles(specs)                      # raises AssertionError with every failure
    results = assert_compiles(specs, expect_refused=lambda r: r.arch == "sm_80")  # FP8 kernels

Command line:
    python -m pyscale.testing.aot report [--arch sm_90a] [--json] [--op attention] [--full]
        one row per kernel at the configuration its op chooses (pyscale.testing.aot_specs)
    python -m pyscale.testing.aot worker
        the compile worker: a JSON list of {"spec": ..., "arch": ...} on stdin, results on stdout
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (compute capability, max dynamic shared memory per block in bytes) - CUDA C Programming Guide,
# "Technical Specifications per Compute Capability": 163 KB (8.0), 99 KB (8.9), 227 KB (9.0).
ARCHS: dict[str, tuple[int, int]] = {
    "sm_80": (80, 163 * 1024),
    "sm_89": (89, 99 * 1024),
    "sm_90a": (90, 227 * 1024),
}
DEFAULT_ARCHS = ("sm_80", "sm_89", "sm_90a")
MAX_REGISTERS = 255
# Bumped whenever AotResult gains a field, so cached results without it are compiled again.
_RESULT_VERSION = 4


@dataclass(frozen=True)
class KernelSpec:
    kernel: str  # "module.path:function_name" of a @triton.jit function
    signature: dict[str, str]  # every parameter: "*fp16", "i32", "fp32", ... or "constexpr"
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""  # a name for messages, e.g. "fwd D128 causal"
    # parameters the launcher's JIT would specialise as multiples of 16 (aligned pointers, strides and
    # sizes): without the hint loads are not vectorised and the compiler cannot pipeline them
    divisible_by_16: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.kernel}[{self.label or json.dumps(self.constexprs, sort_keys=True)}]"


@dataclass(frozen=True)
class AotResult:
    spec: str
    arch: str
    ok: bool
    shared_bytes: int | None = None
    smem_limit_bytes: int | None = None
    registers: int | None = None
    local_bytes: int | None = None  # register spills land in local memory ...
    stack_bytes: int | None = None  # ... or on the stack frame
    error: str | None = None
    async_copies: int | None = None  # cp.async + TMA (cp.async.bulk.tensor) instructions in the PTX
    tma: int | None = None  # TMA loads/stores alone
    mma: str | None = None  # "wgmma", "mma.sync" or "none"
    wgmma_wait_levels: list[int] | None = None  # distinct N of `wgmma.wait_group N` (0 only: no MMA overlap)
    # the levels of the waits inside loop bodies (the K loop's; a wait after the loop drains it and
    # says nothing about overlap): [0] means every wgmma of the loop is waited for before the next
    loop_wait_levels: list[int] | None = None

    @property
    def fits(self) -> bool:
        return self.ok and self.shared_bytes is not None and self.shared_bytes <= (self.smem_limit_bytes or 0)

    @property
    def spill_bytes(self) -> int | None:
        """Local memory plus stack frame (cuobjdump LOCAL + STACK): register spills."""
        if self.local_bytes is None and self.stack_bytes is None:
            return None
        return (self.local_bytes or 0) + (self.stack_bytes or 0)


def _cache_dir() -> Path:
    root = os.environ.get("PYSCALE_AOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pyscale", "aot")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _source_of(kernel: str) -> str:
    """The kernel module's source and its siblings' (a kernel may call @triton.jit helpers from them)."""
    module = kernel.split(":", 1)[0]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"kernel module {module!r} not found")
    origin = Path(spec.origin)
    siblings = sorted(p for p in origin.parent.glob("*.py") if p != origin)
    return "\n".join([origin.read_text(), *(p.read_text() for p in siblings)])


def _triton_version() -> str:
    spec = importlib.util.find_spec("triton")
    if spec is None:
        raise RuntimeError("triton is not installed: ahead-of-time compiles need it")
    return importlib.metadata.version("triton")


def _key(spec: KernelSpec, arch: str) -> str:
    blob = json.dumps([dataclasses.asdict(spec), arch, _triton_version(), _source_of(spec.kernel), _RESULT_VERSION],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compile_kernels(specs: Sequence[KernelSpec], archs: Iterable[str] = DEFAULT_ARCHS,
                    timeout_s: float = 600) -> list[AotResult]:
    """Compile every spec for every arch (cached); results in (spec, arch) order."""
    archs = tuple(archs)
    return compile_pairs([(spec, arch) for spec in specs for arch in archs], timeout_s)


def compile_pairs(pairs: Sequence[tuple[KernelSpec, str]], timeout_s: float = 600) -> list[AotResult]:
    """Compile each (spec, arch) (cached by kernel source, spec, arch and triton version); what is not
    cached compiles in worker subprocesses, one per CPU core (at most 4)."""
    for _, arch in pairs:
        if arch not in ARCHS:
            raise ValueError(f"archs: unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    cache = _cache_dir()
    results: dict[int, AotResult] = {}
    jobs: dict[str, list[int]] = {}  # cache key -> indices of the pairs it answers (duplicates compile once)
    for i, (spec, arch) in enumerate(pairs):
        key = _key(spec, arch)
        hit = cache / f"{key}.json"
        if hit.exists():
            results[i] = AotResult(**json.loads(hit.read_text()))
        else:
            jobs.setdefault(key, []).append(i)
    if jobs:
        keys = list(jobs)
        n_workers = max(1, min(len(keys) // 2, os.cpu_count() or 1, 4))
        shards = [keys[w::n_workers] for w in range(n_workers)]
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

        def run(shard: list[str]) -> list[dict]:
            payload = json.dumps([{"spec": dataclasses.asdict(pairs[jobs[k][0]][0]), "arch": pairs[jobs[k][0]][1]}
                                  for k in shard])
            proc = subprocess.run([sys.executable, "-m", "pyscale.testing.aot", "worker"], input=payload, text=True,
                                  capture_output=True, env=env, timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"ahead-of-time compile subprocess failed:\n{proc.stderr[-4000:]}")
            return json.loads(proc.stdout.strip().splitlines()[-1])

        with ThreadPoolExecutor(len(shards)) as pool:
            for shard, raws in zip(shards, pool.map(run, shards)):
                for key, raw in zip(shard, raws):
                    result = AotResult(**raw)
                    (cache / f"{key}.json").write_text(json.dumps(dataclasses.asdict(result)))
                    for i in jobs[key]:
                        results[i] = result
    return [results[i] for i in range(len(pairs))]


def assert_compiles(specs: Sequence[KernelSpec], archs: Iterable[str] = DEFAULT_ARCHS, *,
                    expect_refused: Callable[[AotResult], bool] | None = None,
                    max_registers: int = MAX_REGISTERS, max_stack_bytes: int = 0) -> list[AotResult]:
    """Compile and check: each compile succeeds (or is refused where expected), shared memory fits the
    arch's per-block limit, registers within max_registers and, for specs that state their alignment
    (`divisible_by_16`, as the JIT specialises torch tensors), no spills: no local memory and a stack frame
    of at most max_stack_bytes. Unaligned specs compile scalar loads the JIT never runs, so their spills
    say nothing. Raises with every problem."""
    archs = tuple(archs)
    return assert_pairs_compile([(spec, arch) for spec in specs for arch in archs], expect_refused=expect_refused,
                                max_registers=max_registers, max_stack_bytes=max_stack_bytes)


def assert_pairs_compile(pairs: Sequence[tuple[KernelSpec, str]], *,
                         expect_refused: Callable[[AotResult], bool] | None = None,
                         max_registers: int = MAX_REGISTERS, max_stack_bytes: int = 0) -> list[AotResult]:
    """`assert_compiles` for (spec, arch) pairs: a spec per arch, as an op's config may differ per arch."""
    results = compile_pairs(pairs)
    aligned = {spec.describe(): bool(spec.divisible_by_16) for spec, _ in pairs}
    problems = []
    for r in results:
        refused_expected = bool(expect_refused and expect_refused(r))
        if refused_expected:
            if r.ok:
                problems.append(f"{r.spec} @ {r.arch}: expected the compiler to refuse it, but it compiled")
            continue
        if not r.ok:
            problems.append(f"{r.spec} @ {r.arch}: compile failed: {r.error}")
        elif not r.fits:
            problems.append(f"{r.spec} @ {r.arch}: shared memory {r.shared_bytes} B > limit {r.smem_limit_bytes} B")
        elif r.registers is not None and r.registers > max_registers:
            problems.append(f"{r.spec} @ {r.arch}: {r.registers} registers > {max_registers}")
        elif aligned[r.spec] and ((r.local_bytes or 0) > 0 or (r.stack_bytes or 0) > max_stack_bytes):
            problems.append(f"{r.spec} @ {r.arch}: spills ({r.local_bytes} B local, {r.stack_bytes} B stack)")
    if problems:
        raise AssertionError("ahead-of-time compile problems:\n  " + "\n  ".join(problems))
    return results


# ----------------------------------------------------------------- subprocess side

def _resource_usage(cubin: bytes) -> tuple[int | None, ...]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    reg = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return tuple(int(m.group(1)) if m else None for m in (reg, local, stack))


_CP_ASYNC = re.compile(r"^\s*(?:@%p\d+\s+)?cp\.async\.c[ag]\.", re.M)
_TMA = re.compile(r"^\s*(?:@%p\d+\s+)?cp\.async\.bulk\.tensor\.", re.M)
_WGMMA = re.compile(r"^\s*(?:@%p\d+\s+)?wgmma\.mma_async\.", re.M)
_MMA_SYNC = re.compile(r"^\s*(?:@%p\d+\s+)?mma\.sync\.", re.M)
_WAIT = re.compile(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)\s*;")
# A basic block starts at a label or, when it is only fallen into, at LLVM's `// %bb.N:` comment; the
# comment lines after it say whether it lies in a loop and how deep ("=>This Inner Loop Header: Depth=2",
# "in Loop: Header=BB0_2 Depth=1", "Parent Loop ...").
_BLOCK = re.compile(r"^(?:\$L__BB\d+_\d+:|// %bb\.\d+:)(.*)$")
_COMMENT = re.compile(r"^\s+//(.*)$")
_DEPTH = re.compile(r"Depth=(\d+)")


def _loop_wait_levels(ptx: str) -> list[int]:
    """The wgmma.wait_group levels in the innermost loops' blocks (the deepest loop depth in the kernel:
    the K loop; a persistent kernel's tile loop around it does not count)."""
    depth_waits: dict[int, set[int]] = {}
    depth, annotating = 0, False
    for line in ptx.splitlines():
        block = _BLOCK.match(line)
        if block:
            depths = [int(d) for d in _DEPTH.findall(block.group(1))]
            depth, annotating = max(depths, default=0), True
            continue
        comment = _COMMENT.match(line) if annotating else None
        if comment:
            depth = max([depth, *(int(d) for d in _DEPTH.findall(comment.group(1)))])
            continue
        annotating = False
        wait = _WAIT.search(line)
        if wait and depth:
            depth_waits.setdefault(depth, set()).add(int(wait.group(1)))
    return sorted(depth_waits[max(depth_waits)]) if depth_waits else []


def ptx_counts(ptx: str) -> dict[str, Any]:
    """Instruction counts of one kernel's PTX (static, not executed counts): async copies (cp.async and
    TMA), TMA alone, the MMA kind, and the distinct wgmma.wait_group levels (a level > 0 lets that many
    wgmma groups stay in flight while the warp goes on), everywhere and inside loop bodies."""
    cp_async, tma = len(_CP_ASYNC.findall(ptx)), len(_TMA.findall(ptx))
    mma = "wgmma" if _WGMMA.search(ptx) else "mma.sync" if _MMA_SYNC.search(ptx) else "none"
    return {"async_copies": cp_async + tma, "tma": tma, "mma": mma,
            "wgmma_wait_levels": sorted({int(n) for n in _WAIT.findall(ptx)}), "loop_wait_levels": _loop_wait_levels(ptx)}


def _compile_one(spec: KernelSpec, arch: str) -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cc, limit = ARCHS[arch]
    module_name, fn_name = spec.kernel.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
        attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.divisible_by_16}
        src = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # the compiler's refusal is the result
        msg = f"{type(exc).__name__}: {exc}"
        return AotResult(spec.describe(), arch, False, smem_limit_bytes=limit, error=msg[-2000:])
    regs, local, stack = _resource_usage(compiled.asm["cubin"])
    return AotResult(spec.describe(), arch, True, int(compiled.metadata.shared), limit, regs, local, stack,
                     **ptx_counts(compiled.asm["ptx"]))


def _worker() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("pyscale.testing.aot must run without TRITON_INTERPRET")
    jobs = json.loads(sys.stdin.read())
    out = [dataclasses.asdict(_compile_one(KernelSpec(**j["spec"]), j["arch"])) for j in jobs]
    print(json.dumps(out))


def _main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] == "worker":  # the bare module is the worker too (the protocol predates `report`)
        _worker()
        return
    if argv[0] == "report":
        from pyscale.testing import compile_report

        raise SystemExit(compile_report.main(argv[1:]))
    raise SystemExit(f"usage: python -m pyscale.testing.aot {{report,worker}} ...: unknown command {argv[0]!r}")


if __name__ == "__main__":
    _main()
