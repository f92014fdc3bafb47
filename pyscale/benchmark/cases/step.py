"""Step cases: what a training step of the built-in GPT spends outside its GEMMs and attention, measured op by
op with the code the model runs (`pyscale.models.gpt`, `pyscale.nn.attention`), forward and backward together
(AdamW: one step), at the sizes of `pyscale.benchmark.shapes.step_shapes`:

* `rmsnorm` (gpt.RMSNorm, gradients to the input and the weight), `swiglu` (gpt.swiglu), `add` (a residual
  add, or autograd summing a forked tensor's gradients), `cross_entropy` (gpt.cross_entropy over the
  vocabulary, fp32 whatever the logits' dtype), `embedding` (the gather and its dense table gradient);
* `rotary` of one attention layer's q and k, per implementation: `pyscale` (pyscale.nn.Attention: cos/sin
  computed each call) and `torch` (gpt.TorchAttention: cos/sin cached);
* `adamw` (gpt.build_optimizer's AdamW), in the implementation torch runs by default on the device
  (`gpt.adamw_implementation`): `for-loop` (a CPU's: one tensor at a time, so a case is one tensor) or
  `foreach` (a GPU's: a parameter group at once, so a case is a group of `tensors` equal tensors); a
  `zero_fraction` of the elements keeps zero gradients and moments (the embedding rows a repeated batch
  never touches: some CPUs take square roots of zero far slower than of other numbers).

FLOPs and bytes come from `pyscale.formulas` (its "rest of a training step" section), the same formulas the
step model prices a step with. The dtype is the model's: fp32 on CPU, bf16 on a GPU.
"""

from __future__ import annotations

from typing import Any

from pyscale import formulas
from pyscale.benchmark.cases import cold_copies, round_robin, torch_dtype
from pyscale.benchmark.runner import Case, Workload
from pyscale.benchmark.shapes import step_shapes

ROTARY_IMPLS = ("pyscale", "torch")
ONE_TENSOR_AT_A_TIME = "for-loop"  # the AdamW implementation that steps one tensor per call


def adamw_impl(device: str) -> str:
    """The AdamW implementation torch runs by default for the built-in model's parameters on `device`."""
    import torch

    from pyscale.models import gpt

    probe = torch.nn.Linear(2, 2, bias=False, device=device)
    return gpt.adamw_implementation(gpt.build_optimizer(probe))


def cases(shape_set: str, device: str) -> list[Case]:
    dtype = "bf16" if device == "cuda" else "fp32"
    shapes = step_shapes(shape_set)
    optimizer = adamw_impl(device) if any(op == "adamw" for op, _ in shapes) else None
    out = []
    for op, params in shapes:
        if op == "rotary":
            impls: tuple[str, ...] = ROTARY_IMPLS
        elif op == "adamw":
            if (params["tensors"] == 1) != (optimizer == ONE_TENSOR_AT_A_TIME):
                continue
            impls = (optimizer,)
        else:
            impls = ("torch",)
        out += [Case.make("step", op, impl, params, dtype, shape_set) for impl in impls]
    return out


def _randn(*shape: int, device: str, dtype: Any, gen: Any, grad: bool = False) -> Any:
    import torch

    x = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return x.requires_grad_(grad)


def _grad(fn: Any, inputs: Any) -> Any:
    """f(*inputs) -> output, and the gradients of the inputs for a random upstream gradient."""
    import torch

    def run(*args: Any) -> Any:
        *xs, g = args
        return torch.autograd.grad(fn(*xs), [xs[i] for i in inputs], g)
    return run


def workload(case: Case, device: str) -> Workload:
    import torch

    from pyscale.models import gpt

    p, op, impl = case.params_dict, case.op, case.impl
    dtype = torch_dtype(case.dtype)
    size = torch.finfo(dtype).bits // 8
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, grad: bool = False) -> Any:
        return _randn(*shape, device=device, dtype=dtype, gen=gen, grad=grad)

    if op == "rmsnorm":
        rows, d = p["rows"], p["dim"]
        norm = gpt.RMSNorm(d).to(device=device, dtype=dtype)
        fn = lambda x, g: torch.autograd.grad(norm(x), (x, norm.weight), g)
        args: tuple[Any, ...] = (randn(rows, d, grad=True), randn(rows, d))
        flops, nbytes = formulas.rmsnorm_flops(rows, d), formulas.rmsnorm_bytes(rows, d, size)
    elif op == "swiglu":
        rows, f = p["rows"], p["width"]
        fn = _grad(gpt.swiglu, (0, 1))
        args = (randn(rows, f, grad=True), randn(rows, f, grad=True), randn(rows, f))
        flops, nbytes = formulas.swiglu_flops(rows, f), formulas.swiglu_bytes(rows, f, size)
    elif op == "rotary":
        b, s, h, hkv, hd = p["batch"], p["seq"], p["heads"], p["heads_kv"], p["head_dim"]
        fn = _rotary(impl, s, hd, device)
        args = (randn(b, s, h, hd, grad=True), randn(b, s, hkv, hd, grad=True), randn(b, s, h, hd),
                randn(b, s, hkv, hd))
        flops, nbytes = formulas.rotary_flops(b, s, h, hkv, hd), formulas.rotary_bytes(b, s, h, hkv, hd, size)
    elif op == "add":
        rows, d = p["rows"], p["dim"]
        fn, args = torch.add, (randn(rows, d), randn(rows, d))
        flops, nbytes = formulas.add_flops(rows * d), formulas.add_bytes(rows * d, size)
    elif op == "cross_entropy":
        rows, vocab = p["rows"], p["vocab"]
        targets = torch.randint(0, vocab, (rows,), generator=gen, device=device)
        fn = lambda logits, t: torch.autograd.grad(gpt.cross_entropy(logits, t), logits)
        args = (randn(rows, vocab, grad=True), targets)
        flops, nbytes = formulas.cross_entropy_flops(rows, vocab), formulas.cross_entropy_bytes(rows, vocab, size)
    elif op == "embedding":
        rows, vocab, d = p["rows"], p["vocab"], p["dim"]
        table = torch.nn.Embedding(vocab, d, device=device, dtype=dtype)
        fn = lambda ids, g: torch.autograd.grad(table(ids), table.weight, g)
        args = (torch.randint(0, vocab, (rows,), generator=gen, device=device), randn(rows, d))
        flops, nbytes = formulas.embedding_flops(rows, d), formulas.embedding_bytes(rows, vocab, d, size)
    elif op == "adamw":
        # each copy: parameters, gradients and moments (16 bytes an fp32 element); the step rotates them cold
        copies = cold_copies(4 * size * p["elements"], device)
        fn, args = round_robin([_adamw(impl, p, device, dtype, gen) for _ in range(copies)]), ()
        flops, nbytes = formulas.adamw_flops(p["elements"]), formulas.adamw_bytes(p["elements"], size)
    else:
        raise ValueError(f"step: unknown op {op!r}")
    notes: dict[str, Any] = {"counted": "forward and backward" if op != "adamw" else "one optimizer step"}
    if op == "adamw":
        notes.update(rotating_copies=copies, cold_l2=copies > 1)
    return Workload(fn, args, flops=float(flops), model_flops=None, bytes=float(nbytes), notes=notes)


def _rotary(impl: str, seq: int, head_dim: int, device: str) -> Any:
    """q, k, dq, dk -> the gradients of rotating q and k the way `impl`'s attention module does."""
    import torch

    if impl == "torch":
        from pyscale.models import gpt

        cos, sin = gpt.rotary_cos_sin(seq, head_dim, 10000.0, torch.device(device))  # cached by the module

        def rotate(q: Any, k: Any) -> tuple[Any, Any]:
            return gpt.apply_rotary(q, cos, sin), gpt.apply_rotary(k, cos, sin)
    elif impl == "pyscale":
        from pyscale.nn import attention as nn_attention

        def rotate(q: Any, k: Any) -> tuple[Any, Any]:  # pyscale.nn.Attention.forward: angles every call
            cos, sin = nn_attention.rotary_cos_sin(torch.arange(seq, device=q.device), head_dim, 10000.0)
            return nn_attention.apply_rotary(q, cos, sin), nn_attention.apply_rotary(k, cos, sin)
    else:
        raise ValueError(f"step: unknown rotary implementation {impl!r} (known: {', '.join(ROTARY_IMPLS)})")

    def run(q: Any, k: Any, dq: Any, dk: Any) -> Any:
        return torch.autograd.grad(rotate(q, k), (q, k), (dq, dk))
    return run


def _adamw(impl: str, p: dict[str, Any], device: str, dtype: Any, gen: Any) -> Any:
    """One AdamW step over `tensors` equal tensors holding `elements` in all, with gradients in place: a
    `zero_fraction` of the elements (the first ones) has zero gradients, so their moments stay zero."""
    import torch

    from pyscale.models import gpt

    if impl not in ("for-loop", "foreach", "fused"):
        raise ValueError(f"step: unknown AdamW implementation {impl!r}")
    n, count = p["elements"], p["tensors"]
    each = max(1, n // count)
    shape = (each, 1) if p["matrix"] else (each,)  # build_optimizer decays matrices (dim >= 2) only
    holder = torch.nn.ParameterList(
        torch.nn.Parameter(_randn(*shape, device=device, dtype=dtype, gen=gen)) for _ in range(count))
    zeros = round(p.get("zero_fraction", 0.0) * each * count)
    for param in holder:
        param.grad = _randn(*shape, device=device, dtype=dtype, gen=gen)
        param.grad.view(-1)[:min(zeros, each)] = 0
        zeros = max(0, zeros - each)
    optimizer = gpt.build_optimizer(holder)
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    if gpt.adamw_implementation(optimizer) != impl:  # not torch's default here: ask for it
        optimizer.defaults.update(flags)
        for group in optimizer.param_groups:
            group.update(flags)
    return optimizer.step
