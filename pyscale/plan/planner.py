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
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pyscale.models.config import GPTConfig, config_for_params
from pyscale.plan.batch import BatchChoice, choose_batch
from pyscale.plan.budget import Budget
from pyscale.plan.hardware import Hardware
from pyscale.plan.law import LawChoice, choose_law
from pyscale.plan.memory import MemoryFit, fit_memory
from pyscale.plan.shape import search_config
from pyscale.scaling import compute_optimal

OBJECTIVES = ("flops", "time", "energy", "cost")
_BUDGET_OBJECTIVE = {"flops": "flops", "gpu_hours": "time", "kwh": "energy", "dollars": "cost"}
_UNIT_SCALE = {"flops": 1.0, "gpu_hours": 3600.0, "kwh": 3.6e6, "dollars": 1.0}
MIN_TOKENS_PER_PARAM = 1.0  # a plan that cannot afford one token per parameter is refused
GRID_POINTS = 241


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
    n_convention: str
    flops_convention: str
    n_params_optimal: float  # the continuous optimum N*
    tokens_optimal: float  # D* at N*
    config: GPTConfig
    n_params: int  # exact parameter count of `config` (embeddings counted)
    n_params_non_embedding: int
    n_params_active: int  # parameters a token uses (embeddings counted); n_params when dense
    tokens: float  # tokens for the exact architecture within the budget
    tokens_per_param: float
    training_flops: float  # k·N·D in the law's convention
    model_flops: float  # PaLM model FLOPs (6N + 12·L·H·Q·T per token) x tokens
    predicted_loss: float
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

    device = _cost_attribute("device")
    n_devices = _cost_attribute("n_devices")
    throughput_flops_per_s = _cost_attribute("throughput_flops_per_s")
    throughput_source = _cost_attribute("throughput_source")
    mfu = _cost_attribute("mfu")
    time_s = _cost_attribute("time_s")
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
        d["config"] = self.config.to_dict()
        return d


def _search_flops_per_token(n: float, shaped: GPTConfig, k: float) -> float:
    """Model FLOPs per token of size n: k·n plus PaLM's attention 12·L·H·Q·T of its rule-shaped config."""
    return k * n + 12.0 * shaped.n_layers * shaped.n_heads * shaped.head_dim * shaped.seq_len


def _unit_cost(objective: str, hardware: Hardware | None, k: float, pue_applies: bool, shape):
    """cost per token of a model with n parameters, in the objective's unit (FLOP, GPU-s, J, $).

    `shape(n)` is the concrete architecture a search candidate is priced on; the final plan passes its own.
    """
    if objective == "flops":
        return lambda n, config=None: (k * n, "law convention")
    if hardware is None:
        raise ValueError(f"objective {objective!r} needs hardware: give --gpu with --mfu (and --power-w), "
                         "--profile or --store")
    if hardware.flops_source is None:
        raise ValueError(f"objective {objective!r}: no throughput for {hardware.device_name}: give --mfu, "
                         "--profile (a fitted cost model) or --store (measured gpt_step rows)")

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
    if objective == "energy":
        def joules(n: float, config: GPTConfig | None = None) -> tuple[float, str]:
            s, src = gpu_seconds(n, config)
            watts, psrc = hardware.power(config or shape(n))
            if watts is None:
                raise ValueError(f"objective 'energy': {psrc}")
            return s * watts * (hardware.pue if pue_applies and hardware.pue else 1.0), f"{src}; {psrc}"
        return joules
    if objective == "cost":
        if hardware.price_per_device_hour is None:
            raise ValueError("objective 'cost' needs a price: give --price-per-gpu-hour (never assumed)")
        def dollars(n: float, config: GPTConfig | None = None) -> tuple[float, str]:
            s, src = gpu_seconds(n, config)
            return s / 3600 * hardware.price_per_device_hour, src
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
         vocab_size: int = 32000, n_experts: int = 0, top_k: int = 0, gqa_ratio: int = 1,
         batch_law: str = "deepseek", recompute: str = "auto", n_range: tuple[float, float] = (1e7, 1e13),
         ) -> Plan:
    """Plan a training run within `budget` (see module docstring). Every assumption lands in Plan.assumptions."""
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    lc = law if isinstance(law, LawChoice) else choose_law(law)
    objective = _objective_of(budget, objective)
    if inference_tokens < 0:
        raise ValueError(f"inference_tokens must be >= 0: got {inference_tokens}")
    k = lc.flops_per_param_token
    assumptions = [f"law: {lc.name} ({lc.source}); {lc.n_convention}",
                   f"FLOP convention: C = {k:g}·N·D (the law's); model FLOPs (MFU) follow PaLM: 6N + 12·L·H·Q·T "
                   "per token"]
    pue_applies = budget.kind == "kwh" and hardware is not None and hardware.pue is not None
    shape = functools.partial(search_config, embeddings=lc.embeddings_counted, vocab_size=vocab_size,
                              seq_len=seq_len, gqa_ratio=gqa_ratio, n_experts=n_experts, top_k=top_k)
    unit_cost = _unit_cost(objective, hardware, k, pue_applies, shape)
    smallest = config_for_params(n_range[0] * 5, vocab_size=vocab_size, seq_len=seq_len)
    n_min = max(n_range[0], float(smallest.n_params()) * 0.5)
    # the unit costs are FLOPs, GPU-seconds, joules or dollars
    budget_value = None if budget.kind == "loss" else budget.value * _UNIT_SCALE[budget.kind]
    target = budget.value if budget.kind == "loss" else None

    closed_form = (objective == "flops" and budget.kind == "flops" and inference_tokens == 0
                   and lc.law.name == "chinchilla")
    if closed_form:
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

    # A concrete architecture near N* (the law's N: active parameters), then the tokens the budget affords
    # for exactly that model.
    config = config_for_params(n_star, embeddings=lc.embeddings_counted, active=True, vocab_size=vocab_size,
                               seq_len=seq_len, gqa_ratio=gqa_ratio, n_experts=n_experts, top_k=top_k)
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
    assumptions.append(_architecture_assumption(config, lc.embeddings_counted))
    if objective != "flops":
        assumptions.append("search: each candidate size priced on a concrete architecture of that size, shaped "
                           "by the default depth/width rule (pyscale.plan.shape)")
    if inference_tokens:
        assumptions.append(f"inference-aware: {inference_tokens:.3g} inference tokens at 2N FLOPs each are "
                           "charged to the budget")
    if objective != "flops":
        assumptions.append(f"{objective} per token from: {cost_source}")
    loss = float(lc.predict(n_law, tokens)[0])
    interval, interval_source = lc.loss_interval(n_law, tokens)
    model_flops = float(config.model_flops_per_token()) * tokens
    # DeepSeek's M: non-embedding FLOPs per token, 6·N_non-embedding + 12·L·d·seq (attention included);
    # a MoE token runs only its active experts.
    m_nonemb = 6.0 * config.n_active_params(embeddings=False) + 12.0 * config.n_layers * config.d_model * seq_len
    per_step_multiple = hardware.n_devices if hardware else 1
    batch = choose_batch(law=batch_law, seq_len=seq_len, non_embedding_flops_per_token=m_nonemb, tokens=tokens,
                         loss=loss, multiple_of_sequences=per_step_multiple)
    assumptions.append(f"batch: {batch.assumption}")
    steps = max(1, math.ceil(tokens / batch.tokens))

    memory = fit_memory(config, capacity_bytes=None if hardware is None else hardware.memory_bytes,
                        n_devices=per_step_multiple, recompute=recompute)
    assumptions.append(f"memory: {memory.reason} (bf16 mixed-precision Adam, 16 B/param of model state; "
                       "activation estimate after Korthikanti et al. 2022)")
    cost, cost_assumptions, unavailable = _price(hardware, config, model_flops)
    assumptions += cost_assumptions
    flops_opt = None
    training_flops = k * n_law * tokens
    if objective != "flops" and lc.law.name == "chinchilla":
        ref = compute_optimal(lc.law, training_flops, params=lc.params, flops_per_param_token=k)
        flops_opt = {"N": float(ref.N[0]), "D": float(ref.D[0]), "loss": float(ref.loss[0])}
    return Plan(objective=objective, budget=budget, law=lc.name, law_source=lc.source, n_convention=lc.n_convention,
                flops_convention=f"C = {k:g}·N·D", n_params_optimal=n_star, tokens_optimal=d_star, config=config,
                n_params=int(config.n_params()), n_params_non_embedding=int(config.n_params(embeddings=False)),
                n_params_active=int(config.n_active_params()), tokens=tokens, tokens_per_param=tokens / n_law,
                training_flops=training_flops, model_flops=model_flops, predicted_loss=loss,
                loss_interval=interval, loss_interval_source=interval_source, batch=batch, steps=steps,
                memory=memory, cost=cost, inference_tokens=inference_tokens, assumptions=assumptions,
                unavailable=unavailable, flops_optimal=flops_opt)


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


def _price(hardware: Hardware | None, config: GPTConfig, model_flops: float
           ) -> tuple[PlanCost, list[str], dict[str, str]]:
    """The cost block of a plan training `config` for `model_flops`, the assumptions it rests on, and why
    each figure it cannot give is unavailable."""
    assumptions: list[str] = []
    unavailable: dict[str, str] = {}
    if hardware is None:
        for key in ("time_s", "energy_kwh", "cost_dollars"):
            unavailable[key] = "no hardware given (use --gpu with --mfu/--power-w, or a measured profile)"
        return PlanCost(), assumptions, unavailable
    cost = PlanCost(device=hardware.device_name, n_devices=hardware.n_devices)
    assumptions.append(f"hardware: {hardware.n_devices} x {hardware.device_name}, data-parallel efficiency "
                       f"{hardware.dp_efficiency:g} ({hardware.dp_efficiency_source})")
    if hardware.flops_source is None:
        unavailable["time_s"] = "no throughput: give --mfu, --profile (a fitted cost model) or --store"
        return cost, assumptions, unavailable
    cost.throughput_flops_per_s, cost.throughput_source = hardware.throughput(config)
    cost.mfu = hardware.mfu(config)
    cost.time_s = model_flops / cost.throughput_flops_per_s
    cost.gpu_hours = cost.time_s * hardware.n_devices / 3600
    assumptions.append(f"throughput: {cost.throughput_source}")
    watts, power_source = hardware.power(config)
    if watts is None:
        unavailable["energy_kwh"] = power_source
    else:
        cost.energy_kwh = watts * hardware.n_devices * cost.time_s / 3.6e6
        assumptions.append(f"power: {power_source}")
        if hardware.pue is not None:
            cost.facility_energy_kwh = cost.energy_kwh * hardware.pue
            assumptions.append(f"facility energy = GPU energy x PUE {hardware.pue:g} (user-given)")
        else:
            unavailable["facility_energy_kwh"] = "no PUE given (--pue)"
    if hardware.price_per_device_hour is not None:
        cost.cost_dollars = cost.gpu_hours * hardware.price_per_device_hour
        assumptions.append(f"price: ${hardware.price_per_device_hour:g} per GPU-hour (user-given)")
    else:
        unavailable["cost_dollars"] = "no price given (--price-per-gpu-hour)"
    return cost, assumptions, unavailable


def _architecture_assumption(config: GPTConfig, embeddings: bool) -> str:
    """Which parameters the law's N counts, for this architecture."""
    counted = "with" if embeddings else "without"
    text = (f"architecture: {config.n_layers} layers x d_model {config.d_model}, {config.n_params():,} "
            f"parameters; the law's N = {config.n_active_params(embeddings):,}, counted {counted} embeddings")
    if not config.n_experts:
        return text
    return (f"{text}, MoE: the law receives the ACTIVE parameters (top-{config.top_k} of {config.n_experts} "
            f"experts per layer plus attention, router and norms{', embeddings' if embeddings else ''}), and "
            "C = k·N·D counts them; a law fitted on dense models thus predicts the loss of a dense model of that "
            "size, a conservative estimate (MoE-specific scaling is not modelled)")


def equal_loss_candidates(p: Plan, *, law: str | Any = "epoch2024", hardware: Hardware, span: float = 8.0,
                          points: int = 41) -> list[dict[str, float]]:
    """Models from N*/span to N*·span trained to the plan's predicted loss, with their time and GPU energy:
    the time-energy trade-off around a plan (for the Pareto plot). Sizes that cannot reach the loss are left out."""
    lc = law if isinstance(law, LawChoice) else choose_law(law)
    if hardware.flops_source is None:
        raise ValueError("hardware: a time-energy trade-off needs a throughput (--mfu, --profile or --store)")
    c = p.config
    shape = functools.partial(search_config, embeddings=lc.embeddings_counted, vocab_size=c.vocab_size,
                              seq_len=c.seq_len, gqa_ratio=c.gqa_ratio, n_experts=c.n_experts, top_k=c.top_k)
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
        out.append({"n_params": float(n), "tokens": d, "time_s": time_s,
                    "energy_kwh": None if watts is None else watts * hardware.n_devices * time_s / 3.6e6})
    return out
