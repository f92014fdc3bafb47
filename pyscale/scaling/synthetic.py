"""Synthetic scaling runs drawn from a law with log-normal noise: examples, tests and benchmarks.

Generated here from published constants; no data fetched from anywhere is shipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def chinchilla_runs(n: int = 250, *, params: Mapping[str, float] | None = None, noise: float = 0.01,
                    seed: int = 0, n_range: tuple[float, float] = (5e7, 2e10),
                    d_range: tuple[float, float] = (1e9, 5e11)) -> dict[str, np.ndarray]:
    """`n` runs with N, D log-uniform in the ranges and loss = L(N, D) * exp(noise * z), z ~ N(0, 1).

    params: Chinchilla constants (default: Hoffmann et al. 2022). Returns columns run, N, D, loss.
    """
    from pyscale.scaling.laws import Chinchilla
    from pyscale.scaling.presets import HOFFMANN_2022

    rng = np.random.default_rng(seed)
    p = dict(params or HOFFMANN_2022.params)
    N = np.exp(rng.uniform(np.log(n_range[0]), np.log(n_range[1]), n)).round()
    D = np.exp(rng.uniform(np.log(d_range[0]), np.log(d_range[1]), n)).round()
    loss = Chinchilla().predict(p, N=N, D=D) * np.exp(noise * rng.standard_normal(n))
    return {"run": np.array([f"run{i:04d}" for i in range(n)]), "N": N, "D": D, "loss": loss}


def isoflop_runs(budgets: tuple[float, ...] = (1e18, 3e18, 1e19, 3e19, 1e20), per_budget: int = 9, *,
                 params: Mapping[str, float] | None = None, noise: float = 0.003, seed: int = 0,
                 k: float = 6.0, span: tuple[float, float] = (-1.0, 1.0), shift: float = 0.0
                 ) -> dict[str, np.ndarray]:
    """IsoFLOP profiles: at each budget, `per_budget` sizes log-spaced from 10^span[0] to 10^span[1] times the
    optimum (an asymmetric span samples one side more), the whole grid moved by a uniform random offset of up
    to `shift` decades per budget (the optimum is not known before the sweep), loss x exp(noise * z)."""
    from pyscale.scaling.frontier import chinchilla_optimal
    from pyscale.scaling.laws import Chinchilla
    from pyscale.scaling.presets import HOFFMANN_2022

    rng = np.random.default_rng(seed)
    p = dict(params or HOFFMANN_2022.params)
    Ns, Cs = [], []
    for c in budgets:
        n_opt, _ = chinchilla_optimal(p, c, k)
        offset = rng.uniform(-shift, shift) if shift else 0.0
        Ns.append(float(n_opt) * np.logspace(span[0] + offset, span[1] + offset, per_budget))
        Cs.append(np.full(per_budget, c))
    N, C = np.concatenate(Ns), np.concatenate(Cs)
    D = C / (k * N)
    loss = Chinchilla().predict(p, N=N, D=D) * np.exp(noise * rng.standard_normal(len(N)))
    return {"N": N, "D": D, "C": C, "loss": loss}


def write_csv(columns: Mapping[str, np.ndarray], path: str) -> None:
    """Write columns to CSV with the standard library (no pandas needed)."""
    import csv

    names = list(columns)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*(columns[c] for c in names)):
            w.writerow([v if isinstance(v, str) else repr(float(v)) for v in row])


__all__ = ["chinchilla_runs", "isoflop_runs", "write_csv"]
