"""`pyscale fit`: fit a loss law to runs (CSV/Parquet), with bootstrap CIs, a plot and the frontier."""

from __future__ import annotations

import argparse
import json
import sys

from pyscale.commands.usage import (
    RUNS,
    InputFile,
    OutputFile,
    nonnegative_int,
    positive_float,
    positive_int,
    require,
)

HELP = "fit a scaling law (chinchilla, kaplan, ...) to training runs; report parameters, CIs and plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", type=InputFile(RUNS, table=True),
                        help="CSV or Parquet with columns N, D (or C), loss[, run, step]")
    parser.add_argument("--law", default="chinchilla",
                        help="chinchilla (default), kaplan, kaplan_compute, overtraining, data_constrained, qat, "
                             "downstream")
    parser.add_argument("--synthetic", type=positive_int, nargs="?", const=250, metavar="N_RUNS",
                        help="fit N_RUNS (default 250) synthetic runs drawn from Hoffmann et al.'s law with 1%% "
                             "noise instead of a file (to try the command)")
    parser.add_argument("--save-synthetic", metavar="CSV", type=OutputFile("the synthetic runs", (".csv",)),
                        help="also write the synthetic runs to this CSV")
    parser.add_argument("--columns", default="", metavar="N=params,loss=val_loss",
                        help="map canonical columns to your own names")
    parser.add_argument("--loss", default="huber", choices=["huber", "mse", "asymmetric", "huber_nll"])
    parser.add_argument("--delta", type=positive_float, default=None, help="Huber delta (default 1e-3; 1.345 for huber_nll)")
    parser.add_argument("--space", default="log", choices=["log", "linear"],
                        help="residuals of log loss (default) or of the loss itself (linear, needs --loss mse: "
                             "least squares as scipy's curve_fit, e.g. Gadre et al. 2024)")
    parser.add_argument("--fixed", default="", metavar="NAME=VALUE,...|PRESET",
                        help="hold parameters fixed, e.g. E=1.69,alpha=0.34, or every parameter of a preset "
                             "(hoffmann2022); with all fixed the objective and likelihood are evaluated")
    parser.add_argument("--compare", nargs=2, metavar=("RESTRICTED.json", "FULL.json"),
                        type=InputFile("a fit saved with `pyscale fit RUNS --loss huber_nll --json > fit.json`"),
                        help="likelihood-ratio test of two saved --json fits (both --loss huber_nll, same law "
                             "and rows, the restricted one fixing more); no data needed")
    parser.add_argument("--quick", action="store_true", help="a small start grid instead of the full one")
    parser.add_argument("--bootstrap", type=nonnegative_int, default=0, metavar="B", help="bootstrap replicates over runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=positive_int, default=None, help="threads for the bootstrap (default 1: on 2 cores more were not faster)")
    parser.add_argument("--flops-per-param-token", type=positive_float, default=6.0, help="k in C = k*N*D (default 6)")
    parser.add_argument("--nan-policy", default="raise", choices=["raise", "omit"],
                        help="bad rows: raise an error listing them, or drop and count them")
    parser.add_argument("--frontier", type=positive_float, nargs="*", default=None, metavar="FLOPS",
                        help="also report compute-optimal N*, D* at these budgets")
    parser.add_argument("--validate", type=positive_int, default=None, metavar="K",
                        help="also refit without the K largest compute budgets and report the extrapolation error")
    parser.add_argument("--isoflop", action="store_true",
                        help="also run IsoFLOP Approach 2 (per-budget parabolas; needs several N per budget)")
    parser.add_argument("--isoflop-points", type=nonnegative_int, default=None, metavar="K",
                        help="points nearest each budget's minimum that Approach 2's parabola uses (default "
                             "8; 0: all of them); implies --isoflop")
    parser.add_argument("--plot", metavar="PNG", type=OutputFile("the plots", (".png", ".pdf", ".svg")),
                        help="write loss-vs-compute, iso-loss and residual plots")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for machines)")


# fit()'s parameters spelled otherwise on this command line
FLAGS = {"n_jobs": "--jobs", "n_largest": "--validate", "n_points": "--isoflop-points"}


def _columns(spec: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"--columns: expected CANONICAL=yours, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = value
    return out


def _fixed(spec: str, law_name: str) -> dict[str, float] | None:
    """--fixed: NAME=VALUE pairs and/or a preset's name (all its parameters); None when not given."""
    from pyscale.scaling import presets

    if not spec.strip():
        return None
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        if "=" not in item:
            if item.lower() not in presets.PRESETS:
                raise ValueError(f"--fixed: {item!r} is neither NAME=VALUE nor a preset "
                                 f"({', '.join(sorted(presets.PRESETS))})")
            preset = presets.get(item)
            if preset.law.name != law_name.lower():
                raise ValueError(f"--fixed: preset {item} is a {preset.law.name} law, not --law {law_name}")
            out.update(preset.params)
            continue
        key, value = (t.strip() for t in item.split("=", 1))
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--fixed: {value!r} for {key} is not a number") from None
    return out


def _compare(args: argparse.Namespace) -> int:
    from pyscale.scaling import compare

    test = compare(*args.compare)
    print(json.dumps(test.to_dict(), indent=2, sort_keys=True) if args.json else test.describe())
    return 0


def run(args: argparse.Namespace) -> int:
    from pyscale.scaling import compute_optimal, fit
    from pyscale.scaling.synthetic import chinchilla_runs, write_csv

    if args.compare:
        return _compare(args)
    if args.data is None and args.synthetic is None:
        print("pyscale fit: give a CSV/Parquet file of runs, or --synthetic to try it on generated runs",
              file=sys.stderr)
        return 2
    if args.isoflop_points is not None and 0 < args.isoflop_points < 3:
        raise ValueError(f"--isoflop-points must be 0 (all points) or >= 3 (a parabola has 3 coefficients): "
                         f"got {args.isoflop_points}")
    if args.plot:
        require("matplotlib", "--plot", "run without --plot")
    if args.data is None:
        data = chinchilla_runs(args.synthetic, seed=args.seed)
        if args.save_synthetic:
            write_csv(data, args.save_synthetic)
        source = f"synthetic: {args.synthetic} runs from hoffmann2022 with 1% noise (seed {args.seed})"
    else:
        data, source = args.data, str(args.data)
    result = fit(args.law, data, loss=args.loss, delta=args.delta, starts="quick" if args.quick else "grid",
                 bootstrap=args.bootstrap, seed=args.seed, columns=_columns(args.columns),
                 nan_policy=args.nan_policy, flops_per_param_token=args.flops_per_param_token,
                 n_jobs=args.jobs, space=args.space, fixed=_fixed(args.fixed, args.law))
    frontier = None
    if args.frontier and result.success:
        frontier = compute_optimal(result, args.frontier)
    validation = iso = None
    if args.validate:
        from pyscale.scaling import leave_largest_out

        validation = leave_largest_out(args.law, data, n_largest=args.validate, loss=args.loss,
                                       delta=args.delta, starts="quick" if args.quick else "grid",
                                       columns=_columns(args.columns), nan_policy=args.nan_policy,
                                       flops_per_param_token=args.flops_per_param_token)
    if args.isoflop or args.isoflop_points is not None:
        from pyscale.scaling import isoflop

        points = isoflop.DEFAULT_POINTS if args.isoflop_points is None else (args.isoflop_points or None)
        iso = isoflop.approach2(data, n_points=points, bootstrap=max(args.bootstrap, 200), seed=args.seed,
                                columns=_columns(args.columns), nan_policy=args.nan_policy,
                                flops_per_param_token=args.flops_per_param_token)
    if args.plot:
        from pyscale.scaling.plot import plot_fit

        plot_fit(result, args.plot)
    if not result.success:
        print(f"pyscale fit: the fit did not converge ({result.message}); try the full start grid (without "
              "--quick) or another --loss", file=sys.stderr)

    if frontier is not None:  # stderr: stdout stays the result (JSON with --json)
        for line in frontier.warnings():
            print(f"pyscale fit: warning: {line}", file=sys.stderr)
    if args.json:
        out = {"source": source, **result.to_dict()}
        if frontier is not None:
            out["frontier"] = frontier.to_dict()
        if validation is not None:
            out["validation"] = validation.to_dict()
        if iso is not None:
            out["isoflop"] = iso.to_dict()
        if args.plot:
            out["plot"] = str(args.plot)
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0 if result.success else 1

    from rich.console import Console
    from rich.table import Table

    console = Console()
    status = "[green]converged[/]" if result.success else "[red]FAILED[/]"
    table = Table(title=f"{result.law.name}: {result.law.formula}  ({source})")
    table.add_column("param", style="bold")
    table.add_column("value", justify="right")
    boot = result.stderr_method == "bootstrap"
    table.add_column(f"stderr ({result.stderr_method})", justify="right")
    if boot:
        table.add_column("stderr (asymptotic)", justify="right")
    table.add_column(f"{100 * result.ci_level:g}% CI (bootstrap)", justify="right")
    for name, v in result.params.items():
        fixed = name in result.fixed
        ses = ["fixed" if fixed else f"{result.stderr[name]:.3g}"]
        if boot:
            ses.append("fixed" if fixed else f"{result.stderr_asymptotic[name]:.3g}")
        ci = result.ci.get(name)
        table.add_row(name, f"{v:.6g}", *ses, f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "—")
    console.print(table)
    d = result.to_dict()
    console.print(f"{status}: {result.message}")
    console.print(f"stderr: {result.stderr_label}")
    if result.log_likelihood is not None:
        console.print(f"log-likelihood {result.log_likelihood:.6g} (Huber likelihood, scale {result.scale:.4g})")
    console.print(f"loss={result.loss} (delta {result.delta:g}, {result.reduction}, {result.space} space) · "
                  f"{result.flops_convention} · "
                  f"n={result.n} rows / {result.n_runs} runs · {result.n_dropped} dropped · "
                  f"{result.n_starts} starts · nfev={result.nfev} · {result.time_s:.2f}s")
    console.print(f"objective={result.objective:.6g} · AIC={result.aic:.4g} · BIC={result.bic:.4g} · "
                  f"RMSE(log)={d['rmse_log']:.3g}")
    if result.bootstrap is not None:
        console.print(f"bootstrap: {len(result.bootstrap)} replicates over runs, {result.bootstrap_failed} failed, "
                      f"{result.bootstrap_time_s:.2f}s")
    if frontier is not None:
        from pyscale.scaling.frontier import extrapolation_label

        ft = Table(title=f"compute-optimal ({frontier.method}, {frontier.flops_convention})")
        cis = frontier.N_ci is not None
        level = f"{100 * frontier.ci_level:g}%" if cis else ""
        for col in ("C (FLOPs)", "N*", *([f"N* {level} CI"] if cis else []), "D*",
                    *([f"D* {level} CI"] if cis else []), "D*/N*", "loss", "beyond the data"):
            ft.add_column(col, justify="right")
        factors = (frontier.extrapolation_factor if frontier.extrapolation_factor is not None
                   else [None] * len(frontier.flops))
        for i, (c, n, dd, lo, f) in enumerate(zip(frontier.flops, frontier.N, frontier.D, frontier.loss, factors)):
            n_ci = [f"[{frontier.N_ci[i][0]:.3g}, {frontier.N_ci[i][1]:.3g}]"] if cis else []
            d_ci = [f"[{frontier.D_ci[i][0]:.3g}, {frontier.D_ci[i][1]:.3g}]"] if cis else []
            beyond = "unknown" if f is None else (extrapolation_label(float(f)) or f"x{f:.3g}")
            ft.add_row(f"{c:.3g}", f"{n:.3g}", *n_ci, f"{dd:.3g}", *d_ci, f"{dd / n:.1f}", f"{lo:.4f}", beyond)
        console.print(ft)
    if validation is not None:
        v = validation.summary()
        console.print(f"leave-largest-out: fit on {validation.n_train} rows with C < {validation.threshold:.3g}, "
                      f"predicted {validation.n_test}: MAPE {100 * v['mape']:.2f}%, max |rel err| "
                      f"{100 * v['max_rel_error']:.2f}%, bias(log) {v['bias_log']:+.4f}")
    if iso is not None:
        ci_a = f" [{iso.ci_a[0]:.3f}, {iso.ci_a[1]:.3f}]" if iso.ci_a else ""
        ci_b = f" [{iso.ci_b[0]:.3f}, {iso.ci_b[1]:.3f}]" if iso.ci_b else ""
        window = "all points" if iso.n_points is None else f"{iso.n_points} points nearest each minimum"
        console.print(f"IsoFLOP approach 2 ({len(iso.budgets)} budgets, {window}): N_opt ~ C^{iso.a:.3f}{ci_a}, "
                      f"D_opt ~ C^{iso.b:.3f}{ci_b}; {iso.n_bootstrap} bootstrap replicates, "
                      f"{iso.bootstrap_failed} failed")
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0 if result.success else 1
