"""Budgets a plan can be asked for: FLOPs, GPU-hours, kWh, dollars, or a target loss."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("flops", "gpu_hours", "kwh", "dollars", "loss")
_UNITS = {
    "flops": "flops", "flop": "flops",
    "gpu-hours": "gpu_hours", "gpu_hours": "gpu_hours", "gpuh": "gpu_hours", "gpu-h": "gpu_hours",
    "kwh": "kwh", "usd": "dollars", "dollars": "dollars", "$": "dollars", "loss": "loss",
}


@dataclass(frozen=True)
class Budget:
    kind: str  # one of KINDS
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"budget kind must be one of {', '.join(KINDS)}: got {self.kind!r}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"budget value must be a positive finite number: got {self.value!r}")

    @staticmethod
    def parse(text: str) -> Budget:
        """'1e23 flops', '5000 gpu-hours', '120 kWh', '$20000' / '20000 usd', 'loss=2.1'."""
        s = text.strip().lower().replace(",", "")
        if s.startswith("$"):
            return Budget("dollars", _number(s[1:], text))
        m = re.fullmatch(r"loss\s*[=:]?\s*(\S+)", s)
        if m:
            return Budget("loss", _number(m.group(1), text))
        m = re.fullmatch(r"(\S+?)\s*([a-z$_-]+)", s)
        if not m or m.group(2) not in _UNITS:
            raise ValueError(f"budget: cannot parse {text!r}; use e.g. '1e23 flops', '5000 gpu-hours', "
                             "'120 kWh', '$20000' or 'loss=2.1'")
        return Budget(_UNITS[m.group(2)], _number(m.group(1), text))

    def describe(self) -> str:
        return {"flops": f"{self.value:.3g} FLOPs", "gpu_hours": f"{self.value:.4g} GPU-hours",
                "kwh": f"{self.value:.4g} kWh", "dollars": f"${self.value:,.0f}",
                "loss": f"target loss {self.value:.4g}"}[self.kind]


def _number(s: str, original: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"budget: {s!r} in {original!r} is not a number") from None
