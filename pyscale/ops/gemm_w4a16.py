"""W4A16 GEMM: fp16/bf16 activations x group-wise int4 weights dequantised inside the kernel.

out = x @ W^T (+ bias) with W = (q - z) * s per group of `group_size` along K, in the interchange format
of DESIGN.md section 8 (`pyscale.ops.int4_quantize` makes it): qweight uint8 (N, K/2), low nibble = even
k; scales (N, K/g) in x's dtype; zeros uint8 (N, K/g) or None (symmetric, codes stored as q + 8).
Backends: `triton` (CUDA, or CPU in the interpreter) and `reference`. The Triton path is one kernel launch:
a split-K GEMV for M <= 16 (the splits' reduction, the bias and the cast fused in), tiles above; from
`PYSCALE_W4A16_DENSE_MIN_M` rows (default 1024, unmeasured) it dequantises into a scratch buffer and calls
torch.mm instead (pyscale.ops._gemm_variants). Device properties are asked once per device, so the whole
call can be captured in a CUDA graph.

FLOPs (executed and model; `pyscale.formulas.gemm_flops`): 2 M N K, the products. The in-register
dequantisation (a subtract and a multiply per weight, redone by each of the ceil(M / BLOCK_M) row tiles) is
elementwise and not counted, as in pyscale.profile.flops; for decode shapes the kernel is bound by the bytes
below anyway.
Bytes (`pyscale.formulas.gemm_w4a16_bytes`): x, qweight (K/2 per row), scales, zeros, bias and out; for
M <= 16 the weights dominate.
"""

from __future__ import annotations

from typing import Any

import torch

from pyscale._backend import triton_interpreting
from pyscale.ops import _gemm_variants
from pyscale.ops._autotune import Tunable, bucket
from pyscale.ops._checks import check_bias, check_choice, check_group_scales, check_same_device, check_tensor
from pyscale.ops._device import DeviceInfo, device_info
from pyscale.ops._dispatch import dispatch
from pyscale.reference import gemm_w4a16 as ref

GROUP_SIZES = (32, 64, 128)
ACT_DTYPES = (torch.float16, torch.bfloat16)


def _kernels():
    from pyscale.kernels import gemm_w4a16 as kernels  # lazily: importing pyscale.ops imports no triton

    return kernels


def tuning_key(m: int, n: int, k: int, group_size: int, act_dtype: torch.dtype, has_zeros: bool, has_bias: bool,
               info: DeviceInfo, *, swap: bool = False) -> dict[str, Any]:
    """The autotuning key: M bucketed to a power of two (decode's 1-16 rows fall in 5 buckets); N, K, the
    group size and the SM count (split-K follows from it) exact; the SWAP_AB variant tuned apart."""
    return {"capability": list(info.capability), "sms": info.sm_count, "act": str(act_dtype).removeprefix("torch."),
            "group": group_size, "zeros": has_zeros, "bias": has_bias, "m": bucket(m), "n": n, "k": k, "swap": swap}


TUNING = Tunable(
    "gemm_w4a16", ("pyscale.kernels.gemm_w4a16", "pyscale.kernels.common"),
    default=lambda key, interpret: _kernels().w4a16_config(
        key["m"], key["n"], key["k"], key["group"], num_sms=key["sms"] or None, capability=tuple(key["capability"]),
        swap=key["swap"], interpret=interpret),
    space=lambda key: _kernels().gpu_configs(key["m"], key["n"], key["k"], num_sms=key["sms"] or None,
                                             swap=key["swap"]))


# The split-K tile counters, per (device, stream): two launches on one stream run one after the other, so
# they share a buffer (each launch leaves it zeroed); launches on other streams get their own. A buffer
# is never freed, since a captured CUDA graph may still point at it.
_counters: dict[tuple[str, int | None, int], torch.Tensor] = {}
_retired: list[torch.Tensor] = []


def _tile_counters(device: torch.device, tiles: int) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index, stream)
    buf = _counters.get(key)
    if buf is None or buf.numel() < tiles:
        if buf is not None:
            _retired.append(buf)
        buf = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
        _counters[key] = buf
    return buf


def _config(device: torch.device, m: int, n: int, k: int, group_size: int, act_dtype: torch.dtype,
            has_zeros: bool, has_bias: bool, run) -> dict:
    """The fused kernel's config for one call (`run(config)` launches it, for tuning). Asks the device
    nothing after the first call on that device (pyscale.ops._device), so a decode loop pays no host
    queries and the call can be captured in a CUDA graph."""
    key = tuning_key(m, n, k, group_size, act_dtype, has_zeros, has_bias, device_info(device),
                     swap=_gemm_variants.current().w4a16_swap_ab)
    return TUNING.choose(device, key, run, interpret=triton_interpreting())


def _buffers(device: torch.device, m: int, n: int, config: dict) -> dict[str, torch.Tensor]:
    split = _kernels().split_k_of(config)
    if split == 1:
        return {}
    return {"workspace": torch.empty((split, m, n), dtype=torch.float32, device=device),
            "counters": _tile_counters(device, _kernels().tile_count(m, n, config))}


def _dense(x, qweight, scales, zeros, group_size, bias):
    """Large M: dequantise into a scratch buffer (freed after the call: a cached copy would undo int4's
    memory saving) and let torch.mm (cuBLAS on CUDA) do the GEMM."""
    w = torch.empty((qweight.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
    _kernels().launch_w4a16_dequant(qweight, scales, zeros, group_size, w)
    return torch.addmm(bias, x, w.t()) if bias is not None else torch.mm(x, w.t())


def _triton(x, qweight, scales, zeros, group_size, bias):
    kernels = _kernels()
    m, k = x.shape
    n = qweight.shape[0]
    if m >= _gemm_variants.current().w4a16_dense_min_m:
        return _dense(x, qweight, scales, zeros, group_size, bias)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)

    def run(cfg: dict) -> None:
        kernels.launch_w4a16_gemm(x, qweight, scales, zeros, bias, out, group_size, cfg,
                                  **_buffers(x.device, m, n, cfg))

    run(_config(x.device, m, n, k, group_size, x.dtype, zeros is not None, bias is not None, run))
    return out


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
