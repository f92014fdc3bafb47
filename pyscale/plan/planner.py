"""Budget -> training plan: N*, D*, a concrete architecture, batch, memory fit, time, energy and cost.

The search is one-dimensional: for each model size N on a log grid, the budget fixes the tokens D(N) the
plan can afford (FLOPs: C = k·N·D; GPU time: D / throughput; energy: D x joules per token; dollars: GPU
time x price), and the law's loss L(N, D(N)) is minimised over N. A target loss inverts this: for each N
the tokens needed to reach it, and the cheapest N wins. Throughput and power may depend on the model size
(measured cost models), which is what moves the time- and energy-optimal points away from FLOPs-optimal.
Each candidate size is priced on a concrete architecture of that size (`pyscale.plan.shape`), since a cost
model prices GEMM and attention shapes, not parameter counts.

The law's N counts the parameters a token uses: all of them for a dense model, the active ones (top_k of
n_experts experts per layer, plus attention, router, norms and, when the law counts them, embeddings) for
a MoE. Training compute C = k·N·D and DeepSeek's M follow the same active count.

An allocation law (Hoffmann et al.'s Approaches 1 and 2) gives N_opt(C) directly and predicts no loss: a
FLOPs budget is split by it, a time, energy or cost budget buys the compute at which its split costs the budget.

Architectures are ones a team could train (`pyscale.models.config.architecture_rules`): from 1e9 parameters
query heads divisible by 8 and 8 kv heads (GQA) unless asked otherwise, widths multiples of 128, a global batch
of a whole number of 8 (and of data-parallel x micro-batch) sequences; the exact model is within ±5 % of N*
and the tokens are set so the budget is spent exactly.

With a cost model measured at several GPU power limits (`pyscale.costmodel.power_limits`), the energy and cost
objectives also choose the power limit, among the measured ones, that minimises the objective for each
candidate size and so for the planned run (cost is GPU-hours x price: a lower limit wins only when it is no
slower, and then by its energy); flops and time plans run at the largest limit. `Plan.power_limit` reports
the choice and the same run's time and energy against the largest limit.

A plan is always an answer: one that does not fit in memory or runs longer than `max_days` is returned with
`feasible=False` and its `infeasible_reasons` (and a warning), as is one far beyond the law's data (its
`extrapolation_factor` above EXTRAPOLATION_THRESHOLD).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pyscale.models.config import GPTConfig, architecture_rules, config_for_params
from pyscale.plan.batch import BatchChoice, choose_batch
from pyscale.plan.budget import Budget
from pyscale.plan.hardware import Hardware, ParameterError
from pyscale.plan.law import LawChoice, choose_law
from pyscale.plan.memory import MemoryFit, fit_memory
from pyscale.plan.shape import search_config
from pyscale.scaling import compute_optimal
from pyscale.scaling.frontier import EXTRAPOLATION_THRESHOLD, extrapolation_label

OBJECTIVES = ("flops", "time", "energy", "cost")
_BUDGET_OBJECTIVE = {"flops": "flops", "gpu_hours": "time", "kwh": "energy", "dollars": "cost"}
_UNIT_SCALE = {"flops": 1.0, "gpu_hours": 3600.0, "kwh": 3.6e6, "dollars": 1.0}
MIN_TOKENS_PER_PARAM = 1.0  # a plan that cannot afford one token per parameter is refused
GRID_POINTS = 241
ARCHITECTURE_RTOL = 0.05  # the exact architecture's N is within this of N* (the tokens then keep the budget)
MAX_DAYS = 365.0  # a plan that runs longer than this is infeasible (plan(max_days=...), --max-days)


@dataclass
class PlanCost:
    """What the planned run costs on its hardware. A figure that cannot be priced is None, with the reason
    in Plan.unavailable; every source is also stated in Plan.assumptions."""

    device: str | None = None
    n_devices: int = 1
    throughput_flops_per_s: float | None = None  # achieved model FLOP/s of the whole fleet
    throughput_source: str = "no hardware given"
    mfu: float | None = None
    time_s: float | None = None  # wall-clock
    time_error: str | None = None  # a cost model's measured step-validation error (None: not a cost model)
    gpu_hours: float | None = None  # time x n_devices
    energy_kwh: float | None = None  # GPU energy of the fleet
    facility_energy_kwh: float | None = None  # GPU energy x PUE
    cost_dollars: float | None = None


def _cost_attribute(name: str) -> property:
    """A read-only Plan attribute that reads Plan.cost: the flat names README and to_dict() use."""
    return property(lambda plan: getattr(plan.cost, name), doc=f"Plan.cost.{name}")


@dataclass
class Plan:
    """A training run within a budget: the law's optimum, a concrete architecture with its exact size and
    tokens, batch and memory, and in `cost` what it takes on the hardware. The cost figures also read as
    flat attributes (`p.time_s`), as in `to_dict()`."""

    objective: str
    budget: Budget
    law: str
    law_source: str
    law_approach: str  # the published procedure behind the law (Hoffmann's Approach 1/2/3, a refit, a fit)
    n_convention: str
    flops_convention: str
    n_params_optimal: float  # the continuous optimum N*
    tokens_optimal: float  # D* at N*
    config: GPTConfig
    n_params_law: int  # the exact architecture's N as the law counts it (active; embeddings as the law does)
    n_params_deviation: float  # n_params_law / N* - 1 (within ARCHITECTURE_RTOL where the sizes allow)
    n_params: int  # exact parameter count of `config` (embeddings counted)
    n_params_non_embedding: int
    n_params_active: int  # parameters a token uses (embeddings counted); n_params when dense
    tokens: float  # tokens for the exact architecture within the budget
    tokens_per_param: float
    training_flops: float  # k·N·D in the law's convention
    model_flops: float  # PaLM model FLOPs (6N + 12·L·H·Q·T per token) x tokens
    predicted_loss: float | None  # None for an allocation law (the reason in `unavailable`)
    loss_interval: tuple[float, float] | None
    loss_interval_source: str
    batch: BatchChoice
    steps: int
    memory: MemoryFit
    cost: PlanCost  # device, throughput, time, energy and money
    inference_tokens: float
    assumptions: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    flops_optimal: dict[str, float] | None = None  # the FLOPs-optimal point at the same compute, for comparison
    extrapolation_factor: float | None = None  # training FLOPs / the largest compute in the law's data
    feasible: bool = True  # False: it does not fit in memory or runs longer than max_days (see the reasons)
    infeasible_reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # infeasibility and extrapolation, one line each
    architecture_options: dict[str, Any] = field(default_factory=dict)  # the gqa_ratio/heads_multiple asked for
    # the GPU power limit chosen and its trade-off against the largest (`_power_limit_report`); None without a
    # power-limit model, and then absent from to_dict()
    power_limit: dict[str, Any] | None = None

    device = _cost_attribute("device")
    n_devices = _cost_attribute("n_devices")
    throughput_flops_per_s = _cost_attribute("throughput_flops_per_s")
    throughput_source = _cost_attribute("throughput_source")
    mfu = _cost_attribute("mfu")
    time_s = _cost_attribute("time_s")
    time_error = _cost_attribute("time_error")
    gpu_hours = _cost_attribute("gpu_hours")
    energy_kwh = _cost_attribute("energy_kwh")
    facility_energy_kwh = _cost_attribute("facility_energy_kwh")
    cost_dollars = _cost_attribute("cost_dollars")

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready fields: the cost block's keys stand where `cost` does (the --json format)."""
        d: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "cost":
                d.update(value)
            else:
                d[key] = value
        d["budget"] = {"kind": self.budget.kind, "value": self.budget.value, "text": self.budget.describe()}
        d["extrapolated"] = bool(extrapolation_label(self.extrapolation_factor))
        d["config"] = self.config.to_dict()
        if d["power_limit"] is None:
            del d["power_limit"]
        return d


def _search_flops_per_token(n: float, shaped: GPTConfig, k: float) -> float:
    """Model FLOPs per token of size n: k·n plus PaLM's attention 12·L·H·Q·T of its rule-shaped config."""
    return k * n + 12.0 * shaped.n_layers * shaped.n_heads * shaped.head_dim * shaped.seq_len


def _limit_options(hardware: Hardware | None, config: GPTConfig) -> list[dict[str, Any]] | None:
    """Time and energy of `config` at each measured power limit, against the largest; None without a model."""
    if hardware is None or hardware.power_limit_source is None:
        return None
    return hardware.power_limit_source(config)[0]


def _pick_limit(options: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The power limit `objective` chooses: the least energy (then time) for energy, the least time (then
    energy) for cost, which prices GPU-hours; the largest limit for flops and time."""
    largest = max(options, key=lambda o: o["power_limit_w"])
    if objective == "energy":
        usable = [o for o in options if o["energy_ratio"] is not None]
        return min(usable, key=lambda o: (o["energy_ratio"], o["time_ratio"])) if usable else largest
    if objective == "cost":
        return min(options, key=lambda o: (o["time_ratio"], math.inf if o["energy_ratio"] is None
                                           else o["energy_ratio"], -o["power_limit_w"]))
    return largest


def _unit_cost(objective: str, hardware: Hardware | None, k: float, pue_applies: bool, shape):
    """cost per token of a model with n parameters, in the objective's unit (FLOP, GPU-s, J, $).

    `shape(n)` is the concrete architecture a search candidate is priced on; the final plan passes its own.
    """
    if objective == "flops":
        return lambda n, config=None: (k * n, "law convention")
    if hardware is None:
        raise ParameterError(f"objective {objective!r} needs hardware: give gpu=NAME with mfu= (and power_w=), "
                             "profile= or store=", "gpu", "mfu", "power_w", "profile", "store")
    if hardware.flops_source is None:
        raise ParameterError(f"objective {objective!r}: no throughput for {hardware.device_name}: give mfu=, "
                             "profile= (a fitted cost model) or store= (measured gpt_step rows)",
                             "mfu", "profile", "store")

    def gpu_seconds(n: float, config: GPTConfig | None = None) -> tuple[float, str]:
        priced = config or shape(n)
        rate, source = hardware.flops_source(priced)
        if rate is None:
            raise ValueError(f"objective {objective!r}: no throughput for {hardware.device_name} ({source})")
        # throughput is in model FLOPs (MFU convention), so time counts attention too
        flops = float(config.model_flops_per_token()) if config else _search_flops_per_token(n, priced, k)
        return flops / (rate * float(hardware.dp_efficiency)), source

    if objective == "time":
        return gpu_seconds
    def at_best_limit(value: float, source: str, priced: GPTConfig) -> tuple[float, str]:
        options = _limit_options(hardware, priced)
        if options is None:
            return value, source
        best = _pick_limit(options, objective)
        factor = best["energy_ratio"] if objective == "energy" else best["time_ratio"]
        return value * factor, (f"{source}; at {best['power_limit_w']:g} W, the measured power limit that "
                                f"minimises {objective} for this size")

    if objective == "energy":
        def joules(n: float, config: GPTConfig | None = None) -> tuple[float, str]:
            s, src = gpu_seconds(n, config)
            watts, psrc = hardware.power(config or shape(n))
            if watts is None:
                raise ValueError(f"objective 'energy': {psrc}")
            return at_best_limit(s * watts * (hardware.pue if pue_applies and hardware.pue else 1.0),
                                 f"{src}; {psrc}", config or shape(n))
        return joules
    if objective == "cost":
        if hardware.price_per_device_hour is None:
            raise ParameterError("objective 'cost' needs a price: give price_per_device_hour= (never assumed)",
                                 "price_per_device_hour")
        def dollars(n: float, config: GPTConfig | None = None) -> tuple[float, str]:
            s, src = gpu_seconds(n, config)
            return at_best_limit(s / 3600 * hardware.price_per_device_hour, src, config or shape(n))
        return dollars
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}: got {objective!r}")


def _tokens_for_loss(law: LawChoice, n: float, target: float) -> float | None:
    """Tokens a model of n parameters needs to reach `target` (None if it never does)."""
    hi = 1e8 * n
    if float(law.predict(n, hi)[0]) > target:
        return None
    lo = 1.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if float(law.predict(n, mid)[0]) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return hi


def _search(law: LawChoice, unit_cost, budget_value: float | None, target_loss: float | None,
            inference_tokens: float, k: float, n_min: float, n_max: float) -> tuple[float, float, float]:
    """(N*, D*, cost or loss) by a log grid and a local refinement."""
    def evaluate(n: float) -> tuple[float, float, float]:
        per_token, _ = unit_cost(n)
        fixed = inference_tokens * 2 * n * (per_token / (k * n))  # inference at 2N FLOPs/token, same unit
        if target_loss is None:
            d = (budget_value - fixed) / per_token
            if d < MIN_TOKENS_PER_PARAM * n:
                return n, d, math.inf
            return n, d, float(law.predict(n, d)[0])
        d = _tokens_for_loss(law, n, target_loss)
        return (n, math.inf, math.inf) if d is None else (n, d, d * per_token + fixed)

    grid = np.exp(np.linspace(math.log(n_min), math.log(n_max), GRID_POINTS))
    results = [evaluate(float(n)) for n in grid]
    best = min(range(len(results)), key=lambda i: results[i][2])
    if not math.isfinite(results[best][2]):
        return results[best]
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    fine = [evaluate(float(n)) for n in np.exp(np.linspace(math.log(lo), math.log(hi), 61))]
    return min(fine + [results[best]], key=lambda r: r[2])


def plan(budget: Budget | str, *, law: str | Any = "epoch2024", hardware: Hardware | None = None,
         objective: str | None = None, inference_tokens: float = 0.0, seq_len: int = 2048,
         vocab_size: int = 32000, n_experts: int = 0, top_k: int = 0, gqa_ratio: int | None = None,
         heads_multiple: int | None = None, micro_batch: int | None = None, batch_law: str = "deepseek",
         recompute: str = "auto", n_range: tuple[float, float] = (1e7, 1e13), max_days: float = MAX_DAYS,
         ) -> Plan:
    """Plan a training run within `budget` (see module docstring). Every assumption lands in Plan.assumptions.

    law: a loss-law preset, a saved fit (path or FitResult) or an allocation law (hoffmann2022_approach1/2).
    gqa_ratio: query heads per kv head (1: multi-head attention); None: 8 kv heads from 1e9 parameters, MHA
        below. heads_multiple: query heads divisible by it; None: 8 (tensor parallelism) from 1e9 parameters.
    micro_batch: sequences per device per micro-step, when fixed: the memory check uses it and the global
        batch is a multiple of n_devices x micro_batch (and always of 8 sequences).
    max_days: a plan whose wall-clock time exceeds it is infeasible (returned, with the reason).
    """
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    lc = choose_law(law)
    objective = _objective_of(budget, objective)
    if inference_tokens < 0:
        raise ParameterError(f"inference_tokens must be >= 0: got {inference_tokens}", "inference_tokens")
    if not (isinstance(max_days, (int, float)) and max_days > 0):
        raise ParameterError(f"max_days must be a positive number of days: got {max_days!r}", "max_days")
    if not lc.predicts_loss:
        _check_allocation_options(lc, budget, inference_tokens, batch_law)
    k = lc.flops_per_param_token
    options = {"gqa_ratio": gqa_ratio, "heads_multiple": heads_multiple}
    for name, value in (*options.items(), ("micro_batch", micro_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ParameterError(f"{name} must be a positive int (or None for the default): got {value!r}", name)
    assumptions = [f"law: {lc.name}, {lc.approach or 'as given'} ({lc.source}); {lc.n_convention}",
                   f"FLOP convention: C = {k:g}·N·D (the law's); model FLOPs (MFU) follow PaLM: 6N + 12·L·H·Q·T "
                   "per token"]
    pue_applies = budget.kind == "kwh" and hardware is not None and hardware.pue is not None
    shape = functools.partial(search_config, embeddings=lc.embeddings_counted, vocab_size=vocab_size,
                              seq_len=seq_len, n_experts=n_experts, top_k=top_k, **options)
    unit_cost = _unit_cost(objective, hardware, k, pue_applies, shape)
    smallest = config_for_params(n_range[0] * 5, vocab_size=vocab_size, seq_len=seq_len)
    n_min = max(n_range[0], float(smallest.n_params()) * 0.5)
    # the unit costs are FLOPs, GPU-seconds, joules or dollars
    budget_value = None if budget.kind == "loss" else budget.value * _UNIT_SCALE[budget.kind]
    target = budget.value if budget.kind == "loss" else None

    if not lc.predicts_loss:
        n_star, d_star = _allocate(lc, unit_cost, budget_value, objective)
        assumptions.append(_allocation_assumption(lc, objective))
    elif (objective == "flops" and budget.kind == "flops" and inference_tokens == 0
          and lc.law.name == "chinchilla"):
        opt = compute_optimal(lc.law, budget.value, params=lc.params, flops_per_param_token=k)
        n_star, d_star = float(opt.N[0]), float(opt.D[0])
        assumptions.append("FLOPs-optimal split in closed form (Hoffmann et al. Approach 3)")
    else:
        n_star, d_star, score = _search(lc, unit_cost, budget_value, target, inference_tokens, k, n_min, n_range[1])
        if not math.isfinite(score):
            if target is not None:
                raise ValueError(f"budget: target loss {target:g} is not reachable under {lc.name} "
                                 f"(its irreducible loss is E = {lc.params.get('E', float('nan')):.4g})")
            raise _too_small(budget, n_min)
    if d_star < MIN_TOKENS_PER_PARAM * n_star or n_star < n_min:
        raise _too_small(budget, n_min)

    # A concrete, trainable architecture near N* (the law's N: active parameters), then the tokens the budget
    # affords for exactly that model.
    rules = architecture_rules(n_star, **options)
    config = config_for_params(n_star, embeddings=lc.embeddings_counted, active=True, vocab_size=vocab_size,
                               seq_len=seq_len, n_experts=n_experts, top_k=top_k, rtol=ARCHITECTURE_RTOL, **rules)
    n_law = float(config.n_active_params(embeddings=lc.embeddings_counted))
    per_token, cost_source = unit_cost(n_law, config)
    fixed = inference_tokens * 2 * n_law * (per_token / (k * n_law))
    if target is None:
        tokens = (budget_value - fixed) / per_token
    else:
        needed = _tokens_for_loss(lc, n_law, target)
        if needed is None:
            raise ValueError(f"budget: target loss {target:g} is not reachable with the {n_law:.3g}-parameter "
                             f"architecture")
        tokens = needed
    assumptions.append(_architecture_assumption(config, lc.embeddings_counted, n_star, rules))
    if objective != "flops":
        assumptions.append("search: each candidate size priced on a concrete architecture of that size, shaped "
                           "by the default depth/width rule (pyscale.plan.shape)")
    if inference_tokens:
        assumptions.append(f"inference-aware: {inference_tokens:.3g} inference tokens at 2N FLOPs each are "
                           "charged to the budget")
    if objective != "flops":
        assumptions.append(f"{objective} per token from: {cost_source}")
    unavailable: dict[str, str] = {}
    training_flops = k * n_law * tokens
    if lc.predicts_loss:
        loss: float | None = float(lc.predict(n_law, tokens)[0])
        interval, interval_source = lc.loss_interval(n_law, tokens)
    else:
        loss, interval = None, None
        interval_source = f"absent: {lc.name} is an allocation law and predicts no loss"
        unavailable["predicted_loss"] = (f"{lc.name} is an allocation law ({lc.approach}): it gives N_opt(C) and "
                                         "D_opt(C), not a loss; use a loss law (e.g. epoch2024) for one")
    factor, warnings = _extrapolation(lc, training_flops, unavailable)
    if factor is not None and extrapolation_label(factor):
        interval_source = f"{extrapolation_label(factor)}: {interval_source}"
    model_flops = float(config.model_flops_per_token()) * tokens

    per_step_multiple = hardware.n_devices if hardware else 1
    memory = fit_memory(config, capacity_bytes=None if hardware is None else hardware.memory_bytes,
                        n_devices=per_step_multiple, recompute=recompute, micro_batch=micro_batch)
    assumptions.append(f"memory: {memory.reason} (bf16 mixed-precision Adam, 16 B/param of model state; "
                       "activation estimate after Korthikanti et al. 2022)")
    # DeepSeek's M: non-embedding FLOPs per token, 6·N_non-embedding + 12·L·d·seq (attention included);
    # a MoE token runs only its active experts.
    m_nonemb = 6.0 * config.n_active_params(embeddings=False) + 12.0 * config.n_layers * config.d_model * seq_len
    batch = choose_batch(law=batch_law, seq_len=seq_len, non_embedding_flops_per_token=m_nonemb, tokens=tokens,
                         loss=loss, multiple_of_sequences=per_step_multiple * (micro_batch or 1))
    assumptions.append(f"batch: {batch.assumption}")
    steps = max(1, math.ceil(tokens / batch.tokens))

    limit_options, limit_source = (hardware.power_limit_source(config) if hardware and hardware.power_limit_source
                                   else (None, ""))
    chosen = None if limit_options is None else _pick_limit(limit_options, objective)
    cost, cost_assumptions, priced_unavailable = _price(hardware, config, model_flops, chosen)
    assumptions += cost_assumptions
    unavailable.update(priced_unavailable)
    power_limit = None
    if limit_options is None and objective in ("energy", "cost") and limit_source:
        # a profile with power-limit models that cannot price this step across limits
        unavailable["power_limit"] = f"no GPU power limit chosen (priced at the largest): {limit_source}"
    if limit_options is not None:
        power_limit, text = _power_limit_report(limit_options, chosen, objective, cost, limit_source)
        assumptions.append(text)
    reasons = _infeasible(memory, cost, max_days)
    warnings = [f"infeasible: {r}" for r in reasons] + warnings
    flops_opt = None
    if objective != "flops" and lc.predicts_loss and lc.law.name == "chinchilla":
        ref = compute_optimal(lc.law, training_flops, params=lc.params, flops_per_param_token=k)
        flops_opt = {"N": float(ref.N[0]), "D": float(ref.D[0]), "loss": float(ref.loss[0])}
    return Plan(objective=objective, budget=budget, law=lc.name, law_source=lc.source,
                law_approach=lc.approach, n_convention=lc.n_convention, flops_convention=f"C = {k:g}·N·D",
                n_params_optimal=n_star, tokens_optimal=d_star, config=config, n_params_law=int(n_law),
                n_params_deviation=n_law / n_star - 1.0,
                n_params=int(config.n_params()), n_params_non_embedding=int(config.n_params(embeddings=False)),
                n_params_active=int(config.n_active_params()), tokens=tokens, tokens_per_param=tokens / n_law,
                training_flops=training_flops, model_flops=model_flops, predicted_loss=loss,
                loss_interval=interval, loss_interval_source=interval_source, batch=batch, steps=steps,
                memory=memory, cost=cost, inference_tokens=inference_tokens, assumptions=assumptions,
                unavailable=unavailable, flops_optimal=flops_opt, extrapolation_factor=factor,
                feasible=not reasons, infeasible_reasons=reasons, warnings=warnings,
                architecture_options=options, power_limit=power_limit)


def _check_allocation_options(lc: LawChoice, budget: Budget, inference_tokens: float, batch_law: str) -> None:
    """What an allocation law cannot do (it predicts no loss) is an error that says why."""
    why = f"{lc.name} is an allocation law ({lc.approach}): it splits compute into N and D and predicts no loss"
    if budget.kind == "loss":
        raise ParameterError(f"budget: a target loss needs a loss law; {why}. Use a loss law (epoch2024, "
                             "hoffmann2022) or a fit")
    if inference_tokens:
        raise ParameterError(f"inference_tokens: an inference-aware plan trades training loss against inference "
                             f"cost; {why}. Use a loss law (epoch2024, hoffmann2022) or a fit",
                             "inference_tokens")
    if batch_law == "kaplan":
        raise ParameterError(f"batch_law: the Kaplan critical batch needs a predicted loss; {why}. Use "
                             "batch_law='deepseek'", "batch_law")


def _allocate(lc: LawChoice, unit_cost, budget_value: float, objective: str) -> tuple[float, float]:
    """(N*, D*) of an allocation law: at the budget's compute, or (time, energy, cost) at the compute whose
    compute-optimal run costs the budget (cost rises with compute, so bisection in log C finds it)."""
    a = lc.allocation
    if objective == "flops":
        return float(a.N(budget_value)), float(a.D(budget_value))

    def cost(log_c: float) -> float:
        c = math.exp(log_c)
        return unit_cost(float(a.N(c)))[0] * float(a.D(c))

    lo, hi = math.log(1e10), math.log(1e35)
    if cost(hi) < budget_value:
        raise ValueError(f"budget: {budget_value:.3g} buys more than 1e35 FLOPs under {lc.name}")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cost(mid) < budget_value else (lo, mid)
        if hi - lo < 1e-12:
            break
    c = math.exp(hi)
    return float(a.N(c)), float(a.D(c))


def _allocation_assumption(lc: LawChoice, objective: str) -> str:
    a = lc.allocation
    text = (f"allocation law: N_opt(C) = {a.n_opt.coef:.4g}·C^{a.n_opt.exponent:g}, D = C/({a.flops_per_param_token:g}"
            "·N); it predicts no loss, so the plan has no predicted loss or loss interval")
    if objective != "flops":
        text += ("; the budget buys the compute at which this split costs the budget (the law has no loss to "
                 f"trade size against {objective}: the compute-optimal split of what the budget buys, not a "
                 f"{objective}-optimal one)")
    return text


def _extrapolation(lc: LawChoice, training_flops: float, unavailable: dict[str, str]
                   ) -> tuple[float | None, list[str]]:
    """(training FLOPs / the largest compute of the law's data, warnings), or (None, []) with the reason."""
    if lc.data_flops_range is None:
        unavailable["extrapolation_factor"] = (f"the compute range of the data behind {lc.name} is not known "
                                               "(a preset that publishes none, or a fit saved without it)")
        return None, []
    factor = training_flops / float(lc.data_flops_range[1])
    if factor <= EXTRAPOLATION_THRESHOLD:
        return factor, []
    return factor, [f"extrapolated: {training_flops:.3g} FLOPs is {factor:.3g}x the largest compute in the data "
                    f"behind {lc.name} ({lc.data_flops_range[1]:.3g}); beyond {EXTRAPOLATION_THRESHOLD:g}x the "
                    "plan rests on the law's form more than on data, and its interval does not say so"]


def _infeasible(memory: MemoryFit, cost: PlanCost, max_days: float) -> list[str]:
    """Why the plan cannot be run as planned (empty: nothing known stops it)."""
    reasons = []
    if memory.capacity_bytes is not None and not memory.fits:
        reasons.append(f"does not fit in memory: {memory.reason}")
    if cost.time_s is not None and cost.time_s > max_days * 86400:
        days = cost.time_s / 86400
        span = f"{days / 365.25:.3g} years" if days > 2 * 365.25 else f"{days:.4g} days"
        reasons.append(f"takes {span} on {cost.n_devices} x {cost.device}, longer than max_days={max_days:g}")
    return reasons


def _objective_of(budget: Budget, objective: str | None) -> str:
    """The objective a budget implies (a target loss: `objective`, default flops); a mismatch is an error."""
    if objective is None:
        objective = "flops" if budget.kind == "loss" else _BUDGET_OBJECTIVE[budget.kind]
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}: got {objective!r}")
    if budget.kind != "loss" and _BUDGET_OBJECTIVE[budget.kind] != objective:
        raise ValueError(f"objective {objective!r} does not match a budget in {budget.kind}; the budget's unit "
                         f"is the objective ({_BUDGET_OBJECTIVE[budget.kind]!r})")
    return objective


def _too_small(budget: Budget, n_min: float) -> ValueError:
    return ValueError(f"budget: {budget.describe()} is below what the smallest model pyscale builds "
                      f"(~{n_min:.3g} parameters) needs for {MIN_TOKENS_PER_PARAM:g} token per parameter")


def _power_limit_report(options: list[dict[str, Any]], chosen: dict[str, Any], objective: str, cost: PlanCost,
                        source: str) -> tuple[dict[str, Any], str]:
    """(the power limit a plan runs at, with the same run's time and energy against the largest limit; the
    assumption line that says so)."""
    largest = max(options, key=lambda o: o["power_limit_w"])

    def change(o: dict[str, Any], key: str) -> float | None:
        return None if o[key] is None or largest[key] is None else o[key] / largest[key] - 1.0

    def trade(o: dict[str, Any]) -> str:
        energy = change(o, "energy_ratio")
        return (f"time {change(o, 'time_ratio'):+.1%}, energy " +
                ("unknown (not measured across limits)" if energy is None else f"{energy:+.1%}"))

    measured = [o["power_limit_w"] for o in sorted(options, key=lambda o: o["power_limit_w"])]
    listed = ", ".join(f"{w:g}" for w in measured)
    at, top = chosen["power_limit_w"], largest["power_limit_w"]
    if objective in ("energy", "cost") and at != top:
        text = (f"power limit: {at:g} W, of the measured {listed} W, minimises {objective} for this run; against "
                f"the largest limit ({top:g} W) the same run takes {trade(chosen)} ({source})")
    elif objective in ("energy", "cost"):
        text = f"power limit: the largest measured ({top:g} W, of {listed} W) minimises {objective} for this run"
        if objective == "cost":
            text += " (cost prices GPU-hours: a lower limit wins only when it is no slower)"
        text += f" ({source})"
    else:
        best = _pick_limit(options, "energy")
        text = f"power limit: the largest measured ({top:g} W, of {listed} W): a {objective} plan runs at full power"
        if best["power_limit_w"] != top:
            text += f"; at {best['power_limit_w']:g} W, the energy-optimal limit, this run would take {trade(best)}"
        text += f" ({source})"
    time_ratio, energy_ratio = chosen["time_ratio"], chosen["energy_ratio"]
    return {"power_limit_w": at, "largest_w": top, "measured_w": measured,
            "chosen_by": objective if objective in ("energy", "cost") else "largest (flops and time plans)",
            "time_change": change(chosen, "time_ratio"), "energy_change": change(chosen, "energy_ratio"),
            "time_s_at_largest": None if cost.time_s is None else cost.time_s / time_ratio,
            "energy_kwh_at_largest": None if cost.energy_kwh is None or not energy_ratio
            else cost.energy_kwh / energy_ratio,
            "options": [{"power_limit_w": o["power_limit_w"], "time_change": change(o, "time_ratio"),
                         "energy_change": change(o, "energy_ratio")} for o in options],
            "source": source}, text


def _price(hardware: Hardware | None, config: GPTConfig, model_flops: float, limit: dict[str, Any] | None = None
           ) -> tuple[PlanCost, list[str], dict[str, str]]:
    """The cost block of a plan training `config` for `model_flops`, the assumptions it rests on, and why
    each figure it cannot give is unavailable. `limit`: the power-limit option it runs at (time_ratio and
    energy_ratio against the largest limit, whose figures the hardware gives); None: the largest."""
    assumptions: list[str] = []
    unavailable: dict[str, str] = {}
    if hardware is None:
        for key in ("time_s", "energy_kwh", "cost_dollars"):
            unavailable[key] = "no hardware given (give gpu=NAME with mfu= and power_w=, profile= or store=)"
        return PlanCost(), assumptions, unavailable
    cost = PlanCost(device=hardware.device_name, n_devices=hardware.n_devices)
    assumptions.append(f"hardware: {hardware.n_devices} x {hardware.device_name}, data-parallel efficiency "
                       f"{hardware.dp_efficiency:g} ({hardware.dp_efficiency_source})")
    if hardware.flops_source is None:
        unavailable["time_s"] = "no throughput: give mfu=, profile= (a fitted cost model) or store="
        return cost, assumptions, unavailable
    cost.throughput_flops_per_s, cost.throughput_source = hardware.throughput(config)
    cost.mfu = hardware.mfu(config)
    if limit is not None:  # the hardware's figures are those of the largest limit
        cost.throughput_flops_per_s /= limit["time_ratio"]
        cost.mfu = None if cost.mfu is None else cost.mfu / limit["time_ratio"]
    cost.time_s = model_flops / cost.throughput_flops_per_s
    cost.gpu_hours = cost.time_s * hardware.n_devices / 3600
    assumptions.append(f"throughput: {cost.throughput_source}")
    cost.time_error = hardware.time_error
    if hardware.time_error:
        assumptions.append(f"time: {hardware.time_error}")
    watts, power_source = hardware.power(config)
    if watts is not None and limit is not None:
        if limit["energy_ratio"] is None:
            watts, power_source = None, (f"no energy measured across power limits at {limit['power_limit_w']:g} W "
                                         "(pyscale bench --energy --power-limits)")
        else:
            watts *= limit["energy_ratio"] / limit["time_ratio"]
            power_source += f", at {limit['power_limit_w']:g} W through the power-limit model"
    if watts is None:
        unavailable["energy_kwh"] = power_source
    else:
        cost.energy_kwh = watts * hardware.n_devices * cost.time_s / 3.6e6
        assumptions.append(f"power: {power_source}")
        if hardware.pue is not None:
            cost.facility_energy_kwh = cost.energy_kwh * hardware.pue
            assumptions.append(f"facility energy = GPU energy x PUE {hardware.pue:g} (user-given)")
        else:
            unavailable["facility_energy_kwh"] = "no PUE given (pue=)"
    if hardware.price_per_device_hour is not None:
        cost.cost_dollars = cost.gpu_hours * hardware.price_per_device_hour
        assumptions.append(f"price: ${hardware.price_per_device_hour:g} per GPU-hour (user-given)")
    else:
        unavailable["cost_dollars"] = "no price given (price_per_device_hour=)"
    return cost, assumptions, unavailable


def _architecture_assumption(config: GPTConfig, embeddings: bool, n_star: float, rules: dict[str, Any]) -> str:
    """Which parameters the law's N counts, for this architecture, and the shape rules it follows."""
    counted = "with" if embeddings else "without"
    n_law = config.n_active_params(embeddings)
    attention = ("multi-head attention" if config.n_kv_heads == config.n_heads
                 else f"grouped-query attention, {config.n_kv_heads} kv heads")
    text = (f"architecture: {config.n_layers} layers x d_model {config.d_model}, {config.n_heads} heads of "
            f"{config.head_dim} ({attention}; heads a multiple of {rules['heads_multiple']}), d_ff {config.d_ff}, "
            f"{config.n_params():,} parameters; the law's N = {n_law:,} ({100 * (n_law / n_star - 1):+.2f}% from "
            f"N* = {n_star:.4g}; the tokens keep the budget), counted {counted} embeddings")
    if not config.n_experts:
        return text
    return (f"{text}, MoE: the law receives the ACTIVE parameters (top-{config.top_k} of {config.n_experts} "
            f"experts per layer plus attention, router and norms{', embeddings' if embeddings else ''}), and "
            "C = k·N·D counts them; a law fitted on dense models thus predicts the loss of a dense model of that "
            "size, a conservative estimate (MoE-specific scaling is not modelled)")


def equal_loss_candidates(p: Plan, *, law: str | Any = "epoch2024", hardware: Hardware, span: float = 8.0,
                          points: int = 41) -> list[dict[str, float]]:
    """Models from N*/span to N*·span trained to the plan's predicted loss, with their time and GPU energy:
    the time-energy trade-off around a plan (for the Pareto plot). Sizes that cannot reach the loss are left out.
    With a power-limit model, one point per size and measured limit (with its `power_limit_w`)."""
    lc = choose_law(law)
    if hardware.flops_source is None:
        raise ParameterError("hardware: a time-energy trade-off needs a throughput (mfu=, profile= or store=)",
                             "mfu", "profile", "store")
    if not lc.predicts_loss or p.predicted_loss is None:
        raise ValueError(f"law: an equal-loss trade-off needs a loss law; {lc.name} predicts no loss")
    c = p.config
    shape = functools.partial(search_config, embeddings=lc.embeddings_counted, vocab_size=c.vocab_size,
                              seq_len=c.seq_len, n_experts=c.n_experts, top_k=c.top_k, **p.architecture_options)
    n_law = c.n_active_params(lc.embeddings_counted)  # the law's N, not the total parameter count
    out = []
    for n in np.exp(np.linspace(math.log(n_law / span), math.log(n_law * span), points)):
        d = _tokens_for_loss(lc, float(n), p.predicted_loss)
        if d is None:
            continue
        shaped = shape(float(n))
        rate, _ = hardware.flops_source(shaped)
        flops = _search_flops_per_token(float(n), shaped, lc.flops_per_param_token) * d
        time_s = flops / (rate * hardware.n_devices * float(hardware.dp_efficiency))
        watts, _ = hardware.power(shaped)
        energy = None if watts is None else watts * hardware.n_devices * time_s / 3.6e6
        options = _limit_options(hardware, shaped)
        if options is None:
            out.append({"n_params": float(n), "tokens": d, "time_s": time_s, "energy_kwh": energy})
            continue
        for o in sorted(options, key=lambda o: o["power_limit_w"]):
            out.append({"n_params": float(n), "tokens": d, "power_limit_w": o["power_limit_w"],
                        "time_s": time_s * o["time_ratio"],
                        "energy_kwh": None if energy is None or o["energy_ratio"] is None
                        else energy * o["energy_ratio"]})
    return out
