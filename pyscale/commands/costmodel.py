"""`pyscale costmodel fit|show|validate`: fit runtime/energy cost models from the store, show a profile, or check
its model-level prediction against measured training steps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyscale.commands.usage import (
    InputFile,
    OutputDir,
    OutputFile,
    StorePath,
    UsageError,
    nonnegative_float,
    open_store,
    positive_int,
    require,
)

PROFILE = "a device profile JSON (pyscale costmodel fit --out PROFILE.json)"

HELP = ("fit runtime and energy cost models from stored measurements (fit), print a device profile (show), or "
        "check its predicted GPT step time against measured steps (validate)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    fit = sub.add_parser("fit", help="fit per (op, dtype, backend) models of one device, with leave-shape-out CV")
    fit.add_argument("--store", metavar="PATH", type=StorePath(write=False),
                     help="SQLite store (default: $PYSCALE_HOME/pyscale.db)")
    fit.add_argument("--device", metavar="NAME", help="device name or uuid (needed when the store has several)")
    fit.add_argument("--op", metavar="OP", help="fit only this op")
    fit.add_argument("--dtype", metavar="DTYPE", help="fit only this dtype")
    fit.add_argument("--backend", metavar="BACKEND", help="fit only this backend")
    fit.add_argument("--folds", type=positive_int, default=5, metavar="K", help="cross-validation folds (default 5)")
    fit.add_argument("--residual", action="store_true",
                     help="add the gradient-boosted tree residual (needs scikit-learn: pyscale[costmodel])")
    fit.add_argument("--out", metavar="PROFILE.json", type=OutputFile("the device profile", (".json",)),
                     help="write the device profile JSON here")
    fit.add_argument("--plot", metavar="DIR", type=OutputDir("the roofline plots"),
                     help="write one roofline PNG per (op, dtype, backend) here")
    show = sub.add_parser("show", help="print a device profile: a JSON file or a shipped one by --device")
    show.add_argument("profile", nargs="?", metavar="PROFILE.json", type=InputFile(PROFILE), help="profile file")
    show.add_argument("--device", metavar="NAME", help="show the profile shipped with pyscale for this device")
    check = sub.add_parser("validate", help="predicted vs measured step time of the gpt_step rows that "
                                            "`pyscale profile --model gpt` stored for the profile's device")
    check.add_argument("profile", metavar="PROFILE.json", type=InputFile(PROFILE),
                       help="profile file (from `costmodel fit --out`)")
    check.add_argument("--store", metavar="PATH", type=StorePath(write=False),
                       help="SQLite store (default: $PYSCALE_HOME/pyscale.db)")
    check.add_argument("--dtype", metavar="DTYPE", help="only the steps measured in this dtype (e.g. fp32, bf16)")
    check.add_argument("--communication-s", type=nonnegative_float, default=0.0, metavar="S",
                       help="user-given communication seconds per step, added to each prediction (default 0)")
    check.add_argument("--record", action="store_true",
                       help="write the comparison into PROFILE.json (a plan priced from it prints the error)")
    check.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _store_path(arg: Path | None) -> Path:
    from pyscale import store as st

    path = arg or st.default_path()
    if not path.is_file():
        raise UsageError(f"--store: no store at {path}; run `pyscale bench` first or pass --store PATH")
    return path


def _read_profile(arg: Path) -> Any:
    from pyscale.costmodel import DeviceProfile

    try:
        return DeviceProfile.from_json(arg)
    except ValueError as exc:
        raise UsageError(f"PROFILE.json {arg}: {exc}") from exc


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def _print_profile(profile: Any) -> None:
    """The profile in 80 columns: a runtime table, an energy table, then each model's units and notes."""
    _wrapped(f"device: {profile.device_name} ({profile.device_kind or 'unknown kind'}), created {profile.created}")
    src = profile.source or {}
    if src.get("command"):
        _wrapped(f"command: {src['command']}")
    lib = {k: v for k, v in profile.versions.items() if k != "device"}
    _wrapped("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(lib.items())) +
        (f"; device {profile.versions['device']}" if profile.versions.get("device") else ""))
    names = [f"{m.op}/{m.dtype}/{m.backend}" for m in profile.models]
    w = max([len("op/dtype/backend"), *map(len, names)])
    metrics = [m.cv.metrics if m.cv else {} for m in profile.models]

    def metric(cv: dict, name: str, key: str = "mape_pct") -> str:
        return _fmt(cv.get(name, {}).get(key), ".1f" if key == "mape_pct" else ".3f")

    print()
    _wrapped("runtime: eta_c/eta_m, the fraction of the hw peak/bandwidth (or FLOP/s and bytes/s where the device has "
        "none); t0_s, the fixed cost of a call; alpha, wave quantisation; MAPE from leave-shape-out CV")
    print(f"{'op/dtype/backend':<{w}} {'rows':>4} {'eta_c':>7} {'eta_m':>7} {'t0_s':>8} {'alpha':>5} "
          f"{'time MAPE%':>10} {'R2log':>6}")
    for name, m, cv in zip(names, profile.models, metrics):
        r = m.runtime
        print(f"{name:<{w}} {m.n_rows:>4} {_fmt(r.eta_compute):>7} {_fmt(r.eta_memory):>7} {_fmt(r.t0_s):>8} "
              f"{r.wave_alpha:>5.2f} {metric(cv, 'runtime'):>10} {metric(cv, 'runtime', 'r2_log'):>6}")
    print()
    _wrapped("energy and power, MAPE from leave-shape-out CV: E from measured time, E e2e from predicted time; P̄: the "
        "constant-power baseline they must beat")
    print(f"{'op/dtype/backend':<{w}} {'E MAPE%':>7} {'E e2e%':>6} {'E P̄%':>5} {'P MAPE%':>7} {'P P̄%':>5}")
    for name, cv in zip(names, metrics):
        print(f"{name:<{w}} {metric(cv, 'energy'):>7} {metric(cv, 'energy_e2e'):>6} {metric(cv, 'energy_baseline'):>5} "
              f"{metric(cv, 'power'):>7} {metric(cv, 'power_baseline'):>5}")
    print()
    for name, m in zip(names, profile.models):
        units = f"units: compute {m.runtime.compute_units}, memory {m.runtime.memory_units}"
        if m.energy:
            units += (f"; energy e_flop {m.energy.e_flop_j:.3g} J/FLOP, e_byte {m.energy.e_byte_j:.3g} J/B, "
                      f"P0 {m.energy.p0_w:.3g} W")
        _wrapped(f"{name}: {units}", "  ")
        for note in [*m.notes, *m.runtime.notes, *(m.energy.notes if m.energy else []),
                     *(m.cv.notes if m.cv else [])]:
            _wrapped(f"note: {note}", "    ")
    for note in profile.notes:
        _wrapped(f"note: {note}")
    _print_power_limits(profile)
    if profile.validation:
        v = profile.validation
        print(f"step validation ({v.get('created')}, {v.get('command') or 'command not recorded'}):")
        _print_checks(profile.device_name, v.get("steps", []), v["summary"])
    else:
        print("step validation: none recorded (pyscale costmodel validate PROFILE --record)")


def _wrapped(text: str, indent: str = "") -> None:
    """`text` in lines of at most 80 columns, from `indent`, continued two spaces further in; hyphenated words
    (leave-one-limit-out) stay whole."""
    import textwrap

    print(textwrap.fill(text, width=80, initial_indent=indent, subsequent_indent=indent + "  ",
                        break_on_hyphens=False))


def _print_power_limits(profile: Any) -> None:
    """Each model's power-limit section, 80 columns wide; the models without one share a line per reason."""
    fitted = [m for m in profile.models if m.power_limits is not None]
    missing: dict[str, list[str]] = {}
    for m in profile.models:
        if m.power_limits is None:
            missing.setdefault(m.power_limits_unavailable_reason or "unknown", []).append(
                f"{m.op}/{m.dtype}/{m.backend}")
    if fitted:
        _wrapped("power limits: time and power relative to the largest limit; fit: the pooled factor against "
                 "each shape there; LOO: leave-one-limit-out (interior limits only: predicting an end would be "
                 "extrapolation)")
    for m in fitted:
        pl = m.power_limits
        loo_t, loo_e = pl.loo_mape_pct("time"), pl.loo_mape_pct("energy")
        _wrapped(f"{m.op}/{m.dtype}/{m.backend}: {len(pl.points)} limits, reference {pl.reference_w:g} W; "
                 f"leave-one-limit-out MAPE at most {_fmt(loo_t, '.1f')} % time, {_fmt(loo_e, '.1f')} % energy",
                 "  ")
        print(f"  {'limit W':>8} {'slowdown':>8} {'P ratio':>7} {'P W':>6} {'shapes':>6} {'fit t%':>6} "
              f"{'fit E%':>6} {'LOO t%':>6} {'LOO E%':>6}")
        for p in pl.points:
            end = p.loo_time_mape_pct is None and p.loo_energy_mape_pct is None
            print(f"  {p.power_limit_w:>8g} {p.slowdown:>8.3f} {_fmt(p.power_ratio, '.3f'):>7} "
                  f"{_fmt(p.power_w, '.0f'):>6} {p.n_shapes:>6} {p.fit_time_mape_pct:>6.1f} "
                  f"{_fmt(p.fit_energy_mape_pct, '.1f'):>6} {'end' if end else _fmt(p.loo_time_mape_pct, '.1f'):>6} "
                  f"{'end' if end else _fmt(p.loo_energy_mape_pct, '.1f'):>6}")
        for note in pl.notes:
            _wrapped(f"note: {note}", "    ")
    for reason, labels in missing.items():
        which = "for any op" if len(labels) == len(profile.models) else f"of {', '.join(labels)}"
        _wrapped(f"power limits: no model {which}: {reason}")


def _fit(args: argparse.Namespace) -> int:
    from pyscale.costmodel import fit_device_profile, rows_from_measurements

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2: got {args.folds}")
    if args.plot:
        require("matplotlib", "--plot", "run without --plot")
    path = _store_path(args.store)
    command = "pyscale " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["costmodel"] else None
    with open_store(path, write=False) as store:
        try:
            profile = fit_device_profile(store, device=args.device, op=args.op, dtype=args.dtype,
                                         backend=args.backend, folds=args.folds, residual=args.residual,
                                         command=command)
        except ImportError as exc:
            raise UsageError(f"--residual: {exc}") from exc
        _print_profile(profile)
        if args.out:
            profile.to_json(args.out)
            print(f"wrote {args.out}")
        if args.plot:
            import numpy as np

            from pyscale.costmodel.plot import plot_roofline

            rows = rows_from_measurements(m for m in store.measurements(status=None)
                                          if m["device_name"] == profile.device_name)
            for m in profile.models:
                key = (profile.device_name, m.op, m.dtype, m.backend)
                name = f"{m.op}_{m.dtype}_{m.backend}.png".replace("/", "-").replace(" ", "_")
                drawn = rows[key]
                if m.power_limits is not None:  # the roofline is the largest limit's: draw the rows it was fitted on
                    drawn = drawn.subset(np.flatnonzero(drawn.limits_w == m.power_limits.reference_w))
                try:
                    out = plot_roofline(drawn, m.runtime, Path(args.plot) / name)
                except ValueError as exc:
                    print(f"no plot for {m.op}/{m.dtype}/{m.backend}: {exc}")
                    continue
                print(f"wrote {out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from pyscale.costmodel import list_shipped_profiles, load_shipped_profile

    if (args.profile is None) == (args.device is None):
        raise UsageError("show needs either PROFILE.json or --device NAME (exactly one)")
    if args.profile is not None:
        profile = _read_profile(args.profile)
    else:
        profile = load_shipped_profile(args.device)
        if profile is None:
            shipped = ", ".join(sorted(list_shipped_profiles())) or "none"
            raise UsageError(f"--device: no shipped profile for {args.device!r}; shipped: {shipped}")
    _print_profile(profile)
    return 0


def _validate(args: argparse.Namespace) -> int:
    import datetime as dt
    import json

    from pyscale.plan.measured import STEP_OP
    from pyscale.plan.step_model import implementation_of, summarize_validation, validate_against_store

    profile = _read_profile(args.profile)
    path = _store_path(args.store)
    with open_store(path, write=False) as store:
        rows = [r for r in store.measurements(op=STEP_OP) if r["device_name"] == profile.device_name]
    if not rows:
        raise UsageError(f"--store: no {STEP_OP} rows of {profile.device_name} in {path}; measure one with "
                         "`pyscale profile --model gpt`")
    if args.dtype:
        dtypes = sorted({implementation_of(r)["dtype"] for r in rows})
        rows = [r for r in rows if implementation_of(r)["dtype"] == args.dtype]
        if not rows:
            raise UsageError(f"--dtype {args.dtype}: no {STEP_OP} rows in that dtype (measured: {', '.join(dtypes)})")
    checks = validate_against_store(profile, rows, communication_s=args.communication_s)
    summary = summarize_validation(checks)
    if args.record:
        command = " ".join(["pyscale costmodel validate", str(args.profile), "--store", str(path),
                            *(["--dtype", args.dtype] if args.dtype else []),
                            *(["--communication-s", f"{args.communication_s:g}"] if args.communication_s else [])])
        profile.validation = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "store": str(path), "command": command, "communication_s": args.communication_s,
                              "steps": checks, "summary": summary}
        profile.to_json(args.profile)  # an OSError names the file: the error path says so in one line
    if args.json:
        print(json.dumps({"device": profile.device_name, "steps": checks, "summary": summary}, indent=2))
        return 0
    _print_checks(profile.device_name, checks, summary)
    if args.record:
        print(f"recorded in {args.profile}")
    return 0


def _print_checks(device: str, checks: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The comparison in 80 columns: one row a step, its pricing said once when every step shares it."""
    def priced(c: dict[str, Any]) -> str:
        o = c["priced_as"]
        return f"{o['dtype']}, attention {o['attention_backend']}, optimizer {o['optimizer_backend']}"

    ways = {priced(c) for c in checks}
    _wrapped(f"{device}: {summary['n_steps']} measured step(s), each priced with the implementation it ran"
             + (f" ({ways.pop()})" if len(ways) == 1 else ""))
    print(f"{'layers':>6} {'d_model':>7} {'heads':>5} {'seq':>5} {'batch':>5} {'vocab':>6} | {'measured':>8} "
          f"{'predicted':>9} {'error':>7} | {'rest%':>6}")
    for c in checks:
        cfg = c["config"]
        print(f"{cfg['n_layers']:>6} {cfg['d_model']:>7} {cfg['n_heads']:>5} {cfg['seq_len']:>5} {c['batch']:>5} "
              f"{cfg.get('vocab_size', '-'):>6} | {c['measured_s'] * 1e3:>8.4g} {c['predicted_s'] * 1e3:>9.4g} "
              f"{c['rel_error']:>+7.1%} | {100 * c['predicted_share_outside_gemm_attention']:>6.1f}")
        if ways:  # the steps ran different implementations: say each one's
            print(f"{'':>6} priced as {priced(c)}")
    _wrapped(f"times in ms; error {summary['min_error']:+.1%} to {summary['max_error']:+.1%}, max |error| "
             f"{summary['max_abs_error']:.1%}, mean |error| {summary['mean_abs_error']:.1%}; rest%: the predicted "
             "share of the step outside GEMMs and attention")


def run(args: argparse.Namespace) -> int:
    actions = {"fit": _fit, "show": _show, "validate": _validate}
    if args.action not in actions:
        raise UsageError("choose an action: fit, show or validate (see pyscale costmodel --help)")
    return actions[args.action](args)
