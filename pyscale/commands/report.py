"""`pyscale report`: the main job end to end (device, quick benchmark, cost model, law, plan) as one document."""

from __future__ import annotations

import argparse
import sys

from pyscale.benchmark.shapes import FAMILIES, SHAPE_SETS
from pyscale.commands.usage import RUNS, InputFile, OutputDir, StorePath, UsageError, positive_float

HELP = "run the whole job (device -> benchmark -> cost model -> law -> plan) and write a Markdown report"

# run_main_job's and from_user's parameters spelled otherwise here
FLAGS = {"out_dir": "--out", "store_path": "--store", "price_per_device_hour": "--price-per-gpu-hour"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=OutputDir("the report"), default="pyscale-report", help="output directory")
    parser.add_argument("--store", type=StorePath(write=True), default=None,
                        help="SQLite store (default: $PYSCALE_HOME/pyscale.db)")
    parser.add_argument("--shapes", default=None, choices=SHAPE_SETS, metavar="SHAPES",
                        help=f"benchmark shape set: {', '.join(SHAPE_SETS)} (default: llama3-8b on GPU, quick on CPU)")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help="benchmark only these op families (repeatable; default all)")
    parser.add_argument("--skip-bench", action="store_true", help="use what the store already holds")
    parser.add_argument("--data", type=InputFile(RUNS, table=True), default=None,
                        help="your runs (CSV/Parquet: N, D, loss[, run]) to fit a law to")
    parser.add_argument("--nan-policy", default="raise", choices=["raise", "omit"],
                        help="bad rows in --data: raise an error listing them, or drop and count them")
    parser.add_argument("--law", default="epoch2024", help="preset law when no --data is given")
    parser.add_argument("--budget", default="1e21 flops",
                        help="plan budget: '1e21 flops', '5000 gpu-hours', '120 kWh', '$20000' or 'loss=2.3'")
    parser.add_argument("--gpu", default=None, help="plan for this GPU (with --mfu / --power-w)")
    parser.add_argument("--mfu", type=float, default=None)
    parser.add_argument("--power-w", type=positive_float, default=None)
    parser.add_argument("--price-per-gpu-hour", type=positive_float, default=None)
    parser.add_argument("--keep-going", action="store_true",
                        help="run every stage even after one fails, and exit 0 (failures are still reported)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pyscale.report import check_inputs, run_main_job

    console = Console()
    check_inputs(law=args.law, data=args.data, budget=args.budget, nan_policy=args.nan_policy)  # before any work
    hardware = None
    given = [flag for flag, value in (("--mfu", args.mfu), ("--power-w", args.power_w),
                                      ("--price-per-gpu-hour", args.price_per_gpu_hour)) if value is not None]
    if given and not args.gpu:
        raise UsageError(f"{', '.join(given)} given without --gpu: add --gpu NAME (the GPU they describe)")
    if args.gpu:
        from pyscale.plan import from_user

        hardware = from_user(args.gpu, mfu=args.mfu, power_w=args.power_w,
                             price_per_device_hour=args.price_per_gpu_hour)
    job = run_main_job(args.out, store_path=args.store, shapes=args.shapes, families=args.family,
                       skip_bench=args.skip_bench, data=args.data, law=args.law, budget=args.budget,
                       nan_policy=args.nan_policy, hardware=hardware, keep_going=args.keep_going,
                       on_stage=lambda s: console.print(f"[bold cyan]▶ {s}[/]"))
    if not job.failed:
        console.print(f"[bold green]report written:[/] {job.path}")
        return 0
    for problem in job.failed:
        print(f"pyscale report: stage {problem.splitlines()[0]}", file=sys.stderr)
    not_run = f"; not run after it: {', '.join(job.skipped)} (--keep-going runs them)" if job.skipped else ""
    print(f"pyscale report: {len(job.failed)} stage(s) failed; what succeeded is in {job.path}{not_run}",
          file=sys.stderr)
    return 0 if args.keep_going else 1
