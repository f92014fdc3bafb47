"""Runtime and energy cost models fitted from stored measurements (layer 4: imports store, hw, numpy, scipy).

* `runtime`: learned roofline T = smax(F/(η_c·P·w^α), B/(η_m·W)) + t₀ with wave quantisation and an
  optional tree residual (scikit-learn extra);
* `energy`: energy roofline E = e_flop·F + e_byte·B + P₀·T (Choi et al., IPDPS 2013) and a
  constant-power baseline;
* `evaluate`: leave-shape-out cross-validation (MAPE, R²);
* `power_limits`: time and power as functions of the GPU power limit (rows at >= 2 limits), validated
  leave-one-limit-out;
* `profile`: `DeviceProfile` JSON files, shipped profiles, `fit_device_profile(store)`;
* `model_level`: a step's time, energy and MFU from its op breakdown;
* `plot`: roofline PNGs.
scipy is imported only when fitting, matplotlib only when plotting, scikit-learn only for the residual.
"""

from __future__ import annotations

from pyscale.costmodel.data import NON_SHAPE_KEYS, Rows, rows_from_measurements, shape_key, tile_count
from pyscale.costmodel.energy import EnergyModel, fit_energy
from pyscale.costmodel.evaluate import CVResult, cross_validate, group_kfold
from pyscale.costmodel.model_level import OpCall, StepPrediction, predict_step
from pyscale.costmodel.power_limits import PowerLimitModel, fit_power_limits
from pyscale.costmodel.profile import (
    DeviceProfile,
    OpModel,
    fit_device_profile,
    list_shipped_profiles,
    load_shipped_profile,
    same_device,
    shipped_profile_problems,
)
from pyscale.costmodel.runtime import RuntimeModel, TreeResidual, fit_runtime

__all__ = [
    "NON_SHAPE_KEYS",
    "CVResult",
    "DeviceProfile",
    "EnergyModel",
    "OpCall",
    "OpModel",
    "PowerLimitModel",
    "Rows",
    "RuntimeModel",
    "StepPrediction",
    "TreeResidual",
    "cross_validate",
    "fit_device_profile",
    "fit_energy",
    "fit_power_limits",
    "fit_runtime",
    "group_kfold",
    "list_shipped_profiles",
    "load_shipped_profile",
    "predict_step",
    "rows_from_measurements",
    "same_device",
    "shape_key",
    "shipped_profile_problems",
    "tile_count",
]
