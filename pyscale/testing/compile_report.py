"""The compile report: `python -m pyscale.testing.aot report [--arch sm_90a] [--json] [--op OP] [--full]`.

One row per (kernel, arch) at the configuration its op would choose (pyscale.testing.aot_specs),
compiled as the JIT specialises aligned tensors, with shared memory, registers and spills (cuobjdump)
and what the PTX says about the pipeline: asynchronous copies (cp.async + TMA), TMA alone, the MMA
kind and the distinct `wgmma.wait_group` levels, all of them and those inside loops ("loop waits": a
level above 0 there lets the main loop's MMAs overlap; a wait after the loop only drains it). Judges kernel work without a GPU (DESIGN.md section 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pyscale.testing import aot_specs
from pyscale.testing.aot import ARCHS, compile_pairs

FIELDS = ("op", "kernel", "arch", "params", "config", "ok", "shared_bytes", "smem_limit_bytes", "registers",
          "spill_bytes", "async_copies", "tma", "mma", "wgmma_wait_levels", "loop_wait_levels", "error")


def rows(entries: Iterable[aot_specs.ReportEntry], archs: Sequence[str] = tuple(ARCHS)) -> list[dict[str, Any]]:
    """Compile (through the AOT cache) and describe every entry on every arch it runs on."""
    pairs, meta = [], []
    for entry in entries:
        for arch in archs:
            if arch in entry.archs:
                spec = entry.spec(arch)
                pairs.append((spec, arch))
                meta.append((entry, arch, spec))
    out = []
    for (entry, arch, spec), r in zip(meta, compile_pairs(pairs)):
        out.append({"op": entry.op, "kernel": spec.kernel.split(":", 1)[1], "arch": arch, "params": dict(entry.params),
                    "config": entry.config(arch), "ok": r.ok, "shared_bytes": r.shared_bytes,
                    "smem_limit_bytes": r.smem_limit_bytes, "registers": r.registers, "spill_bytes": r.spill_bytes,
                    "async_copies": r.async_copies, "tma": r.tma, "mma": r.mma,
                    "wgmma_wait_levels": r.wgmma_wait_levels, "loop_wait_levels": r.loop_wait_levels,
                    "error": r.error})
    return out


def _compact(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


def format_table(report: Sequence[dict[str, Any]]) -> str:
    head = ("op", "kernel", "arch", "params", "config", "smem KB", "regs", "spill B", "async", "tma", "mma", "waits",
            "loop waits")
    lines = []
    for r in report:
        if not r["ok"]:
            lines.append((r["op"], r["kernel"], r["arch"], _compact(r["params"]), _compact(r["config"]),
                          "refused: " + (r["error"] or "").splitlines()[0][:60], "", "", "", "", "", "", ""))
            continue
        lines.append((r["op"], r["kernel"], r["arch"], _compact(r["params"]), _compact(r["config"]),
                      f"{r['shared_bytes'] / 1024:.1f}", str(r["registers"]), str(r["spill_bytes"]),
                      str(r["async_copies"]), str(r["tma"]), r["mma"],
                      ",".join(map(str, r["wgmma_wait_levels"] or [])) or "-",
                      ",".join(map(str, r["loop_wait_levels"] or [])) or "-"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyscale.testing.aot report", description=__doc__.split("\n")[2])
    parser.add_argument("--arch", action="append", choices=list(ARCHS),
                        help="an architecture to compile for (repeatable; default: all of them)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of row objects and nothing else")
    parser.add_argument("--op", help="only ops equal to or under this name (attention, gemm_fp8.block, moe, ...)")
    parser.add_argument("--family", action="append", choices=list(aot_specs.FAMILIES),
                        help="only this op family (repeatable)")
    parser.add_argument("--full", action="store_true", help="also the entries CI skips (full head-dim and mode grid)")
    args = parser.parse_args(argv)
    selected = aot_specs.entries(args.family or aot_specs.FAMILIES, full=args.full, op=args.op)
    if not selected:
        parser.error(f"--op {args.op!r} matches no kernel")
    report = rows(selected, tuple(args.arch or ARCHS))
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0
