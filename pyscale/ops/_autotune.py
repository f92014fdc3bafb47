"""One autotuning mechanism and one policy for every Triton kernel (kernels never import pyscale).

An op registers one `Tunable` per kernel: a config function (the choice when nothing is tuned; the only
one in the interpreter, which has no benchmarking driver) and a small config space. At launch the op
calls `tunable.choose(device, key, run)`, where `key` is a dict of JSON scalars describing the problem
with its varying sizes bucketed (`bucket`: powers of two for tokens M and sequence lengths, never exact
sizes) and `run(config)` launches the kernel once with that config (it must be idempotent: outputs are
overwritten, never accumulated). `choose` returns, in order:
  1. the config function's choice on a non-CUDA device (the interpreter) or with PYSCALE_AUTOTUNE=off;
  2. a config tuned earlier for this key on this GPU model, triton version and kernel source (memory,
     then the on-disk cache), if it is still in the space;
  3. with PYSCALE_AUTOTUNE=on and no CUDA graph being captured: the fastest candidate, timed now and
     written to the cache;
  4. the config function's choice.

Policy, PYSCALE_AUTOTUNE (or `with pyscale.ops.autotuning(...)`, which wins over the variable):
  off (0)     config functions only; the cache is not read
  cached      default: tuned configs from the cache are used, nothing is timed (a first call stays cheap
              and deterministic: serving loops, tests, CUDA graphs)
  on (1)      also tune each new key on first use and persist it (pre-tune a model's shapes this way)
Cache: one JSON file, PYSCALE_AUTOTUNE_CACHE or $XDG_CACHE_HOME/pyscale/autotune.json. Its entries are
keyed by (kernel, device name, triton version, sha256 of the kernel modules' source, key), so another
GPU, another triton or an edited kernel never reuses a stale config; the file can be copied to machines
with the same GPU model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyscale.ops._device import device_info

ENV_VAR = "PYSCALE_AUTOTUNE"
CACHE_ENV_VAR = "PYSCALE_AUTOTUNE_CACHE"
POLICIES = ("off", "cached", "on")
DEFAULT_POLICY = "cached"
_ALIASES = {"0": "off", "1": "on"}

_policy_override: ContextVar[str | None] = ContextVar("pyscale_autotune", default=None)

Config = Any  # a dict of launch parameters or a frozen dataclass of them


def _validate_policy(value: str, origin: str) -> str:
    name = _ALIASES.get(value, value)
    if name not in POLICIES:
        raise ValueError(f"{origin} must be one of {', '.join(POLICIES)} (or 0 / 1): got {value!r}")
    return name


def policy() -> str:
    """The autotuning policy in force: `autotuning(...)`'s, else PYSCALE_AUTOTUNE's, else "cached"."""
    forced = _policy_override.get()
    if forced is not None:
        return forced
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return _validate_policy(env, ENV_VAR) if env else DEFAULT_POLICY


@contextlib.contextmanager
def autotuning(mode: str = "on") -> Iterator[None]:
    """Set the autotuning policy ("off", "cached", "on") for the calls in this context.

    Pre-tuning a model: run one step at each representative shape (every sequence/token bucket it will
    see) inside `with pyscale.ops.autotuning("on"):`; later processes find the configs in the cache.
    """
    token = _policy_override.set(_validate_policy(str(mode).lower(), "mode"))
    try:
        yield
    finally:
        _policy_override.reset(token)


def bucket(n: int) -> int:
    """The power of two at or above n (1 for n <= 1): tuning keys never hold exact sizes."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cache_path() -> Path:
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pyscale" / "autotune.json"


# ---------------------------------------------------------------- identity of a tuned entry

_source_hashes: dict[tuple[str, ...], str] = {}


def source_hash(modules: Sequence[str]) -> str:
    """sha256 over the source files of these modules (e.g. the kernel module and its helpers)."""
    modules = tuple(modules)
    if modules not in _source_hashes:
        digest = hashlib.sha256()
        for name in modules:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise ValueError(f"kernel module {name!r} not found")
            digest.update(name.encode())
            digest.update(Path(spec.origin).read_bytes())
        _source_hashes[modules] = digest.hexdigest()[:24]
    return _source_hashes[modules]


def device_name(device: torch.device) -> str:
    return device_info(device).name  # asked once per device: launches pay no property query


def triton_version() -> str:
    import triton

    return triton.__version__


def capturing() -> bool:
    """True while the current CUDA stream records a graph: timing there would be captured, not run."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def time_config(run: Callable[[], None]) -> float:
    """Milliseconds of one launch (median of triton's do_bench); tests replace this function."""
    import triton.testing

    return float(triton.testing.do_bench(run, warmup=5, rep=20))


# ---------------------------------------------------------------- the on-disk cache

_memory: dict[str, Any] = {}  # entry key -> encoded config, for every cache file read or written here
_loaded: set[Path] = set()
_chosen: dict[str, Any] = {}  # entry key -> config object, once validated against the space
# (kernel, GPU model, triton, kernel source, policy, cache file variables, key) -> the config `choose`
# settled on: a launch that repeats a problem (a decode loop) skips the entry key's JSON and the cache
# file's lookup, tens of microseconds of host time
_settled: dict[tuple, Any] = {}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: nothing tuned yet
        return {}
    return data if isinstance(data, dict) else {}


def _lookup(entry: str) -> Any:
    path = cache_path()
    if path not in _loaded:
        _loaded.add(path)
        for k, v in _read(path).items():
            _memory.setdefault(k, v.get("config") if isinstance(v, dict) else None)
    return _memory.get(entry)


def _store(entry: str, config: dict, ms: float, n_candidates: int) -> None:
    _memory[entry] = config
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read(path)  # merge: another process may have tuned other keys meanwhile
    data[entry] = {"config": config, "ms": ms, "candidates": n_candidates}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def clear_memory() -> None:
    """Forget what was read from the cache in this process (tests; a file edited by hand)."""
    _memory.clear()
    _loaded.clear()
    _chosen.clear()
    _settled.clear()


def _encode(config: Config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


# ---------------------------------------------------------------- a tunable kernel

@dataclass(frozen=True)
class Tunable:
    """One kernel's tuning: `name` ("attention.fwd"), the modules whose source identifies the kernel,
    `default(key, interpret)` (the config function) and `space(key)` (the candidates; the default is
    always the first, whether or not the space lists it)."""

    name: str
    kernel_modules: tuple[str, ...]
    default: Callable[[Mapping[str, Any], bool], Config]
    space: Callable[[Mapping[str, Any]], Sequence[Config]]

    def candidates(self, key: Mapping[str, Any]) -> list[Config]:
        out = [self.default(key, False)]
        for cfg in self.space(key):
            if _encode(cfg) not in [_encode(c) for c in out]:
                out.append(cfg)
        return out

    def entry(self, device: torch.device, key: Mapping[str, Any]) -> str:
        """The cache key of one tuned config: kernel, GPU model, triton version, kernel source, problem."""
        return json.dumps([self.name, device_name(device), triton_version(), source_hash(self.kernel_modules),
                           dict(key)], sort_keys=True, default=str)

    def choose(self, device: torch.device, key: Mapping[str, Any], run: Callable[[Config], None], *,
               interpret: bool = False) -> Config:
        """The config for this launch (module docstring); `interpret`: running in the interpreter."""
        mode = policy()
        if interpret or device.type != "cuda" or mode == "off":
            return self.default(key, interpret)
        settled_key = (self.name, device_name(device), triton_version(), source_hash(self.kernel_modules), mode,
                       os.environ.get(CACHE_ENV_VAR), os.environ.get("XDG_CACHE_HOME"),
                       *((k, tuple(v) if isinstance(v, list) else v) for k, v in key.items()))
        if settled_key in _settled:
            return _settled[settled_key]
        entry = self.entry(device, key)
        if entry in _chosen:
            _settled[settled_key] = _chosen[entry]
            return _chosen[entry]
        hit = _lookup(entry)
        if hit is not None:
            for cfg in self.candidates(key):  # a config no longer in the space is stale
                if _encode(cfg) == hit:
                    _chosen[entry] = _settled[settled_key] = cfg
                    return cfg
        if mode != "on":  # "cached" and nothing tuned: the config function's, for the life of the process
            _settled[settled_key] = self.default(key, False)
            return _settled[settled_key]
        if capturing():  # tune after the capture, at the next call outside it
            return self.default(key, False)
        space = self.candidates(key)
        best, best_ms = space[0], float("inf")
        for cfg in space:
            try:
                ms = time_config(lambda cfg=cfg: run(cfg))
            except Exception:  # a config that does not compile (e.g. out of shared memory) is no candidate
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best_ms < float("inf"):
            _store(entry, _encode(best), best_ms, len(space))
            _settled.clear()  # a "cached" call may have settled on the default for this key
            _chosen[entry] = _settled[settled_key] = best
        return best
