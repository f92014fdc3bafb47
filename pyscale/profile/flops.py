"""Dispatch-level FLOP and byte counting, per module, forward and backward separately.

`FlopCounter` is a `TorchDispatchMode`: it sees every aten op (and every custom op) that reaches the
dispatcher below autograd, so the backward pass is counted op by op like the forward. What it counts:

- matmul family: mm, bmm, addmm, baddbmm, linear, convolution (+ its backward), `_scaled_mm`, `_int_mm`,
  `_grouped_mm` / `_scaled_grouped_mm` -- 2 FLOPs per multiply-add; bias additions are not counted.
- every SDPA backend, forward and backward: flash, efficient (mem-efficient), cuDNN, the CPU flash kernel,
  the low-level `_flash_attention_*` / `_efficient_attention_*`; the math backend decomposes into bmm.
- custom ops through the registry of `pyscale.formulas`: pyscale's own ops are listed there, and users add
  theirs with `register_flop_formula(op, executed=..., model=..., bytes=...)` (re-exported here). Formulas
  take `(args, kwargs, out)`. The module-level dicts `FLOP_FORMULAS`, `MODEL_FLOP_FORMULAS`,
  `BYTE_FORMULAS` of an *already imported* `pyscale.ops.*` module are still read for one release, with a
  DeprecationWarning (this module never imports an op).
  A custom op (any namespace but aten/prim) with no formula is listed in `FlopCounts.uncounted_ops`.

Two FLOP numbers (DESIGN.md §6):
- *executed*: what the kernels run. Causal attention counts the attended (query, key) pairs exactly;
  fused attention backwards include the recompute of Q·Kᵀ (5 matmuls, not 4).
- *model* (PaLM's MFU convention): no causal discount, no recompute, and the backward is 2x the forward
  by definition -- so `model_flops = 3 * forward_model_flops` when a backward ran in the step.

Elementwise work (norms, softmax, activations, rotary, optimizer updates) costs no FLOPs here, as in
PaLM's formula and in `torch.utils.flop_counter`. `bytes` is an estimate for every op that moves data:
the sizes of its tensor inputs plus its tensor outputs, each operand counted once per use (no cache
model; `pyscale.formulas.tensor_bytes`); views and allocations move nothing.

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

import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyscale import formulas
from pyscale.formulas import Formula, OpFormulas, register_flop_formula, unregister_flop_formula

__all__ = ["FlopCounter", "FlopCounts", "ModuleCounts", "PhaseCounts", "count_flops", "register_flop_formula",
           "unregister_flop_formula"]

FORWARD = "forward"
BACKWARD = "backward"
GLOBAL = "Global"  # "outside any module": the step total (torch's ModuleTracker uses the same name)


# --------------------------------------------------------------------------- registry

_LEGACY_TABLES = (("FLOP_FORMULAS", "executed"), ("MODEL_FLOP_FORMULAS", "model"), ("BYTE_FORMULAS", "bytes"))


def _legacy_formulas() -> dict[str, OpFormulas]:
    """Formulas from the FLOP_FORMULAS/MODEL_FLOP_FORMULAS/BYTE_FORMULAS dicts of imported pyscale.ops.*
    modules: the hook of the previous release, read for one more with a DeprecationWarning."""
    found: dict[str, dict[str, Formula]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyscale.ops" or name.startswith("pyscale.ops.")):
            continue
        tables = [attr for attr, _ in _LEGACY_TABLES if isinstance(getattr(module, attr, None), Mapping)]
        if not tables:
            continue
        warnings.warn(f"{name} declares {', '.join(tables)}: FLOP formula tables in op modules are deprecated "
                      f"and will not be read after this release; register the formulas with "
                      f"pyscale.formulas.register_flop_formula(op, executed=..., model=..., bytes=...)",
                      DeprecationWarning, stacklevel=4)
        for attr, slot in _LEGACY_TABLES:
            for op, fn in (getattr(module, attr, None) or {}).items():
                found.setdefault(str(op), {})[slot] = fn
    return {op: OpFormulas(slots["executed"], slots.get("model"), slots.get("bytes"))
            for op, slots in found.items() if "executed" in slots}


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


@dataclass(frozen=True)
class _Attn:
    """Sizes of one attention call: batch*heads_q, the per-sequence (Sq, Sk) list, head dims."""

    bh: int  # heads_q (times batch unless the sequences are listed in seqs)
    seqs: tuple[tuple[int, int], ...]
    d_qk: int
    d_v: int
    causal: str | None

    def flops(self, backward: bool) -> formulas.AttentionFlops:
        """Executed (attended pairs, fused backward with its Q·Kᵀ recompute) and model (all pairs) FLOPs."""
        return formulas.attention_sequences_flops(self.seqs, self.bh, self.d_qk, self.d_v,
                                                  causal=self.causal is not None,
                                                  align=self.causal or "bottom_right",
                                                  pass_="bwd" if backward else "fwd")


def _attn_bhsd(q: Any, k: Any, v: Any, causal: str | None) -> _Attn:
    """(batch, heads, seq, dim) layout of the _scaled_dot_product_* ops."""
    b, h, sq, d = _shape(q)
    return _Attn(b * h, ((sq, _shape(k)[-2]),), d, _shape(v)[-1], causal)


def _attn_bshd(q: Any, k: Any, v: Any, causal: str | None, cu_q: Any = None, cu_k: Any = None) -> _Attn:
    """(batch, seq, heads, dim) layout of _flash_attention_* / _efficient_attention_* (varlen when cu_* given)."""
    qs, vs = _shape(q), _shape(v)
    h, d, dv = qs[-2], qs[-1], vs[-1]
    if cu_q is not None and cu_k is not None:
        return _Attn(h, tuple(zip(formulas.seqlens(cu_q), formulas.seqlens(cu_k))), d, dv, causal)
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


def aten_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    """(executed, model) FLOPs of an aten op we count, else None. Model == executed except attention."""
    name = func.overloadpacket.__name__
    if name in ("mm", "_int_mm", "_scaled_mm"):
        m, k = _shape(args[0])
        f = formulas.gemm_flops(m, _shape(args[1])[1], k)
    elif name == "addmm":
        m, k = _shape(args[1])
        f = formulas.gemm_flops(m, _shape(args[2])[1], k)
    elif name == "bmm":
        b, m, k = _shape(args[0])
        f = formulas.batched_gemm_flops(b, m, _shape(args[1])[2], k)
    elif name == "baddbmm":
        b, m, k = _shape(args[1])
        f = formulas.batched_gemm_flops(b, m, _shape(args[2])[2], k)
    elif name == "linear":
        x, w = _shape(args[0]), _shape(args[1])
        f = formulas.gemm_flops(_prod(x[:-1]), w[0], w[1])
    elif name in ("_grouped_mm", "_scaled_grouped_mm"):
        f = formulas.grouped_mm_flops(_shape(args[0]), _shape(args[1]))
    elif name in ("convolution", "_convolution"):
        a = _bind(func, args, kwargs)
        f = formulas.conv_flops(_shape(a["input"]), _shape(a["weight"]), _shape(out), bool(a["transposed"]))
    elif name == "convolution_backward":
        a = _bind(func, args, kwargs)
        x, w, g = _shape(a["input"]), _shape(a["weight"]), _shape(a["grad_output"])
        one = formulas.conv_flops(x, w, g, bool(a["transposed"]))
        mask = list(a["output_mask"])
        f = one * (int(bool(mask[0])) + int(bool(mask[1])))  # grad_input and grad_weight each cost a forward
    elif name in SDPA_OPS:
        info, backward = _sdpa_info(name, _bind(func, args, kwargs))
        return tuple(info.flops(backward))
    else:
        return None
    return f, f


_NO_TRAFFIC = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                         "lift_fresh", "alias", "set_", "resize_", "resize_as_", "_local_scalar_dense",
                         "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size"})


def default_bytes(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """Inputs read plus outputs written; 0 for views and allocations."""
    if getattr(func, "is_view", False) or func.overloadpacket.__name__ in _NO_TRAFFIC:
        return 0
    leaves = (*tree_leaves(args), *tree_leaves(kwargs), *tree_leaves(out))
    return formulas.tensor_bytes(*(leaf for leaf in leaves if isinstance(leaf, torch.Tensor)))


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


_SCOPES = itertools.count()


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
    Nodes are never keyed by `id()`: the Python object of an autograd node is a temporary wrapper, and a
    dead wrapper's id is reused by the next one (how often depends on the Python and torch versions), so a
    walk keyed by ids would skip nodes it never saw. The walk's marks live in `node.metadata`, which the
    C++ node owns and every wrapper of it shares.
    """

    def __init__(self, root: torch.nn.Module | None = None) -> None:
        self._key = f"pyscale.flops.scope.{next(_SCOPES)}"  # a counter, not id(self): ids of dead objects recur
        self._visit_key = f"{self._key}.visited"  # the token of the last walk that passed a node
        self._inputs_key = f"{self._key}.inputs"  # tokens of the module calls a node is an input of
        self._names: dict[int, str] = {}  # id(module) -> name, kept only while counting
        self._keep: list[torch.nn.Module] = []  # holds named modules so their ids stay unique
        self._used: set[str] = set()
        self._frames = itertools.count()  # one token per module call: marks its inputs' nodes and its walk
        self.stack: list[tuple[str, int]] = []  # (module name, the token of this call)
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
        frame = next(self._frames)
        for t in tree_leaves(args):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                t.grad_fn.metadata.setdefault(self._inputs_key, set()).add(frame)
        self.stack.append((self.name(mod), frame))

    def _post(self, mod: torch.nn.Module, args: Any, out: Any) -> None:
        if not self.stack:
            return
        name, frame = self.stack.pop()
        chain = (*(n for n, _ in self.stack), name)
        # Label every node made in this forward: walk back from the outputs to the inputs' nodes.
        todo = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        while todo:
            node = todo.pop()
            meta = node.metadata
            if meta.get(self._visit_key) == frame or frame in meta.get(self._inputs_key, ()):
                continue
            meta[self._visit_key] = frame
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
        self._formulas: dict[str, OpFormulas] = {}
        self.steps: list[FlopCounts] = []
        self._reset()

    def _reset(self) -> None:
        self._modules: dict[str, ModuleCounts] = {}
        self._has_backward = False
        self._uncounted: set[str] = set()

    def _refresh_formulas(self) -> None:
        # a user's registration wins over a legacy table, which wins over pyscale's built-in formulas
        self._formulas = {**formulas.BUILTIN_FORMULAS, **_legacy_formulas(), **formulas.registered_formulas()}

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
                              f"(register one with pyscale.formulas.register_flop_formula)",
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
