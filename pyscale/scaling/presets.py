"""Published scaling-law constants, with their conventions, sources and (where published) CIs.

Every preset says which N it uses: Chinchilla-style laws count all parameters including embeddings;
Kaplan et al. exclude embeddings; DeepSeek LLM replaces N by M, the non-embedding FLOPs per token, and
uses C = M*D instead of 6ND. Mixing conventions shifts N* by the embedding share, so plans must say which.
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

    def predict(self, **inputs: object):
        return self.law.predict(self.params, **inputs)


HOFFMANN_2022 = Preset(
    "hoffmann2022", Chinchilla(), {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', Approach 3 (Eq. 10)",
    "N = all parameters including embeddings",
    notes="Fitted with Huber delta=1e-3 on log loss, L-BFGS from a 4,500-point grid; MassiveText data.")

EPOCH_2024 = Preset(
    "epoch2024", Chinchilla(), {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658},
    "Besiroglu et al. 2024 (Epoch AI), 'Chinchilla Scaling: A replication attempt', refit of Approach 3 on "
    "data extracted from Hoffmann et al.'s Figure 4",
    "N = all parameters including embeddings (as Hoffmann)",
    ci={"E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}, ci_level=0.95,
    notes="E as rounded to 1.82; only the CIs of E, alpha, beta are carried here.")

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

PRESETS: dict[str, Preset] = {p.name: p for p in (HOFFMANN_2022, EPOCH_2024, KAPLAN_2020, KAPLAN_2020_COMPUTE,
                                                  MUENNIGHOFF_2023)}
POWER_LAWS: dict[str, PowerLaw] = {p.name: p for p in (DEEPSEEK_BATCH_SIZE, DEEPSEEK_LEARNING_RATE,
                                                       DEEPSEEK_M_OPT, DEEPSEEK_D_OPT)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"preset: unknown {name!r}; known: {sorted(PRESETS)}") from None


__all__ = ["DEEPSEEK_BATCH_SIZE", "DEEPSEEK_D_OPT", "DEEPSEEK_LEARNING_RATE", "DEEPSEEK_M_OPT", "EPOCH_2024",
           "HOFFMANN_2022", "KAPLAN_2020", "KAPLAN_2020_COMPUTE", "MUENNIGHOFF_2023", "POWER_LAWS", "PRESETS",
           "PowerLaw", "Preset", "get"]
