"""What this machine offers pyscale: the device, library versions and which backends can run.

Every probe returns (available, reason) so `pyscale info` can say why something is missing. Importing
this module imports nothing heavy; the probes import torch/triton/pynvml only when called. It also
builds the one device record that every measurement is stored against (`device_record`), and collects
what `pyscale info` and the report show (`collect`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from pyscale import _ext
from pyscale.store import DeviceRecord

RAPL_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Probe:
    name: str
    available: bool
    detail: str  # what was found, or why it is missing


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str
    index: int | None = None
    uuid: str | None = None
    compute_capability: str | None = None
    memory_bytes: int | None = None
    driver_version: str | None = None


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception as exc:  # a broken install is reported, not raised
        return f"unimportable ({type(exc).__name__}: {exc})"


def versions() -> dict[str, str | None]:
    from pyscale import __version__

    out: dict[str, str | None] = {"pyscale": __version__, "python": platform.python_version()}
    for module in ("torch", "triton", "numpy", "scipy"):
        out[module] = _version(module)
    cuda = None
    if out["torch"] and not out["torch"].startswith("unimportable"):
        import torch

        cuda = torch.version.cuda
    out["torch_cuda"] = cuda
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cache_bytes(level: int = 2, root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of one core's data (or unified) cache at `level` from Linux's sysfs, or None where it says none."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        for index in sorted(root.glob("index*")):
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
            return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (OSError, ValueError):
        return None
    return None


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def devices() -> list[DeviceInfo]:
    """The CUDA devices torch sees (honouring CUDA_VISIBLE_DEVICES), else the CPU."""
    if cuda_available():
        import torch

        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            uuid = str(getattr(props, "uuid", "")) or None
            out.append(DeviceInfo("cuda", props.name, i, f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid,
                                  f"{props.major}.{props.minor}", int(props.total_memory), _nvml_driver()))
        return out
    return [cpu_device()]


def cpu_device() -> DeviceInfo:
    """This machine's CPU as a device (its uuid names the host, so rows of two hosts never mix)."""
    return DeviceInfo("cpu", cpu_name(), None, f"cpu-{platform.node()}", None, _memory_bytes(), None)


def device_record(kind: str = "cpu", index: int | None = None) -> DeviceRecord:
    """The store's record of the device a measurement runs on, with the software versions it ran with.

    kind: "cuda" (device `index`, default the current one) or "cpu". A CPU is named after its host and
    has no CUDA version (CPU rows do not depend on the toolkit; torch's version names its build); a CUDA
    device without a uuid is named by its model. Raises RuntimeError when a CUDA device is asked for and
    torch sees none.
    """
    v = versions()
    if kind == "cuda":
        cuda = [d for d in devices() if d.kind == "cuda"]
        if not cuda:
            raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device")
        if index is None:
            import torch

            index = torch.cuda.current_device()
        dev = cuda[index]
        return DeviceRecord(kind="cuda", name=dev.name, uuid=dev.uuid or dev.name,
                            compute_capability=dev.compute_capability, memory_bytes=dev.memory_bytes,
                            driver_version=dev.driver_version, cuda_version=v.get("torch_cuda"),
                            torch_version=v.get("torch"), triton_version=v.get("triton"))
    if kind != "cpu":
        raise ValueError(f"kind must be 'cuda' or 'cpu': got {kind!r}")
    dev = cpu_device()
    return DeviceRecord(kind="cpu", name=dev.name, uuid=dev.uuid or dev.name, memory_bytes=dev.memory_bytes,
                        torch_version=v.get("torch"), triton_version=v.get("triton"))


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def probe_torch() -> Probe:
    v = _version("torch")
    return Probe("torch", bool(v and not v.startswith("unimportable")), v or "not installed (pip install torch)")


def probe_triton_gpu() -> Probe:
    v = _version("triton")
    if not v:
        return Probe("triton (GPU)", False, "triton is not installed")
    if not cuda_available():
        return Probe("triton (GPU)", False, "no CUDA device visible to torch")
    return Probe("triton (GPU)", True, f"triton {v}")


def probe_triton_interpreter() -> Probe:
    v = _version("triton")
    if not v:
        return Probe("triton interpreter", False, "triton is not installed")
    on = os.environ.get("TRITON_INTERPRET") == "1"
    return Probe("triton interpreter", True,
                 f"triton {v}; " + ("TRITON_INTERPRET=1 is set" if on else "set TRITON_INTERPRET=1 to run kernels on CPU"))


def probe_cpp() -> Probe:
    status = _ext.extension_status()
    return Probe("_C CPU ops", bool(status["loaded"]), "loaded" if status["loaded"] else str(status["error"]))


def probe_cuda_ops() -> Probe:
    status = _ext.extension_status()
    if not status["loaded"]:
        return Probe("_C CUDA ops", False, "pyscale._C is not loaded")
    if not status["cuda_compiled"]:
        return Probe("_C CUDA ops", False, str(status["cuda_error"]))
    if not status["cuda_device_count"]:
        return Probe("_C CUDA ops", False, f"built with CUDA, but no device: {status['cuda_error'] or 'none found'}")
    return Probe("_C CUDA ops", True, f"{status['cuda_device_count']} device(s)")


def probe_cuda_runtime() -> Probe:
    from pyscale import cuda_runtime

    ok, reason = cuda_runtime.available()
    return Probe("CuPy NVRTC runtime", ok, reason)


def probe_cuda_kernel_paths() -> list[Probe]:
    """Per op family with CUDA kernels: which path its `cuda` backend runs (_C, CuPy NVRTC) or why none."""
    from pyscale import cuda_runtime

    status = _ext.extension_status()
    out = []
    for family in cuda_runtime.kernel_families():
        name = f"{family} CUDA kernels"
        if status["cuda_compiled"] and status["cuda_device_count"]:
            out.append(Probe(name, True, "_C: compiled ahead of time by nvcc"))
        elif status["cuda_compiled"]:
            out.append(Probe(name, False, f"_C (nvcc) has them, but there is no device: {status['cuda_error']}"))
        elif family not in cuda_runtime.WIRED_FAMILIES:
            out.append(Probe(name, False, "_C was built without CUDA, and these ops have no CuPy NVRTC path"))
        else:
            ok, reason = cuda_runtime.available()
            out.append(Probe(name, ok, f"CuPy NVRTC runtime: {reason}" if ok else
                             f"_C was built without CUDA and the CuPy NVRTC runtime cannot run: {reason}"))
    return out


def probe_nvml() -> Probe:
    if importlib.util.find_spec("pynvml") is None:
        return Probe("NVML", False, "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Probe("NVML", False, f"nvmlInit failed: {exc}")
    try:
        return Probe("NVML", True, f"driver {pynvml.nvmlSystemGetDriverVersion()}, "
                                   f"{pynvml.nvmlDeviceGetCount()} device(s)")
    finally:
        pynvml.nvmlShutdown()


def probe_rapl(root: Path = RAPL_ROOT) -> Probe:
    zones = sorted(root.glob("intel-rapl:*/energy_uj")) if root.exists() else []
    if not zones:
        return Probe("RAPL", False, f"no RAPL zones under {root} (not an Intel/AMD host with powercap, or a VM)")
    unreadable = [z for z in zones if not os.access(z, os.R_OK)]
    if unreadable:
        return Probe("RAPL", False, f"{unreadable[0]} is not readable (needs root or a udev rule)")
    return Probe("RAPL", True, f"{len(zones)} zone(s)")


def probes() -> list[Probe]:
    return [probe_torch(), probe_triton_gpu(), probe_triton_interpreter(), probe_cpp(), probe_cuda_ops(),
            probe_cuda_runtime(), *probe_cuda_kernel_paths(), probe_nvml(), probe_rapl()]


def as_dict(obj: Probe | DeviceInfo) -> dict:
    return asdict(obj)


def collect() -> dict:
    """What `pyscale info` shows, as one JSON-able dict: every device with its hw.py spec row (or why it
    has none), the library versions and the backend probes."""
    from pyscale import hw

    entries = []
    for dev in devices():
        entry = as_dict(dev)
        if dev.kind == "cuda":
            entry["spec"] = hw.spec_to_dict(hw.lookup(dev.name))
        else:
            entry["spec"] = None
            entry["spec_unavailable_reason"] = "CPU: pyscale keeps no peak-FLOP table for CPUs"
        entries.append(entry)
    return {"devices": entries, "versions": versions(), "backends": [as_dict(p) for p in probes()]}
