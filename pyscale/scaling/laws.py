"""Loss laws: pure functions of data with analytic gradients, fitted in log space.

Each law is a small object (DESIGN.md §7). It names its parameters, fits some of them as logarithms
(`A` is fitted as `a = ln A`, the form of Hoffmann et al. 2022, App. D.2), gives bounds and a start grid
in that internal space, and evaluates log(prediction) together with its Jacobian for a whole batch of
parameter vectors at once: `theta` has shape (starts, P) and the result (starts, rows). Evaluating every
start in one numpy call is what makes a 4,500-start fit take seconds rather than minutes.

Public parameter values are what users read (`params["A"] = 406.4`); internal values are what the
optimiser moves (`a = 6.007`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Tiny floor for predictions that must stay positive inside log(); a start that predicts a non-positive
# loss gets an infinite objective and is dropped by the line search, not silently clipped.
_TINY = 1e-300


@dataclass(frozen=True)
class Param:
    """One parameter. `log=True`: fitted as ln(value); bounds, grid and quick grid are internal values."""

    name: str
    log: bool
    bounds: tuple[float, float]
    grid: tuple[float, ...]
    quick: tuple[float, ...]
    doc: str = ""

    def to_public(self, v: float) -> float:
        return float(math.exp(v)) if self.log else float(v)

    def to_internal(self, v: float) -> float:
        if self.log:
            if not v > 0:
                raise ValueError(f"parameter {self.name} is fitted in log space and must be > 0: got {v}")
            return math.log(v)
        return float(v)


def _lse(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum(exp(t))) over broadcast terms, and the softmax weights (the gradient of the LSE)."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in terms))
    m = terms[0]
    for t in terms[1:]:
        m = np.maximum(m, t)
    m = np.broadcast_to(m, shape)
    exps = [np.exp(t - m) for t in terms]
    total = exps[0]
    for e in exps[1:]:
        total = total + e
    inv = 1.0 / total
    return m + np.log(total), [e * inv for e in exps]


class Law:
    """Base class. Subclasses set `name`, `inputs`, `params` and implement `log_model`."""

    name: str = "law"
    inputs: tuple[str, ...] = ()
    target: str = "loss"
    params: tuple[Param, ...] = ()
    formula: str = ""
    default_fixed: Mapping[str, float] = {}

    # --- names and conversions -------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def to_public(self, theta: Sequence[float]) -> dict[str, float]:
        return {p.name: p.to_public(float(v)) for p, v in zip(self.params, theta)}

    def to_internal(self, params: Mapping[str, float]) -> np.ndarray:
        missing = [p.name for p in self.params if p.name not in params]
        if missing:
            raise ValueError(f"params: missing {missing} for law {self.name} (needs {list(self.param_names)})")
        return np.array([p.to_internal(float(params[p.name])) for p in self.params])

    def bounds(self) -> list[tuple[float, float]]:
        return [p.bounds for p in self.params]

    # --- data ----------------------------------------------------------------------------------
    def required(self, available: set[str]) -> tuple[str, ...]:
        """Data columns this law needs, given those available (some laws accept alternatives)."""
        return self.inputs

    def prepare(self, cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Features used by `log_model` from validated data columns (logs are taken once here)."""
        return {f"ln{k}": np.log(np.asarray(cols[k], dtype=float)) for k in self.inputs}

    def log_model(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """log(prediction), shape (S, n), and d/d(theta_k) of it for each k (broadcastable to (S, n))."""
        raise NotImplementedError

    def start_grid(self, starts: str = "grid", X: Mapping[str, np.ndarray] | None = None,
                   y: np.ndarray | None = None) -> np.ndarray:
        """Cartesian product of the per-parameter grids, shape (starts, P), internal values."""
        axes = [p.grid if starts == "grid" else p.quick for p in self.params]
        return np.array(list(itertools.product(*axes)), dtype=float)

    def guess(self, X: Mapping[str, np.ndarray], y: np.ndarray) -> np.ndarray:
        """One data-informed internal start; the default is the middle of the quick grid."""
        return np.array([p.quick[len(p.quick) // 2] for p in self.params], dtype=float)

    # --- evaluation ----------------------------------------------------------------------------
    def predict(self, params: Mapping[str, float] | object, **inputs: object) -> np.ndarray:
        """The law's prediction (natural units, e.g. loss) at `inputs` (arrays broadcast together)."""
        p = getattr(params, "params", params)
        theta = self.to_internal(p)[None, :]
        arrays = {k: np.atleast_1d(np.asarray(v) if k == "run" else np.asarray(v, dtype=float))
                  for k, v in inputs.items()}
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values())) if arrays else (1,)
        cols = {k: np.broadcast_to(a, shape).ravel() for k, a in arrays.items()}
        missing = [k for k in self.inputs if k not in cols]
        if missing:
            raise ValueError(f"{self.name}.predict needs inputs {list(self.inputs)}: missing {missing}")
        logp, _ = self.log_model(theta, self.prepare(cols))
        return np.exp(logp[0]).reshape(shape)

    def __call__(self, params: Mapping[str, float] | object, **inputs: object) -> np.ndarray:
        return self.predict(params, **inputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.formula})"


def _grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step))
    return tuple(float(lo + i * step) for i in range(n + 1))


# ---------------------------------------------------------------------------------------------------
class Chinchilla(Law):
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3).

    Fitted as log L = LSE(a - alpha ln N, b - beta ln D, e) with A = e^a, B = e^b, E = e^e (App. D.2).
    The full grid is Hoffmann's 4,500 starts: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
    a, b in {0, 5, ..., 25}. N counts all parameters, embeddings included (Hoffmann's convention).
    """

    name = "chinchilla"
    inputs = ("N", "D")
    formula = "L = E + A/N^alpha + B/D^beta"
    params = (
        Param("E", True, (-20.0, 5.0), _grid(-1, 1, 0.5), (0.0, 0.5), "irreducible loss"),
        Param("A", True, (-20.0, 60.0), _grid(0, 25, 5), (3.0, 8.0, 15.0)),
        Param("B", True, (-20.0, 60.0), _grid(0, 25, 5), (3.0, 8.0, 15.0)),
        Param("alpha", False, (0.0, 5.0), _grid(0, 2, 0.5), (0.25, 0.75)),
        Param("beta", False, (0.0, 5.0), _grid(0, 2, 0.5), (0.25, 0.75)),
    )

    def log_model(self, theta, X):
        e, a, b, al, be = (theta[:, i : i + 1] for i in range(5))
        lnN, lnD = X["lnN"], X["lnD"]
        out, (wA, wB, wE) = _lse(a - al * lnN, b - be * lnD, e)
        return out, [wE, wA, wB, -wA * lnN, -wB * lnD]

    def guess(self, X, y):
        return np.array([math.log(0.9 * float(np.min(y))), 6.0, 6.0, 0.3, 0.3])


class KaplanND(Law):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, Eq. 1.5).

    Fitted as log L = alpha_D * LSE((alpha_N/alpha_D)(n_c - ln N), d_c - ln D) with N_c = e^n_c, D_c = e^d_c.
    Kaplan's N excludes embedding parameters.
    """

    name = "kaplan"
    inputs = ("N", "D")
    formula = "L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D"
    params = (
        Param("N_c", True, (0.0, 120.0), (20.0, 25.0, 30.0, 35.0, 40.0), (28.0, 35.0)),
        Param("D_c", True, (0.0, 120.0), (20.0, 25.0, 30.0, 35.0, 40.0), (28.0, 35.0)),
        Param("alpha_N", False, (1e-4, 3.0), (0.03, 0.06, 0.1, 0.2, 0.4), (0.07, 0.2)),
        Param("alpha_D", False, (1e-4, 3.0), (0.03, 0.06, 0.1, 0.2, 0.4), (0.07, 0.2)),
    )

    def log_model(self, theta, X):
        nc, dc, aN, aD = (theta[:, i : i + 1] for i in range(4))
        lnN, lnD = X["lnN"], X["lnD"]
        ratio = aN / aD
        u1 = ratio * (nc - lnN)
        s, (w1, w2) = _lse(u1, dc - lnD)
        return aD * s, [aN * w1, aD * w2, w1 * (nc - lnN), s - w1 * u1]


class KaplanCompute(Law):
    """L(C) = E + A * C^(-alpha) (Kaplan et al. 2020's compute law with an irreducible term).

    Fitted as log L = LSE(e, a - alpha ln C). With E = 0 it is Kaplan's (C_c/C)^alpha_C, A = C_c^alpha_C.
    """

    name = "kaplan_compute"
    inputs = ("C",)
    formula = "L = E + A*C^-alpha"
    params = (
        Param("E", True, (-30.0, 5.0), _grid(-1, 1, 0.5), (0.0, 0.5)),
        Param("A", True, (-20.0, 80.0), _grid(0, 25, 2.5), (2.0, 6.0, 12.0)),
        Param("alpha", False, (0.0, 5.0), (0.02, 0.05, 0.1, 0.2, 0.4, 0.8), (0.05, 0.15, 0.4)),
    )

    def log_model(self, theta, X):
        e, a, al = (theta[:, i : i + 1] for i in range(3))
        lnC = X["lnC"]
        out, (wE, wA) = _lse(e, a - al * lnC)
        return out, [wE, wA, -wA * lnC]


class OverTraining(Law):
    """L(C, M) = E + (a M^eta + b M^-eta) C^-eta (Gadre et al. 2024), M = D/N, C = k N D.

    The Chinchilla law with alpha = beta rewritten in the token multiplier M; k is the FLOPs per
    parameter-token of the convention (6). Fitted as LSE(e, ln a + eta(ln M - ln C), ln b - eta(ln M + ln C)).
    """

    name = "overtraining"
    inputs = ("N", "D")
    formula = "L = E + (a*M^eta + b*M^-eta)*C^-eta, M = D/N, C = kND"
    params = (
        Param("E", True, (-20.0, 5.0), _grid(-1, 1, 0.5), (0.0, 0.5)),
        Param("a", True, (-20.0, 80.0), _grid(0, 25, 5), (5.0, 15.0)),
        Param("b", True, (-20.0, 80.0), _grid(0, 25, 5), (5.0, 15.0)),
        Param("eta", False, (0.0, 3.0), (0.05, 0.1, 0.2, 0.3, 0.5), (0.1, 0.3)),
    )

    def __init__(self, flops_per_param_token: float = 6.0) -> None:
        self.k = float(flops_per_param_token)

    def prepare(self, cols):
        lnN, lnD = np.log(cols["N"]), np.log(cols["D"])
        return {"lnM": lnD - lnN, "lnC": math.log(self.k) + lnN + lnD}

    def log_model(self, theta, X):
        e, la, lb, eta = (theta[:, i : i + 1] for i in range(4))
        lnM, lnC = X["lnM"], X["lnC"]
        out, (wE, wa, wb) = _lse(e, la + eta * (lnM - lnC), lb - eta * (lnM + lnC))
        return out, [wE, wa, wb, wa * (lnM - lnC) - wb * (lnM + lnC)]


class DataConstrained(Law):
    """Muennighoff et al. 2023: Chinchilla on effective data D' and effective parameters N'.

    U_D = U unique tokens, R_D = D/U_D - 1 repetitions, D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*));
    U_N = min(N, G^2 U_D) with G = (alpha A/(beta B))^(1/(alpha+beta)) from the base law (as the paper's
    released code does), R_N = N/U_N - 1, N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*));
    L = E + A/N'^alpha + B/D'^beta.

    As in the paper, the base law (E, A, B, alpha, beta) is normally fitted first on unrepeated data and held
    fixed (`default_fixed`, the paper's constants unless `base=` is given) while R_D*, R_N* are fitted; pass
    `fixed={}` to `fit` to fit all seven.
    """

    name = "data_constrained"
    inputs = ("N", "D", "U")
    formula = "L = E + A/N'^alpha + B/D'^beta (effective N', D' under repetition)"
    params = (
        Param("E", True, (-20.0, 5.0), (0.0, 0.5), (0.5,)),
        Param("A", True, (-20.0, 60.0), (5.0, 10.0), (6.0,)),
        Param("B", True, (-20.0, 60.0), (5.0, 10.0), (7.0,)),
        Param("alpha", False, (1e-3, 5.0), (0.3, 0.6), (0.35,)),
        Param("beta", False, (1e-3, 5.0), (0.3, 0.6), (0.35,)),
        Param("R_D", True, (-5.0, 10.0), tuple(math.log(v) for v in (1, 3, 10, 30, 100)),
              tuple(math.log(v) for v in (3, 30))),
        Param("R_N", True, (-5.0, 10.0), tuple(math.log(v) for v in (1, 3, 10, 30, 100)),
              tuple(math.log(v) for v in (3, 30))),
    )

    def __init__(self, base: Mapping[str, float] | None = None) -> None:
        if base is None:
            from pyscale.scaling.presets import MUENNIGHOFF_2023

            base = {k: MUENNIGHOFF_2023.params[k] for k in ("E", "A", "B", "alpha", "beta")}
        self.default_fixed = dict(base)

    def prepare(self, cols):
        lnD = np.log(cols["D"])
        # U_D = min(U, D): a run that saw fewer tokens than exist has no repetition.
        return {"lnN": np.log(cols["N"]), "lnD": lnD, "lnU": np.minimum(np.log(cols["U"]), lnD)}

    @staticmethod
    def _effective(ln_unique: np.ndarray, ln_total: np.ndarray, lnR: np.ndarray):
        """ln X' for X' = U (1 + R* (1 - exp(-R/R*))), R = X/U - 1; and d ln X'/d ln U, d ln X'/d ln R*."""
        U = np.exp(ln_unique)
        R = np.exp(ln_total - ln_unique) - 1.0
        Rs = np.exp(lnR)
        x = np.exp(-R / Rs)
        factor = 1.0 + Rs * (1.0 - x)
        # dX'/dR* = U [(1 - x) - (R/R*) x]; times R* for the log parameter, over X' for log output.
        d_lnR = Rs * ((1.0 - x) - (R / Rs) * x) / factor
        # dX'/dU (total fixed) = factor - (X/U) x; times U / X' for log-log.
        d_lnU = (factor - (R + 1.0) * x) / factor
        del U
        return ln_unique + np.log(factor), d_lnU, d_lnR

    def log_model(self, theta, X):
        e, a, b, al, be, lrd, lrn = (theta[:, i : i + 1] for i in range(7))
        lnN, lnD, lnU = X["lnN"], X["lnD"], X["lnU"]
        ssum = al + be
        lnG = (np.log(al) + a - np.log(be) - b) / ssum
        ln_un_cap = 2.0 * lnG + lnU
        capped = ln_un_cap < lnN
        ln_UN = np.where(capped, ln_un_cap, lnN)
        ln_Np, dN_dUN, dN_dlrn = self._effective(ln_UN, lnN, lrn)
        ln_Dp, _, dD_dlrd = self._effective(lnU, lnD, lrd)
        out, (wE, wA, wB) = _lse(e, a - al * ln_Np, b - be * ln_Dp)
        # Chain rule through U_N = G^2 U when the cap binds: d ln U_N / d theta = 2 d ln G / d theta.
        g_lnNp = -wA * al  # d out / d ln N'
        chain = np.where(capped, g_lnNp * dN_dUN * 2.0, 0.0)
        dlnG_da = 1.0 / ssum
        dlnG_dal = (1.0 / al - lnG) / ssum
        dlnG_dbe = (-1.0 / be - lnG) / ssum
        return out, [
            wE,
            wA + chain * dlnG_da,
            wB - chain * dlnG_da,
            -wA * ln_Np + chain * dlnG_dal,
            -wB * ln_Dp + chain * dlnG_dbe,
            -wB * be * dD_dlrd,
            g_lnNp * dN_dlrn,
        ]


class QAT(Law):
    """Chinchilla loss plus the QAT error delta = k D^gamma_D (log2 G)^gamma_G / N^gamma_N.

    ("Scaling Law for Quantization-Aware Training", Chen et al. 2025): a power law in log2 of the
    quantization group size G, not in G. Fitted as LSE(e, a - alpha ln N, b - beta ln D,
    ln k + gamma_D ln D + gamma_G ln log2 G - gamma_N ln N). With `base=` the Chinchilla part is held fixed.
    """

    name = "qat"
    inputs = ("N", "D", "G")
    formula = "L = E + A/N^alpha + B/D^beta + k*D^gamma_D*(log2 G)^gamma_G/N^gamma_N"
    params = (
        Param("E", True, (-20.0, 5.0), (0.0, 0.5), (0.5,)),
        Param("A", True, (-20.0, 60.0), (5.0, 10.0), (6.0,)),
        Param("B", True, (-20.0, 60.0), (5.0, 10.0), (6.0,)),
        Param("alpha", False, (0.0, 5.0), (0.3, 0.6), (0.35,)),
        Param("beta", False, (0.0, 5.0), (0.3, 0.6), (0.35,)),
        Param("k", True, (-40.0, 40.0), (-10.0, -5.0, 0.0, 5.0), (-5.0, 0.0)),
        Param("gamma_D", False, (-2.0, 3.0), (0.0, 0.25, 0.5), (0.1, 0.4)),
        Param("gamma_G", False, (-2.0, 5.0), (0.5, 1.0, 2.0), (1.0,)),
        Param("gamma_N", False, (-2.0, 3.0), (0.25, 0.5, 1.0), (0.3, 0.7)),
    )

    def __init__(self, base: Mapping[str, float] | None = None) -> None:
        self.default_fixed = dict(base) if base is not None else {}

    def prepare(self, cols):
        G = np.asarray(cols["G"], dtype=float)
        return {"lnN": np.log(cols["N"]), "lnD": np.log(cols["D"]), "lnlogG": np.log(np.log2(G))}

    def log_model(self, theta, X):
        e, a, b, al, be, lk, gD, gG, gN = (theta[:, i : i + 1] for i in range(9))
        lnN, lnD, lnlg = X["lnN"], X["lnD"], X["lnlogG"]
        out, (wE, wA, wB, wQ) = _lse(e, a - al * lnN, b - be * lnD, lk + gD * lnD + gG * lnlg - gN * lnN)
        return out, [wE, wA, wB, -wA * lnN, -wB * lnD, wQ, wQ * lnD, wQ * lnlg, -wQ * lnN]


def annealing_areas(lr: Sequence[float] | np.ndarray, decay: float = 0.999,
                    warmup_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """S1 and S2 after each step of a learning-rate schedule (Tissue et al. 2024).

    lr[i] is the learning rate used at step i + 1. S1(s) = sum of lr over steps 1..s (forward area).
    S2(s) = sum_{i<=s} m_i with m_i = decay * m_{i-1} + (lr_{i-1} - lr_i): the annealing area with
    momentum, decay factor lambda (the paper's typical 0.999; a larger lambda makes annealing act more
    slowly). Steps up to `warmup_steps` add to S1 but not to S2 (warm-up raises the LR; it is not annealing).
    """
    eta = np.asarray(lr, dtype=float)
    if eta.ndim != 1 or eta.size == 0:
        raise ValueError("lr must be a non-empty 1-d schedule")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1): got {decay}")
    S1 = np.cumsum(eta)
    drop = np.zeros_like(eta)
    drop[1:] = eta[:-1] - eta[1:]
    drop[: max(int(warmup_steps), 0) + 1] = 0.0
    m = np.empty_like(eta)
    acc = 0.0
    for i, d in enumerate(drop):  # a linear recurrence; schedules are ~1e4-1e6 steps, this is fine
        acc = decay * acc + d
        m[i] = acc
    return S1, np.cumsum(m)


class LRAnnealing(Law):
    """L(s) = L0 + A S1^-alpha - C S2 (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing").

    S1, S2 come from the LR schedule (`annealing_areas`). Give `schedules` (one array, or a dict run -> array)
    and data with a `step` column (and `run` when there are several schedules); or data with columns S1, S2.
    """

    name = "lr_annealing"
    inputs = ("S1", "S2")
    formula = "L(s) = L0 + A*S1^-alpha - C*S2"
    params = (
        Param("L0", True, (-10.0, 5.0), (0.0, 0.5, 1.0), (0.5, 1.0)),
        Param("A", True, (-20.0, 20.0), (-2.0, 0.0, 2.0), (-1.0, 1.0)),
        Param("alpha", False, (0.0, 5.0), (0.2, 0.5, 1.0), (0.3, 0.8)),
        Param("C", False, (0.0, 1e6), (0.0, 0.1, 0.3, 1.0), (0.0, 0.3)),
    )

    def __init__(self, schedules: Mapping[object, Sequence[float]] | Sequence[float] | None = None,
                 decay: float = 0.999, warmup_steps: int = 0) -> None:
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        if schedules is None:
            self.areas: dict[object, tuple[np.ndarray, np.ndarray]] = {}
        elif isinstance(schedules, Mapping):
            self.areas = {k: annealing_areas(v, decay, warmup_steps) for k, v in schedules.items()}
        else:
            self.areas = {None: annealing_areas(schedules, decay, warmup_steps)}

    def areas_at(self, step: np.ndarray, run: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        step = np.asarray(step)
        if np.any(step < 1) or np.any(step != np.round(step)):
            raise ValueError("step must hold integers >= 1 (step s has used lr[0..s-1])")
        idx = step.astype(np.int64) - 1
        S1, S2 = np.empty(len(idx)), np.empty(len(idx))
        keys = [None] * len(idx) if run is None or None in self.areas else list(run)
        for key in set(keys):
            if key not in self.areas:
                raise ValueError(f"run {key!r} has no LR schedule (schedules given for {list(self.areas)})")
            s1, s2 = self.areas[key]
            rows = np.array([k == key for k in keys])
            if np.any(idx[rows] >= len(s1)):
                raise ValueError(f"step beyond the end of the schedule of run {key!r} ({len(s1)} steps)")
            S1[rows], S2[rows] = s1[idx[rows]], s2[idx[rows]]
        return S1, S2

    def required(self, available):
        if {"S1", "S2"} <= available:
            return ("S1", "S2")
        return ("step", "run") if None not in self.areas and self.areas else ("step",)

    def prepare(self, cols):
        if "S1" in cols and "S2" in cols:
            S1, S2 = np.asarray(cols["S1"], float), np.asarray(cols["S2"], float)
        else:
            S1, S2 = self.areas_at(cols["step"], cols.get("run"))
        return {"lnS1": np.log(S1), "S2": S2}

    def start_grid(self, starts="grid", X=None, y=None):
        grid = super().start_grid(starts)
        # C is in units of loss per unit of S2: scale the grid so C*max(S2) spans a share of the loss.
        if X is not None and y is not None:
            s2max = float(np.max(np.abs(X["S2"]))) or 1.0
            grid[:, 3] *= float(np.median(y)) / s2max
        return grid

    def log_model(self, theta, X):
        l0, a, al, c = (theta[:, i : i + 1] for i in range(4))
        lnS1, S2 = X["lnS1"], X["S2"]
        L0 = np.exp(l0)
        powt = np.exp(a - al * lnS1)
        pred = L0 + powt - c * S2
        bad = ~(pred > 0)
        inv = 1.0 / np.where(bad, 1.0, pred)
        out = np.where(bad, np.inf, np.log(np.maximum(pred, _TINY)))
        return out, [L0 * inv, powt * inv, -powt * lnS1 * inv, -S2 * inv]

    def predict_curve(self, params: Mapping[str, float] | object, lr: Sequence[float]) -> np.ndarray:
        """Predicted loss after every step of the schedule `lr` (same decay and warm-up as the law)."""
        S1, S2 = annealing_areas(lr, self.decay, self.warmup_steps)
        return self.predict(params, S1=S1, S2=S2)


class DownstreamLink(Law):
    """Downstream error from loss: err = e - a exp(-b L) (Gadre et al. 2024's loss-to-error link)."""

    name = "downstream"
    inputs = ("loss",)
    target = "error"
    formula = "err = e - a*exp(-b*L)"
    params = (
        Param("e", False, (0.0, 100.0), (0.5, 0.8, 1.0), (0.8,)),
        Param("a", True, (-20.0, 20.0), (-2.0, 0.0, 2.0, 4.0), (0.0, 2.0)),
        Param("b", False, (0.0, 20.0), (0.1, 0.5, 1.0, 2.0), (0.5, 1.5)),
    )

    def prepare(self, cols):
        return {"L": np.asarray(cols["loss"], dtype=float)}

    def log_model(self, theta, X):
        e, la, b = (theta[:, i : i + 1] for i in range(3))
        L = X["L"]
        t = np.exp(la - b * L)
        pred = e - t
        bad = ~(pred > 0)
        inv = 1.0 / np.where(bad, 1.0, pred)
        out = np.where(bad, np.inf, np.log(np.maximum(pred, _TINY)))
        return out, [inv, -t * inv, t * L * inv]

    def guess(self, X, y):
        return np.array([min(1.0, 1.2 * float(np.max(y))), 1.0, 1.0])


LAWS: dict[str, type[Law]] = {
    cls.name: cls
    for cls in (Chinchilla, KaplanND, KaplanCompute, OverTraining, DataConstrained, QAT, LRAnnealing,
                DownstreamLink)
}


def get_law(law: Law | str | type[Law]) -> Law:
    """A law object from an instance, a class or a registered name ("chinchilla", "kaplan", ...)."""
    if isinstance(law, Law):
        return law
    if isinstance(law, type) and issubclass(law, Law):
        return law()
    if isinstance(law, str) and law.lower() in LAWS:
        return LAWS[law.lower()]()
    raise ValueError(f"law: unknown {law!r}; known laws: {sorted(LAWS)}")


__all__ = [
    "LAWS", "QAT", "Chinchilla", "DataConstrained", "DownstreamLink", "KaplanCompute", "KaplanND", "Law",
    "LRAnnealing", "OverTraining", "Param", "annealing_areas", "get_law",
]
