"""The Pareto front of a time-energy trade-off: the points no other point beats on both axes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

P = TypeVar("P", bound=Mapping[str, Any])


def pareto_front(points: Iterable[P], *, time_key: str = "time_s", energy_key: str = "energy_j") -> list[P]:
    """The non-dominated points (less time, or less energy, than every other point), by increasing time.

    Points whose time or energy is missing, not finite or not positive are left out. Of points equal on
    both axes the first is kept."""
    def usable(p: P) -> bool:
        t, e = p.get(time_key), p.get(energy_key)
        return t is not None and e is not None and math.isfinite(t) and math.isfinite(e) and t > 0 and e > 0

    front: list[P] = []
    best = math.inf
    for p in sorted((p for p in points if usable(p)), key=lambda p: (p[time_key], p[energy_key])):
        if p[energy_key] < best:
            front.append(p)
            best = p[energy_key]
    return front
