"""`pyscale report`: the main job end to end (device, quick benchmark, cost model, law, plan) as one document."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyscale.benchmark.shapes import FAMILIES, SHAPE_SETS

HELP = "run the whole job (device -> benchmark -> cost model -> law -> plan) and write a Markdown report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("pyscale-report"), help="output directory")
    parser.add_argument("--store", type=Path, default=None, help="SQLite store (default: $PYSCALE_HOME/pyscale.db)")
    parser.add_argument("--shapes", default=None, choices=SHAPE_SETS, metavar="SHAPES",
                        help=f"benchmark shape set: {', '.join(SHAPE_SETS)} (default: llama3-8b on GPU, quick on CPU)")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help="benchmark only these op families (repeatable; default all)")
    parser.add_argument("--skip-bench", action="store_true", help="use what the store already holds")
    parser.add_argument("--data", default=None, help="your runs (CSV/Parquet: N, D, loss[, run]) to fit a law to")
    parser.add_argument("--law", default="epoch2024", help="preset law when no --data is given")
    parser.add_argument("--budget", default="1e21 flops",
                        help="plan budget: '1e21 flops', '5000 gpu-hours', '120 kWh', '$20000' or 'loss=2.3'")
    parser.add_argument("--gpu", default=None, help="plan for this GPU (with --mfu / --power-w)")
    parser.add_argument("--mfu", type=float, default=None)
    parser.add_argument("--power-w", type=float, default=None)
    parser.add_argument("--price-per-gpu-hour", type=float, default=None)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pyscale.report import run_main_job

    console = Console()
    hardware = None
    if args.gpu:
        from pyscale.commands.plan import error_line
        from pyscale.plan import from_user

        try:
            hardware = from_user(args.gpu, mfu=args.mfu, power_w=args.power_w,
                                 price_per_device_hour=args.price_per_gpu_hour)
        except ValueError as exc:  # the same flags as `pyscale plan`, so its wording fits
            print(f"pyscale report: {error_line(exc)}", file=sys.stderr)
            return 2
    path = run_main_job(args.out, store_path=args.store, shapes=args.shapes, families=args.family,
                        skip_bench=args.skip_bench, data=args.data, law=args.law, budget=args.budget,
                        hardware=hardware, on_stage=lambda s: console.print(f"[bold cyan]▶ {s}[/]"))
    console.print(f"[bold green]report written:[/] {path}")
    return 0
