"""Loss scaling laws: robust fitting, bootstrap, IsoFLOP analysis, compute-optimal frontier (numpy/scipy only).

Nothing here imports torch, so `pyscale fit` and planning work without it; pandas and matplotlib are
imported only inside the functions that read files or draw.

    from pyscale.scaling import fit, compute_optimal, presets
    r = fit("chinchilla", "runs.csv", bootstrap=1000)      # columns N, D (or C), loss[, run]
    print(r.report())                                     # params, stderr (bootstrap), 95% CIs, AIC/BIC
    compute_optimal(r, 1e23).N                            # N* at 1e23 FLOPs (C = 6ND)
    compute_optimal(presets.EPOCH_2024, 5.76e23)          # published constants
"""

from __future__ import annotations

from pyscale.scaling import isoflop, presets, synthetic
from pyscale.scaling.compare import LikelihoodRatioTest, compare
from pyscale.scaling.data import ScalingData, load
from pyscale.scaling.fit import FitResult, fit
from pyscale.scaling.frontier import ComputeOptimal, compute_optimal
from pyscale.scaling.laws import (
    LAWS,
    QAT,
    Chinchilla,
    DataConstrained,
    DownstreamLink,
    KaplanCompute,
    KaplanND,
    Law,
    LRAnnealing,
    OverTraining,
    annealing_areas,
    get_law,
)
from pyscale.scaling.plot import plot_fit
from pyscale.scaling.validate import ValidationResult, leave_largest_out

__all__ = [
    "LAWS", "QAT", "Chinchilla", "ComputeOptimal", "DataConstrained", "DownstreamLink", "FitResult",
    "KaplanCompute", "KaplanND", "LRAnnealing", "Law", "LikelihoodRatioTest", "OverTraining", "ScalingData",
    "ValidationResult", "annealing_areas", "compare", "compute_optimal", "fit", "get_law", "isoflop", "leave_largest_out", "load", "plot_fit",
    "presets", "synthetic",
]
