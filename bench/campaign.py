"""The GPU campaign: everything a short GPU lease should produce, as one time-boxed command.

    bash bench/gpu_campaign.sh [--out DIR] [--budget-s 300] [--only STEPS] [--resume] [--dry-run [--list]]
                               [--shapes SET]

Run from the project root on a GPU machine without a package registry. The steps (`STEPS`, one entry each,
in priority order) run one after another, each in its own subprocesses and time-boxed: a step gets its share
of the budget (`budget_s`, scaled with --budget-s) plus what the steps before it left unused, the last one
whatever is left, and a step whose share is spent is stopped (what it wrote stays) or skipped, with a line
saying so. The whole run, build included, stays within --budget-s, so a rerun fits the same lease.

DIR receives at most 8 files, none in a folder, each written as it comes (a killed run loses nothing;
`--resume` with the carried DIR skips the steps already done and resumes the sweeps case by case):
store.db (+ its -wal/-shm while a step writes), profile.json, results.md (a dated section for
bench/RESULTS.md), campaign.log, campaign.json (the steps' state), pytest.xml.

`--dry-run` runs the same steps on a CPU at the quick shapes (the build as `pip install --dry-run`), so the
campaign is tested before a GPU is lent; `--dry-run --list` prints the steps and their budgets.

Autotuning: the sweep and the profiles run under the default policy (`cached`, with an empty cache of the
campaign's own): the cost model must price what a user's untuned step runs, and its validation compares
steps and ops run with the same configs. The A/B steps tune (`PYSCALE_AUTOTUNE=on`), each variant with a
fresh cache of its own: a variant is judged at its best config, not at a config function written for the
other, and nothing either variant tunes leaks into the other or into the cost model.

A kernel issue adds its A/B step as one `ab_step(...)` entry in STEPS (a variable and its values, the
family, ops and implementations it changes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 300.0
MIN_STEP_S = 5.0  # a step with less time left than this is skipped
MIN_COMMAND_S = 1.0  # a step's next command with less of its share left than this is skipped
RESERVE_S = 3.0  # kept back at the end for the results
MAX_FILES = 8
FILES = ("store.db", "profile.json", "results.md", "campaign.log", "campaign.json", "pytest.xml")
RETRY_UNSTABLE = 1  # passes that measure again the cases whose timing was not stable


# =========================================================================== the plan


@dataclass(frozen=True)
class Command:
    """One subprocess of a step: argv, extra environment, and the command as results.md shows it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    shown: str = ""

    def display(self) -> str:
        if self.shown:
            return self.shown
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shlex.quote(a) for a in self.argv)


@dataclass
class Context:
    """What the steps need to know: where, on what, at which shapes."""

    out: Path
    tmp: Path
    dry_run: bool
    device: str  # "cuda" or "cpu"
    op_shapes: tuple[str, ...]  # shape sets the sweep measures (the first: the validated GPT sizes)
    gpt_steps: str  # the GPT_STEPS set the profile step measures
    energy: bool
    energy_reason: str
    capability: tuple[int, int] | None = None
    python: str = sys.executable

    @property
    def store(self) -> Path:
        return self.out / "store.db"

    @property
    def profile(self) -> Path:
        return self.out / "profile.json"

    def worker(self, *args: str, env: Mapping[str, str] | None = None, shown: str = "") -> Command:
        return Command((self.python, str(Path(__file__).resolve()), "worker", *args), env or {}, shown)

    def pyscale(self, *args: str) -> Command:
        return Command((self.python, "-m", "pyscale", *args), {}, "pyscale " + " ".join(shlex.quote(a) for a in args))


@dataclass(frozen=True)
class Step:
    """One step: its budget share (seconds of the default 300 s budget), what it does, and its commands.

    `needs(ctx)` returns why the step cannot run here (it is skipped with that line) or None.
    `final`: the step takes whatever time is left. `always`: it runs again on --resume (the build: a
    fresh machine has nothing installed)."""

    name: str
    budget_s: float
    what: str
    commands: Callable[[Context], list[Command]]
    needs: Callable[[Context], str | None] = lambda ctx: None
    final: bool = False
    always: bool = False


# ----------------------------------------------------------------------------- the steps' commands


def _build(ctx: Context) -> list[Command]:
    pip = ("-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps", "-e", ".")
    if ctx.dry_run:  # checks the offline install resolves; the extension here was built by install.sh
        pip = (*pip, "--dry-run")
    probe = ("-c", "import json, pyscale; print(json.dumps(pyscale.extension_status()))")
    return [Command((ctx.python, *pip), {"PYSCALE_CUDA_ARCHS": "90a"}),
            Command((ctx.python, *probe), {}, "python -c 'import pyscale; print(pyscale.extension_status())'")]


def _families(ctx: Context, shape_set: str) -> str:
    """family:impl+impl,... the sweep measures at `shape_set`: what the profiled GPT steps run."""
    attention = "pyscale+sdpa" if shape_set == ctx.op_shapes[0] else "pyscale"
    return f"gemm:torch.mm,attention:{attention},step:*"


NOT_IN_A_STEP = "attention_fwd_bwd"  # the step model prices attention's two passes apart


def _sweep(ctx: Context) -> list[Command]:
    out = []
    for shape_set in ctx.op_shapes:
        families = _families(ctx, shape_set)
        out.append(ctx.worker("sweep", "--store", str(ctx.store), "--shapes", shape_set, "--families", families,
                              "--skip-ops", NOT_IN_A_STEP, "--retry-unstable", str(RETRY_UNSTABLE),
                              shown=_sweep_shown(ctx, shape_set, families)))
    return out


def _sweep_shown(ctx: Context, shape_set: str, families: str, energy: bool = False) -> str:
    """The `pyscale bench` commands a sweep worker is equivalent to."""
    lines = []
    for item in families.split(","):
        family, impls = item.split(":")
        impl = "" if impls == "*" else " " + " ".join(f"--impl {i}" for i in impls.split("+"))
        lines.append(f"pyscale bench {family} --shapes {shape_set}{impl} --store {ctx.store} --resume "
                     f"--retry-unstable {RETRY_UNSTABLE}" + (" --energy" if energy else ""))
    return "; ".join(lines) + f" (without {NOT_IN_A_STEP})"


def _profile_arguments(ctx: Context) -> list[str]:
    if ctx.dry_run:  # no meter to fill a window for: keep the window short, skip the idle reading
        return ["--steps", "10", "--warmup", "2", "--idle", "0", "--min-window", "0.2"]
    return ["--steps", "20", "--warmup", "3", "--idle", "1" if ctx.energy else "0"]


def _profile(ctx: Context) -> list[Command]:
    from pyscale.benchmark.shapes import GPT_STEPS

    extra = _profile_arguments(ctx)
    shown = "; ".join(f"pyscale profile --model gpt {' '.join(s.profile_arguments())} {' '.join(extra)} "
                      f"--retry-unstable {RETRY_UNSTABLE} --store {ctx.store}" for s in GPT_STEPS[ctx.gpt_steps])
    return [ctx.worker("profile", "--store", str(ctx.store), "--steps-set", ctx.gpt_steps, "--retry-unstable",
                       str(RETRY_UNSTABLE), "--", *extra, shown=shown)]


def _fit(ctx: Context) -> list[Command]:
    return [ctx.pyscale("costmodel", "fit", "--store", str(ctx.store), "--out", str(ctx.profile)),
            ctx.pyscale("costmodel", "validate", str(ctx.profile), "--store", str(ctx.store), "--record")]


def _energy(ctx: Context) -> list[Command]:
    shape_set = ctx.op_shapes[0]
    families = _families(ctx, shape_set).replace("pyscale+sdpa", "pyscale")  # what the profiled steps ran
    return [ctx.worker("energy", "--store", str(ctx.store), "--shapes", shape_set, "--families", families,
                       "--per-group", str(ENERGY_SHAPES_PER_OP), "--skip-ops", NOT_IN_A_STEP,
                       shown=f"the first, middle and last shape per op of: {_sweep_shown(ctx, shape_set, families, True)}"),
            *_fit(ctx)]


ENERGY_SHAPES_PER_OP = 3  # the energy model needs three rows per op; windows last >= 1 s each


def _needs_energy(ctx: Context) -> str | None:
    return None if ctx.energy else f"no energy: {ctx.energy_reason}"


def _smoke(ctx: Context) -> list[Command]:
    return [ctx.worker("smoke", "--tmp", str(ctx.tmp),
                       shown="python -m pytest -m 'gpu and not slow' -v " + " ".join(f for f, _ in SMOKE.values()))]


def _pytest_rest(ctx: Context) -> list[Command]:
    argv = [ctx.python, "-m", "pytest", "-m", "gpu and not slow", "-v", "-p", "no:cacheprovider",
            f"--junitxml={ctx.tmp / 'rest.xml'}"]
    chosen = ctx.tmp / "smoke-ids.txt"
    deselect = [f"--deselect={i}" for i in chosen.read_text().split()] if chosen.is_file() else []
    return [Command((*argv, *deselect, "tests"), {},
                    "python -m pytest -m 'gpu and not slow' -v tests (the smoke tests deselected)")]


#: One GPU test per op family (and of the build, the device row and the timer): (file, preferred test id).
#: Where the id no longer exists, the file's first collected GPU test stands in.
SMOKE = {
    "build": ("tests/test_ext.py", "test_cuda_build_sees_the_gpu"),
    "device": ("tests/test_hw.py", "test_current_device_is_in_the_table"),
    "timing": ("tests/profile/test_timing.py", "test_cuda_events_cold_l2_and_graphs"),
    "attention": ("tests/ops/test_attention.py", "test_gpu_matches_oracle[bf16-True-128]"),
    "quantized GEMM": ("tests/ops/test_gemm_fp8.py", "test_gpu_bf16[mnk1-row]"),
    "MoE": ("tests/ops/test_moe_align.py", "test_cuda_matches_cpp[3000-2-8-1.0]"),
}


def ab_step(name: str, variable: str, values: tuple[str, str], *, family: str, ops: tuple[str, ...],
            impls: tuple[str, ...] = ("pyscale",), budget_s: float, min_capability: tuple[int, int] | None = None,
            shapes: str = "llama3-8b") -> Step:
    """An A/B step: `ops` of `family` (implementations `impls`) at `shapes` (quick in a dry run) with
    `variable` set to each value in turn, then the first value again (the repeat is the noise floor),
    each variant tuned with its own fresh autotune cache. Rows are stored under backend
    `<impl>@<variable>=<value>`, apart from the cost model's rows."""
    a, b = values

    def commands(ctx: Context) -> list[Command]:
        shape_set = "quick" if ctx.dry_run else shapes
        out = []
        for value, tag in ((a, ""), (b, ""), (a, "#repeat")):
            label = f"@{variable}={value or 'default'}{tag}"  # "": the variable unset, the op's own choice
            env = {variable: value, "PYSCALE_AUTOTUNE": "on",
                   "PYSCALE_AUTOTUNE_CACHE": str(ctx.tmp / f"autotune-{name}-{value or 'default'}{tag.strip('#')}.json")}
            out.append(ctx.worker("sweep", "--store", str(ctx.store), "--shapes", shape_set, "--families",
                                  f"{family}:{'+'.join(impls)}", "--ops", ",".join(ops), "--label", label,
                                  env=env, shown=(f"{variable}={shlex.quote(value)} PYSCALE_AUTOTUNE=on pyscale bench {family} "
                                                  f"--shapes {shape_set} " + " ".join(f"--impl {i}" for i in impls)
                                                  + f" (ops {', '.join(ops)}; rows labelled {label})")))
        return out

    def needs(ctx: Context) -> str | None:
        return None if ctx.dry_run else _capability_missing(ctx, min_capability)

    shown_a, shown_b = a or "default", b or "default"
    what = (f"A/B {variable}={shown_a} vs {shown_b} (then {shown_a} again): {', '.join(ops)} at {shapes}, tuned "
            "(PYSCALE_AUTOTUNE=on)")
    return Step(name, budget_s, what, commands, needs)


VARIANTS_LABEL = "variants"


def variants_step(name: str, *, family: str, ops: tuple[str, ...], budget_s: float, shapes: str = "llama3-8b",
                  min_capability: tuple[int, int] | None = None) -> Step:
    """A variants step: a family whose structural variants are implementations of their own
    (`pyscale:<variant>`, e.g. pyscale.benchmark.cases.gemm.VARIANTS) measured side by side in one tuned
    run, with a fresh autotune cache, baselines included. Rows are stored under `<impl>@variants`."""

    def commands(ctx: Context) -> list[Command]:
        shape_set = "quick" if ctx.dry_run else shapes
        label = f"@{VARIANTS_LABEL}"
        env = {"PYSCALE_AUTOTUNE": "on", "PYSCALE_AUTOTUNE_CACHE": str(ctx.tmp / f"autotune-{name}.json")}
        return [ctx.worker("sweep", "--store", str(ctx.store), "--shapes", shape_set, "--families", f"{family}:*",
                           "--ops", ",".join(ops), "--label", label, env=env,
                           shown=(f"PYSCALE_AUTOTUNE=on pyscale bench {family} --shapes {shape_set} "
                                  f"(every implementation and variant; rows labelled {label})"))]

    def needs(ctx: Context) -> str | None:
        return None if ctx.dry_run else _capability_missing(ctx, min_capability)

    return Step(name, budget_s, f"{family} variants side by side: {', '.join(ops)} at {shapes}, tuned", commands,
                needs)


def _capability_missing(ctx: Context, min_capability: tuple[int, int] | None) -> str | None:
    if min_capability is None:
        return None
    if ctx.capability is None or tuple(ctx.capability) < min_capability:
        return f"needs compute capability {min_capability[0]}.{min_capability[1]}+ (this GPU: {ctx.capability})"
    return None


#: The campaign, in priority order. Budgets are seconds of the default 300 s (scaled with --budget-s); the
#: final step gets what is left. A kernel issue's A/B step is one ab_step(...) line before "energy": the
#: variable that selects the variant, its two values (the current default first), the family, ops and
#: implementations it changes, e.g. an attention backward variant
#:   ab_step("ab-attention-bwd", VARIABLE, ("fused", "split"), family="attention", ops=("attention_bwd",),
#:           budget_s=25),
#: or a GEMM one: ab_step("ab-gemm-fp8", VARIABLE, ("a", "b"), family="gemm", ops=("gemm",), budget_s=20).
STEPS: tuple[Step, ...] = (
    Step("build", 40, "offline editable install, CUDA kernels for sm_90a (dry run: pip --dry-run)", _build,
         always=True),
    Step("smoke", 30, "one GPU test per op family (attention, quantized GEMM, MoE), the build, the device row, "
         "the timer", _smoke),
    Step("sweep", 75, "what the cost model needs at the validated GPT sizes, then at llama3-8b's: GEMM, "
         "attention fwd/bwd, the step ops (timing; unstable cases measured again)", _sweep),
    Step("profile", 45, "pyscale profile of the built-in GPT at 5 sizes", _profile),
    Step("fit", 15, "pyscale costmodel fit, then costmodel validate --record (into profile.json)", _fit),
    ab_step("ab-attention-tma", "PYSCALE_ATTN_TMA", ("0", "1"), family="attention", ops=("attention_fwd",),
            budget_s=15, min_capability=(9, 0)),
    ab_step("ab-attention-bwd", "PYSCALE_ATTN_BWD", ("split", "fused"), family="attention",
            ops=("attention_bwd",), budget_s=15),
    variants_step("ab-gemm", family="gemm", ops=("gemm",), budget_s=15),
    ab_step("ab-moe-dw-splits", "PYSCALE_MOE_DW_SPLITS", ("", "1"), family="moe", ops=("moe_fwd_bwd",),
            shapes="qwen3-moe", budget_s=15),
    Step("energy", 30, f"energy of {ENERGY_SHAPES_PER_OP} shapes per op where NVML's energy counter answers, "
         "then the fit and validation again", _energy, _needs_energy),
    Step("pytest-gpu", 0, "the rest of pytest -m 'gpu and not slow', with whatever time is left", _pytest_rest,
         final=True),
)


# =========================================================================== running it


def _say(log: Any, text: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")
    line = f"[{stamp}] campaign: {text}"
    print(line, flush=True)
    if log is not None:
        log.write(line + "\n")
        log.flush()


def _run_command(cmd: Command, timeout_s: float, log: Any, env: Mapping[str, str]) -> tuple[int | None, float]:
    """Run `cmd` with its output streamed to stdout and the log; (exit code or None if stopped, seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd.argv), cwd=ROOT, env={**env, **cmd.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        rc = None
        for sig, grace in ((signal.SIGINT, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            try:  # the child's own process group (start_new_session): nothing else is signalled
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return rc, time.monotonic() - t0


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # a state file cut short by a kill: every step runs again (the sweeps resume case by case)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json.dumps(state, indent=1, default=str) + "\n")


def _merge_junit(ctx: Context) -> None:
    """The smoke and the rest of the GPU tests into one DIR/pytest.xml."""
    suites = ET.Element("testsuites")
    for name in ("smoke.xml", "rest.xml"):
        path = ctx.tmp / name
        if not path.is_file():
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        for suite in ([root] if root.tag == "testsuite" else list(root)):
            suite.set("name", f"{name.removesuffix('.xml')}: {suite.get('name', 'pytest')}")
            suites.append(suite)
    if len(suites):
        ET.ElementTree(suites).write(ctx.out / "pytest.xml", encoding="utf-8", xml_declaration=True)


def _files_in(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def run_campaign(ctx: Context, steps: Sequence[Step], budget_s: float, resume: bool, argv: Sequence[str]) -> int:
    start = time.monotonic()
    deadline = start + budget_s
    scale = budget_s / DEFAULT_BUDGET_S
    state_path = ctx.out / "campaign.json"
    state = _load_state(state_path) if resume else {}
    runs = state.setdefault("runs", [])
    runs.append({"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "bash bench/gpu_campaign.sh " + " ".join(shlex.quote(a) for a in argv),
                 "budget_s": budget_s, "dry_run": ctx.dry_run})
    state.update(device=state.get("device") or _device_info(ctx), energy=ctx.energy,
                 energy_reason=ctx.energy_reason, dry_run=ctx.dry_run,
                 power_limit=_probe_power_limit() if ctx.device == "cuda" else "none (a dry run on a CPU)")
    done = state.setdefault("steps", {})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYSCALE_HOME": str(ctx.tmp / "home"),
           "PYSCALE_AUTOTUNE_CACHE": str(ctx.tmp / "autotune.json")}
    env.pop("TRITON_INTERPRET", None)  # the campaign measures the device's own paths
    failed = False
    banked = 0.0  # the share earlier steps left unused: the next steps may spend it
    with open(ctx.out / "campaign.log", "a", encoding="utf-8") as log:
        _say(log, f"{'dry run on ' + ctx.device if ctx.dry_run else 'GPU campaign'}: budget {budget_s:g} s, "
                  f"steps {', '.join(s.name for s in steps)}; out {ctx.out}")
        for step in steps:
            record = done.setdefault(step.name, {})
            if resume and record.get("status") == "done" and not step.always:
                _say(log, f"{step.name}: done in an earlier run, skipped")
                continue
            left = deadline - RESERVE_S - time.monotonic()
            share = left if step.final else min(step.budget_s * scale + banked, left)
            why = step.needs(ctx)
            if why is None and share < MIN_STEP_S:
                why = f"the budget is spent ({max(left, 0):.0f} s left)"
            if why is not None:
                record.update(status="skipped", note=why, seconds=0.0)
                _say(log, f"{step.name}: skipped: {why}")
                _write_state(state_path, state)
                continue
            _say(log, f"{step.name}: {step.what} (share {share:.3g} s)")
            step_end = time.monotonic() + share
            status, notes, spent, shown = "done", [], 0.0, []
            for cmd in step.commands(ctx):
                remaining = step_end - time.monotonic()
                if remaining < MIN_COMMAND_S:
                    notes.append(f"share spent: skipped {cmd.display()[:120]}")
                    _say(log, f"{step.name}: its share is spent, skipped: {cmd.display()[:200]}")
                    status = "timeout"
                    continue
                shown.append(cmd.display())
                _say(log, f"{step.name}: $ {cmd.display()}")
                rc, seconds = _run_command(cmd, remaining, log, env)
                spent += seconds
                if rc is None:
                    status = "timeout"
                    notes.append(f"stopped after {seconds:.0f} s (its share); what it wrote is kept")
                    _say(log, f"{step.name}: stopped at the end of its share ({seconds:.0f} s); what it wrote "
                              "is kept (--resume continues)")
                elif rc != 0:
                    status = "failed" if status == "done" else status
                    notes.append(f"exit {rc}: {cmd.display()[:120]}")
                    _say(log, f"{step.name}: exit {rc}")
            banked = max(0.0, share - spent)
            record.update(status=status, seconds=round(spent, 1), share_s=round(share, 1), commands=shown,
                          note="; ".join(notes))
            failed |= status == "failed"
            _say(log, f"{step.name}: {status} in {spent:.1f} s")
            _merge_junit(ctx)
            _write_state(state_path, state)
            _write_results(ctx, state)
        runs[-1]["seconds"] = round(time.monotonic() - start, 1)
        _write_state(state_path, state)
        _write_results(ctx, state)
        files = _files_in(ctx.out)
        if len(files) > MAX_FILES or any(len(p.relative_to(ctx.out).parts) > 3 for p in files):
            _say(log, f"WARNING: {len(files)} files in {ctx.out} (at most {MAX_FILES} come back)")
        _say(log, f"finished in {time.monotonic() - start:.0f} s of {budget_s:g}; results in {ctx.out / 'results.md'}")
    print((ctx.out / "results.md").read_text())
    return 1 if failed else 0


def _device_info(ctx: Context) -> dict[str, Any]:
    """`pyscale info --json` (device, driver, versions): what the results section is dated and labelled with."""
    try:
        out = subprocess.run([ctx.python, "-m", "pyscale", "info", "--json"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return {"unavailable_reason": f"pyscale info --json failed: {exc}"}


def _probe_gpu(python: str) -> tuple[bool, tuple[int, int] | None, str]:
    """(a CUDA GPU is there, its compute capability, why not)."""
    code = ("import json, torch; ok = torch.cuda.is_available(); "
            "print(json.dumps([ok, list(torch.cuda.get_device_capability()) if ok else None]))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        ok, cap = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        return False, None, f"torch could not be asked ({exc})"
    return bool(ok), (tuple(cap) if cap else None), "" if ok else "torch sees no CUDA GPU"


def _probe_energy() -> tuple[bool, str]:
    """Whether NVML's total-energy counter answers on GPU 0 (the only energy the campaign measures)."""
    try:
        import pynvml
    except ImportError:
        return False, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        return False, f"NVML's energy counter does not answer: {exc}"
    return True, "NVML total-energy counter"


def _probe_power_limit() -> str:
    """GPU 0's enforced power limit and the range NVML allows, read only: the campaign never sets it."""
    from pyscale.profile.power import MeterError
    from pyscale.profile.power.limits import power_limit_range

    try:
        allowed = power_limit_range(0)
    except MeterError as exc:
        return f"not read ({exc})"
    enforced = "unknown" if allowed.enforced_w is None else f"{allowed.enforced_w:g} W"
    return f"{enforced} enforced (NVML allows {allowed}; read only, never changed)"


# =========================================================================== results.md


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _shape(params: Mapping[str, Any]) -> str:
    skip = {"shape_set", "world_size", "reduced", "impl_parts", "impl", "tokens_per_step", "n_params",
            "n_params_non_embedding"}
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in skip)


def _write_results(ctx: Context, state: dict[str, Any]) -> None:
    try:
        text = render_results(ctx, state)
    except Exception as exc:  # a results section that cannot be rendered must not stop the campaign
        text = f"# results could not be rendered: {type(exc).__name__}: {exc}\n"
    (ctx.out / "results.md").write_text(text)


def render_results(ctx: Context, state: dict[str, Any]) -> str:
    info = state.get("device") or {}
    dev = (info.get("devices") or [{}])[0]
    versions = info.get("versions") or {}
    run = (state.get("runs") or [{}])[-1]
    date = str(run.get("started", ""))[:10]
    kind = "dry run on a CPU (pipeline check at the quick shapes; not performance results)" if ctx.dry_run else "GPU"
    lines = [f"## GPU campaign — {dev.get('name', 'unknown device')} — {date}", "",
             f"*{kind}.* Device: {dev.get('name', '?')} (kind {dev.get('kind', '?')}, compute capability "
             f"{dev.get('compute_capability')}, {_fmt((dev.get('memory_bytes') or 0) / 2**30, '.0f')} GiB), driver "
             f"{dev.get('driver_version')}, CUDA {versions.get('torch_cuda')}; torch {versions.get('torch')}, triton "
             f"{versions.get('triton')}, pyscale {versions.get('pyscale')}, python {versions.get('python')}. "
             f"Energy: {'NVML total-energy counter' if state.get('energy') else state.get('energy_reason')}. "
             f"Power limit: {state.get('power_limit', 'not recorded')}.", "",
             f"Command: `{run.get('command', '')}` (budget {run.get('budget_s')} s"
             + (f", took {run['seconds']} s" if run.get("seconds") is not None else ", running") + ").", "",
             "| step | share s | spent s | status | note |", "| --- | ---: | ---: | --- | --- |"]
    for name, rec in state.get("steps", {}).items():
        lines.append(f"| {name} | {rec.get('share_s', '—')} | {rec.get('seconds', '—')} | {rec.get('status', '—')} | "
                     f"{(rec.get('note') or '').replace('|', '/')} |")
    lines += ["", "Commands:", ""]
    for name, rec in state.get("steps", {}).items():
        lines += [f"- {name}: `{c}`" for c in rec.get("commands", [])]
    if ctx.store.is_file():
        lines += _store_sections(ctx)
    if ctx.profile.is_file():
        lines += _validation_section(ctx)
    lines += _pytest_section(ctx)
    return "\n".join(lines) + "\n"


def _store_sections(ctx: Context) -> list[str]:
    from pyscale import hw
    from pyscale.store import Store

    with Store(ctx.store) as store:
        rows = store.measurements(status=None)
    ops = [r for r in rows if r["backend"] != "step" and "@" not in r["backend"]]
    steps = [r for r in rows if r["op"] == "gpt_step" and r["backend"] == "step"]
    ab = [r for r in rows if "@" in r["backend"]]
    out = ["", f"### Op sweep ({len(ops)} rows; stable: the timing criterion of pyscale.profile.stability)", "",
           "| op | impl | dtype | shape | ms | TFLOP/s | % peak | GB/s | J | stable |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in ops:
        t = r.get("time_s_median")
        if r["status"] != "ok" or not t:
            out.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {_shape(r['params'])} | {r['status']} | | | | | |")
            continue
        spec = hw.lookup(r["device_name"]) if r.get("device_kind") == "cuda" else None
        peak = None
        if isinstance(spec, hw.GPUSpec):
            try:
                peak = hw.peak_flops(spec, r["dtype"])
            except ValueError:
                peak = None
        tflops = r["flops"] / t / 1e12 if r.get("flops") else None
        out.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {_shape(r['params'])} | {_fmt(t * 1e3)} | "
                   f"{_fmt(tflops)} | {_fmt(100 * r['flops'] / t / peak if peak and r.get('flops') else None, '.1f')} | "
                   f"{_fmt(r['bytes'] / t / 1e9 if r.get('bytes') else None)} | {_fmt(r.get('energy_j'))} | "
                   f"{'yes' if (r.get('extra') or {}).get('stable') else 'no'} |")
    out += ["", "### Training steps (pyscale profile --model gpt)", "",
            "| layers | d_model | heads | seq | batch | vocab | step ms | p20–p80 ms | MFU | tokens/s | J/token | stable |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in steps:
        p, t, extra = r["params"], r["time_s_median"], r.get("extra") or {}
        tokens = p.get("tokens_per_step") or p["batch"] * p["seq_len"]
        out.append(f"| {p['n_layers']} | {p['d_model']} | {p['n_heads']} | {p['seq_len']} | {p['batch']} | "
                   f"{p.get('vocab_size')} | {_fmt(t * 1e3)} | {_fmt(r['time_s_p20'] * 1e3)}–{_fmt(r['time_s_p80'] * 1e3)} | "
                   f"{_fmt(extra.get('mfu'), '.3f')} | {_fmt(tokens / t, '.4g')} | "
                   f"{_fmt(r['energy_j'] / tokens if r.get('energy_j') else None)} | {'yes' if extra.get('stable') else 'no'} |")
    if ab:
        out += _ab_section(ab)
    return out


def _ab_section(rows: list[dict[str, Any]]) -> list[str]:
    """One table per A/B step: an environment variable's values (`@VAR=value`), or the structural variants
    of one run (`@variants`: the implementations of each shape side by side, against `pyscale`)."""
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = r["backend"].split("@", 1)[1]
        steps.setdefault(label.split("=", 1)[0].split("#", 1)[0], []).append(r)
    out = []
    for variable, group in sorted(steps.items()):
        out += _variants_table(group) if variable == VARIANTS_LABEL else _ab_table(variable, group)
    return out


def _ratio_table(title: str, groups: dict[tuple[str, str], dict[str, dict[str, Any]]], columns: list[str],
                 base: str) -> list[str]:
    """Rows (op, shape) x `columns` in ms, then each column's ratio to `base` (> 1: slower than `base`)."""
    others = [x for x in columns if x != base]
    out = ["", title, "",
           "| op | shape | " + " | ".join(f"{x} ms" for x in columns) + " | "
           + " | ".join(f"{x} / {base}" for x in others) + " |",
           "| --- | --- | " + " | ".join("---:" for _ in columns) + " | " + " | ".join("---:" for _ in others) + " |"]
    for (op, key), cells in sorted(groups.items()):
        times = {x: cells[x]["time_s_median"] if x in cells and cells[x]["status"] == "ok" else None for x in columns}
        ref = times.get(base)
        out.append(f"| {op} | {_shape(json.loads(key))} | "
                   + " | ".join(_fmt(None if times[x] is None else times[x] * 1e3) for x in columns) + " | "
                   + " | ".join(_fmt(times[x] / ref if times[x] and ref else None, '.3f') for x in others) + " |")
    return out


def _ab_table(variable: str, rows: list[dict[str, Any]]) -> list[str]:
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        impl, label = r["backend"].split("@", 1)
        by.setdefault((r["op"], json.dumps({**r["params"], "impl": impl}, sort_keys=True)), {})[label] = r
    firsts = list(dict.fromkeys(label for r in rows for label in [r["backend"].split("@", 1)[1]]
                                if not label.endswith("#repeat")))
    labels = firsts + sorted({r["backend"].split("@", 1)[1] for r in rows} - set(firsts))
    return _ratio_table(f"### A/B {variable} ({', '.join(firsts)}; tuned; `#repeat` measures the first value "
                        "again: the noise)", by, labels, firsts[0])


UNQUANTIZED = ("bf16", "fp32")  # the formats of the plain layer (torch.mm), every format's reference


def _variants_table(rows: list[dict[str, Any]]) -> list[str]:
    """One table per format: its implementations at each shape against `pyscale` (the op's default), with
    the unquantized layer (torch.mm at the same shape) as a column of every quantized format's table."""
    formats: dict[str, dict[tuple[str, str], dict[str, dict[str, Any]]]] = {}
    plain: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        impl, key = r["backend"].split("@", 1)[0], (r["op"], json.dumps(r["params"], sort_keys=True))
        formats.setdefault(r["dtype"], {}).setdefault(key, {})[impl] = r
        if r["dtype"] in UNQUANTIZED and impl == "torch.mm":
            plain[key] = r
    out = []
    for fmt, groups in sorted(formats.items()):
        if fmt in UNQUANTIZED:
            continue
        for key, cells in groups.items():
            if key in plain:
                cells["torch.mm"] = plain[key]
        impls = sorted({impl for cells in groups.values() for impl in cells},
                       key=lambda i: (i != "pyscale", i.startswith("torch"), i))
        out += _ratio_table(f"### Variants, {fmt} (one tuned run; each implementation against `pyscale`, the "
                            "default; torch.mm: the unquantized layer)", groups, impls, "pyscale")
    return out


def _validation_section(ctx: Context) -> list[str]:
    from pyscale.costmodel import DeviceProfile

    try:
        profile = DeviceProfile.from_json(ctx.profile)
    except ValueError as exc:
        return ["", f"profile.json unreadable: {exc}"]
    out = ["", f"### Cost model (profile.json: {len(profile.models)} op models, fitted {profile.created})", "",
           "| op | dtype | backend | rows | time MAPE % (leave-shape-out CV) | energy model |",
           "| --- | --- | --- | ---: | ---: | --- |"]
    for m in profile.models:
        mape = (m.cv.metrics.get("runtime") or {}).get("mape_pct") if m.cv else None
        out.append(f"| {m.op} | {m.dtype} | {m.backend} | {m.n_rows} | {_fmt(mape, '.1f')} | "
                   f"{'yes' if m.energy else 'no'} |")
    v = profile.validation
    if not v:
        return [*out, "", "No step validation recorded."]
    s = v["summary"]
    out += ["", f"### Step predictions (`{v.get('command')}`)", "",
            "| layers | d_model | heads | seq | batch | vocab | measured ms | predicted ms | error | outside GEMM+attention | stable |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in v["steps"]:
        cfg = c["config"]
        out.append(f"| {cfg['n_layers']} | {cfg['d_model']} | {cfg['n_heads']} | {cfg['seq_len']} | {c['batch']} | "
                   f"{cfg.get('vocab_size')} | {c['measured_s'] * 1e3:.4g} | {c['predicted_s'] * 1e3:.4g} | "
                   f"{c['rel_error']:+.1%} | {100 * c['predicted_share_outside_gemm_attention']:.0f} % | "
                   f"{'yes' if c.get('measured_stable') else 'no'} |")
    out += ["", f"Error {s['min_error']:+.1%} to {s['max_error']:+.1%}, max |error| {s['max_abs_error']:.1%} over "
                f"{s['n_steps']} steps."]
    return out


def _pytest_section(ctx: Context) -> list[str]:
    path = ctx.out / "pytest.xml"
    if not path.is_file():
        return []
    out = ["", "### GPU tests (pytest.xml)", ""]
    failures = []
    for suite in ET.parse(path).getroot():
        total, errors, fails, skips = (int(suite.get(k, 0)) for k in ("tests", "errors", "failures", "skipped"))
        out.append(f"- {suite.get('name')}: {total - errors - fails - skips} passed, {fails} failed, {errors} errors, "
                   f"{skips} skipped in {float(suite.get('time', 0)):.0f} s")
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failures.append(f"{case.get('classname')}::{case.get('name')}")
    out += [f"- failed: `{f}`" for f in failures]
    return out


# =========================================================================== workers (one subprocess each)


def _parse_families(text: str) -> dict[str, tuple[str, ...] | None]:
    out: dict[str, tuple[str, ...] | None] = {}
    for item in text.split(","):
        family, _, impls = item.partition(":")
        out[family] = None if impls in ("", "*") else tuple(impls.split("+"))
    return out


def _plan(shapes: str, families: str, device: str, ops: str | None, skip_ops: str | None = None) -> list[Any]:
    from pyscale import benchmark

    cases = []
    for family, impls in _parse_families(families).items():
        cases += benchmark.plan_cases([family], shapes, device=device, impls=impls)
    if ops:
        cases = [c for c in cases if c.op in ops.split(",")]
    if skip_ops:
        cases = [c for c in cases if c.op not in skip_ops.split(",")]
    return cases


class _Labelled:
    """An executor whose rows carry `label` after their backend (A/B variants stay apart in the store)."""

    def __init__(self, label: str) -> None:
        from pyscale.benchmark.runner import LocalExecutor

        self.label, self.inner = label, LocalExecutor()

    def map_unordered(self, cases: Sequence[Any], **kwargs: Any) -> Any:
        for case, result in self.inner.map_unordered(cases, **kwargs):
            if not isinstance(result, BaseException):
                result[1].backend += self.label
            yield case, result


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_sweep(args: argparse.Namespace) -> int:
    from pyscale import benchmark
    from pyscale.store import Store

    device = _device()
    cases = _plan(args.shapes, args.families, device, args.ops, args.skip_ops)
    with Store(args.store) as store:
        if args.label:
            todo = benchmark.pending(cases, store=store, device=device, label=args.label)
            print(f"sweep {args.shapes} {args.label}: {len(todo)} of {len(cases)} cases to measure", flush=True)
            summary = benchmark.sweep(todo, store=store, device=device, executor=_Labelled(args.label),
                                      progress=False, retry_unstable=args.retry_unstable, command="campaign")
        else:
            print(f"sweep {args.shapes}: {len(cases)} cases ({args.families})", flush=True)
            summary = benchmark.sweep(cases, store=store, device=device, resume=True, progress=False,
                                      retry_unstable=args.retry_unstable, command="campaign",
                                      on_row=lambda row: print(f"  {row['record'].status:5} "
                                                               f"{row['case'].label()[:110]}", flush=True))
    print(f"sweep {args.shapes}: {summary.measured} measured, {summary.failed} failed, {summary.skipped} already "
          "in the store", flush=True)
    return 0 if summary.failed == 0 else 3


def _spread(cases: list[Any], per_group: int) -> list[Any]:
    """Up to `per_group` cases of each (op, impl, dtype), spread from the smallest to the largest."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for c in cases:
        groups.setdefault((c.op, c.impl, c.dtype), []).append(c)
    out = []
    for members in groups.values():
        def size(c: Any) -> float:
            p = c.params_dict
            return float(p.get("m", 1) * p.get("n", 1) * p.get("k", 1) * p.get("seq_q", 1) * p.get("rows", 1)
                         * p.get("elements", 1) * p.get("batch", 1))
        members = sorted(members, key=size)
        picks = sorted({round(i * (len(members) - 1) / max(per_group - 1, 1)) for i in range(per_group)})
        out += [members[i] for i in picks]
    return out


def worker_energy(args: argparse.Namespace) -> int:
    from pyscale import benchmark
    from pyscale.store import Store

    device = _device()
    cases = _spread(_plan(args.shapes, args.families, device, None, args.skip_ops), args.per_group)
    print(f"energy {args.shapes}: {len(cases)} cases, windows >= 1 s each", flush=True)
    with Store(args.store) as store:
        summary = benchmark.sweep(cases, store=store, device=device, energy=True, progress=False,
                                  command="campaign")
    print(f"energy: {summary.measured} measured, {summary.failed} failed", flush=True)
    return 0 if summary.failed == 0 else 3


def worker_profile(args: argparse.Namespace) -> int:
    """`pyscale profile` of each GPT step of the set, each in a process of its own (a process that profiled a
    larger model first would measure the next one on its leftover heap), skipping those with a stable row."""
    from pyscale.benchmark.shapes import GPT_STEPS
    from pyscale.store import Store

    extra = [a for a in args.rest if a != "--"]
    done = set()
    if Path(args.store).is_file():
        with Store(args.store) as store:
            for r in store.measurements(op="gpt_step"):
                if r["backend"] == "step" and (r.get("extra") or {}).get("stable"):
                    p = r["params"]
                    done.add((tuple(p.get(k) for k in ("n_layers", "d_model", "n_heads", "seq_len", "vocab_size")),
                              p.get("batch")))
    failures = 0
    for step in GPT_STEPS[args.steps_set]:
        key = ((step.n_layers, step.d_model, step.n_heads, step.seq, step.vocab), step.batch)
        if key in done:
            print(f"profile {step}: a stable step is in the store, skipped", flush=True)
            continue
        argv = ["profile", "--model", "gpt", *step.profile_arguments(), *extra, "--retry-unstable",
                str(args.retry_unstable), "--store", args.store]
        print("$ pyscale " + " ".join(argv), flush=True)
        failures += subprocess.run([sys.executable, "-m", "pyscale", *argv], cwd=ROOT).returncode != 0
    return 0 if failures == 0 else 3


def worker_smoke(args: argparse.Namespace) -> int:
    tmp = Path(args.tmp)
    files = sorted({f for f, _ in SMOKE.values()})
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "-m", "gpu and not slow", *files], cwd=ROOT, capture_output=True, text=True)
    collected = [line.strip() for line in collect.stdout.splitlines() if "::" in line]
    chosen = []
    for family, (path, preferred) in SMOKE.items():
        ids = [i for i in collected if i.startswith(path + "::")]
        pick = next((i for i in ids if i == f"{path}::{preferred}"), None) or (ids[0] if ids else None)
        print(f"smoke {family}: {pick or 'no GPU test collected in ' + path}", flush=True)
        if pick:
            chosen.append(pick)
    (tmp / "smoke-ids.txt").write_text("\n".join(chosen) + "\n")
    if not chosen:
        print("smoke: nothing to run", flush=True)
        return 1
    return subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu and not slow",
                           f"--junitxml={tmp / 'smoke.xml'}", *chosen], cwd=ROOT).returncode


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="campaign.py worker")
    sub = parser.add_subparsers(dest="kind", required=True)
    sweep = sub.add_parser("sweep")
    energy = sub.add_parser("energy")
    for p in (sweep, energy):
        p.add_argument("--store", required=True)
        p.add_argument("--shapes", required=True)
        p.add_argument("--families", required=True)
        p.add_argument("--skip-ops", default=None)
    sweep.add_argument("--ops", default=None)
    sweep.add_argument("--label", default="")
    sweep.add_argument("--retry-unstable", type=int, default=0)
    energy.add_argument("--per-group", type=int, default=ENERGY_SHAPES_PER_OP)
    profile = sub.add_parser("profile")
    profile.add_argument("--store", required=True)
    profile.add_argument("--steps-set", required=True)
    profile.add_argument("--retry-unstable", type=int, default=0)
    profile.add_argument("rest", nargs=argparse.REMAINDER)
    smoke = sub.add_parser("smoke")
    smoke.add_argument("--tmp", required=True)
    args = parser.parse_args(list(argv))
    return {"sweep": worker_sweep, "energy": worker_energy, "profile": worker_profile,
            "smoke": worker_smoke}[args.kind](args)


# =========================================================================== the command line


class UsageError(Exception):
    pass


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu_campaign.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("campaign-out"), metavar="DIR",
                        help="where the results go (at most 8 files; default ./campaign-out)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, metavar="S",
                        help="seconds for the whole run, the build included (default 300)")
    parser.add_argument("--only", default=None, metavar="STEPS", help="comma-separated step names (see --list)")
    parser.add_argument("--resume", action="store_true", help="continue the campaign in DIR")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on a CPU at the quick shapes")
    parser.add_argument("--list", action="store_true", help="print the steps and their budgets, run nothing")
    parser.add_argument("--shapes", default=None, metavar="SET",
                        help="shape set of the sweep and the GPT steps (default gpt-gpu then llama3-8b on a GPU, "
                             "quick in a dry run); a gpt-* set is also the profiled sizes")
    args = parser.parse_args(list(argv))
    if not args.budget_s > 0:
        raise UsageError(f"--budget-s must be > 0: got {args.budget_s:g}")
    names = [s.name for s in STEPS]
    if args.only is not None:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown or not wanted:
            raise UsageError(f"--only: unknown step(s) {', '.join(unknown) or '(none given)'}; steps: {', '.join(names)}")
        args.only = wanted
    if args.shapes is not None:
        from pyscale.benchmark.shapes import SHAPE_SETS

        if args.shapes not in SHAPE_SETS or args.shapes == "grid":
            raise UsageError(f"--shapes must be one of {', '.join(s for s in SHAPE_SETS if s != 'grid')}: "
                             f"got {args.shapes!r}")
    return args


def _shape_plan(args: argparse.Namespace, device: str) -> tuple[tuple[str, ...], str]:
    from pyscale.benchmark.shapes import GPT_STEPS

    default_steps = "gpt-gpu" if device == "cuda" and not args.dry_run else "quick"
    if args.shapes is None:
        return (("gpt-gpu", "llama3-8b") if default_steps == "gpt-gpu" else ("quick",)), default_steps
    return (args.shapes,), (args.shapes if args.shapes in GPT_STEPS else default_steps)


WIDTH, WHAT_COLUMN = 80, 33  # --list's terminal width, and where its "what" column starts


def print_list(args: argparse.Namespace, steps: Sequence[Step]) -> None:
    scale = args.budget_s / DEFAULT_BUDGET_S
    fixed = sum(s.budget_s for s in steps if not s.final) * scale
    mode = "a dry run on a CPU at the quick shapes" if args.dry_run else "on a GPU"
    print(f"GPU campaign steps ({mode}):\nbudget {args.budget_s:g} s including the build")
    print(f"{'#':>2}  {'step':<18} {'budget s':>8}  what")
    for i, s in enumerate(steps, 1):
        budget = f"rest ≥{max(args.budget_s - fixed - RESERVE_S, 0):.0f}" if s.final else f"{s.budget_s * scale:.0f}"
        lines = textwrap.wrap(s.what, WIDTH - WHAT_COLUMN) or [""]  # 80 columns: the description wraps
        print(f"{i:>2}  {s.name:<18} {budget:>8}  {lines[0]}")
        for line in lines[1:]:
            print(" " * WHAT_COLUMN + line)
    print(textwrap.fill(f"files into --out DIR (at most {MAX_FILES}): {', '.join(FILES)} (+ store.db-wal/-shm "
                        "while a step writes)", WIDTH))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    try:
        args = parse(argv)
    except UsageError as exc:
        print(f"gpu_campaign: error: {exc}", file=sys.stderr)
        return 2
    steps = [s for s in STEPS if args.only is None or s.name in args.only]
    if args.list:
        try:
            print_list(args, steps)
        except BrokenPipeError:  # `--list | head`: the reader went away; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        return 0
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        print(f"gpu_campaign: error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()) and not args.resume:
        print(f"gpu_campaign: error: --out {out} is not empty: pass --resume to continue that campaign, or "
              "another folder", file=sys.stderr)
        return 2
    gpu, capability, why = _probe_gpu(sys.executable)
    if not gpu and not args.dry_run:
        print(f"gpu_campaign: error: no GPU here ({why}); --dry-run runs the campaign on the CPU", file=sys.stderr)
        return 2
    device = "cuda" if gpu and not args.dry_run else "cpu"
    op_shapes, gpt_steps = _shape_plan(args, device)
    energy, energy_reason = _probe_energy() if device == "cuda" else (False, "a dry run measures no energy (no NVML "
                                                                             "on a CPU)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pyscale-campaign-"))
    ctx = Context(out=out, tmp=tmp, dry_run=args.dry_run, device=device, op_shapes=op_shapes, gpt_steps=gpt_steps,
                  energy=energy, energy_reason=energy_reason, capability=capability)
    try:
        return run_campaign(ctx, steps, args.budget_s, args.resume, argv)
    except KeyboardInterrupt:
        print("gpu_campaign: interrupted; what was written is kept (--resume continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout: this tree's pyscale, installed or not
    raise SystemExit(main())
