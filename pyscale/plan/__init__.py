"""Training plans from loss laws and measured costs: budget -> N, D, architecture, time, energy, cost.

Needs no torch: exact parameter counts come from pyscale.models.config (pure Python).
"""

from __future__ import annotations

from pyscale.plan.budget import Budget
from pyscale.plan.hardware import Hardware, ParameterError, choose_hardware, from_measurements, from_user
from pyscale.plan.law import LawChoice, choose_law
from pyscale.plan.planner import OBJECTIVES, Plan, PlanCost, plan

__all__ = ["OBJECTIVES", "Budget", "Hardware", "LawChoice", "ParameterError", "Plan", "PlanCost", "choose_hardware",
           "choose_law", "from_measurements", "from_user", "plan"]
