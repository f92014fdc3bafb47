"""Batch size and GPU power limit for a measured training job, chosen as Zeus does (You et al., NSDI '23).

Two measurements go in:
* steps: per (batch_size, power_limit_w), the time per unit of work (`time_s`, e.g. per epoch) and the
  average power over it (`avg_power_w`) -- from a CSV, or from `pyscale profile` rows in the store;
* runs: per (batch_size, seed), the units of work to reach the target metric (`epochs_to_target`; empty
  when that seed never reached it). Batch size changes convergence, so it needs its own runs; the power
  limit does not, so it needs only the step measurements.

For each measured (batch size, limit): time to accuracy TTA = epochs × time_s, energy to accuracy
ETA = TTA × avg_power_w, and Zeus' cost η·ETA + (1 − η)·MaxPower·TTA, which prices a second of time as
MaxPower watts, so η = 1 minimises energy alone and η = 0 time alone. A batch size counts only when at
least half its seeds reached the target (Zeus' early-stopping rule), with the mean over those that did.
Torch-free: the CSV module reads the files.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyscale.plan.measured import STEP_OP  # the built-in model's step rows, as `pyscale profile` stores them
from pyscale.plan.pareto import pareto_front

STEP_COLUMNS = ("batch_size", "power_limit_w", "time_s", "avg_power_w")
RUN_COLUMNS = ("batch_size", "seed", "epochs_to_target")
# A step row's params that differ between batch sizes of one job (everything else must match).
_BATCH_PARAMS = ("batch", "tokens_per_step")


@dataclass(frozen=True)
class Step:
    """One measured (batch size, power limit): time per unit of work and the average power over it."""

    batch_size: int
    power_limit_w: float
    time_s: float
    avg_power_w: float


@dataclass(frozen=True)
class Run:
    """One training run to the target: units of work it took, or None when it never got there."""

    batch_size: int
    seed: str
    epochs_to_target: float | None


@dataclass(frozen=True)
class Choice:
    batch_size: int
    power_limit_w: float
    energy_j: float
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "power_limit_w": self.power_limit_w, "energy_j": self.energy_j,
                "time_s": self.time_s}


@dataclass
class ZeusResult:
    energy_optimal: Choice
    time_optimal: Choice
    cost_optimal: Choice
    baseline: Choice  # the baseline batch size at the largest power limit
    energy_saving: float  # 1 − energy_optimal / baseline energy
    pareto_front: list[Choice]  # the (time, energy) non-dominated choices, by increasing time
    eta: float
    max_power_w: float
    notes: list[str] = field(default_factory=list)  # what was left out or used partially, and why

    def to_dict(self) -> dict[str, Any]:
        """The result's numbers, exactly these keys (the notes are said apart: they are not results)."""
        return {"energy_optimal": self.energy_optimal.to_dict(), "time_optimal": self.time_optimal.to_dict(),
                "cost_optimal": self.cost_optimal.to_dict(), "baseline": self.baseline.to_dict(),
                "energy_saving": self.energy_saving, "pareto_front": [c.to_dict() for c in self.pareto_front]}


# ---------------------------------------------------------------------------------------------- reading


def _read_csv(path: str | Path, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        present = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in present]
        if missing:
            raise ValueError(f"{what}: {path} lacks column(s) {', '.join(missing)} (it has: "
                             f"{', '.join(present) or 'none'}); expected {', '.join(columns)}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise ValueError(f"{what}: {path} has a header but no rows")
    return rows


def _number(value: Any, column: str, where: str, *, positive: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column}: {value!r} at {where} is not a number") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{column}: must be a finite number > 0, got {value!r} at {where}")
    return number


def _batch_size(value: Any, where: str) -> int:
    number = _number(value, "batch_size", where)
    if number != int(number):
        raise ValueError(f"batch_size: must be a whole number >= 1, got {value!r} at {where}")
    return int(number)


def read_steps_csv(path: str | Path) -> list[Step]:
    """STEPS.csv: one row per (batch_size, power_limit_w) with time_s and avg_power_w."""
    steps = []
    for line, row in enumerate(_read_csv(path, STEP_COLUMNS, "steps"), start=2):
        where = f"{Path(path).name} line {line}"
        steps.append(Step(_batch_size(row["batch_size"], where), _number(row["power_limit_w"], "power_limit_w", where),
                          _number(row["time_s"], "time_s", where), _number(row["avg_power_w"], "avg_power_w", where)))
    return steps


def read_runs_csv(path: str | Path) -> list[Run]:
    """RUNS.csv: one row per (batch_size, seed) with epochs_to_target (empty, nan or inf: not reached)."""
    runs = []
    for line, row in enumerate(_read_csv(path, RUN_COLUMNS, "runs"), start=2):
        where = f"{Path(path).name} line {line}"
        epochs = row["epochs_to_target"]
        reached = epochs.lower() not in ("", "nan", "inf", "+inf", "none", "null")
        runs.append(Run(_batch_size(row["batch_size"], where), row["seed"],
                        _number(epochs, "epochs_to_target", where) if reached else None))
    return runs


def steps_from_store(store: Any, *, epoch_samples: int, device_name: str | None = None) -> list[Step]:
    """Steps from the store's `gpt_step` rows measured with a known power limit and power.

    One job only: the rows must be one model (config, dtype) on one device, at several batch sizes and
    limits. A row's time per step becomes time per unit of work as time × epoch_samples / batch."""
    if epoch_samples < 1:
        raise ValueError(f"epoch_samples: must be a whole number >= 1, got {epoch_samples}")
    from pyscale.costmodel import same_device

    rows = [r for r in store.measurements(op=STEP_OP)
            if r.get("power_limit_w") and r.get("avg_power_w") and r.get("time_s_median")
            and (device_name is None or same_device(r["device_name"], device_name))]
    if not rows:
        where = f" of {device_name!r}" if device_name else ""
        raise ValueError(f"store: no {STEP_OP} rows{where} with a power limit and an average power; measure "
                         "them with `pyscale profile --model gpt --batch B --power-limits ...` on a GPU")
    devices = {r["device_name"] for r in rows}
    if len(devices) > 1:
        raise ValueError(f"store: {STEP_OP} rows of several devices ({', '.join(sorted(devices))}); pass "
                         "device_name to choose one")
    jobs = {_job_key(r) for r in rows}
    if len(jobs) > 1:
        raise ValueError(f"store: {STEP_OP} rows of {len(jobs)} different models or dtypes; the optimiser takes one "
                         "job (one model at several batch sizes and limits): use a store of that job only")
    latest: dict[tuple[int, float], Step] = {}
    for r in rows:  # ordered by id: a later measurement of the same point replaces an earlier one
        batch = int(r["params"]["batch"])
        latest[(batch, float(r["power_limit_w"]))] = Step(
            batch, float(r["power_limit_w"]), float(r["time_s_median"]) * epoch_samples / batch,
            float(r["avg_power_w"]))
    return list(latest.values())


def _job_key(row: Mapping[str, Any]) -> tuple[str, str]:
    params = {k: v for k, v in row["params"].items() if k not in _BATCH_PARAMS}
    return str(row.get("dtype")), repr(sorted(params.items()))


# ---------------------------------------------------------------------------------------------- optimising


def optimize(steps: Iterable[Step], runs: Iterable[Run], *, baseline_batch: int, eta: float = 0.5,
             max_power_w: float | None = None) -> ZeusResult:
    """The energy-, time- and cost-optimal (batch size, power limit) of a job, against the baseline batch
    size at the largest power limit. Raises ValueError naming the argument for data it cannot use."""
    steps, runs = list(steps), list(runs)
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta: must be in [0, 1] (1: energy only, 0: time only), got {eta}")
    if max_power_w is not None and not (math.isfinite(max_power_w) and max_power_w > 0):
        raise ValueError(f"max_power_w: must be a finite number > 0, got {max_power_w}")
    if not steps:
        raise ValueError("steps: no step measurements")
    if not runs:
        raise ValueError("runs: no training runs")
    _check_unique(((s.batch_size, s.power_limit_w) for s in steps), "steps", "(batch_size, power_limit_w)")
    _check_unique(((r.batch_size, r.seed) for r in runs), "runs", "(batch_size, seed)")

    notes: list[str] = []
    epochs = _epochs_to_target(runs, notes)
    limits = sorted({s.power_limit_w for s in steps})
    largest = limits[-1]
    step_batches = {s.batch_size for s in steps}
    for b in sorted(step_batches - set(epochs)):
        if b not in {r.batch_size for r in runs}:
            notes.append(f"batch size {b}: step measurements but no runs; left out")
    for b in sorted({r.batch_size for r in runs} - step_batches):
        notes.append(f"batch size {b}: runs but no step measurements; left out")
    for b in sorted(step_batches & set(epochs)):
        have = sorted(s.power_limit_w for s in steps if s.batch_size == b)
        if len(have) < len(limits):
            notes.append(f"batch size {b}: measured at {_watts(have)} only (of {_watts(limits)}); used at those")

    candidates = [Choice(s.batch_size, s.power_limit_w, epochs[s.batch_size] * s.time_s * s.avg_power_w,
                         epochs[s.batch_size] * s.time_s) for s in steps if s.batch_size in epochs]
    if not candidates:
        raise ValueError("runs: no batch size with step measurements reached the target in at least half its "
                         "seeds; nothing to choose from")
    if baseline_batch not in epochs:
        known = ", ".join(map(str, sorted(epochs))) or "none"
        raise ValueError(f"baseline_batch: batch size {baseline_batch} has no runs that reached the target in at "
                         f"least half its seeds (eligible: {known})")
    baseline = next((c for c in candidates if c.batch_size == baseline_batch and c.power_limit_w == largest), None)
    if baseline is None:
        raise ValueError(f"baseline_batch: batch size {baseline_batch} is not measured at the largest power limit, "
                         f"{_watts([largest])}; measure it there, or choose another baseline")

    max_power = largest if max_power_w is None else float(max_power_w)

    def cost(c: Choice) -> float:
        return eta * c.energy_j + (1.0 - eta) * max_power * c.time_s

    energy_optimal = min(candidates, key=lambda c: (c.energy_j, c.time_s))
    return ZeusResult(
        energy_optimal=energy_optimal,
        time_optimal=min(candidates, key=lambda c: (c.time_s, c.energy_j)),
        cost_optimal=min(candidates, key=lambda c: (cost(c), c.energy_j, c.time_s)),
        baseline=baseline,
        energy_saving=1.0 - energy_optimal.energy_j / baseline.energy_j,
        pareto_front=_front(candidates),
        eta=float(eta), max_power_w=max_power, notes=notes)


def _front(candidates: Sequence[Choice]) -> list[Choice]:
    points = [{**c.to_dict(), "index": i} for i, c in enumerate(candidates)]
    return [candidates[p["index"]] for p in pareto_front(points)]


def _epochs_to_target(runs: Sequence[Run], notes: list[str]) -> dict[int, float]:
    """Mean epochs to target per batch size that reached it in at least half its seeds."""
    by_batch: dict[int, list[float | None]] = {}
    for r in runs:
        by_batch.setdefault(r.batch_size, []).append(r.epochs_to_target)
    out = {}
    for b, values in sorted(by_batch.items()):
        reached = [v for v in values if v is not None]
        if 2 * len(reached) >= len(values):
            out[b] = sum(reached) / len(reached)
        else:
            notes.append(f"batch size {b}: reached the target in {len(reached)} of {len(values)} seeds (fewer "
                         "than half); left out")
    return out


def _check_unique(keys: Iterable[tuple[Any, Any]], what: str, key: str) -> None:
    seen = set()
    for k in keys:
        if k in seen:
            raise ValueError(f"{what}: duplicate {key} row {k}; give one row per {key}")
        seen.add(k)


def _watts(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g} W" for v in values)
