"""`pyscale energy optimize`: the batch size and GPU power limit of a measured training job that minimise
its energy, time or Zeus' cost, against a baseline batch size at the largest power limit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pyscale.commands.usage import InputFile, StorePath, UsageError, positive_float, positive_int

HELP = "choose a training job's batch size and GPU power limit for energy, time or both (Zeus-style)"

STEPS = "a CSV of step measurements (batch_size, power_limit_w, time_s, avg_power_w)"
RUNS = "a CSV of training runs (batch_size, seed, epochs_to_target)"


def _eta(value: str) -> float:
    try:
        eta = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]: got {value!r}") from None
    if not 0.0 <= eta <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (1: energy only, 0: time only): got {value}")
    return eta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    opt = sub.add_parser("optimize", help="the energy-, time- and cost-optimal (batch size, power limit)",
                         description="Time to accuracy = epochs_to_target x time_s; energy = that x avg_power_w; "
                                     "cost = eta*energy + (1-eta)*max_power_w*time.")
    opt.add_argument("--steps", type=InputFile(STEPS), metavar="STEPS.csv",
                     help="time_s (per unit of work, e.g. an epoch) and avg_power_w per (batch_size, power_limit_w)")
    opt.add_argument("--store", type=StorePath(write=False), metavar="PATH",
                     help="instead of --steps: the gpt_step rows `pyscale profile --power-limits` stored")
    opt.add_argument("--epoch-samples", type=positive_int, metavar="N",
                     help="with --store: samples in one unit of work (time_s = step time x N / batch)")
    opt.add_argument("--runs", type=InputFile(RUNS), required=True, metavar="RUNS.csv",
                     help="epochs_to_target per (batch_size, seed); empty where a seed never reached the target")
    opt.add_argument("--baseline-batch", type=positive_int, required=True, metavar="B",
                     help="the batch size you train with today (compared at the largest power limit)")
    opt.add_argument("--eta", type=_eta, default=0.5,
                     help="weight of energy against time in the cost, in [0, 1] (default 0.5)")
    opt.add_argument("--max-power-w", type=positive_float, metavar="W",
                     help="the watts a second of time is priced at in the cost (default: the largest limit)")
    opt.add_argument("--json", action="store_true", help="print the result as JSON (notes go to stderr)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "optimize":
        raise UsageError("choose an action: optimize (see pyscale energy --help)")
    from pyscale.plan import zeus

    if (args.steps is None) == (args.store is None):
        raise UsageError("give the step measurements as --steps STEPS.csv or --store PATH (one of the two)")
    if args.store is not None:
        if args.epoch_samples is None:
            raise UsageError("--store needs --epoch-samples N (samples per unit of work) to turn step times into "
                             "time per unit of work")
        from pyscale.commands.usage import open_store

        with open_store(args.store, write=False) as store:
            steps = zeus.steps_from_store(store, epoch_samples=args.epoch_samples)
    else:
        if args.epoch_samples is not None:
            raise UsageError("--epoch-samples goes with --store; STEPS.csv already gives time per unit of work")
        steps = zeus.read_steps_csv(args.steps)
    result = zeus.optimize(steps, zeus.read_runs_csv(args.runs), baseline_batch=args.baseline_batch, eta=args.eta,
                           max_power_w=args.max_power_w)
    if args.json:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print(result)
    return 0


def _print(result: Any) -> None:
    import textwrap

    base = result.baseline
    time_unit, time_scale = _unit(base.time_s, (("h", 3600.0), ("min", 60.0), ("s", 1.0)))
    energy_unit, energy_scale = _unit(base.energy_j, (("kWh", 3.6e6), ("kJ", 1e3), ("J", 1.0)))
    print(f"{'to the target':<15} {'batch':>6} {'limit W':>8} {'time ' + time_unit:>9} {'energy ' + energy_unit:>11} "
          f"{'Δ time':>8} {'Δ energy':>8}")
    for name, c in (("baseline", base), ("energy-optimal", result.energy_optimal),
                    ("time-optimal", result.time_optimal), (f"cost (eta {result.eta:g})", result.cost_optimal)):
        print(f"{name:<15} {c.batch_size:>6} {c.power_limit_w:>8.0f} {c.time_s / time_scale:>9.3g} "
              f"{c.energy_j / energy_scale:>11.3g} {c.time_s / base.time_s - 1:>+8.1%} "
              f"{c.energy_j / base.energy_j - 1:>+8.1%}")
    lines = [f"Energy saving vs the baseline (batch {base.batch_size} at {base.power_limit_w:g} W): "
             f"{result.energy_saving:.1%}. The cost prices a second at {result.max_power_w:g} W.",
             "Pareto front (time, energy), fastest first: "
             + ", ".join(f"{c.batch_size}@{c.power_limit_w:g}W" for c in result.pareto_front),
             *(f"note: {note}" for note in result.notes)]
    for line in lines:
        print(textwrap.fill(line, 80, subsequent_indent="  "))


def _unit(value: float, units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    """The largest unit in which `value` is at least 1 (the last unit otherwise)."""
    return next(((name, scale) for name, scale in units if value >= scale), units[-1])
