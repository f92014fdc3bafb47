"""Fused softmax attention (FlashAttention-2): fixed-length and varlen, with GQA, causal and windows.

Format (DESIGN.md section 8): q (batch, seq_q, heads_q, head_dim), k/v (batch, seq_k, heads_kv,
head_dim), output like q; varlen packs sequences: (total, heads, head_dim) with cu_seqlens int32
(batch + 1,). Query head h reads kv head h // (heads_q // heads_kv). Causal is bottom-right aligned
(`causal_lower_right`); `window=(left, right)` keeps keys j with -left <= j - i - (seq_k - seq_q) <= right
(-1: unbounded on that side), intersected with the causal mask when both are given. lse is natural-log
fp32, (batch, heads_q, seq_q) or (heads_q, total_q). A query row with nothing to attend to gives
output 0, lse -inf and zero gradients.

Custom ops (always returning (out, lse); the backward is its own op so FLOP counters see it):
    pyscale::attention_fwd(q, k, v, causal, scale, window_left, window_right) -> (out, lse)
    pyscale::attention_bwd(grad_out, q, k, v, out, lse, causal, scale, window_left, window_right,
        grad_lse=None) -> (dq, dk, dv)
    pyscale::attention_varlen_fwd / pyscale::attention_varlen_bwd: the same with cu_seqlens_q,
        cu_seqlens_k, max_seqlen_q, max_seqlen_k after v (after lse for the backward).
lse is differentiable too (e.g. for a z-loss): its gradient enters the backward as grad_lse.

Kernels (pyscale.kernels.attention, attention_bwd): PYSCALE_ATTN_BWD=split (default: a dK/dV and a dQ
kernel) or fused (one launch) picks the backward; PYSCALE_ATTN_TMA=1 loads through tensor descriptors on
sm_90+. Both choices are part of the autotuning key (pyscale.ops._autotune), so each tunes its own configs.

FLOPs (DESIGN section 6; `pyscale.formulas.attention_flops`, which the profiler uses for these ops), with
P = number of allowed (query, key) pairs per head, counted exactly (causal and window included) and summed
over the batch:
    executed forward  = 4 * P * heads_q * head_dim        (QK^T and PV, 2 FLOPs per multiply-add)
    executed backward = 10 * P * heads_q * head_dim       (QK^T recomputed, dV, dP, dQ, dK: 2.5x)
    model forward     = 4 * seq_q * seq_k * heads_q * head_dim per sequence (no causal discount)
    model backward    = 2 * model forward                 (PaLM's MFU convention, no recompute)
Memory is O(sequence): the kernels never form the (seq_q, seq_k) matrix (the reference backend does).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pyscale.formulas import window_bounds
from pyscale.ops._autotune import Tunable, bucket
from pyscale.ops._checks import check_same_device, check_tensor
from pyscale.ops._dispatch import dispatch
from pyscale.reference import attention as ref

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


# ----------------------------------------------------------------------------- backends

def _kernels():
    # Imported lazily: importing pyscale.ops must not import triton (nor create a CUDA context).
    from pyscale.kernels import attention as kernels

    return kernels


# Autotuning (pyscale.ops._autotune): one tunable per pass, keyed by the problem with bucketed lengths, the
# load path (pointer or TMA) and, for the backward, the variant (split or fused), since each runs other kernels.
_KERNEL_MODULES = ("pyscale.kernels.attention", "pyscale.kernels.attention_bwd", "pyscale.kernels.attention_common",
                   "pyscale.kernels.common")


def tuning_key(dtype: torch.dtype, head_dim: int, causal: bool, windowed: bool, varlen: bool, max_seqlen_q: int,
               max_seqlen_k: int, capability: tuple[int, int], *, tma: bool = False,
               variant: str | None = None) -> dict[str, Any]:
    """The autotuning key of one attention launch (sequence lengths bucketed to powers of two); `variant`
    (the backward's "split" or "fused") only for the backward."""
    key = {"capability": list(capability), "dtype": str(dtype).removeprefix("torch."), "head_dim": head_dim,
           "causal": bool(causal), "windowed": bool(windowed), "varlen": bool(varlen),
           "seq_q": bucket(max_seqlen_q), "seq_k": bucket(max_seqlen_k), "tma": bool(tma)}
    if variant is not None:
        key["variant"] = variant
    return key


def _seqlen(key: Mapping[str, Any]) -> int:
    return max(key["seq_q"], key["seq_k"])


FWD_TUNING = Tunable(
    "attention.fwd", _KERNEL_MODULES,
    default=lambda key, interpret: _kernels().fwd_config(key["head_dim"], tuple(key["capability"]), interpret),
    space=lambda key: _kernels().fwd_candidates(key["head_dim"], tuple(key["capability"]), causal=key["causal"],
                                                seqlen=_seqlen(key)))
BWD_TUNING = Tunable(
    "attention.bwd", _KERNEL_MODULES,
    default=lambda key, interpret: _kernels().bwd_config(key["head_dim"], tuple(key["capability"]), interpret,
                                                         key["variant"]),
    space=lambda key: _kernels().bwd_candidates(key["head_dim"], tuple(key["capability"]), variant=key["variant"],
                                                causal=key["causal"], seqlen=_seqlen(key)))


def _capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else (0, 0)


def _tuned_launch(tuning: Tunable, launch: Callable[..., Any], q: torch.Tensor, causal: bool, window_left: int,
                  varlen: bool, max_q: int, max_k: int, **kernel_choice: Any) -> Any:
    """Launch with the config `tuning` chooses (timing `launch(config=...)` when it tunes). `kernel_choice`
    (tma, variant) is part of the key and passed to the launcher."""
    key = tuning_key(q.dtype, q.shape[-1], causal, window_left >= 0, varlen, max_q, max_k, _capability(q.device),
                     **kernel_choice)
    launch = functools.partial(launch, **kernel_choice)
    config = tuning.choose(q.device, key, lambda cfg: launch(config=cfg), interpret=_kernels().interpreting())
    return launch(config=config)


def _fwd_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    """The forward's load path: TMA when PYSCALE_ATTN_TMA=1 on sm_90+ and the tensors allow it."""
    return {"tma": _kernels().use_tma(None, q, k, v)}


def _bwd_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor) -> dict[str, Any]:
    """The backward's variant (PYSCALE_ATTN_BWD, default split) and load path (TMA: split only)."""
    variant = _kernels().bwd_variant()
    return {"variant": variant, "tma": variant == "split" and _kernels().use_tma(None, q, k, v, grad_out)}


def _fwd_triton(q, k, v, causal, scale, window_left, window_right):
    launch = functools.partial(_kernels().attention_forward, q, k, v, causal=causal, scale=scale,
                               window_left=window_left, window_right=window_right)
    return _tuned_launch(FWD_TUNING, launch, q, causal, window_left, False, q.shape[1], k.shape[1],
                         **_fwd_choice(q, k, v))


def _fwd_reference(q, k, v, causal, scale, window_left, window_right):
    out, lse = ref.attention(q, k, v, causal=causal, scale=scale, window_left=window_left,
                             window_right=window_right)
    return out.contiguous(), lse.float().contiguous()


def _bwd_triton(grad_out, q, k, v, out, lse, causal, scale, window_left, window_right, grad_lse):
    launch = functools.partial(_kernels().attention_backward, grad_out, q, k, v, out, lse, causal=causal,
                               scale=scale, window_left=window_left, window_right=window_right, dlse=grad_lse)
    return _tuned_launch(BWD_TUNING, launch, q, causal, window_left, False, q.shape[1], k.shape[1],
                         **_bwd_choice(q, k, v, grad_out))


def _bwd_reference(grad_out, q, k, v, out, lse, causal, scale, window_left, window_right, grad_lse):
    grads = ref.attention_backward(grad_out, q, k, v, causal=causal, scale=scale, window_left=window_left,
                                   window_right=window_right, dlse=grad_lse)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))


def _varlen_fwd_triton(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window_left, window_right):
    launch = functools.partial(_kernels().attention_forward, q, k, v, causal=causal, scale=scale,
                               window_left=window_left, window_right=window_right, cu_seqlens_q=cu_q,
                               cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k)
    return _tuned_launch(FWD_TUNING, launch, q, causal, window_left, True, max_q, max_k, **_fwd_choice(q, k, v))


def _varlen_fwd_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window_left, window_right):
    out, lse = ref.attention_varlen(q, k, v, cu_q, cu_k, causal=causal, scale=scale, window_left=window_left,
                                    window_right=window_right)
    return out.contiguous(), lse.float().contiguous()


def _varlen_bwd_triton(grad_out, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale, window_left,
                       window_right, grad_lse):
    launch = functools.partial(_kernels().attention_backward, grad_out, q, k, v, out, lse, causal=causal,
                               scale=scale, window_left=window_left, window_right=window_right,
                               cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                               dlse=grad_lse)
    return _tuned_launch(BWD_TUNING, launch, q, causal, window_left, True, max_q, max_k,
                         **_bwd_choice(q, k, v, grad_out))


def _varlen_bwd_reference(grad_out, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale, window_left,
                          window_right, grad_lse):
    grads = ref.attention_varlen_backward(grad_out, q, k, v, cu_q, cu_k, causal=causal, scale=scale,
                                          window_left=window_left, window_right=window_right, dlse=grad_lse)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))


_FWD = {"triton": _fwd_triton, "reference": _fwd_reference}
_BWD = {"triton": _bwd_triton, "reference": _bwd_reference}
_VARLEN_FWD = {"triton": _varlen_fwd_triton, "reference": _varlen_fwd_reference}
_VARLEN_BWD = {"triton": _varlen_bwd_triton, "reference": _varlen_bwd_reference}


# ----------------------------------------------------------------------------- custom ops

def _lse_like(q: torch.Tensor, varlen: bool) -> torch.Tensor:
    shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    return q.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("pyscale::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                  window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("attention", q.device, _FWD, q, k, v, causal, scale, window_left, window_right)


@attention_fwd.register_fake
def _(q, k, v, causal, scale, window_left, window_right):
    return q.new_empty(q.shape), _lse_like(q, False)


@torch.library.custom_op("pyscale::attention_bwd", mutates_args=())
def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, causal: bool, scale: float, window_left: int, window_right: int,
                  grad_lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dispatch("attention_backward", q.device, _BWD, grad_out, q, k, v, out, lse, causal, scale,
                    window_left, window_right, grad_lse)


@attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, causal, scale, window_left, window_right, grad_lse=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("pyscale::attention_varlen_fwd", mutates_args=())
def attention_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                         scale: float, window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("attention_varlen", q.device, _VARLEN_FWD, q, k, v, cu_seqlens_q, cu_seqlens_k,
                    max_seqlen_q, max_seqlen_k, causal, scale, window_left, window_right)


@attention_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window_left,
      window_right):
    return q.new_empty(q.shape), _lse_like(q, True)


@torch.library.custom_op("pyscale::attention_varlen_bwd", mutates_args=())
def attention_varlen_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                         scale: float, window_left: int, window_right: int, grad_lse: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dispatch("attention_varlen_backward", q.device, _VARLEN_BWD, grad_out, q, k, v, out, lse,
                    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window_left,
                    window_right, grad_lse)


@attention_varlen_bwd.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
      window_left, window_right, grad_lse=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_fwd(ctx, inputs, output):
    q, k, v, causal, scale, window_left, window_right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, scale, window_left, window_right)


def _backward_fwd(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_bwd(grad_out, q, k, v, out, lse, *ctx.args, grad_lse)
    return dq, dk, dv, None, None, None, None


attention_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)


def _setup_varlen(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window_left, window_right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, scale, window_left, window_right)


def _backward_varlen(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = attention_varlen_bwd(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.args, grad_lse)
    return dq, dk, dv, None, None, None, None, None, None, None, None


attention_varlen_fwd.register_autograd(_backward_varlen, setup_context=_setup_varlen)


# ----------------------------------------------------------------------------- checks

def _check_head_dim(head_dim: int) -> None:
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of 8 between 8 and {MAX_HEAD_DIM} (e.g. 32, 64, 80, 96, "
                         f"128, 256): got {head_dim}")


def _check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float: got {scale!r}")
    return float(scale)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES, ndim=ndim)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({str(q.dtype).removeprefix('torch.')}): "
                            f"got {str(t.dtype).removeprefix('torch.')}")
    check_same_device(q=q, k=k, v=v)
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have the same head_dim as q: got {k.shape[-1]} vs {q.shape[-1]}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}: got {tuple(v.shape)}")
    _check_head_dim(q.shape[-1])
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"heads_q must be divisible by heads_kv (k.shape[-2]): got heads_q={heads_q}, "
                         f"heads_kv={heads_kv}")


# ----------------------------------------------------------------------------- public API

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, window: tuple[int, int] | None = None,
              return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention softmax(q k^T * scale + mask) v, fused (FlashAttention-2), differentiable.

    Args:
        q: (batch, seq_q, heads_q, head_dim), float16/bfloat16/float32.
        k, v: (batch, seq_k, heads_kv, head_dim), q's dtype and device; heads_q % heads_kv == 0 (GQA/MQA:
            query head h reads kv head h // (heads_q // heads_kv)).
        causal: bottom-right aligned causal mask (query i sees keys j <= i + seq_k - seq_q).
        scale: softmax scale; default 1/sqrt(head_dim).
        window: (left, right) sliding window around the (bottom-right) diagonal, -1 for an unbounded side;
            with causal the two masks intersect.
        return_lse: also return the log-sum-exp.
    Returns:
        out (batch, seq_q, heads_q, head_dim) in q.dtype, and with return_lse the natural-log lse,
        fp32 (batch, heads_q, seq_q) (-inf on rows with nothing to attend to, whose output is 0).
    FLOPs: executed 4 * pairs * heads_q * head_dim forward, 2.5x that backward; model (PaLM)
        4 * batch * seq_q * seq_k * heads_q * head_dim forward, 2x backward. See
        `pyscale.formulas.attention_flops`.
    Only the head dim needs unit stride; other layouts are read in place (else copied).
    """
    _check_qkv(q, k, v, 4)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k must have the batch size of q: got {k.shape[0]} vs {q.shape[0]}")
    left, right = window_bounds(window)
    out, lse = attention_fwd(q, k, v, bool(causal), _check_scale(scale, q.shape[-1]), left, right)
    return (out, lse) if return_lse else out


def _check_cu(name: str, cu: torch.Tensor, q: torch.Tensor) -> None:
    """What needs no values (no host sync, no graph break): dtype, rank, device, at least one entry."""
    check_tensor(name, cu, dtypes=(torch.int32,), ndim=1)
    if cu.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}): got {cu.device}")
    if cu.numel() < 1:
        raise ValueError(f"{name} must have batch + 1 >= 1 entries: got an empty tensor")


def _check_cu_values(name: str, cu: list[int], total: int) -> None:
    if cu[0] != 0:
        raise ValueError(f"{name} must start at 0: got {cu[0]}")
    if any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{name} must be non-decreasing (sequence lengths >= 0): got {cu}")
    if cu[-1] != total:
        raise ValueError(f"{name} must end at the number of packed tokens {total}: got {cu[-1]}")


def _check_longest(name: str, bound: int, cu: list[int]) -> None:
    longest = max((b - a for a, b in zip(cu, cu[1:])), default=0)
    if bound < longest:
        raise ValueError(f"{name} must be an int >= the longest sequence ({longest}): got {bound!r}")


def _assert_cu_on_device(name: str, cu: torch.Tensor, total: int, max_name: str, bound: int) -> None:
    lengths = cu[1:] - cu[:-1]
    ok = (cu[0] == 0) & (cu[-1] == total) & (lengths >= 0).all() & (lengths <= bound).all()
    torch._assert_async(ok, f"{name} must start at 0, be non-decreasing and end at the number of packed tokens "
                            f"({total}), and {max_name} ({bound}) must be >= its longest sequence")


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     scale: float | None = None, window: tuple[int, int] | None = None,
                     return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`attention` over packed variable-length sequences (sequence b attends only to itself).

    Args:
        q: (total_q, heads_q, head_dim), float16/bfloat16/float32: sequences concatenated.
        k, v: (total_k, heads_kv, head_dim), q's dtype and device.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) offsets: sequence b is rows cu[b]:cu[b + 1]; starts at
            0, non-decreasing (length-0 sequences allowed), ends at total_q / total_k.
        max_seqlen_q, max_seqlen_k: int upper bounds on the sequence lengths (they size the launch grid), as
            FlashAttention's varlen API takes them: the lengths are never read back on the host.
        causal, scale, window, return_lse: as `attention`, per sequence (bottom-right aligned per sequence).
    Returns:
        out (total_q, heads_q, head_dim) in q.dtype, and with return_lse the lse, fp32 (heads_q, total_q).
    FLOPs: as `attention`, summed over sequences; see `pyscale.formulas.attention_varlen_flops`.
    No host sync: on a GPU the cu_seqlens checks are device-side asserts, so the call compiles with
    `torch.compile(fullgraph=True)` and is capturable in a CUDA graph.
    """
    _check_qkv(q, k, v, 3)
    _check_cu("cu_seqlens_q", cu_seqlens_q, q)
    _check_cu("cu_seqlens_k", cu_seqlens_k, q)
    for name, bound in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ValueError(f"{name} must be an int >= the longest sequence: got {bound!r}")
    # The values: read where that is free (CPU tensors, eager) for errors that name the argument; else
    # checked on the device (torch._assert_async), so a call neither syncs the host nor breaks a graph and
    # a bad cu_seqlens still cannot send the kernels out of bounds.
    on_host = cu_seqlens_q.device.type == "cpu" and not torch.compiler.is_compiling()
    if on_host:
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        _check_cu_values("cu_seqlens_q", cq, q.shape[0])
        _check_cu_values("cu_seqlens_k", ck, k.shape[0])
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(f"cu_seqlens_k must have the length of cu_seqlens_q (batch + 1 = {cu_seqlens_q.numel()}): "
                         f"got {cu_seqlens_k.numel()}")
    if on_host:
        _check_longest("max_seqlen_q", max_seqlen_q, cq)
        _check_longest("max_seqlen_k", max_seqlen_k, ck)
    else:
        _assert_cu_on_device("cu_seqlens_q", cu_seqlens_q, q.shape[0], "max_seqlen_q", max_seqlen_q)
        _assert_cu_on_device("cu_seqlens_k", cu_seqlens_k, k.shape[0], "max_seqlen_k", max_seqlen_k)
    left, right = window_bounds(window)
    out, lse = attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                    bool(causal), _check_scale(scale, q.shape[-1]), left, right)
    return (out, lse) if return_lse else out
