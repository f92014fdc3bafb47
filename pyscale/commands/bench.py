"""`pyscale bench`: sweep the named shape sets of each op family and their baselines into the store (with
--power-limits, one sweep under each GPU power limit: `pyscale.commands.power_limits`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pyscale.benchmark.shapes import FAMILIES, MODELS, SHAPE_SETS
from pyscale.commands import power_limits
from pyscale.commands.usage import OutputFile, StorePath, UsageError, nonnegative_int, require

EXPORT_SUFFIXES = (".csv", ".json", ".parquet")

HELP = "benchmark pyscale's ops and their baselines on this device into the store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", nargs="?", default="all", choices=[*FAMILIES, "all"],
                        help="op family to sweep (default: all)")
    parser.add_argument("--shapes", default=None, choices=SHAPE_SETS, metavar="SHAPES",
                        help=f"shape set named after a model: {', '.join(MODELS)}; or quick (tiny, every family), "
                             "grid (attention's coverage sweep) (default: llama3-8b on a GPU, quick on CPU)")
    parser.add_argument("--quick", action="store_true", help="the tiny 'quick' shape set (what CPU runs use)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--impl", action="append", help="only these implementations (repeatable), e.g. pyscale")
    parser.add_argument("--energy", action="store_true", help="measure energy over >= 1 s windows (NVML/RAPL)")
    parser.add_argument("--resume", action="store_true", help="skip cases already measured ok in the store "
                        "(at the power limit they are measured under)")
    power_limits.add_argument(parser)
    parser.add_argument("--retry-unstable", type=nonnegative_int, default=0, metavar="N",
                        help="measure again, up to N more times, the cases whose timing was not stable "
                             "(a contended CPU, a throttled or shared GPU); every attempt is stored")
    parser.add_argument("--store", type=StorePath(write=True), default=None,
                        help="SQLite store (default: $PYSCALE_HOME/pyscale.db)")
    parser.add_argument("--export", type=OutputFile("the sweep's rows", EXPORT_SUFFIXES), default=None,
                        help="also write this sweep's rows to .csv/.json/.parquet")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                        help="fan the sweep out over a Ray cluster (ADDRESS, or start a local one)")


def _resolve_device(choice: str) -> str:
    from pyscale import sysinfo

    if choice == "auto":
        return "cuda" if sysinfo.cuda_available() else "cpu"
    if choice == "cuda" and not sysinfo.cuda_available():
        raise UsageError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    return choice


def _say_interrupted(store) -> None:
    """What --resume picks up: runs killed before they ended (found dead, or stopped by Ctrl-C)."""
    runs = store.runs(status="interrupted")
    for r in runs[-3:]:
        print(f"run {r['id']} ({r['command']} on {r['hostname']}, pid {r['pid'] or '?'}) was interrupted; its "
              f"{r['measurements']} measurement(s) are kept and --resume skips them", file=sys.stderr)
    if len(runs) > 3:
        print(f"({len(runs) - 3} earlier interrupted run(s) not shown)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from pyscale import benchmark
    from pyscale.benchmark.rows import bench_rows, export, print_bench_table
    from pyscale.commands.usage import open_store

    device = _resolve_device(args.device)
    shape_set = "quick" if args.quick else (args.shapes or ("llama3-8b" if device == "cuda" else "quick"))
    families = benchmark.FAMILIES if args.family == "all" else (args.family,)
    cases = benchmark.plan_cases(families, shape_set, device=device, impls=args.impl)
    if not cases:
        raise UsageError(f"no cases for {', '.join(families)} with shapes {shape_set!r} on {device}"
                         + (f" and --impl {' '.join(args.impl)}" if args.impl else "")
                         + "; choose other --shapes (a model with that family) or --impl")
    if args.export and args.export.suffix == ".parquet":
        for module in ("pandas", "pyarrow"):
            require(module, "--export to .parquet", "export to .csv or .json")
    limits = power_limits.resolve(args.power_limits, device)  # the cases' device is GPU 0 (the store's key too)
    executor = None
    if args.ray:
        if limits:
            raise UsageError("--power-limits sets this machine's GPU power limit, and --ray measures elsewhere; "
                             "use one of them")
        from pyscale.benchmark.distributed import RayUnavailable, ray_executor

        try:
            executor = ray_executor(None if args.ray == "auto" else args.ray, device=device)
        except RayUnavailable as exc:
            raise UsageError(f"--ray: {exc}; or run without --ray") from exc
    if device == "cpu" and not args.json:
        print(f"no GPU: measuring {len(cases)} CPU cases at the tiny '{shape_set}' shapes "
              "(reference / C++ / Triton-interpreter paths; CPU rows are tagged with the CPU device)")
    arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
    with open_store(args.store, write=True) as store:
        if args.resume:
            _say_interrupted(store)

        def measure(applied):
            # under each limit the sweep warms every case up again until its timing is stable, and --resume
            # skips what was measured at the limit enforced now (benchmark.pending)
            run_arguments = arguments if applied is None else {**arguments, "power_limit_w": applied.requested_w}
            return applied, benchmark.sweep(cases, store=store, device=device, resume=args.resume,
                                            energy=args.energy, executor=executor, progress=not args.json,
                                            retry_unstable=args.retry_unstable, arguments=run_arguments)

        measured = power_limits.each(limits, measure, args._prog) if limits else [measure(None)]
    # every limit is restored by now: the tables come after
    title = f"pyscale bench {', '.join(families)} [{shape_set}] on {device}"
    tables = [(applied, bench_rows(summary.rows)) for applied, summary in measured]  # one per limit
    rows = [row for _, table_rows in tables for row in table_rows]
    failed = sum(s.failed for _, s in measured)
    if args.export:
        export(rows, args.export)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for applied, table_rows in tables:
            if table_rows:
                print_bench_table(table_rows, title=title + (f" {power_limits.label(applied)}" if limits else ""))
        ids = ", ".join(str(summary.run_id) for _, summary in measured)
        print(f"run{'s' if len(measured) > 1 else ''} {ids}: {sum(s.measured for _, s in measured)} measured, "
              f"{failed} failed, {sum(s.skipped for _, s in measured)} skipped (already in the store)")
    if failed:
        attempted = len(cases) * len(measured) - sum(s.skipped for _, s in measured)
        print(f"pyscale bench: {failed} of {attempted} case(s) failed (status and error "
              "of each are in the table and the store); measure them again with --resume", file=sys.stderr)
        return 1
    return 0
