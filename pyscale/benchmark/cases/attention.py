"""Attention cases: the attention of named models (pyscale.benchmark.shapes), forward, backward and
forward+backward, for pyscale's kernel, SDPA as torch dispatches it by itself (`sdpa`: what a model calling
F.scaled_dot_product_attention runs) and every SDPA backend forced (flash, efficient, cuDNN, math where its
scores fit in memory). TFLOP/s use the executed count with causal pairs counted exactly; model FLOPs
(no causal discount) are stored too. FLOPs and bytes are those of pyscale's op (`pyscale.formulas`): q, k, v,
o and lse once per pass (the backward also dO, dq, dk, dv, delta and the lse gradient).
"""

from __future__ import annotations

import importlib

from pyscale import formulas
from pyscale.benchmark.cases import cold_copies, round_robin, torch_dtype
from pyscale.benchmark.runner import Case, Workload
from pyscale.benchmark.shapes import attention_shapes

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
OPS = {"attention_fwd": "fwd", "attention_bwd": "bwd", "attention_fwd_bwd": "fwd+bwd"}
MATH_SCORE_BYTES_LIMIT = 8 * 2**30  # the math backend materialises B·H·S² scores


def cases(shape_set: str, device: str) -> list[Case]:
    dtype = "bf16" if device == "cuda" else "fp32"
    impls = ("pyscale", "sdpa", *(f"sdpa:{b}" for b in SDPA_BACKENDS)) if device == "cuda" else (
        "pyscale", "sdpa", "sdpa:math")
    out = []
    for s in attention_shapes(shape_set):
        params = {"batch": s.batch, "seq_q": s.seq, "seq_k": s.seq, "heads": s.heads_q, "heads_kv": s.heads_kv,
                  "head_dim": s.head_dim, "causal": s.causal}
        for op in OPS:
            for impl in impls:
                if impl == "sdpa:math" and s.batch * s.heads_q * s.seq**2 * 4 > MATH_SCORE_BYTES_LIMIT:
                    continue
                out.append(Case.make("attention", op, impl, params, dtype, shape_set))
    return out


def _sdpa(backend: str | None):
    """SDPA with `backend` forced, or (None) as torch dispatches it."""
    import contextlib

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = None if backend is None else {"flash": SDPBackend.FLASH_ATTENTION,
                                         "efficient": SDPBackend.EFFICIENT_ATTENTION,
                                         "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]

    def run(q, k, v, causal):
        # SDPA wants (batch, heads, seq, dim); its causal mask is top-left, which equals pyscale's
        # bottom-right one here because seq_q == seq_k.
        with sdpa_kernel(kind) if kind is not None else contextlib.nullcontext():
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=causal, enable_gqa=q.shape[2] != k.shape[2])
        return o.transpose(1, 2)

    return run


def workload(case: Case, device: str) -> Workload:
    import torch

    attn_mod = importlib.import_module("pyscale.ops.attention")
    p = case.params_dict
    dtype = torch_dtype(case.dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, s, h, hkv, d = p["batch"], p["seq_q"], p["heads"], p["heads_kv"], p["head_dim"]
    q, k, v = (torch.randn(b, s, n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
               for n in (h, hkv, hkv))
    if case.impl == "pyscale":
        attn = lambda q_, k_, v_, causal: attn_mod.attention(q_, k_, v_, causal=causal)
    elif case.impl == "sdpa" or case.impl.startswith("sdpa:"):
        attn = _sdpa(case.impl.split(":", 1)[1] if ":" in case.impl else None)
    else:
        raise ValueError(f"attention: unknown implementation {case.impl!r}")
    causal, pass_ = p["causal"], OPS[case.op]
    if pass_ == "fwd":
        def fn(q_, k_, v_):
            with torch.no_grad():
                return attn(q_, k_, v_, causal)
        args = (q, k, v)
    elif pass_ == "bwd":
        # each copy keeps its own forward graph (a clone of `out` would have none): the workload rotates them
        def one_copy(q_, k_, v_):
            out = attn(q_, k_, v_, causal)
            dout = torch.randn_like(out)
            return lambda: torch.autograd.grad(out, (q_, k_, v_), dout, retain_graph=True)

        size = 2 * (q.numel() + k.numel() + v.numel()) * q.element_size() * 2  # inputs, out, grads
        copies = cold_copies(size, device)
        fn = round_robin([one_copy(q, k, v)] + [one_copy(*(t.detach().clone().requires_grad_(True) for t in (q, k, v)))
                                                 for _ in range(copies - 1)])
        args = ()
    else:
        dout = torch.randn(b, s, h, d, generator=gen).to(device=device, dtype=dtype)
        fn = lambda q_, k_, v_, g: torch.autograd.grad(attn(q_, k_, v_, causal), (q_, k_, v_), g)
        args = (q, k, v, dout)
    flops = formulas.attention_flops(b, s, s, h, d, causal=causal, pass_=pass_)
    nbytes = formulas.attention_bytes(b, s, s, h, hkv, d, torch.finfo(dtype).bits // 8, pass_=pass_)
    notes = {"flops_convention": "executed, causal pairs counted exactly"}
    if pass_ == "bwd":
        notes.update(rotating_copies=copies, cold_l2=copies > 1)
    return Workload(fn, args, flops=float(flops.executed), model_flops=float(flops.model), bytes=float(nbytes),
                    notes=notes)
