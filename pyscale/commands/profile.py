"""`pyscale profile`: FLOPs, time, energy and MFU of a training step, per module, into the store.

    pyscale profile --model gpt --layers 12 --d-model 768 --heads 12 --seq 256 --batch 4 --steps 20
    pyscale profile -m mypkg.bench:step --steps 10        # profiles mypkg.bench.step() as the step
    pyscale profile --model gpt --power-limits 250,max    # under each GPU power limit (root; restored)

The built-in model comes from pyscale.models (config.GPTConfig, gpt.GPT, gpt.train_step, gpt.make_batch);
its step's model FLOPs are the config's PaLM count (6N + 12·L·H·Q·T per token) times the tokens per step.
With --power-limits the JSON is {"power_limits": [one object as above per limit, with "power_limit"]}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from pyscale.commands import power_limits
from pyscale.commands.usage import (
    StorePath,
    UsageError,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

HELP = "profile a training step (the built-in GPT or your function): FLOPs, time, energy, MFU per module"

DTYPES = ("float32", "bfloat16", "float16")
# GPTConfig's fields and the flags that give them
FLAGS = {"n_layers": "--layers", "d_model": "--d-model", "n_heads": "--heads", "n_kv_heads": "--kv-heads",
         "d_ff": "--d-ff", "n_experts": "--experts", "top_k": "--top-k", "vocab_size": "--vocab", "seq_len": "--seq"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=("gpt",), help="profile the built-in model's training step")
    what.add_argument("-m", "--function", metavar="MODULE:FUNCTION",
                      help="profile FUNCTION() from an importable MODULE as the step (called with no arguments)")
    g = parser.add_argument_group("built-in model (--model gpt)")
    g.add_argument("--layers", type=positive_int, default=12)
    g.add_argument("--d-model", type=positive_int, default=768)
    g.add_argument("--heads", type=positive_int, default=12)
    g.add_argument("--kv-heads", type=positive_int, default=None, help="key/value heads (GQA); default: --heads")
    g.add_argument("--d-ff", type=positive_int, default=None, help="MLP hidden size; default: the config's")
    g.add_argument("--experts", type=nonnegative_int, default=0, help="MoE experts (0: dense MLP)")
    g.add_argument("--top-k", type=nonnegative_int, default=0, help="experts per token")
    g.add_argument("--vocab", type=positive_int, default=None, help="vocabulary size; default: the config's")
    g.add_argument("--seq", type=positive_int, default=256, help="sequence length")
    g.add_argument("--batch", type=positive_int, default=4, help="sequences per step")
    g.add_argument("--impl", choices=("auto", "pyscale", "torch"), default="auto",
                   help="pyscale modules where they exist, or plain PyTorch")
    g.add_argument("--lr", type=positive_float, default=3e-4, help="AdamW learning rate")
    g.add_argument("--seed", type=int, default=0)
    p = parser.add_argument_group("measurement")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: the current GPU, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--meter", choices=("auto", "nvml", "rapl", "null"), default="auto")
    p.add_argument("--min-window", type=positive_float, default=1.0, help="shortest energy window in seconds")
    p.add_argument("--idle", type=nonnegative_float, default=1.0, help="seconds of idle power measurement (0: skip)")
    p.add_argument("--sampler", action="store_true", help="also record a power trace (native NVML sampler)")
    p.add_argument("--retry-unstable", type=nonnegative_int, default=0, metavar="N",
                   help="profile again, up to N more times, while the step timing is not stable (a contended "
                        "CPU, a throttled or shared GPU); every attempt is stored, the last one current")
    power_limits.add_argument(p)
    p.add_argument("--store", type=StorePath(write=True), default=None,
                   help="SQLite store path (default: pyscale's store)")
    p.add_argument("--no-store", action="store_true", help="write nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object (for machines)")


def _load_function(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"-m expects MODULE:FUNCTION, e.g. mypkg.bench:step: got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current directory are importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UsageError(f"{spec} is not callable")
    return fn


def _check_meter(meter: str, device: Any) -> None:
    """A meter asked for by name must work here: said before the model is built, not after."""
    if meter not in ("nvml", "rapl"):
        return
    from pyscale.profile.power import MeterError, make_meter

    try:
        make_meter(meter, device_kind=device.type, index=device.index or 0).close()
    except MeterError as exc:
        raise UsageError(f"--meter {meter}: {exc}; use --meter auto (energy is then reported unavailable, "
                         "with the reason) or --meter null") from exc


def _gpt_step(args: argparse.Namespace, device: Any, dtype: Any) -> tuple[Any, Any, float, dict[str, Any]]:
    """(step function, model, model FLOPs per step, params) of the built-in GPT."""
    import torch

    try:
        config_mod = importlib.import_module("pyscale.models.config")
        gpt = importlib.import_module("pyscale.models.gpt")
    except ImportError as exc:
        raise UsageError(f"the built-in model is not available: pyscale.models.gpt could not be imported ({exc}); "
                           f"profile your own step with -m MODULE:FUNCTION instead") from exc
    options: dict[str, Any] = {"n_layers": args.layers, "d_model": args.d_model, "n_heads": args.heads,
                               "seq_len": args.seq, "n_experts": args.experts, "top_k": args.top_k}
    for key, value in (("n_kv_heads", args.kv_heads), ("d_ff", args.d_ff), ("vocab_size", args.vocab)):
        if value is not None:
            options[key] = value
    try:
        config = config_mod.GPTConfig(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid model: {exc}", *FLAGS) from exc
    torch.manual_seed(args.seed)
    model = gpt.GPT(config, impl=args.impl, dtype=dtype, device=device)
    build_optimizer = getattr(gpt, "build_optimizer", None)
    optimizer = (build_optimizer(model, lr=args.lr) if build_optimizer is not None
                 else torch.optim.AdamW(model.parameters(), lr=args.lr))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    tokens, targets = gpt.make_batch(config, args.batch, device=device, generator=generator)
    tokens_per_step = args.batch * args.seq
    model_flops = float(config.model_flops_per_token()) * tokens_per_step

    def step() -> Any:
        return gpt.train_step(model, optimizer, tokens, targets)

    adamw = getattr(gpt, "adamw_implementation", None)
    params = {**options, "batch": args.batch, "impl": args.impl, "tokens_per_step": tokens_per_step,
              "impl_parts": dict(getattr(model, "impl_parts", {})),
              "optimizer": adamw(optimizer) if adamw is not None else None,  # the AdamW implementation torch runs
              "n_params": int(config.n_params(embeddings=True)),
              "n_params_non_embedding": int(config.n_params(embeddings=False))}
    return step, model, model_flops, params


def collect(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pyscale.profile.profiler import Profiler

    try:
        device = torch.device(args.device) if args.device else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device}: not a device ({exc}); use cuda, cuda:1 or cpu") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {args.device}: pyscale profiles on cuda or cpu; use one of them")
    _check_meter(args.meter, device)
    index = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 0
    limits = power_limits.resolve(args.power_limits, device.type, index)  # checked before the model is built
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    from pyscale.benchmark.runner import cpu_measurement, cpu_thread_count

    try:  # a CPU step runs on the threads the benchmark's cases run on, so that one predicts the other
        threads = cpu_thread_count() if device.type == "cpu" else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    if args.model == "gpt":
        step, module, model_flops, params = _gpt_step(args, device, dtype)
        op = "gpt_step"  # the op pyscale.plan.measured reads (STEP_OP)
    else:
        step, module, model_flops, params = _load_function(args.function), None, None, {"function": args.function}
        op = args.function
    store = None
    if not args.no_store:
        from pyscale.commands.usage import open_store

        store = open_store(args.store, write=True)
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if threads is not None:
        params["cpu_threads"] = threads

    def measure(applied: Any) -> tuple[Any, Any, int]:
        # a profiler per limit: idle power and the warm-up steps again under the new limit (the stability
        # verdict, and --retry-unstable, judge the timing at each limit on its own)
        run_arguments = arguments if applied is None else {**arguments, "power_limit_w": applied.requested_w}
        with cpu_measurement(device.type), Profiler(store=store, device=device, meter=args.meter,
                                                    min_window_s=args.min_window, idle_s=args.idle,
                                                    command="profile", arguments=run_arguments,
                                                    sampler=args.sampler) as prof:
            attempts = 0
            while True:
                attempts += 1
                result = prof.profile_step(step, steps=args.steps, warmup=args.warmup, module=module, name=op,
                                           dtype=dtype_name if args.model else None, model_flops=model_flops,
                                           params=params)
                if result.summary.extra.get("stable") is not False or attempts > args.retry_unstable:
                    break
        return applied, result, attempts

    try:
        measured = power_limits.each(limits, measure, args._prog) if limits else [measure(None)]
    finally:
        if store is not None:
            store.close()
    outs = [_out(op, device, dtype_name, params, args, store, applied, result, attempts)
            for applied, result, attempts in measured]
    return {"power_limits": outs} if limits else outs[0]


def _out(op: str, device: Any, dtype_name: str, params: dict[str, Any], args: argparse.Namespace, store: Any,
         applied: Any, result: Any, attempts: int) -> dict[str, Any]:
    out = {"op": op, "device": str(device), "dtype": dtype_name, "params": params, "attempts": attempts,
           "summary": result.summary.to_dict(), "steps": [m.to_dict() for m in result.steps],
           "modules": [m.to_dict() for m in result.modules],
           "store": None if store is None else str(store.path)}
    if args.power_limits is not None:
        out["power_limit"] = None if applied is None else {
            "requested_w": applied.requested_w, "enforced_w": applied.enforced_w, "original_w": applied.original_w,
            "note": applied.note}
    if args.model == "gpt":
        tokens = params["tokens_per_step"]
        s = result.summary
        out["tokens_per_s"] = tokens / s.time_s if s.time_s else None
        out["energy_j_per_token"] = s.energy_j / tokens if s.energy_j is not None else None
    return out


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def profile_table(out: dict[str, Any]) -> tuple[Any, list[str]]:
    """The per-step table of `collect`'s result and its notes. One statistic throughout: the step's median
    time over the steps asked for, a module's share of that (measured in steps with module hooks). Module
    names relative to the model, never cut; a column nobody has a value for is left out and each reason is
    said once, as a note. Legible at 80 columns."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from pyscale.benchmark.rows import Footnotes

    s, modules = out["summary"], out["modules"]
    rows = [s, *modules]
    notes = Footnotes()
    energy = any(m["energy_j"] is not None for m in rows)
    mfu = any(m["mfu"] is not None for m in rows)
    if not energy:
        notes.note(f"energy: {s['energy_j_unavailable_reason']}")
    if not mfu:
        notes.note(f"MFU: {s['mfu_unavailable_reason']}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("module", overflow="fold", ratio=1, min_width=12)
    for header in ("FLOP", "fwd/bwd FLOP", "time", "share", *(["J"] if energy else []), *(["MFU"] if mfu else [])):
        table.add_column(header, justify="right", no_wrap=True)
    # names relative to the model (its class name, the first part of every module's path)
    root = modules[0]["extra"].get("module", "").split(".")[0] if modules else ""
    for m in rows:
        extra = m["extra"]
        if m is s:
            name, share = "[bold]step[/]", "100%"
        else:
            path = extra.get("module", m["name"])
            name = escape(path.removeprefix(f"{root}.") if path != root else f"{root} (the model)")
            share = "—" if extra.get("time_share") is None else f"{100 * extra['time_share']:.1f}%"
        time = _duration(m["time_s"])
        if m is not s and m["time_s"] is not None and extra.get("backward_timed") is False:
            time += notes.mark("forward only: hooks cannot time the backward of a module whose inputs need no "
                               "gradient (the model itself, the embedding)")
        cells = [name, _si(m["flops"]), f"{_si(extra.get('forward_flops'))}/{_si(extra.get('backward_flops'))}",
                 time, share]
        if energy:
            cells.append(f"{m['energy_j']:.3g}" if m["energy_j"] is not None else
                         "—" + notes.mark(f"energy: {m['energy_j_unavailable_reason']}"))
        if mfu:
            cells.append(f"{100 * m['mfu']:.1f}%" if m["mfu"] is not None else
                         "—" + notes.mark(f"MFU: {m['mfu_unavailable_reason']}"))
        table.add_row(*cells)
    return table, notes.lines()


def run(args: argparse.Namespace) -> int:
    out = collect(args)  # every power limit is restored by now: the tables come after
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
        return 0
    from pyscale.benchmark.rows import table_console

    console = table_console()
    if "power_limits" in out:
        for one in out["power_limits"]:
            _print(console, one, power_limits.label(one["power_limit"]))
    else:
        _print(console, out)
    return 0


def _print(console: Any, out: dict[str, Any], limit: str = "") -> None:
    from rich.markup import escape

    s = out["summary"]
    extra = s["extra"]
    hooked = out["modules"][0]["extra"].get("hooked_steps") if out["modules"] else None
    console.print(f"[bold]{escape(out['op'])} on {out['device']} ({out['dtype']}), per step"
                  + (f", {escape(limit)}" if limit else "") + "[/]")
    how = (f"time: median of the {s['repeats']} steps asked for (p20 {_duration(s['time_s_p20'])}, p80 "
           f"{_duration(s['time_s_p80'])}).")
    if hooked:
        model = out["modules"][0]["extra"].get("module", "").split(".")[0]
        how += (f" A module's time: its share of a step run with module hooks (median of {hooked} such steps), "
                f"times the step's time. Modules of {escape(model)}:")
    console.print(how, highlight=False)
    table, notes = profile_table(out)
    console.print(table)
    verdict = extra.get("stability") or {}
    console.print(("timing stable" if verdict.get("stable") else
                   "timing NOT stable: " + "; ".join(verdict.get("reasons", [])))
                  + f" ({verdict.get('criterion', 'no criterion')}; {out['attempts']} attempt(s))",
                  markup=False, highlight=False)
    for line in notes:
        console.print(line, markup=False, highlight=False)
    console.print(f"model FLOPs per step: {_si(s['model_flops'])} FLOP ({extra.get('model_flops_source')}); "
                  f"FLOP and fwd/bwd columns: as executed", highlight=False)
    if s["energy_j"] is not None:
        console.print(f"energy: over a {s['window_s']:.3g} s window of {extra['steps_in_energy_window']} steps "
                      "(the steps asked for, repeated to fill it); module energy is attributed by time share",
                      highlight=False)
    power = (f"avg power {s['avg_power_w']:.1f} W" if s["avg_power_w"] is not None else None)
    idle = (f"idle {s['idle_power_w']:.1f} W (not subtracted)" if s["idle_power_w"] is not None else None)
    if power or idle:
        console.print("; ".join(x for x in (power, idle) if x), highlight=False)
    if out.get("tokens_per_s") is not None:
        per_token = out["energy_j_per_token"]
        console.print(f"{out['tokens_per_s']:.1f} tokens/s" +
                      (f", {per_token:.3g} J/token" if per_token is not None else ""), highlight=False)
    console.print(f"stored in {out['store']}" if out["store"] else "nothing stored (--no-store)", highlight=False)
