"""Attention cases: the attention of named models (pyscale.benchmark.shapes), forward, backward and
forward+backward, for pyscale's kernel and every SDPA backend (flash, efficient, cuDNN, math where its
scores fit in memory). TFLOP/s use the executed count with causal pairs counted exactly; model FLOPs
(no causal discount) are stored too. FLOPs and bytes are those of pyscale's op (`pyscale.formulas`): q, k, v,
o and lse once per pass (the backward also dO, dq, dk, dv, delta and the lse gradient).
"""

from __future__ import annotations

import importlib

from pyscale import formulas
from pyscale.benchmark.cases import torch_dtype
from pyscale.benchmark.runner import Case, Workload
from pyscale.benchmark.shapes import attention_shapes

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
OPS = {"attention_fwd": "fwd", "attention_bwd": "bwd", "attention_fwd_bwd": "fwd+bwd"}
MATH_SCORE_BYTES_LIMIT = 8 * 2**30  # the math backend materialises B·H·S² scores


def cases(shape_set: str, device: str) -> list[Case]:
    dtype = "bf16" if device == "cuda" else "fp32"
    impls = ("pyscale", *(f"sdpa:{b}" for b in SDPA_BACKENDS)) if device == "cuda" else ("pyscale", "sdpa:math")
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


def _sdpa(backend: str):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]

    def run(q, k, v, causal):
        # SDPA wants (batch, heads, seq, dim); its causal mask is top-left, which equals pyscale's
        # bottom-right one here because seq_q == seq_k.
        with sdpa_kernel(kind):
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
    elif case.impl.startswith("sdpa:"):
        attn = _sdpa(case.impl.split(":", 1)[1])
    else:
        raise ValueError(f"attention: unknown implementation {case.impl!r}")
    causal, pass_ = p["causal"], OPS[case.op]
    if pass_ == "fwd":
        def fn(q_, k_, v_):
            with torch.no_grad():
                return attn(q_, k_, v_, causal)
        args = (q, k, v)
    elif pass_ == "bwd":
        out = attn(q, k, v, causal)
        dout = torch.randn_like(out)
        fn = lambda o, g: torch.autograd.grad(o, (q, k, v), g, retain_graph=True)
        args = (out, dout)
    else:
        dout = torch.randn(b, s, h, d, generator=gen).to(device=device, dtype=dtype)
        fn = lambda q_, k_, v_, g: torch.autograd.grad(attn(q_, k_, v_, causal), (q_, k_, v_), g)
        args = (q, k, v, dout)
    flops = formulas.attention_flops(b, s, s, h, d, causal=causal, pass_=pass_)
    nbytes = formulas.attention_bytes(b, s, s, h, hkv, d, torch.finfo(dtype).bits // 8, pass_=pass_)
    return Workload(fn, args, flops=float(flops.executed), model_flops=float(flops.model), bytes=float(nbytes),
                    notes={"flops_convention": "executed, causal pairs counted exactly"})
