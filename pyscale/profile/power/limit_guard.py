"""The guard of a power limit set by `pyscale.profile.power.limits.power_limit`, run as a script:

    python limit_guard.py NVML UUID RESTORE_MW

NVML is a module name (pynvml) or a .py file (a fake NVML in tests). It loads NVML, prints "ready", then
waits on stdin: "done" means the parent restored the limit itself; the pipe closing without it (the parent
was killed) means the guard restores GPU UUID's power-management limit to RESTORE_MW and says so on
stderr. It ignores Ctrl-C, SIGTERM and SIGHUP, which reach the parent too (and it handles those itself),
and imports nothing of pyscale (nor torch): it starts fast and cannot be broken by what it guards.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys


def load_nvml(source: str):
    if source.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_pyscale_guard_nvml", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(source)


def main(argv: list[str]) -> int:
    source, uuid, restore_mw = argv[0], argv[1], int(argv[2])
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    nv = load_nvml(source)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() == "done":
        return 0
    try:
        nv.nvmlInit()
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(uuid)
            nv.nvmlDeviceSetPowerManagementLimit(handle, restore_mw)
        finally:
            nv.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - said, with what to do by hand
        print(f"pyscale power-limit guard: the process that set GPU {uuid}'s power limit ended without restoring "
              f"it, and restoring {restore_mw / 1000:g} W failed ({exc}); set it back with "
              f"`nvidia-smi -i {uuid} -pl {restore_mw / 1000:g}` (as root)", file=sys.stderr)
        return 1
    print(f"pyscale power-limit guard: the process that set GPU {uuid}'s power limit ended without restoring it; "
          f"restored it to {restore_mw / 1000:g} W", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder holds pyscale's meter modules, which must not shadow anything
    raise SystemExit(main(sys.argv[1:]))
