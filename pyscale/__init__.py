"""pyscale: what LLM training costs on your GPU, and what to train.

`import pyscale` is lean: it imports neither torch nor triton. Submodules load on first use
(`pyscale.ops`, `pyscale.scaling`, ...), so `pyscale fit` and `pyscale plan` work without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyscale._backend import backend
from pyscale._ext import extension_status

__version__ = "0.1.0"
__all__ = ["__version__", "backend", "extension_status"]

_SUBMODULES = frozenset(
    {"benchmark", "cli", "costmodel", "formulas", "hw", "kernels", "models", "nn", "ops", "plan", "profile",
     "reference", "scaling", "store", "testing"}
)

if TYPE_CHECKING:  # pragma: no cover
    from pyscale import hw, ops, store  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"pyscale.{name}")
    raise AttributeError(f"module 'pyscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
