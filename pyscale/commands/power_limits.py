"""`--power-limits SPEC`, shared by `pyscale bench` and `pyscale profile`: measure under each GPU power limit
in turn (set, warm up again, measure, restore; `pyscale.profile.power.limits`). The spec and the device's
allowed range are checked before anything is measured; where limits cannot be set, one line says so and the
command measures at the current limit only. Not a command itself (it is not in pyscale.cli.COMMANDS)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pyscale.commands.usage import UsageError

T = TypeVar("T")
# The NVML module the commands set limits through (None: pynvml). Tests put a fake NVML module here; the
# guard process loads the same one, so a test never reaches a real GPU's settings.
NVML: Any = None

HELP = ("measure under each of these GPU power limits in turn, in W, e.g. 200,300,max (max: the GPU's "
        "largest); needs root; the original limit is always restored. CUDA only")


def add_argument(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument("--power-limits", metavar="SPEC", default=None, help=HELP)


def require_cuda(device_kind: str) -> None:
    if device_kind != "cuda":
        raise UsageError("--power-limits sets a GPU's power limit, and this measures on the CPU; measure on a GPU "
                         "(--device cuda), or leave --power-limits out")


def resolve(spec: str | None, device_kind: str, index: int = 0) -> tuple[tuple[float, ...], Any] | None:
    """(watts, the GPU's allowed range) of `--power-limits spec`, every check done; None without the flag."""
    if spec is None:
        return None
    require_cuda(device_kind)
    from pyscale.profile.power import MeterError
    from pyscale.profile.power.limits import parse_power_limits, power_limit_range

    try:
        allowed = power_limit_range(index, nvml=NVML)
    except MeterError as exc:
        raise UsageError(f"--power-limits: cannot read GPU {index}'s allowed power limits ({exc}); leave "
                         "--power-limits out to measure at the current limit") from exc
    return parse_power_limits(spec, allowed), allowed


def each(resolved: tuple[tuple[float, ...], Any], measure: Callable[[Any], T], prog: str) -> list[T]:
    """`measure(applied)` under each resolved limit (applied None: at the current limit, as limits cannot be
    set here); progress and the refusal go to stderr as `prog: ...` lines."""
    from pyscale.profile.power.limits import sweep_power_limits

    watts, allowed = resolved
    return sweep_power_limits(watts, measure, allowed=allowed, nvml=NVML,
                              say=lambda line: print(f"{prog}: {line}", file=sys.stderr, flush=True))


def label(applied: Any) -> str:
    """How a table's title names the limit its rows were measured under (`applied`: an AppliedLimit, its
    JSON form, or None for the current limit)."""
    if applied is None:
        return "at the current power limit"
    fields = applied if isinstance(applied, dict) else {**vars(applied), "note": applied.note}
    requested, enforced = fields["requested_w"], fields["enforced_w"]
    if fields["note"] is None:  # enforced as set
        return f"at power limit {requested:g} W"
    return f"at power limit {requested:g} W (enforced: {'unknown' if enforced is None else f'{enforced:g} W'})"
