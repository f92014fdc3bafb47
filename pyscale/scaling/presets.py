"""Published scaling-law constants, with their conventions, sources and (where published) CIs.

Every preset says which N it uses: Chinchilla-style laws count all parameters including embeddings;
Kaplan et al. exclude embeddings; DeepSeek LLM replaces N by M, the non-embedding FLOPs per token, and
uses C = M*D instead of 6ND. Mixing conventions shifts N* by the embedding share, so plans must say which.

Two kinds: loss laws (`Preset`: L(N, D) with constants) and allocation laws (`AllocationLaw`: N_opt(C) and
D_opt(C), which predict no loss: Hoffmann et al.'s Approaches 1 and 2). Where the data a law was fitted on
is published, `data_flops_range` holds its compute range, so that a plan can say how far it extrapolates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyscale.scaling.laws import Chinchilla, DataConstrained, KaplanCompute, KaplanND, Law

PF_DAY_FLOPS = 1e15 * 86400.0


@dataclass(frozen=True)
class Preset:
    """A law with published constants. `ci` holds published intervals (level in `ci_level`)."""

    name: str
    law: Law
    params: Mapping[str, float]
    source: str
    n_convention: str
    flops_convention: str = "C = 6*N*D"
    flops_per_param_token: float = 6.0
    ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    ci_level: float | None = None
    notes: str = ""
    approach: str = ""  # the published procedure the constants come from, where the paper names several
    data_flops_range: tuple[float, float] | None = None  # compute of the fitted runs (C = k*N*D), if published

    def predict(self, **inputs: object):
        return self.law.predict(self.params, **inputs)


# Hoffmann et al.'s runs: "over 400 language models ranging from 70 million to over 16 billion parameters on 5
# to 500 billion tokens" (abstract). No run exceeds 6 x 16e9 x 500e9 FLOPs; the smallest is at least
# 6 x 70e6 x 5e9. A bound from those ranges, not the runs' exact extremes.
_HOFFMANN_RUNS = (6 * 70e6 * 5e9, 6 * 16e9 * 500e9)

HOFFMANN_2022 = Preset(
    "hoffmann2022", Chinchilla(), {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', Approach 3 (Eq. 10)",
    "N = all parameters including embeddings",
    notes="Fitted with Huber delta=1e-3 on log loss, L-BFGS from a 4,500-point grid; MassiveText data. With "
          "these rounded constants the closed form puts N* at 3.2e10 (D* 3.0e12) at Gopher's 5.76e23 FLOPs, "
          "not the 40B the paper projects from its own fit (Figure 4), nor Chinchilla's 70B/1.4T; Approaches 1 "
          "and 2 are the allocation presets hoffmann2022_approach1 and hoffmann2022_approach2.",
    approach="Approach 3 (parametric loss fit)", data_flops_range=_HOFFMANN_RUNS)

EPOCH_2024 = Preset(
    "epoch2024", Chinchilla(), {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658},
    "Besiroglu et al. 2024 (Epoch AI), 'Chinchilla Scaling: A replication attempt', refit of Approach 3 on "
    "data extracted from Hoffmann et al.'s Figure 4",
    "N = all parameters including embeddings (as Hoffmann)",
    ci={"E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}, ci_level=0.95,
    notes="E as rounded to 1.82; only the CIs of E, alpha, beta are carried here.",
    approach="Approach 3 refit (parametric loss fit)", data_flops_range=_HOFFMANN_RUNS)

KAPLAN_2020 = Preset(
    "kaplan2020", KaplanND(), {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103},
    "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models', Eq. 1.5 with the fit of Table 2",
    "N = non-embedding parameters",
    notes="WebText2, loss in nats/token; D in tokens.")

KAPLAN_2020_COMPUTE = Preset(
    "kaplan2020_compute", KaplanCompute(),
    {"E": 1e-300, "A": (3.1e8 * PF_DAY_FLOPS) ** 0.050, "alpha": 0.050},
    "Kaplan et al. 2020, Eq. 1.3: L(C_min) = (C_c/C_min)^alpha_C, alpha_C = 0.050, C_c = 3.1e8 PF-days",
    "N = non-embedding parameters; C_min counts 6*N_non-embedding*D",
    flops_convention="C = 6*N*D with non-embedding N",
    notes="Converted to L = E + A*C^-alpha with C in FLOPs (1 PF-day = 8.64e19 FLOP), A = C_c^alpha, E ~ 0.")

# Muennighoff et al. 2023: the released, unrounded constants (a, b, e are logs of A, B, E).
_DC_LOG = {"a": 6.255414, "b": 7.3049974, "e": 0.6254804, "alpha": 0.3526596, "beta": 0.3526596,
           "R_D": 15.387756, "R_N": 5.309743}
MUENNIGHOFF_2023 = Preset(
    "muennighoff2023", None,  # type: ignore[arg-type]  # set below (the law reads these constants)
    {"E": math.exp(_DC_LOG["e"]), "A": math.exp(_DC_LOG["a"]), "B": math.exp(_DC_LOG["b"]),
     "alpha": _DC_LOG["alpha"], "beta": _DC_LOG["beta"], "R_D": _DC_LOG["R_D"], "R_N": _DC_LOG["R_N"]},
    "Muennighoff et al. 2023, 'Scaling Data-Constrained Language Models' (unrounded constants of the "
    "released fit; the paper rounds R_D* = 15.4, R_N* = 5.3)",
    "N = all parameters including embeddings (Chinchilla convention)",
    notes="D' and N' are the effective data and parameters under repetition; U = unique tokens.")
object.__setattr__(MUENNIGHOFF_2023, "law", DataConstrained(base={
    k: MUENNIGHOFF_2023.params[k] for k in ("E", "A", "B", "alpha", "beta")}))


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x^exponent, a published hyper-parameter or allocation law."""

    name: str
    coef: float
    exponent: float
    x: str
    y: str
    source: str
    notes: str = ""

    def __call__(self, x: float):
        return self.coef * x ** self.exponent


_DEEPSEEK = ("DeepSeek-AI 2024, 'DeepSeek LLM: Scaling Open-Source Language Models with Longtermism'; "
             "C = M*D with M the non-embedding FLOPs per token (72 n_layer d_model^2 + "
             "12 n_layer d_model l_seq), not 6N")
DEEPSEEK_BATCH_SIZE = PowerLaw("deepseek_batch_size", 0.2920, 0.3271, "C (FLOPs, C = M*D)",
                               "optimal batch size (tokens)", _DEEPSEEK)
DEEPSEEK_LEARNING_RATE = PowerLaw("deepseek_learning_rate", 0.3118, -0.1250, "C (FLOPs, C = M*D)",
                                  "optimal learning rate", _DEEPSEEK)
DEEPSEEK_M_OPT = PowerLaw("deepseek_m_opt", 0.1715, 0.5243, "C (FLOPs, C = M*D)",
                          "optimal M (non-embedding FLOPs/token)", _DEEPSEEK)
DEEPSEEK_D_OPT = PowerLaw("deepseek_d_opt", 5.8316, 0.4757, "C (FLOPs, C = M*D)", "optimal D (tokens)", _DEEPSEEK)

@dataclass(frozen=True)
class AllocationLaw:
    """A published compute-optimal allocation: N_opt(C) = coef * C^a and D_opt(C) = C / (k N_opt(C)).

    Not a loss law: it says how to split a compute budget, and predicts no loss. D follows from N through the
    FLOP convention so that every plan spends exactly its compute (its exponent is then b = 1 - a).
    """

    name: str
    approach: str
    n_opt: PowerLaw
    source: str
    n_convention: str
    flops_per_param_token: float = 6.0
    flops_convention: str = "C = 6*N*D"
    ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # published intervals of a and b
    ci_level: float | None = None
    data_flops_range: tuple[float, float] | None = None
    notes: str = ""

    def N(self, flops):
        return self.n_opt(flops)

    def D(self, flops):
        return flops / (self.flops_per_param_token * self.n_opt(flops))


def _anchored(name: str, exponent: float, n: float, flops: float, table: str) -> PowerLaw:
    """N_opt = n (C / flops)^exponent: the published exponent through one published projection."""
    return PowerLaw(name, n / flops ** exponent, exponent, "C (FLOPs, C = 6ND)", "compute-optimal N (parameters)",
                    f"exponent a = {exponent} from Hoffmann et al. 2022 Table 2; coefficient through {table}'s "
                    f"row N = {n:.3g} at C = {flops:.3g}")


_TABLE_2 = "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models'"
HOFFMANN_2022_APPROACH1 = AllocationLaw(
    "hoffmann2022_approach1", "Approach 1 (minimum over training curves)",
    _anchored("hoffmann2022_approach1_n_opt", 0.50, 67e9, 5.76e23, "Table 3"),
    f"{_TABLE_2}, Approach 1: a = 0.50 (Table 2; 10th-90th percentile 0.488-0.502), coefficient such that "
    "N_opt(5.76e23) = 67e9 (Table 3's Gopher-budget row); D = C/(6N), so b = 0.50 (Table 2: 0.50)",
    "N = all parameters including embeddings", ci={"a": (0.488, 0.502), "b": (0.501, 0.512)}, ci_level=0.80,
    data_flops_range=_HOFFMANN_RUNS,
    notes="Table 3 prints 1.5T tokens in that row, 4.7% above C/(6N) = 1.43T (its tokens are rounded); the "
          "preset keeps C = 6ND. Chinchilla itself was trained at 70B/1.4T, the paper's pick in the 40-70B range.")
HOFFMANN_2022_APPROACH2 = AllocationLaw(
    "hoffmann2022_approach2", "Approach 2 (IsoFLOP profiles)",
    _anchored("hoffmann2022_approach2_n_opt", 0.49, 67e9, 6.88e23, "Table A3"),
    f"{_TABLE_2}, Approach 2: a = 0.49 (Table 2; 10th-90th percentile 0.462-0.534), coefficient such that "
    "N_opt(6.88e23) = 67e9 (the 67B row of Table A3's Approach 2 projections, 1.7T tokens); D = C/(6N), so "
    "b = 0.51 (Table 2: 0.51)",
    "N = all parameters including embeddings", ci={"a": (0.462, 0.534), "b": (0.483, 0.529)}, ci_level=0.80,
    data_flops_range=(6e18, 3e21),  # the nine IsoFLOP budgets of Section 3.2
    notes="Fitted on IsoFLOP curves at 9 budgets from 6e18 to 3e21 FLOPs.")

PRESETS: dict[str, Preset] = {p.name: p for p in (HOFFMANN_2022, EPOCH_2024, KAPLAN_2020, KAPLAN_2020_COMPUTE,
                                                  MUENNIGHOFF_2023)}
ALLOCATIONS: dict[str, AllocationLaw] = {a.name: a for a in (HOFFMANN_2022_APPROACH1, HOFFMANN_2022_APPROACH2)}
POWER_LAWS: dict[str, PowerLaw] = {p.name: p for p in (DEEPSEEK_BATCH_SIZE, DEEPSEEK_LEARNING_RATE,
                                                       DEEPSEEK_M_OPT, DEEPSEEK_D_OPT)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        hint = f" ({name} is an allocation law: presets.get_allocation)" if name.lower() in ALLOCATIONS else ""
        raise ValueError(f"preset: unknown {name!r}{hint}; known: {sorted(PRESETS)}") from None


def get_allocation(name: str) -> AllocationLaw:
    try:
        return ALLOCATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"allocation law: unknown {name!r}; known: {sorted(ALLOCATIONS)}") from None


__all__ = ["ALLOCATIONS", "HOFFMANN_2022_APPROACH1", "HOFFMANN_2022_APPROACH2", "AllocationLaw", "DEEPSEEK_BATCH_SIZE", "DEEPSEEK_D_OPT", "DEEPSEEK_LEARNING_RATE", "DEEPSEEK_M_OPT", "EPOCH_2024",
           "HOFFMANN_2022", "KAPLAN_2020", "KAPLAN_2020_COMPUTE", "MUENNIGHOFF_2023", "POWER_LAWS", "PRESETS",
           "PowerLaw", "Preset", "get", "get_allocation"]
