"""`quantize_model`: replace a model's linears by QuantLinear, and say what was converted and skipped.

Linears are nn.Linear modules and Conv1D-style linears (GPT-2's, weight stored (in, out)). Left alone,
each with its reason in the summary:
  * layers the filter excludes;
  * subclasses of nn.Linear (their forward need not be x W^T + b);
  * layers whose weight is tied to another parameter (GPT-2's lm_head shares the token embedding):
    replacing one would silently untie them, and a later `tie_weights()` would put a float weight back
    into the quantised layer, so the tie is kept and the layer stays in float.
A warning lists the skipped layers the filter did not exclude.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pyscale.nn.quant_linear import SCHEMES, QuantLinear, check_scheme, is_conv1d_style, linear_parts

FILTERED = "excluded by the filter"


@dataclass(frozen=True)
class LayerDecision:
    name: str  # qualified module name ("" for the model itself)
    kind: str  # "Linear", "Conv1D (weight stored (in, out))" or the class of an nn.Linear subclass
    shape: tuple[int, int]  # (in_features, out_features)
    reason: str | None = None  # why it was skipped; None when converted


@dataclass
class QuantizationSummary:
    """What `quantize_model` did: `converted` and `skipped` layers (LayerDecision), in module order."""

    scheme: str
    converted: list[LayerDecision] = field(default_factory=list)
    skipped: list[LayerDecision] = field(default_factory=list)

    @property
    def unexpected(self) -> list[LayerDecision]:
        """Skipped layers the filter did not exclude."""
        return [d for d in self.skipped if d.reason != FILTERED]

    def __str__(self) -> str:
        lines = [f"quantize_model({self.scheme!r}): {len(self.converted)} converted, {len(self.skipped)} skipped"]
        for d in self.converted:
            lines.append(f"  converted {d.name or '<model>'} [{d.kind} {d.shape[0]} -> {d.shape[1]}]")
        for d in self.skipped:
            lines.append(f"  skipped   {d.name or '<model>'} [{d.kind} {d.shape[0]} -> {d.shape[1]}]: {d.reason}")
        return "\n".join(lines)


def _kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "Linear"
    if is_conv1d_style(module):
        return "Conv1D (weight stored (in, out))"
    if isinstance(module, nn.Linear):
        return f"{type(module).__qualname__} (an nn.Linear subclass)"
    return None


def quantize_model(model: nn.Module, scheme: str, filter: Callable[[str, nn.Module], bool] | None = None,
                   *, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace the linears of `model` (in place) by QuantLinear.from_linear(layer, scheme).

    Args:
        model: any module; it is modified and returned.
        scheme: one of pyscale.nn.quant_linear.SCHEMES.
        filter: called with (qualified name, layer) for every linear; only layers for which it returns True
                are replaced (default: all). A selected layer the scheme cannot hold raises ValueError
                naming it, before anything is replaced.
        dtype: activation dtype of the new layers (default as QuantLinear.from_linear).
    Returns:
        The model (the new QuantLinear when `model` itself is a linear), with a QuantizationSummary of
        what was converted and skipped, and why, as its `quantization_summary` attribute. A warning names
        the skipped layers the filter did not exclude (nn.Linear subclasses, tied weights).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}: got {scheme!r}")
    names_of = defaultdict(list)  # parameter identity -> every name it has in the model
    for pname, p in model.named_parameters(remove_duplicate=False):
        names_of[id(p)].append(pname)
    module_names = defaultdict(list)  # a module used at several places is decided once, replaced everywhere
    modules = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if _kind(mod) is not None:
            module_names[id(mod)].append(name)
            modules[id(mod)] = mod
    summary = QuantizationSummary(scheme)
    targets = []
    for key, names in module_names.items():
        mod, name = modules[key], names[0]
        kind = _kind(mod)
        weight, _ = linear_parts(mod)
        shape = (weight.shape[1], weight.shape[0])
        own = {f"{n}.weight" if n else "weight" for n in names}
        tied = [n for n in names_of.get(id(mod.weight), []) if n not in own]
        if filter is not None and not filter(name, mod):
            reason = FILTERED
        elif kind.endswith("subclass)"):
            reason = "an nn.Linear subclass: its forward need not be x W^T + b, so it is left alone"
        elif tied:
            reason = (f"weight tied to {', '.join(tied)}: kept in float so the tie holds (quantising it would "
                      f"untie them); untie it first to quantise it")
        else:
            try:
                check_scheme(scheme, shape[0])
            except ValueError as exc:
                raise ValueError(f"layer {name!r} cannot be quantised: {exc}") from None
            targets.append((names, mod))
            summary.converted.append(LayerDecision(name, kind, shape))
            continue
        summary.skipped.append(LayerDecision(name, kind, shape, reason))
    result = model
    for names, layer in targets:
        new = QuantLinear.from_linear(layer, scheme, dtype=dtype)
        for name in names:
            if name == "":
                result = new
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if summary.unexpected:
        listed = "; ".join(f"{d.name or '<model>'}: {d.reason}" for d in summary.unexpected)
        warnings.warn(f"quantize_model skipped {len(summary.unexpected)} layer(s) the filter did not exclude: "
                      f"{listed}", UserWarning, stacklevel=2)
    result.quantization_summary = summary
    return result
