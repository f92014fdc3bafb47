"""pyscale's main job, end to end: device -> quick benchmark -> cost model -> loss law -> plan -> report.

`run_main_job(...)` checks its inputs before any stage runs (a bad budget, law, data file or GPU raises a
ValueError naming the parameter), then writes one Markdown file plus PNG plots into a directory. Each
stage says what it measured or used, and why anything is missing; nothing is filled in by assumption. A
stage that fails is reported in the document and in the result (`MainJob.failed`); by default the stages
after it do not run (`keep_going=True` runs them anyway).
"""

from __future__ import annotations

import datetime as _dt
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        body = "\n".join(self.lines)
        pics = "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in self.images)
        return f"## {self.title}\n\n{body}\n\n{pics}\n".rstrip() + "\n"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)]


def _device_section() -> tuple[Section, dict]:
    from pyscale import sysinfo

    info = sysinfo.collect()
    s = Section("Device")
    for dev in info["devices"]:
        spec = dev.get("spec")
        s.lines.append(f"- **{dev['kind']}**: {dev['name']}" + (f" (spec row: {spec['name']})"
                                                               if spec and spec.get("known") else ""))
    s.lines.append("")
    s.lines += _table(["backend", "available", "detail"],
                      [(b["name"], "yes" if b["available"] else "no", b["detail"]) for b in info["backends"]])
    s.lines.append("")
    s.lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    return s, info


def _bench_section(store: Any, device: str, shapes: str, families: Sequence[str], progress: bool) -> Section:
    from pyscale import benchmark
    from pyscale.benchmark.rows import bench_rows

    s = Section(f"Benchmark ({shapes} shapes on {device})")
    cases = benchmark.plan_cases(families, shapes, device=device)
    summary = benchmark.sweep(cases, store=store, device=device, progress=progress, command="report",
                              arguments={"shapes": shapes, "families": list(families)})
    rows = bench_rows(summary.rows)
    if device == "cpu":
        s.lines.append("No GPU here: these are CPU timings of the reference / C++ / interpreter paths at tiny "
                       "shapes. They exercise the pipeline; they say nothing about GPU performance.")
        s.lines.append("")
    s.lines += _table(["op", "impl", "dtype", "shape", "ms", "TFLOP/s", "% peak", "GB/s", "energy J", "status"],
                      [(r["op"], r["impl"], r["dtype"], ",".join(f"{k}={v}" for k, v in r["params"].items()),
                        r["time_ms"], r["tflops"], r["pct_peak"], r["gb_s"],
                        r["energy_j"] if r["energy_j"] is not None else f"n/a ({r['energy_unavailable_reason']})",
                        r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}") for r in rows])
    s.lines.append("")
    s.lines.append(f"Store run {summary.run_id}: {summary.measured} measured, {summary.failed} failed.")
    return s


def _costmodel_section(store: Any, device_name: str, out: Path) -> tuple[Section, Any]:
    from pyscale import costmodel

    s = Section("Cost model")
    try:
        profile = costmodel.fit_device_profile(store, device=device_name, command="pyscale report")
    except ValueError as exc:
        s.lines.append(f"No cost model fitted: {exc}")
        return s, None
    path = out / "device_profile.json"
    path.write_text(profile.to_json())
    s.lines.append(f"Fitted from this store's measurements of {device_name}; saved as `{path.name}`. "
                   "Errors are leave-shape-out cross-validated (no shape in both train and test).")
    s.lines.append("")
    def metric(m: Any, name: str) -> float | None:
        return (m.cv.metrics.get(name) or {}).get("mape_pct") if m.cv else None

    s.lines += _table(["op", "dtype", "backend", "rows", "runtime MAPE %", "energy MAPE %",
                       "constant-power energy MAPE %"],
                      [(m.op, m.dtype, m.backend, m.n_rows, metric(m, "runtime"), metric(m, "energy"),
                        metric(m, "energy_baseline")) for m in profile.models])
    notes = sorted({n for m in profile.models for n in m.notes})
    if notes:
        s.lines += ["", *(f"- {n}" for n in notes)]
    return s, profile


def _law_form(law: str) -> tuple[str, str]:
    """The law form to fit to user runs, and why: a preset names its form (epoch2024 -> chinchilla)."""
    from pyscale.scaling import LAWS, presets

    if law.lower() in presets.PRESETS and presets.get(law).law is not None:
        form = presets.get(law).law.name
        return form, f"the form of preset {law}"
    if law.lower() in LAWS:
        return law.lower(), "as given"
    raise ValueError(f"law: with --data, --law must be a preset ({', '.join(sorted(presets.PRESETS))}) or a "
                     f"law form ({', '.join(sorted(LAWS))}): got {law!r}")


def _law_section(law: str, data: str | Path | None, out: Path, nan_policy: str = "raise") -> tuple[Section, Any]:
    s = Section("Loss law")
    if data:
        from pyscale.scaling import fit
        from pyscale.scaling.plot import plot_fit

        form, why = _law_form(law)
        result = fit(form, data, starts="quick", bootstrap=100, nan_policy=nan_policy)
        s.lines.append(f"Fitted the **{form}** law ({why}: `--law {law}`), {result.law.formula}, to `{data}` "
                       "(quick start grid, 100 bootstrap refits over runs):")
        s.lines.append("")
        s.lines += ["```", result.report(), "```"]
        img = out / "fit.png"
        plot_fit(result, img)
        s.images.append(str(img))
        (out / "fit.json").write_text(json.dumps(result.to_dict(), indent=2))
        return s, result
    from pyscale.scaling import presets

    p = presets.get(law)
    s.lines.append(f"Preset **{p.name}**: {p.source}. {p.n_convention}; {p.flops_convention}.")
    s.lines.append("")
    s.lines += _table(["parameter", "value", f"published {100 * (p.ci_level or 0):g}% CI"],
                      [(k, v, "—" if k not in p.ci else f"[{p.ci[k][0]:g}, {p.ci[k][1]:g}]")
                       for k, v in p.params.items()])
    return s, law


def _profile_hardware(profile: Any) -> tuple[Any, str]:
    """Hardware priced by the fitted cost model, and where it came from; (None, why) when it cannot be."""
    from pyscale.plan import choose_hardware

    if profile is None:
        return None, "no cost model was fitted (see Cost model), so the plan has no throughput or power"
    try:
        hardware = choose_hardware(profile=profile)
        options = hardware.step_options
    except ValueError as exc:
        return None, f"the cost model cannot price a GPT training step ({exc}), so the plan has no throughput"
    source = (f"the cost model fitted above (`device_profile.json`, {profile.device_name}): one step priced as "
              f"{options['dtype']} GEMMs ({options['gemm_backend']}) and attention ({options['attention_backend']}),"
              " micro-batch 1")
    if profile.device_kind == "cpu":
        source += ("; a CPU profile fitted at tiny shapes and extrapolated to the planned model: the time says "
                   "what this CPU would take, nothing about a GPU")
    return hardware, source


def _plan_hardware(user_hardware: Any, profile: Any) -> tuple[Any, str]:
    """What prices the plan: hardware the user gave wins, else this device's fitted cost model."""
    if user_hardware is not None:
        return user_hardware, f"user-given ({user_hardware.device_name}, --gpu with --mfu / --power-w)"
    return _profile_hardware(profile)


def _plan_section(law_spec: Any, budget: str, user_hardware: Any, profile: Any, out: Path) -> Section:
    from pyscale.plan import choose_law, plan
    from pyscale.plan.plot import iso_loss

    hardware, hardware_source = _plan_hardware(user_hardware, profile)
    p = plan(budget, law=law_spec, hardware=hardware)
    s = Section(f"Plan ({p.objective}-optimal for {p.budget.describe()})")
    s.lines += [f"Hardware: {hardware_source}.", ""]
    c = p.config
    rows = [("N (exact)", f"{p.n_params:,}"), ("tokens", f"{p.tokens:.4g}"),
            ("tokens per parameter", f"{p.tokens_per_param:.3g}"),
            ("predicted loss", "— (the law predicts none)" if p.predicted_loss is None else
             f"{p.predicted_loss:.4f}" + ("" if p.loss_interval is None else
                                          f" [{p.loss_interval[0]:.4f}, {p.loss_interval[1]:.4f}]")),
            ("architecture", f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} kv), "
                             f"d_ff {c.d_ff}" + (f", {c.n_experts} experts top-{c.top_k}" if c.n_experts else "")),
            ("batch / steps", f"{p.batch.tokens:,} tokens / {p.steps:,}"), ("memory", p.memory.reason),
            ("hardware", "—" if p.device is None else f"{p.n_devices} x {p.device}"),
            ("MFU", "—" if p.mfu is None else f"{p.mfu:.3f}"),
            ("time", "—" if p.time_s is None else f"{p.time_s / 3600:.4g} h"),
            ("GPU energy", "—" if p.energy_kwh is None else f"{p.energy_kwh:.4g} kWh"),
            ("cost", "—" if p.cost_dollars is None else f"${p.cost_dollars:,.0f}")]
    s.lines += _table(["", ""], rows)
    if p.warnings:
        s.lines += ["", "Warnings:", *(f"- {w}" for w in p.warnings)]
    s.lines += ["", "Assumptions:", *(f"- {a}" for a in p.assumptions), f"- loss interval: {p.loss_interval_source}"]
    s.lines += [f"- {k} unavailable: {v}" for k, v in p.unavailable.items()]
    if p.predicted_loss is not None:  # an allocation law has no loss to draw
        img = out / "plan_iso_loss.png"
        iso_loss(p, choose_law(law_spec), img)
        s.images.append(str(img))
    (out / "plan.json").write_text(json.dumps(p.to_dict(), indent=2, default=str))
    return s


@dataclass
class MainJob:
    """What `run_main_job` did: the report it wrote, and each failed stage as 'Stage: error'."""

    path: Path
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stages not run after a failure


def check_inputs(*, law: str, data: str | Path | None, budget: str, nan_policy: str = "raise") -> None:
    """The report's inputs, checked before any stage runs: ParameterErrors naming the parameter."""
    from pyscale.plan import Budget, ParameterError
    from pyscale.scaling import LAWS, presets

    try:
        Budget.parse(budget)
    except ValueError as exc:
        raise ParameterError(str(exc), "budget") from exc
    if data is None:
        if law.lower() not in presets.PRESETS:
            hint = " (a law form is fitted only to data=)" if law.lower() in LAWS else ""
            raise ParameterError(f"law must be a preset ({', '.join(sorted(presets.PRESETS))}) when no data is "
                                 f"given{hint}: got {law!r}", "law", "data")
        return
    try:
        form, _ = _law_form(law)
    except ValueError as exc:
        raise ParameterError(str(exc), "law") from exc
    from pyscale.scaling import get_law, load

    try:
        load(data, law=get_law(form), nan_policy=nan_policy)
    except ValueError as exc:
        raise ParameterError(str(exc), "data") from exc


def run_main_job(out_dir: str | Path = "pyscale-report", *, store_path: str | Path | None = None,
                 shapes: str | None = None, families: Sequence[str] | None = None, skip_bench: bool = False,
                 data: str | Path | None = None, law: str = "epoch2024", budget: str = "1e21 flops",
                 nan_policy: str = "raise", hardware: Any = None, progress: bool = True, keep_going: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> MainJob:
    """Check the inputs, run every stage and write `<out_dir>/report.md` (+ PNGs, plan.json,
    device_profile.json).

    `law`: a preset, or with `data` the law form to fit (a preset means its form). The plan is priced by
    `hardware` when given, else by the cost model fitted here when it can price a GPT step (the report says
    which, or why neither). A failed stage stops the stages after it unless `keep_going`.
    """
    from pyscale import benchmark, sysinfo
    from pyscale.store import Store

    check_inputs(law=law, data=data, budget=budget, nan_policy=nan_policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = on_stage or (lambda msg: None)
    sections: list[Section] = []
    problems: list[str] = []
    skipped: list[str] = []

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        if problems and not keep_going:
            skipped.append(name)
            return None
        say(name)
        try:
            return fn()
        except Exception as exc:  # a failing stage is reported in the document (and the result)
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            sections.append(Section(name, [f"This stage failed: `{type(exc).__name__}: {exc}`", "", "```",
                                           traceback.format_exc()[-3000:], "```"]))
            return None

    dev_section, info = _device_section()
    sections.append(dev_section)
    device = "cuda" if sysinfo.cuda_available() else "cpu"
    device_name = info["devices"][0]["name"]
    with Store(store_path) as store:
        store_file = store.path
        if not skip_bench:
            chosen = shapes or ("llama3-8b" if device == "cuda" else "quick")
            bench = stage("Benchmark", lambda: _bench_section(store, device, chosen, families or benchmark.FAMILIES,
                                                              progress))
            if bench:
                sections.append(bench)
        cm = stage("Cost model", lambda: _costmodel_section(store, device_name, out))
        if cm:
            sections.append(cm[0])
    law_result = stage("Loss law", lambda: _law_section(law, data, out, nan_policy))
    if law_result:
        sections.append(law_result[0])
        profile = cm[1] if cm else None
        plan_section = stage("Plan", lambda: _plan_section(law_result[1], budget, hardware, profile, out))
        if plan_section:
            sections.append(plan_section)
    elif "Plan" not in skipped:
        skipped.append("Plan")  # it needs the law
    header = [f"# pyscale report — {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
              f"Device: {device_name}. Store: `{store_file}`.", ""]
    if problems:
        header += ["**Stages with problems:**", *(f"- {p}" for p in problems), ""]
    if skipped:
        header += [f"Not run after the failure: {', '.join(skipped)}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections))
    return MainJob(path, problems, skipped)
