"""Built-in model: configs with exact counts (pure Python) and the torch model (loaded on demand).

``import pyscale.models`` does not import torch; ``pyscale.models.GPT`` (and ``train_step``,
``make_batch``, ``build_optimizer``) import ``pyscale.models.gpt`` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyscale.models.config import (
    GPTConfig,
    ParamCounts,
    architecture_rules,
    candidate_configs,
    config_for_params,
    default_aspect_ratio,
    default_head_dim,
    swiglu_d_ff,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyscale.models.gpt import GPT, build_optimizer, make_batch, train_step  # noqa: F401

_GPT_NAMES = frozenset({"GPT", "train_step", "make_batch", "build_optimizer", "gpt"})

__all__ = [
    "GPT",
    "GPTConfig",
    "ParamCounts",
    "architecture_rules",
    "build_optimizer",
    "candidate_configs",
    "config_for_params",
    "default_aspect_ratio",
    "default_head_dim",
    "make_batch",
    "swiglu_d_ff",
    "train_step",
]


def __getattr__(name: str) -> Any:
    if name in _GPT_NAMES:
        gpt = importlib.import_module("pyscale.models.gpt")
        return gpt if name == "gpt" else getattr(gpt, name)
    raise AttributeError(f"module 'pyscale.models' has no attribute {name!r}")
