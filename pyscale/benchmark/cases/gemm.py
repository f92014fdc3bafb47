"""GEMM cases: the linear layers of named models (pyscale.benchmark.shapes) at decode and prefill M.

Formats (the case's dtype): `bf16` (fp32 on CPU) plain GEMM, `fp8-tensor` / `fp8-row` / `fp8-block`,
`int8` (W8A8) and `w4a16-g128`. Implementations: pyscale's op for every quantized format, and the
baselines `torch.mm` (the unquantized layer), `torch._scaled_mm` (FP8 tensor- and row-wise) and
`torch._int_mm` (int8, M > 16 only: it refuses fewer rows). On CUDA, pyscale's structural variants
(pyscale.ops.gemm_variants) are cases of their own, `pyscale:<variant>` (VARIANTS), so one run A/Bs them
against the default `pyscale` and the baselines: TMA loads (sm_90+, also persistent), block-FP8 promotion per
group, W4A16
with the weights as the MMA's register operand, and W4A16's fused kernel against its dense path
(dequantise + torch.mm) at every M. All cases of one layer and M share op "gemm",
so each pyscale row is compared with every baseline of the same shape (pyscale.benchmark.rows). FLOPs 2·M·N·K for all; bytes are the compulsory
traffic of the format as pyscale's op counts it (`pyscale.formulas`: operands once, scales, output once).
"""

from __future__ import annotations

from pyscale import formulas
from pyscale.benchmark.cases import torch_dtype
from pyscale.benchmark.runner import Case, Workload
from pyscale.benchmark.shapes import gemm_shapes

FP8_FORMATS = ("fp8-tensor", "fp8-row", "fp8-block")
GROUP = 128
# format -> {impl: gemm_variants(...) arguments}; "tma" only where TMA exists (sm_90+)
_TMA = {"pyscale:tma": {"tma": True}, "pyscale:tma-persistent": {"tma": True, "persistent": True}}
VARIANTS: dict[str, dict[str, dict]] = {
    "fp8-tensor": _TMA,
    "fp8-row": _TMA,
    "fp8-block": {"pyscale:group": {"fp8_block": "group"}, "pyscale:tma": {"tma": True},
                  "pyscale:tma-group": {"tma": True, "fp8_block": "group"},
                  "pyscale:tma-group-persistent": {"tma": True, "fp8_block": "group", "persistent": True}},
    "int8": _TMA,
    "w4a16-g128": {"pyscale:fused": {"w4a16_dense_min_m": "off"},
                   "pyscale:swap": {"w4a16_swap_ab": True, "w4a16_dense_min_m": "off"},
                   "pyscale:dense": {"w4a16_dense_min_m": 1}},
}


def _formats(device: str) -> list[tuple[str, str]]:
    """(format, impl) pairs measured on `device`."""
    if device != "cuda":  # CPU: the reference / interpreter paths of the formats that have them
        return [("fp32", "torch.mm"), ("int8", "pyscale"), ("w4a16-g128", "pyscale")]
    import torch

    cap = torch.cuda.get_device_capability()
    out = [("bf16", "torch.mm"), ("int8", "pyscale"), ("int8", "torch._int_mm"), ("w4a16-g128", "pyscale")]
    if cap >= (8, 9):
        out += [(f, "pyscale") for f in FP8_FORMATS]
        out += [("fp8-tensor", "torch._scaled_mm"), ("fp8-row", "torch._scaled_mm")]
    formats = {f for f, _ in out}
    out += [(f, impl) for f, variants in VARIANTS.items() if f in formats for impl, chosen in variants.items()
            if cap >= (9, 0) or not chosen.get("tma")]
    return out


def cases(shape_set: str, device: str) -> list[Case]:
    out = []
    for shape in gemm_shapes(shape_set):
        params = {"layer": shape.layer, "m": shape.m, "n": shape.n, "k": shape.k}
        for fmt, impl in _formats(device):
            if fmt == "w4a16-g128" and shape.k % GROUP:
                continue
            if impl == "torch._int_mm" and shape.m <= 16:
                continue  # torch._int_mm on CUDA requires more than 16 rows (it raises below that)
            out.append(Case.make("gemm", "gemm", impl, params, fmt, shape_set))
    return out


def _bytes(fmt: str, m: int, n: int, k: int, out_size: int) -> float:
    if fmt in ("bf16", "fp16", "fp32"):
        return float(formulas.gemm_bytes(m, n, k, 4 if fmt == "fp32" else 2, out_size))
    if fmt == "w4a16-g128":
        return float(formulas.gemm_w4a16_bytes(m, n, k, GROUP, out_size))
    if fmt == "int8":
        return float(formulas.gemm_int8_bytes(m, n, k, out_size))
    return float(formulas.gemm_fp8_bytes(m, n, k, fmt.removeprefix("fp8-"), out_size))


def workload(case: Case, device: str) -> Workload:
    import torch

    from pyscale import ops

    p = case.params_dict
    m, n, k = p["m"], p["n"], p["k"]
    fmt, impl = case.dtype, case.impl
    act = torch.bfloat16 if device == "cuda" else torch.float32
    if fmt == "w4a16-g128" and device != "cuda":
        act = torch.float16  # W4A16 takes 16-bit activations; CPU has fp16 matmuls
    out_size = 4 if act == torch.float32 else 2
    gen = torch.Generator(device=device).manual_seed(0)  # drawn where they are used: large shapes draw fast
    x = torch.randn(m, k, generator=gen, device=device).to(dtype=act)
    w = (torch.randn(n, k, generator=gen, device=device) / k**0.5).to(dtype=act)
    flops = float(formulas.gemm_flops(m, n, k))
    chosen = VARIANTS.get(fmt, {}).get(impl)
    if chosen is not None:
        impl = "pyscale"  # the op itself, inside gemm_variants(**chosen) (below)
    if fmt in ("bf16", "fp16", "fp32"):
        x, w = x.to(torch_dtype(fmt)), w.to(torch_dtype(fmt))
        fn, args = (lambda a, b: torch.mm(a, b.t())), (x, w)
    elif fmt.startswith("fp8"):
        gran_a, gran_b = {"fp8-tensor": ("tensor", "tensor"), "fp8-row": ("row", "row"),
                          "fp8-block": ("block1x128", "block128x128")}[fmt]
        qa, qb = ops.quantize_fp8(x, gran_a), ops.quantize_fp8(w, gran_b)
        if impl == "pyscale":
            fn, args = ops.gemm_fp8, (qa.data, qb.data, qa.scale, qb.scale)
        elif impl == "torch._scaled_mm":
            sb = qb.scale.reshape(1, -1) if fmt == "fp8-row" else qb.scale
            fn = lambda a, b, sa, sb_: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb_, out_dtype=torch.bfloat16)
            args = (qa.data, qb.data, qa.scale, sb)
        else:
            raise ValueError(f"gemm: unknown {fmt} implementation {impl!r}")
    elif fmt == "int8":
        qa, qb = ops.quantize_int8(x), ops.quantize_int8(w)
        if impl == "pyscale":
            fn, args = (lambda a, b, sa, sb: ops.gemm_int8(a, b, sa, sb, out_dtype=act)), (qa.data, qb.data,
                                                                                           qa.scale, qb.scale)
        elif impl == "torch._int_mm":  # int32 result; the dequant epilogue is pyscale's extra work
            fn, args = (lambda a, b: torch._int_mm(a, b.t())), (qa.data, qb.data)
        else:
            raise ValueError(f"gemm: unknown int8 implementation {impl!r}")
    elif fmt == "w4a16-g128":
        q = ops.int4_quantize(w, GROUP)
        fn = lambda a, qw, s: ops.gemm_w4a16(a, qw, s, None, group_size=GROUP)
        args = (x, q.qweight, q.scales)
    else:
        raise ValueError(f"gemm: unknown format {fmt!r}")
    notes = {"format": fmt}
    if chosen is not None:
        fn, notes["variants"] = _in_variants(fn, chosen), chosen
    return Workload(fn, args, flops=flops, model_flops=flops, bytes=_bytes(fmt, m, n, k, out_size), notes=notes)


def _in_variants(fn, chosen: dict):
    from pyscale import ops

    def run(*args):
        with ops.gemm_variants(**chosen):
            return fn(*args)

    return run
