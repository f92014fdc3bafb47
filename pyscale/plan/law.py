"""The law a plan uses: a loss-law preset, a saved fit, or an allocation law (Hoffmann et al.'s Approaches 1
and 2: N_opt(C), D_opt(C), no loss), with what is known of its uncertainty and of the data behind it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyscale.plan.hardware import ParameterError
from pyscale.scaling import get_law, presets


@dataclass
class LawChoice:
    name: str
    law: Any  # a pyscale.scaling Law
    params: dict[str, float]
    source: str
    n_convention: str
    flops_per_param_token: float = 6.0
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    ci_level: float | None = None
    bootstrap: np.ndarray | None = None  # (replicates, n_params) in law.params order
    embeddings_counted: bool = True
    approach: str = ""  # which published procedure (e.g. "Approach 3 (parametric loss fit)"), or how it was fitted
    data_flops_range: tuple[float, float] | None = None  # compute of the data behind the law, when known
    allocation: Any = None  # a presets.AllocationLaw: the law splits compute and predicts no loss (law is None)

    @property
    def predicts_loss(self) -> bool:
        return self.allocation is None

    def predict(self, N: Any, D: Any) -> np.ndarray:
        if self.allocation is not None:
            raise ValueError(f"law: {self.name} is an allocation law ({self.approach}): it gives N_opt(C) and "
                             "D_opt(C), not a loss")
        return self.law.predict(self.params, N=N, D=D)

    def _predict_many(self, param_sets: list[dict[str, float]], N: float, D: float) -> np.ndarray:
        """The law at one (N, D) for many parameter sets at once (finite values only)."""
        theta = np.stack([self.law.to_internal(p) for p in param_sets])
        logp, _ = self.law.log_model(theta, self.law.prepare({"N": np.array([N]), "D": np.array([D])}))
        out = np.exp(logp[:, 0])
        return out[np.isfinite(out)]

    def loss_interval(self, N: float, D: float, *, seed: int = 0, samples: int = 2000
                      ) -> tuple[tuple[float, float] | None, str]:
        """A (2.5 %, 97.5 %) interval of the predicted loss, and how it was obtained (or why absent)."""
        names = self.law.param_names  # bootstrap rows hold public values in this order
        # failed replicates are non-finite rows (as FitResult.ci_of skips them)
        refits = [] if self.bootstrap is None else [r for r in self.bootstrap if np.all(np.isfinite(r))]
        if refits:
            losses = self._predict_many([dict(zip(names, row)) for row in refits], N, D)
            lo, hi = np.percentile(losses, [2.5, 97.5])
            return (float(lo), float(hi)), f"{len(losses)} bootstrap refits of the fit (resampled runs)"
        if self.ci:
            rng = np.random.default_rng(seed)
            level = self.ci_level or 0.95
            from scipy.stats import norm

            z = float(norm.ppf(0.5 + level / 2))
            draws = {k: np.full(samples, float(v)) for k, v in self.params.items()}
            log_fitted = {p.name for p in self.law.params if p.log}
            for k, (lo, hi) in self.ci.items():
                if k in log_fitted and lo > 0:  # a positive constant (A, B, E): normal in its logarithm
                    draws[k] = np.exp(rng.normal((math.log(lo) + math.log(hi)) / 2,
                                                 (math.log(hi) - math.log(lo)) / (2 * z), samples))
                else:
                    draws[k] = rng.normal((lo + hi) / 2, (hi - lo) / (2 * z), samples)
            losses = self._predict_many([{k: v[i] for k, v in draws.items()} for i in range(samples)], N, D)
            lo, hi = np.percentile(losses, [2.5, 97.5])
            return (float(lo), float(hi)), (
                f"published {100 * level:g}% CIs of {', '.join(self.ci)} treated as independent normals (in the "
                f"logarithm for positive constants) "
                f"(other constants fixed); an approximation: the published joint distribution is not available")
        return None, "absent: this law has neither bootstrap refits nor published confidence intervals"


def choose_law(spec: str | Any = "epoch2024") -> LawChoice:
    """A preset name (loss law or allocation law), a path to a saved fit (JSON with 'law' and 'params'), or a
    FitResult."""
    if isinstance(spec, LawChoice):
        return spec
    if hasattr(spec, "law") and hasattr(spec, "params") and hasattr(spec, "bootstrap"):  # FitResult
        return LawChoice(spec.law.name, spec.law, dict(spec.params), "fitted by pyscale.scaling.fit",
                         "as in the fitted data's N column", spec.flops_per_param_token, dict(spec.ci),
                         spec.ci_level, spec.bootstrap, approach=f"a {spec.law.name} fit (pyscale.scaling.fit)",
                         data_flops_range=spec.data_flops_range)
    if isinstance(spec, str) and spec.lower() in presets.ALLOCATIONS:
        a = presets.get_allocation(spec)
        return LawChoice(a.name, None, {}, a.source, a.n_convention, a.flops_per_param_token, dict(a.ci),
                         a.ci_level, None, embeddings_counted="non-embedding" not in a.n_convention,
                         approach=a.approach, data_flops_range=a.data_flops_range, allocation=a)
    if isinstance(spec, str) and spec.lower() in presets.PRESETS:
        p = presets.get(spec)
        if p.law is None or not {"N", "D"} <= set(p.law.inputs):
            raise ValueError(f"law: preset {spec!r} is not a law of N and D; a plan needs one")
        return LawChoice(p.name, p.law, dict(p.params), p.source, p.n_convention, p.flops_per_param_token,
                         dict(p.ci), p.ci_level, None, embeddings_counted="non-embedding" not in p.n_convention,
                         approach=p.approach, data_flops_range=p.data_flops_range)
    path = Path(str(spec))
    if not path.is_file():
        raise ParameterError(f"law must be a preset ({', '.join(sorted(presets.PRESETS))}), an allocation law "
                             f"({', '.join(sorted(presets.ALLOCATIONS))}) or a saved fit JSON: got {spec!r}"
                             + (" (a folder)" if path.is_dir() else ""), "law")
    saved = "save one with `pyscale fit RUNS --json > fit.json`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = "not a text file" if isinstance(exc, UnicodeDecodeError) else f"not JSON ({exc})"
        raise ParameterError(f"law: {path} is {what}; expected a saved fit ({saved})", "law") from None
    if not isinstance(data, dict) or "law" not in data or not isinstance(data.get("params"), dict):
        raise ParameterError(f"law: {path} is JSON but not a saved fit (it needs 'law' and 'params'); {saved}", "law")
    law = get_law(data["law"])
    ci = {k: tuple(v) for k, v in (data.get("ci") or {}).items() if v and None not in v}
    n_conv = data.get("n_convention", "as in the fitted data's N column (assumed to count all parameters)")
    flops_range = data.get("data_flops_range")
    return LawChoice(law.name, law, {k: float(v) for k, v in data["params"].items()}, f"saved fit {path}",
                     n_conv, float(data.get("flops_per_param_token", 6.0)), ci, data.get("ci_level"), None,
                     embeddings_counted="non-embedding" not in n_conv, approach=f"a saved {law.name} fit",
                     data_flops_range=None if not flops_range else (float(flops_range[0]), float(flops_range[1])))
