"""`pyscale plan`: a budget -> N*, D*, a concrete architecture, time, energy and cost, every assumption named."""

from __future__ import annotations

import argparse
import json
import sys

from pyscale.commands.usage import (
    InputFile,
    OutputDir,
    StorePath,
    in_flags,
    positive_float,
    positive_int,
    require,
)

HELP = "plan a FLOPs-, time-, energy- or cost-optimal training run from a loss law and GPU costs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument_group("budget (exactly one)")
    x = b.add_mutually_exclusive_group(required=True)
    x.add_argument("--flops", type=positive_float, help="training compute budget in FLOPs")
    x.add_argument("--gpu-hours", type=positive_float, help="GPU-hours (time-optimal)")
    x.add_argument("--deadline-hours", type=positive_float, help="wall-clock hours on --n-gpus GPUs (time-optimal)")
    x.add_argument("--kwh", type=positive_float, help="GPU energy in kWh (facility energy if --pue is given)")
    x.add_argument("--dollars", type=positive_float, help="money, with --price-per-gpu-hour")
    x.add_argument("--target-loss", type=positive_float, help="the cheapest run that reaches this loss")
    parser.add_argument("--objective", choices=["flops", "time", "energy", "cost"], default=None,
                        help="what a --target-loss plan minimises (default flops); other budgets imply it")
    parser.add_argument("--law", default="epoch2024",
                        type=InputFile("a saved fit (pyscale fit RUNS --json > fit.json)", names=_presets),
                        help="a loss-law preset (epoch2024, hoffmann2022, ...), an allocation law "
                             "(hoffmann2022_approach1, hoffmann2022_approach2: N and D, no loss) or a saved fit JSON")
    h = parser.add_argument_group("hardware (user inputs are labelled as such in the plan)")
    h.add_argument("--gpu", default=None, help="GPU name from pyscale.hw (e.g. 'H100 SXM')")
    h.add_argument("--n-gpus", type=positive_int, default=1)
    h.add_argument("--dp-efficiency", type=float, default=None, help="data-parallel scaling efficiency (required if n>1)")
    h.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation to assume")
    h.add_argument("--power-w", type=positive_float, default=None, help="average power per GPU while training")
    h.add_argument("--price-per-gpu-hour", type=positive_float, default=None)
    h.add_argument("--pue", type=float, default=None, help="power usage effectiveness for facility energy")
    h.add_argument("--dtype", default=None,
                   help="training dtype (default bf16; with a profile, the first of bf16, fp16, fp32 it models)")
    h.add_argument("--profile", type=InputFile("a device profile JSON (pyscale costmodel fit --out PROFILE.json)"),
                   default=None,
                   help="a fitted device profile JSON (pyscale costmodel fit --out): MFU and power per architecture")
    h.add_argument("--store", type=StorePath(write=False), default=None,
                   help="use measured training steps of --gpu (or this device) from this store")
    a = parser.add_argument_group("architecture")
    a.add_argument("--seq-len", type=positive_int, default=2048)
    a.add_argument("--vocab", type=positive_int, default=32000)
    a.add_argument("--experts", type=int, default=0)
    a.add_argument("--top-k", type=int, default=0)
    a.add_argument("--gqa", type=positive_int, default=None,
                   help="query heads per kv head (1: multi-head attention); default: 8 kv heads from 1B parameters, "
                        "MHA below")
    a.add_argument("--heads-multiple", type=positive_int, default=None,
                   help="query heads divisible by this (default 8, the usual tensor-parallel degree, from 1B "
                        "parameters; 1: no constraint)")
    a.add_argument("--micro-batch", type=positive_int, default=None,
                   help="sequences per GPU per micro-step (default: the largest that fits); the global batch is a "
                        "multiple of --n-gpus x this, and of 8 sequences")
    a.add_argument("--inference-tokens", type=float, default=0.0, help="expected inference tokens (over-training)")
    a.add_argument("--batch-law", choices=["deepseek", "kaplan"], default="deepseek")
    a.add_argument("--recompute", choices=["auto", "none", "full"], default="auto")
    parser.add_argument("--max-days", type=positive_float, default=365.0,
                        help="a plan running longer than this is reported infeasible (default 365)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=OutputDir("the plan's plots"), default=None,
                        help="directory for the iso-loss PNG (and the time-energy trade-off when power is known)")


def _presets() -> list[str]:
    from pyscale.scaling import presets

    return [*presets.PRESETS, *presets.ALLOCATIONS]


def budget_of(args: argparse.Namespace):
    from pyscale.plan import Budget

    if args.flops is not None:
        return Budget("flops", args.flops)
    if args.gpu_hours is not None:
        return Budget("gpu_hours", args.gpu_hours)
    if args.deadline_hours is not None:
        return Budget("gpu_hours", args.deadline_hours * args.n_gpus)
    if args.kwh is not None:
        return Budget("kwh", args.kwh)
    if args.dollars is not None:
        return Budget("dollars", args.dollars)
    return Budget("loss", args.target_loss)


# choose_hardware's parameters and the options (argparse dests) that give them: the flags are "--" + dest
HARDWARE_OPTIONS = {"gpu": "gpu", "mfu": "mfu", "power_w": "power_w", "profile": "profile", "store": "store",
                    "n_devices": "n_gpus", "dp_efficiency": "dp_efficiency", "dtype": "dtype",
                    "price_per_device_hour": "price_per_gpu_hour", "pue": "pue"}
FLAGS = {**{param: "--" + dest.replace("_", "-") for param, dest in HARDWARE_OPTIONS.items()},
         # plan()'s own parameters (the error path spells library messages with these)
         "n_experts": "--experts", "top_k": "--top-k", "seq_len": "--seq-len", "vocab_size": "--vocab",
         "gqa_ratio": "--gqa", "heads_multiple": "--heads-multiple", "micro_batch": "--micro-batch",
         "inference_tokens": "--inference-tokens", "batch_law": "--batch-law", "max_days": "--max-days"}


def hardware_of(args: argparse.Namespace):
    from pyscale.plan import choose_hardware

    return choose_hardware(**{param: getattr(args, dest) for param, dest in HARDWARE_OPTIONS.items()})


def _plots(args: argparse.Namespace, result, hardware) -> None:
    from pyscale.plan import choose_law
    from pyscale.plan.planner import equal_loss_candidates
    from pyscale.plan.plot import iso_loss, pareto

    args.plot.mkdir(parents=True, exist_ok=True)
    if result.predicted_loss is None:
        print(f"plots skipped: {args.law} is an allocation law and predicts no loss to draw", file=sys.stderr)
        return
    iso_loss(result, choose_law(str(args.law)), args.plot / "plan_iso_loss.png")
    if hardware is not None and hardware.flops_source is not None and hardware.power_source is not None:
        pareto(equal_loss_candidates(result, law=str(args.law), hardware=hardware),
               args.plot / "plan_time_energy.png")
    else:  # stderr: stdout stays the plan (JSON with --json)
        print("time-energy plot skipped: it needs a throughput and a power (--mfu and --power-w, or --profile)",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from pyscale.plan import plan

    if args.plot:
        require("matplotlib", "--plot", "run without --plot")
    hardware = hardware_of(args)
    result = plan(budget_of(args), law=str(args.law), hardware=hardware, objective=args.objective,
                  inference_tokens=args.inference_tokens, seq_len=args.seq_len, vocab_size=args.vocab,
                  n_experts=args.experts, top_k=args.top_k, gqa_ratio=args.gqa,
                  heads_multiple=args.heads_multiple, micro_batch=args.micro_batch, batch_law=args.batch_law,
                  recompute=args.recompute, max_days=args.max_days)
    if args.plot:
        _plots(args, result, hardware)
    for line in result.warnings:  # stderr: stdout stays the plan; an infeasible plan is still an answer
        print(f"pyscale plan: warning: {in_flags(line, FLAGS)}", file=sys.stderr)
    result.unavailable = {k: in_flags(v, FLAGS) for k, v in result.unavailable.items()}
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_plan(result)
    return 0


def _n(v: float | None, unit: str = "", spec: str = ".4g") -> str:
    return "—" if v is None else f"{format(v, spec)}{unit}"


def _power_limit_row(pl: dict) -> str:
    measured = ", ".join(f"{w:g}" for w in pl["measured_w"])
    text = f"{pl['power_limit_w']:g} W of the measured {measured} W, chosen by {pl['chosen_by']}"
    if pl["power_limit_w"] != pl["largest_w"]:
        energy = "unknown" if pl["energy_change"] is None else f"{pl['energy_change']:+.1%}"
        text += f"; vs {pl['largest_w']:g} W: time {pl['time_change']:+.1%}, energy {energy}"
    return text


def print_plan(p) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"pyscale plan — {p.objective}-optimal for {p.budget.describe()}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    from pyscale.scaling.frontier import extrapolation_label

    interval = "absent" if p.loss_interval is None else f"[{p.loss_interval[0]:.4f}, {p.loss_interval[1]:.4f}]"
    label = extrapolation_label(p.extrapolation_factor)
    if label:
        interval += f" ({label})"
    loss = "— (an allocation law predicts no loss)" if p.predicted_loss is None else f"{p.predicted_loss:.4f}"
    c = p.config
    rows = [
        ("FEASIBLE" if p.feasible else "INFEASIBLE", "yes" if p.feasible else "; ".join(p.infeasible_reasons)),
        ("law", f"{p.law}, {p.law_approach} ({p.flops_convention})"),
        ("N* (continuous optimum)", _n(p.n_params_optimal)),
        ("parameters (exact)", f"{p.n_params:,} total, {p.n_params_non_embedding:,} non-embedding"
                               + (f", {p.n_params_active:,} active" if c.n_experts else "")
                               + f"; the law's N {p.n_params_law:,} ({100 * p.n_params_deviation:+.2f}% from N*)"),
        ("tokens", _n(p.tokens)),
        ("tokens per parameter", _n(p.tokens_per_param, spec=".3g")),
        ("predicted loss", f"{loss}  95% interval {interval}"),
        ("beyond the law's data", "unknown" if p.extrapolation_factor is None
                                  else f"x{p.extrapolation_factor:.3g} its largest compute"),
        ("architecture", f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} kv), "
                         f"head_dim {c.head_dim}, d_ff {c.d_ff}" + (f", {c.n_experts} experts top-{c.top_k}"
                                                                    if c.n_experts else "")),
        ("batch", f"{p.batch.tokens:,} tokens ({p.batch.sequences} x {c.seq_len}), {p.steps:,} steps"),
        ("memory", p.memory.reason),
        ("training FLOPs", f"{p.training_flops:.3e} (law), {p.model_flops:.3e} (model FLOPs)"),
        ("hardware", "—" if p.device is None else f"{p.n_devices} x {p.device}"),
        ("MFU", _n(p.mfu, spec=".3f")),
        ("time", "—" if p.time_s is None else f"{p.time_s / 3600:.4g} h = {p.time_s / 86400:.4g} days "
                                              f"({p.gpu_hours:.4g} GPU-h)" + (f"; {p.time_error}" if p.time_error else "")),
        ("GPU energy", _n(p.energy_kwh, " kWh")),
        ("facility energy", _n(p.facility_energy_kwh, " kWh")),
        ("cost", "—" if p.cost_dollars is None else f"${p.cost_dollars:,.0f}"),
    ]
    if p.power_limit:  # only with a power-limit model: other plans print as they always did
        rows.append(("GPU power limit", _power_limit_row(p.power_limit)))
    if p.flops_optimal:
        rows.append(("FLOPs-optimal at same C", f"N {p.flops_optimal['N']:.4g}, D {p.flops_optimal['D']:.4g}, "
                                                f"loss {p.flops_optimal['loss']:.4f}"))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print("[bold]assumptions[/]")
    for a in p.assumptions:
        console.print(f"  • {a}")
    console.print(f"  • loss interval: {p.loss_interval_source}")
    for k, why in p.unavailable.items():
        console.print(f"  • {k} unavailable: {why}")
