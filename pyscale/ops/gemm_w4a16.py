"""W4A16 GEMM: fp16/bf16 activations x group-wise int4 weights dequantised inside the kernel.

out = x @ W^T (+ bias) with W = (q - z) * s per group of `group_size` along K, in the interchange format
of DESIGN.md section 8 (`pyscale.ops.int4_quantize` makes it): qweight uint8 (N, K/2), low nibble = even
k; scales (N, K/g) in x's dtype; zeros uint8 (N, K/g) or None (symmetric, codes stored as q + 8).
Backends: `triton` (CUDA, or CPU in the interpreter; split-K GEMV for M <= 16, tiles above) and `reference`.

FLOPs (executed and model; `pyscale.formulas.gemm_flops`): 2 M N K, the products. The in-register
dequantisation (a subtract and a multiply per weight, redone by each of the ceil(M / BLOCK_M) row tiles) is
elementwise and not counted, as in pyscale.profile.flops; for decode shapes the kernel is bound by the bytes
below anyway.
Bytes (`pyscale.formulas.gemm_w4a16_bytes`): x, qweight (K/2 per row), scales, zeros, bias and out; for
M <= 16 the weights dominate.
"""

from __future__ import annotations

import torch

from pyscale.ops._checks import check_bias, check_choice, check_group_scales, check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.reference import gemm_w4a16 as ref

GROUP_SIZES = (32, 64, 128)
ACT_DTYPES = (torch.float16, torch.bfloat16)


def _config(x: torch.Tensor, n: int, group_size: int) -> dict:
    from pyscale.kernels import gemm_w4a16 as kernels

    m, k = x.shape
    sms = cap = None
    if x.is_cuda:
        props = torch.cuda.get_device_properties(x.device)
        sms, cap = props.multi_processor_count, (props.major, props.minor)
    return kernels.w4a16_config(m, n, k, group_size, num_sms=sms, capability=cap)


def _triton(x, qweight, scales, zeros, group_size, bias):
    from pyscale.kernels import gemm_w4a16 as kernels

    m, n = x.shape[0], qweight.shape[0]
    cfg = _config(x, n, group_size)
    split = kernels.split_k_of(cfg)
    if split == 1:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        kernels.launch_w4a16_gemm(x, qweight, scales, zeros, bias, out, group_size, cfg)
        return out
    partial = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    kernels.launch_w4a16_gemm(x, qweight, scales, zeros, None, partial, group_size, cfg)
    total = partial.sum(0)
    if bias is not None:
        total += bias.float()
    return total.to(x.dtype)


_IMPLS = {"triton": _triton, "reference": ref.gemm_w4a16}


@torch.library.custom_op("pyscale::gemm_w4a16", mutates_args=())
def _gemm_w4a16_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    return dispatch("gemm_w4a16", x.device, _IMPLS, x, qweight, scales, zeros, group_size, bias)


@_gemm_w4a16_op.register_fake
def _(x, qweight, scales, zeros, group_size, bias):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def gemm_w4a16(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
               *, group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Activations times packed int4 weights.

    Args:
        x: (M, K) float16/bfloat16 activations (any strides); K even and a multiple of group_size.
        qweight: (N, K/2) uint8, two 4-bit codes per byte (low nibble = even k).
        scales: (N, K/group_size) in x.dtype.
        zeros: (N, K/group_size) uint8 zero points, or None for the symmetric format (codes = q + 8).
        group_size: 32, 64 or 128 weights per scale along K.
        bias: optional (N,) in x.dtype.
    Returns:
        (M, N) in x.dtype.
    FLOPs: 2 M N K.
    """
    check_tensor("x", x, dtypes=ACT_DTYPES, ndim=2)
    check_tensor("qweight", qweight, dtypes=(torch.uint8,), ndim=2)
    check_choice("group_size", group_size, GROUP_SIZES)
    m, k = x.shape
    n = qweight.shape[0]
    if k % 2:
        raise ValueError(f"x must have an even number of columns K for int4 weights: got K={k}")
    if qweight.shape[1] * 2 != k:
        raise ValueError(f"qweight must have K/2 = {k // 2} columns (two int4 codes per byte): got {qweight.shape[1]}")
    if k % group_size:
        raise ValueError(f"group_size must divide K: got K={k}, group_size={group_size}")
    check_tensor("scales", scales, dtypes=(x.dtype,), ndim=2)
    check_group_scales(scales, zeros, n, k, group_size)
    check_bias(bias, n, (x.dtype,))
    check_same_device(x=x, qweight=qweight, scales=scales, zeros=zeros, bias=bias)
    if bias is not None:
        bias = bias.contiguous()  # the kernels index the bias with unit stride
    return _gemm_w4a16_op(x, qweight, scales, zeros, group_size, bias)
