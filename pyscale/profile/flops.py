"""Dispatch-level FLOP and byte counting, per module, forward and backward separately.

`FlopCounter` is a `TorchDispatchMode`: it sees every aten op (and every custom op) that reaches the
dispatcher below autograd, so the backward pass is counted op by op like the forward. What it counts:

- matmul family: mm, bmm, addmm, baddbmm, linear, convolution (+ its backward), `_scaled_mm`, `_int_mm`,
  `_grouped_mm` / `_scaled_grouped_mm` -- 2 FLOPs per multiply-add; bias additions are not counted.
- every SDPA backend, forward and backward: flash, efficient (mem-efficient), cuDNN, the CPU flash kernel,
  the low-level `_flash_attention_*` / `_efficient_attention_*`; the math backend decomposes into bmm.
- custom ops through a registry: `register_flop_formula(op, executed=..., model=..., bytes=...)`, plus the
  module-level dicts `FLOP_FORMULAS`, `MODEL_FLOP_FORMULAS`, `BYTE_FORMULAS` of every *already imported*
  `pyscale.ops.*` module (this module never imports an op). Formulas take `(args, kwargs, out)`.
  A custom op (any namespace but aten/prim) with no formula is listed in `FlopCounts.uncounted_ops`.

Two FLOP numbers (DESIGN.md §6):
- *executed*: what the kernels run. Causal attention counts the attended (query, key) pairs exactly;
  fused attention backwards include the recompute of Q·Kᵀ (5 matmuls, not 4).
- *model* (PaLM's MFU convention): no causal discount, no recompute, and the backward is 2x the forward
  by definition -- so `model_flops = 3 * forward_model_flops` when a backward ran in the step.

Elementwise work (norms, softmax, activations, rotary, optimizer updates) costs no FLOPs here, as in
PaLM's formula and in `torch.utils.flop_counter`. `bytes` is an estimate for every op that moves data:
the sizes of its tensor inputs plus its tensor outputs, each operand counted once per use (no cache
model); views and allocations move nothing.

Differences from `torch.utils.flop_counter.FlopCounterMode` (torch 2.13), all tested:
- it has no formula for `_scaled_dot_product_flash_attention_for_cpu` (+ backward), `_int_mm`,
  `_grouped_mm` or custom ops, so it reports 0 for them; we count them.
- causal attention: it counts all Sq·Sk pairs; our executed count takes only the attended pairs
  (top-left aligned for torch's `is_causal`, as torch documents; `_flash_attention_*` and efficient
  `custom_mask_type=2` are bottom-right aligned). Our model count matches its count.
- fused attention backward: it counts 5 matmuls (the Q·Kᵀ recompute included), as our executed count
  does; our model count takes the 4 gradient matmuls only (PaLM: no recompute).
- dense inputs of the low-level `_flash_attention_*` / `_efficient_attention_*` ops are laid out
  (batch, seq, heads, dim); torch's counter reads them as (batch, heads, seq, dim), so it is right only
  when heads == seq. We read the schema's layout. (Reached only by direct calls: the SDPA entry points,
  which are what a dispatch mode sees, take (batch, heads, seq, dim).)
- everything else (mm/bmm/addmm/baddbmm/conv/`_scaled_mm`, non-causal SDPA) agrees exactly.

Per-step counts: `FlopCounter.step()` closes the current step and returns its counts; counts are never
carried from one step into the next.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Formula = Callable[[tuple, dict, Any], float]

FORWARD = "forward"
BACKWARD = "backward"
GLOBAL = "Global"  # "outside any module": the step total (torch's ModuleTracker uses the same name)


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class FormulaSet:
    executed: Formula
    model: Formula | None = None
    bytes: Formula | None = None


_REGISTRY: dict[str, FormulaSet] = {}


def register_flop_formula(op_name: str, executed: Formula, model: Formula | None = None,
                          bytes: Formula | None = None) -> None:  # noqa: A002 - the documented keyword
    """Register the FLOP formulas of a custom op, e.g. `"pyscale::attention"`.

    Each formula is `fn(args, kwargs, out) -> number` on the op's dispatched arguments and result.
    `model` defaults to `executed`; `bytes` defaults to the generic inputs-plus-outputs estimate.
    """
    if "::" not in op_name:
        raise ValueError(f"op_name must be qualified as 'namespace::name': got {op_name!r}")
    if not callable(executed):
        raise ValueError(f"executed must be a callable (args, kwargs, out) -> flops: got {executed!r}")
    _REGISTRY[op_name] = FormulaSet(executed, model, bytes)


def unregister_flop_formula(op_name: str) -> None:
    _REGISTRY.pop(op_name, None)


def _discovered_formulas() -> dict[str, FormulaSet]:
    """Formulas from the FLOP_FORMULAS/MODEL_FLOP_FORMULAS/BYTE_FORMULAS dicts of imported pyscale.ops.*."""
    found: dict[str, dict[str, Formula]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyscale.ops" or name.startswith("pyscale.ops.")):
            continue
        for attr, slot in (("FLOP_FORMULAS", "executed"), ("MODEL_FLOP_FORMULAS", "model"),
                           ("BYTE_FORMULAS", "bytes")):
            table = getattr(module, attr, None)
            if isinstance(table, Mapping):
                for op, fn in table.items():
                    found.setdefault(str(op), {})[slot] = fn
    out = {}
    for op, slots in found.items():
        if "executed" in slots:
            out[op] = FormulaSet(slots["executed"], slots.get("model"), slots.get("bytes"))
    return out


# --------------------------------------------------------------------------- helpers

def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    schema_args = func._schema.arguments
    for i, arg in enumerate(schema_args):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


def causal_pairs(seq_q: int, seq_k: int, offset: int) -> int:
    """Attended (query, key) pairs when query row i sees keys j <= i + offset (0 <= j < seq_k).

    offset 0 is top-left alignment (torch's `is_causal`), seq_k - seq_q bottom-right (flash-attn, pyscale).
    """
    if seq_q <= 0 or seq_k <= 0:
        return 0
    first = max(0, -offset)  # first row that sees at least one key
    full_from = min(seq_q, max(first, seq_k - offset - 1))  # first row that sees all seq_k keys
    partial = 0
    if full_from > first:
        # rows first..full_from-1 see (i + offset + 1) keys: an arithmetic series
        lo, hi = first + offset + 1, full_from - 1 + offset + 1
        partial = (lo + hi) * (full_from - first) // 2
    return partial + (seq_q - full_from) * seq_k


def _pairs(seq_q: int, seq_k: int, causal: str | None) -> int:
    if causal is None:
        return seq_q * seq_k
    return causal_pairs(seq_q, seq_k, 0 if causal == "top_left" else seq_k - seq_q)


def _varlen_lengths(cu: Any) -> list[int]:
    values = [int(v) for v in cu.tolist()]  # a device sync on GPU: counting passes are not timed
    return [b - a for a, b in zip(values[:-1], values[1:])]


@dataclass(frozen=True)
class _Attn:
    """Sizes of one attention call: batch*heads_q, the per-sequence (Sq, Sk) list, head dims."""

    bh: int  # heads_q (times batch unless the sequences are listed in seqs)
    seqs: tuple[tuple[int, int], ...]
    d_qk: int
    d_v: int
    causal: str | None

    def pairs(self, exact: bool) -> int:
        return sum(_pairs(sq, sk, self.causal if exact else None) for sq, sk in self.seqs)

    def forward(self, exact: bool) -> int:
        return 2 * self.bh * self.pairs(exact) * (self.d_qk + self.d_v)

    def backward(self, exact: bool, recompute: bool) -> int:
        # dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q, (+ S = Q·Kᵀ recomputed by fused kernels)
        return 2 * self.bh * self.pairs(exact) * ((3 if recompute else 2) * self.d_qk + 2 * self.d_v)


def _attn_bhsd(q: Any, k: Any, v: Any, causal: str | None) -> _Attn:
    """(batch, heads, seq, dim) layout of the _scaled_dot_product_* ops."""
    b, h, sq, d = _shape(q)
    return _Attn(b * h, ((sq, _shape(k)[-2]),), d, _shape(v)[-1], causal)


def _attn_bshd(q: Any, k: Any, v: Any, causal: str | None, cu_q: Any = None, cu_k: Any = None) -> _Attn:
    """(batch, seq, heads, dim) layout of _flash_attention_* / _efficient_attention_* (varlen when cu_* given)."""
    qs, vs = _shape(q), _shape(v)
    h, d, dv = qs[-2], qs[-1], vs[-1]
    if cu_q is not None and cu_k is not None:
        return _Attn(h, tuple(zip(_varlen_lengths(cu_q), _varlen_lengths(cu_k))), d, dv, causal)
    return _Attn(qs[0] * h, ((qs[1], _shape(k)[1]),), d, dv, causal)


def _efficient_mask(mask_type: Any) -> str | None:
    # custom_mask_type: 0 none, 1 causal from the top left, 2 causal from the bottom right
    return {1: "top_left", 2: "bottom_right"}.get(int(mask_type or 0))


def _sdpa_info(name: str, a: dict[str, Any]) -> tuple[_Attn, bool]:
    """(_Attn, is_backward) for every SDPA-family op we know."""
    causal_tl = "top_left" if a.get("is_causal") else None
    causal_br = "bottom_right" if a.get("is_causal") else None
    if name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_fused_attention_overrideable"):
        return _attn_bhsd(a["query"], a["key"], a["value"], causal_tl), False
    if name in ("_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_efficient_attention_backward",
                "_scaled_dot_product_cudnn_attention_backward",
                "_scaled_dot_product_flash_attention_for_cpu_backward",
                "_scaled_dot_product_fused_attention_overrideable_backward"):
        return _attn_bhsd(a["query"], a["key"], a["value"], causal_tl), True
    if name == "_flash_attention_forward":
        return _attn_bshd(a["query"], a["key"], a["value"], causal_br, a.get("cum_seq_q"), a.get("cum_seq_k")), False
    if name == "_flash_attention_backward":
        return _attn_bshd(a["query"], a["key"], a["value"], causal_br, a.get("cum_seq_q"), a.get("cum_seq_k")), True
    if name in ("_efficient_attention_forward", "_efficient_attention_backward"):
        info = _attn_bshd(a["query"], a["key"], a["value"], _efficient_mask(a.get("custom_mask_type")),
                          a.get("cu_seqlens_q"), a.get("cu_seqlens_k"))
        return info, name.endswith("backward")
    raise KeyError(name)


SDPA_OPS = frozenset({
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
    "_flash_attention_forward", "_flash_attention_backward",
    "_efficient_attention_forward", "_efficient_attention_backward",
})


def _conv_flops(x_shape: tuple[int, ...], w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                transposed: bool) -> int:
    # Each weight element meets every position of the "small" side (output, or input when transposed).
    spatial = x_shape[2:] if transposed else out_shape[2:]
    return 2 * x_shape[0] * _prod(spatial) * _prod(w_shape)


def _grouped_mm_flops(a: Any, b: Any) -> int:
    sa, sb = _shape(a), _shape(b)
    if len(sa) == 2 and len(sb) == 2:  # groups along K (weight-gradient form): (M, ΣK) x (ΣK, N)
        return 2 * sa[0] * sb[1] * sa[1]
    # (ΣM, K) x (G, K, N), (G, M, K) x (G, K, N), (G, M, K) x (K, ΣN): every output element has K products
    if len(sa) == 2:
        return 2 * sa[0] * sb[-1] * sa[1]
    if len(sb) == 2:
        return 2 * sa[-2] * sb[-1] * sa[-1]
    return 2 * sa[0] * sa[1] * sb[-1] * sa[2]


def aten_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    """(executed, model) FLOPs of an aten op we count, else None. Model == executed except attention."""
    name = func.overloadpacket.__name__
    if name in ("mm", "_int_mm", "_scaled_mm"):
        m, k = _shape(args[0])
        n = _shape(args[1])[1]
        f = 2 * m * n * k
    elif name == "addmm":
        m, k = _shape(args[1])
        f = 2 * m * _shape(args[2])[1] * k
    elif name == "bmm":
        b, m, k = _shape(args[0])
        f = 2 * b * m * _shape(args[1])[2] * k
    elif name == "baddbmm":
        b, m, k = _shape(args[1])
        f = 2 * b * m * _shape(args[2])[2] * k
    elif name == "linear":
        x, w = _shape(args[0]), _shape(args[1])
        f = 2 * _prod(x[:-1]) * w[0] * w[1]
    elif name in ("_grouped_mm", "_scaled_grouped_mm"):
        f = _grouped_mm_flops(args[0], args[1])
    elif name in ("convolution", "_convolution"):
        a = _bind(func, args, kwargs)
        f = _conv_flops(_shape(a["input"]), _shape(a["weight"]), _shape(out), bool(a["transposed"]))
    elif name == "convolution_backward":
        a = _bind(func, args, kwargs)
        x, w, g = _shape(a["input"]), _shape(a["weight"]), _shape(a["grad_output"])
        one = _conv_flops(x, w, g, bool(a["transposed"]))
        mask = list(a["output_mask"])
        f = one * (int(bool(mask[0])) + int(bool(mask[1])))  # grad_input and grad_weight each cost a forward
    elif name in SDPA_OPS:
        info, backward = _sdpa_info(name, _bind(func, args, kwargs))
        if backward:
            return info.backward(exact=True, recompute=True), info.backward(exact=False, recompute=False)
        return info.forward(exact=True), info.forward(exact=False)
    else:
        return None
    return f, f


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_NO_TRAFFIC = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                         "lift_fresh", "alias", "set_", "resize_", "resize_as_", "_local_scalar_dense",
                         "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size"})


def default_bytes(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """Inputs read plus outputs written; 0 for views and allocations."""
    if getattr(func, "is_view", False) or func.overloadpacket.__name__ in _NO_TRAFFIC:
        return 0
    total = 0
    for leaf in (*tree_leaves(args), *tree_leaves(kwargs), *tree_leaves(out)):
        if isinstance(leaf, torch.Tensor):
            total += _nbytes(leaf)
    return total


# --------------------------------------------------------------------------- results

@dataclass
class PhaseCounts:
    """FLOPs and bytes of one phase (forward or backward) of one module or op."""

    flops: int = 0
    model_flops: int = 0  # forward only; the backward's model FLOPs are 2x the forward by convention
    bytes: int = 0
    calls: int = 0

    def add(self, flops: int, model_flops: int, nbytes: int) -> None:
        self.flops += flops
        self.model_flops += model_flops
        self.bytes += nbytes
        self.calls += 1


@dataclass
class ModuleCounts:
    """Counts of one module (its children included) in one step."""

    name: str
    forward: PhaseCounts = field(default_factory=PhaseCounts)
    backward: PhaseCounts = field(default_factory=PhaseCounts)
    ops: dict[tuple[str, str], PhaseCounts] = field(default_factory=dict)  # (phase, op) -> counts

    @property
    def flops(self) -> int:
        return self.forward.flops + self.backward.flops

    @property
    def bytes(self) -> int:
        return self.forward.bytes + self.backward.bytes

    def model_flops(self, has_backward: bool) -> int:
        return self.forward.model_flops * (3 if has_backward else 1)


@dataclass(frozen=True)
class FlopCounts:
    """One step's counts. `modules` maps a module path ("GPT.blocks.0.attn") to its counts; "Global" is the step."""

    modules: dict[str, ModuleCounts]
    has_backward: bool
    uncounted_ops: tuple[str, ...] = ()

    @property
    def total(self) -> ModuleCounts:
        return self.modules.get(GLOBAL) or ModuleCounts(GLOBAL)

    @property
    def flops(self) -> int:
        """Executed FLOPs, forward + backward."""
        return self.total.flops

    @property
    def forward_flops(self) -> int:
        return self.total.forward.flops

    @property
    def backward_flops(self) -> int:
        return self.total.backward.flops

    @property
    def forward_model_flops(self) -> int:
        return self.total.forward.model_flops

    @property
    def model_flops(self) -> int:
        """PaLM-convention FLOPs: forward model FLOPs, x3 when the step ran a backward."""
        return self.total.model_flops(self.has_backward)

    @property
    def bytes(self) -> int:
        return self.total.bytes

    def by_op(self, module: str = GLOBAL) -> dict[tuple[str, str], PhaseCounts]:
        return dict(self.modules[module].ops) if module in self.modules else {}

    def module_rows(self) -> list[dict[str, Any]]:
        """One dict per module, the step first: name, flops, forward/backward flops, model_flops, bytes."""
        rows = []
        for name, mc in self.modules.items():
            rows.append({"module": name, "flops": mc.flops, "forward_flops": mc.forward.flops,
                         "backward_flops": mc.backward.flops, "model_flops": mc.model_flops(self.has_backward),
                         "bytes": mc.bytes})
        rows.sort(key=lambda r: (r["module"] != GLOBAL, r["module"]))
        return rows


# --------------------------------------------------------------------------- the counter

def _op_key(func: Any) -> str:
    return str(func._schema.name)  # "aten::mm", "pyscale::attention"


class ModuleScopes:
    """Which modules an op belongs to, forward and backward.

    Forward: a stack kept by global module pre/post hooks. Backward: each autograd node created inside a
    module's forward is labelled (in `node.metadata`) with the chain of modules that were running; a
    backward op belongs to the chain of the node the autograd engine is executing
    (`torch._C._current_autograd_node()`). This is exact where torch's ModuleTracker is approximate: its
    backward scopes close only when *all* users of a module's input have run their backward, so sibling
    modules sharing an input (q/k/v projections) overlap.
    Names: the root's class name plus the dotted path from `named_modules()` (ModuleTracker's scheme);
    modules outside a given root get their class name, made unique with "#2", "#3", ...
    """

    def __init__(self, root: torch.nn.Module | None = None) -> None:
        self._key = f"pyscale.flops.scope.{id(self)}"
        self._names: dict[int, str] = {}  # id(module) -> name, kept only while counting
        self._keep: list[torch.nn.Module] = []  # holds named modules so their ids stay unique
        self._used: set[str] = set()
        self.stack: list[tuple[str, set[int]]] = []  # (module name, ids of its inputs' grad_fns)
        self._handles: list[Any] = []
        if root is not None:
            self._register(root, type(root).__name__)

    def _register(self, mod: torch.nn.Module, name: str) -> None:
        base, k = name, 2
        while name in self._used:
            name, k = f"{base}#{k}", k + 1
        self._names[id(mod)] = name
        self._keep.append(mod)
        self._used.add(name)
        for child_name, child in mod.named_children():
            if id(child) not in self._names:
                self._register(child, f"{name}.{child_name}")

    def name(self, mod: torch.nn.Module) -> str:
        if id(mod) not in self._names:
            self._register(mod, type(mod).__name__)
        return self._names[id(mod)]

    def _pre(self, mod: torch.nn.Module, args: Any) -> None:
        inputs = {id(t.grad_fn) for t in tree_leaves(args) if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        self.stack.append((self.name(mod), inputs))

    def _post(self, mod: torch.nn.Module, args: Any, out: Any) -> None:
        if not self.stack:
            return
        name, boundary = self.stack.pop()
        chain = (*(n for n, _ in self.stack), name)
        # Label every node made in this forward: walk back from the outputs to the inputs' nodes.
        todo = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        seen: set[int] = set()
        while todo:
            node = todo.pop()
            if id(node) in seen or id(node) in boundary:
                continue
            seen.add(id(node))
            meta = node.metadata
            if self._key not in meta:  # inner modules labelled theirs first (post hooks run inside out)
                meta[self._key] = chain
            todo.extend(nxt for nxt, _ in node.next_functions if nxt is not None)

    def current(self, backward: bool) -> tuple[str, ...]:
        if backward:
            get_node = getattr(torch._C, "_current_autograd_node", None)
            node = get_node() if get_node is not None else None
            if node is None:
                return ()
            return node.metadata.get(self._key, ())
        return tuple(n for n, _ in self.stack)

    def __enter__(self) -> ModuleScopes:
        from torch.nn.modules import module as nn_module

        self._handles = [nn_module.register_module_forward_pre_hook(self._pre),
                         nn_module.register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.stack.clear()


class FlopCounter(TorchDispatchMode):
    """Count executed/model FLOPs and bytes of every op run inside `with FlopCounter() as c:`.

    `c.step()` ends a step and returns its `FlopCounts` (the next step starts from zero); `c.counts()`
    reads the step in progress. `root` names modules by their path in it ("GPT.blocks.0.attn");
    `modules=False` skips module tracking (only "Global").
    """

    def __init__(self, *, root: torch.nn.Module | None = None, modules: bool = True,
                 warn_uncounted: bool = True) -> None:
        super().__init__()
        self._scopes = ModuleScopes(root) if (modules or root is not None) else None
        self._warn_uncounted = warn_uncounted
        self._formulas: dict[str, FormulaSet] = {}
        self.steps: list[FlopCounts] = []
        self._reset()

    def _reset(self) -> None:
        self._modules: dict[str, ModuleCounts] = {}
        self._has_backward = False
        self._uncounted: set[str] = set()

    def _refresh_formulas(self) -> None:
        self._formulas = {**_discovered_formulas(), **_REGISTRY}  # explicit registration wins

    def __enter__(self) -> FlopCounter:
        self._refresh_formulas()
        if self._scopes is not None:
            self._scopes.__enter__()
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._scopes is not None:
            self._scopes.__exit__(*exc)

    def counts(self) -> FlopCounts:
        """The step in progress (a snapshot)."""
        return FlopCounts(dict(self._modules), self._has_backward, tuple(sorted(self._uncounted)))

    def step(self) -> FlopCounts:
        """Close the current step: return its counts and start the next one from zero."""
        done = self.counts()
        self.steps.append(done)
        self._reset()
        return done

    def _parents(self, backward: bool) -> Iterator[str]:
        yield GLOBAL
        if self._scopes is not None:
            yield from self._scopes.current(backward)

    def _count(self, func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[int, int, int] | None:
        key = _op_key(func)
        namespace = key.split("::", 1)[0]
        if namespace == "profiler":  # record_function markers: instrumentation, no work
            return 0, 0, 0
        if namespace in ("aten", "prims"):
            fm = aten_flops(func, args, kwargs, out)
            flops, model = fm if fm is not None else (0, 0)
            return flops, model, default_bytes(func, args, kwargs, out)
        formulas = self._formulas.get(key)
        if formulas is None:
            self._refresh_formulas()  # an op module imported after __enter__
            formulas = self._formulas.get(key)
        if formulas is None:
            if key not in self._uncounted and self._warn_uncounted:
                warnings.warn(f"FlopCounter: no FLOP formula for custom op {key}; it counts 0 FLOPs "
                              f"(register one with pyscale.profile.flops.register_flop_formula)",
                              RuntimeWarning, stacklevel=2)
            self._uncounted.add(key)
            return 0, 0, default_bytes(func, args, kwargs, out)
        try:
            flops = int(formulas.executed(args, kwargs, out))
            model = int(formulas.model(args, kwargs, out)) if formulas.model is not None else flops
            nbytes = (int(formulas.bytes(args, kwargs, out)) if formulas.bytes is not None
                      else default_bytes(func, args, kwargs, out))
        except Exception as exc:  # a broken formula must not break the measured program: report it
            if key not in self._uncounted:
                warnings.warn(f"FlopCounter: the FLOP formula of {key} failed ({type(exc).__name__}: {exc}); "
                              f"it counts 0 FLOPs", RuntimeWarning, stacklevel=2)
            self._uncounted.add(key)
            return 0, 0, default_bytes(func, args, kwargs, out)
        return flops, model, nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counted = self._count(func, args, kwargs, out)
        if counted is None:
            return out
        flops, model, nbytes = counted
        backward = torch._C._current_graph_task_id() != -1
        if backward:
            self._has_backward = True
            model = 0  # derived as 2x forward (PaLM), never summed from backward kernels
        phase = BACKWARD if backward else FORWARD
        op = func.overloadpacket.__name__ if _op_key(func).startswith("aten::") else _op_key(func)
        for name in self._parents(backward):
            mc = self._modules.get(name)
            if mc is None:
                mc = self._modules[name] = ModuleCounts(name)
            getattr(mc, phase).add(flops, model, nbytes)
            mc.ops.setdefault((phase, op), PhaseCounts()).add(flops, model, nbytes)
        return out


def count_flops(fn: Callable[..., Any], *args: Any, modules: bool = True, **kwargs: Any) -> FlopCounts:
    """Run `fn(*args, **kwargs)` once under a fresh FlopCounter and return that one step's counts."""
    with FlopCounter(modules=modules) as counter:
        fn(*args, **kwargs)
    return counter.step()
