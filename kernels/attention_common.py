"""Pieces shared by the attention forward (attention.py) and backward (attention_bwd.py) kernels.

Masking: query row i may attend key j when  -left <= j - i - (seq_k - seq_q) <= right  (0 <= j < seq_k);
causal is right = 0 (bottom-right aligned), an unbounded side is a large number. Each program loops over
the blocks inside the band only (causal skips everything above the diagonal) and applies the mask on the
boundary blocks, [lo, full_lo) and [full_hi, hi), through a branch that is uniform across the program.

Addressing: each program forms int64 scalar base pointers (batch, head, sequence start, tile start) and
adds int32 offsets inside a tile (rows * row_stride + column), which keeps the pointer tiles out of
spills; so a row stride must stay below MAX_ROW_STRIDE elements (checked by `check_row_strides`).

The row statistic: the forward keeps m (running max) and l (running sum) in log2 units, x = qk * sm_scale
* log2(e), and stores lse = (m + log2 l) * ln 2 rounded once (fp64 per row). The backward's preprocess
turns it back into log2 units as an fp32 pair hi + lo = lse * log2(e) (fp64 per row; lo only for fp32
inputs, where its 2^-24 relative size matters), and the kernels recompute p = exp2(x - hi - lo): the
forward's statistic to ~2^-48, instead of after a natural-log round trip (two extra roundings of a large
exponent, which scale every p of a row alike). Both passes also form x from the same operand layout (k
read as (keys, head_dim) and transposed in the dot): the interpreter's matmul rounds by layout, and a
recomputed score that differs from the forward's leaves rows of p that do not sum to one. Both keep the
fp32 gradients within DESIGN's 3x rule at large logits (q and k scaled x3-x4), where they did not.
Nothing here imports pyscale.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import interpreting, tma_compatible

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Offsets inside a tile (at most 128 rows) are int32: rows * row stride must stay below 2**31.
MAX_ROW_STRIDE = 2**24


# ----------------------------------------------------------------------------- @triton.jit helpers

@triton.jit
def _key_ranges(m0, seqlen_q, seqlen_k, win_left, win_right,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-block ranges for query rows [m0, m0 + BLOCK_M): [lo, full_lo) masked, [full_lo, full_hi)
    unmasked, [full_hi, hi) masked. All are multiples of BLOCK_N (lo, full_*) or block-rounded (hi)."""
    off = seqlen_k - seqlen_q
    last = m0 + BLOCK_M - 1
    # Clamp before dividing: Triton's integer division truncates toward zero.
    lo = tl.maximum(m0 + off - win_left, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.minimum(last + off + win_right + 1, seqlen_k)
    hi = tl.maximum(hi, lo)
    hi = ((hi + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    # Unmasked blocks: every row's lower bound is below the block and every upper bound above it.
    full_lo = tl.maximum(last + off - win_left, lo)
    full_lo = tl.minimum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, hi)
    full_hi = tl.maximum(tl.minimum(m0 + off + win_right + 1, seqlen_k), 0)
    full_hi = (full_hi // BLOCK_N) * BLOCK_N
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _query_ranges(n0, seqlen_q, seqlen_k, win_left, win_right,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query-block ranges for key columns [n0, n0 + BLOCK_N), split like `_key_ranges`."""
    off = seqlen_k - seqlen_q
    last = n0 + BLOCK_N - 1
    lo = tl.maximum(n0 - off - win_right, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.minimum(last - off + win_left + 1, seqlen_q)
    hi = tl.maximum(hi, lo)
    hi = ((hi + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_lo = tl.maximum(last - off - win_right, lo)
    full_lo = tl.minimum(((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, hi)
    full_hi = tl.maximum(tl.minimum(n0 - off + win_left + 1, seqlen_q), 0)
    full_hi = (full_hi // BLOCK_M) * BLOCK_M
    # A key block that runs past seq_k needs its column mask on every query block.
    full_hi = tl.where(n0 + BLOCK_N <= seqlen_k, full_hi, full_lo)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _band(offs_m, offs_n, seqlen_q, seqlen_k, win_left, win_right):
    """(BLOCK_M, BLOCK_N) mask of allowed (query row, key column) pairs."""
    rel = offs_n[None, :] - offs_m[:, None] - (seqlen_k - seqlen_q)
    ok = (rel >= -win_left) & (rel <= win_right)
    return ok & (offs_n[None, :] < seqlen_k) & (offs_m[:, None] < seqlen_q)


@triton.jit
def _band_t(offs_n, offs_m, seqlen_q, seqlen_k, win_left, win_right):
    """`_band` transposed, (BLOCK_N, BLOCK_M), formed in that layout (no transpose of a mask tile)."""
    rel = offs_n[:, None] - offs_m[None, :] - (seqlen_k - seqlen_q)
    ok = (rel >= -win_left) & (rel <= win_right)
    return ok & (offs_n[:, None] < seqlen_k) & (offs_m[None, :] < seqlen_q)


@triton.jit
def _seq_bounds(cu_seqlens, b, seqlen, VARLEN: tl.constexpr):
    """(start as int64, length as int32) of sequence b: from cu_seqlens when varlen, else (0, seqlen)."""
    if VARLEN:
        start = tl.load(cu_seqlens + b)
        end = tl.load(cu_seqlens + b + 1)
        return start.to(tl.int64), end - start
    else:
        return (b * 0).to(tl.int64), seqlen + b * 0


@triton.jit
def _lse_log2(lse_ptrs, mask, LSE_LO: tl.constexpr):
    """The forward's statistic in log2 units as (hi, lo): hi + lo = lse * log2(e) (fp64 per row; lo only
    with LSE_LO, for fp32 inputs, where its ~2^-24 relative size matters). Rows with nothing to attend to
    (lse = -inf) and masked rows get hi = +inf, so their p is exp2(-inf) = 0 rather than inf or NaN."""
    lse = tl.load(lse_ptrs, mask=mask, other=float("-inf"))
    empty = lse == float("-inf")
    if LSE_LO:
        wide = tl.where(empty, 0.0, lse).to(tl.float64) * 1.4426950408889634
        hi = wide.to(tl.float32)
        lo = (wide - hi.to(tl.float64)).to(tl.float32)
        return tl.where(empty, float("inf"), hi), lo
    else:
        hi = tl.where(empty, float("inf"), lse * 1.4426950408889634)
        return hi, tl.zeros_like(hi)


@triton.jit
def _natural_lse(m_i, l_i):
    """lse = (m + log2 l) * ln 2 in natural-log units, rounded to fp32 once; -inf where l = 0 (no key)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    wide = (m_i.to(tl.float64) + tl.math.log2(l_safe).to(tl.float64)) * 0.6931471805599453
    return tl.where(empty, float("-inf"), wide.to(tl.float32))


# ----------------------------------------------------------------------------- host-side helpers

def block_d(head_dim: int) -> int:
    """Head dims are padded (and masked) to a power of two of at least 16, the smallest tl.dot K."""
    return max(16, triton.next_power_of_2(head_dim))


def seq_bucket(seqlen: int) -> int:
    """The sequence-length bucket configs and tuning results are keyed by: the next power of two,
    at least 128 and at most 16384 (beyond that the best tiles no longer change with length)."""
    return min(16384, max(128, triton.next_power_of_2(max(int(seqlen), 1))))


def capability_of(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    return torch.cuda.get_device_capability(device)


def window_bounds(causal: bool, window_left: int, window_right: int, max_q: int, max_k: int) -> tuple[int, int]:
    """(left, right) as non-negative ints: -1 (unbounded) becomes a reach beyond any sequence; causal
    caps right at 0."""
    unbounded = max_q + max_k + 1
    left = unbounded if window_left < 0 else min(window_left, unbounded)
    right = unbounded if window_right < 0 else min(window_right, unbounded)
    if causal:
        right = min(right, 0)
    return left, right


def last_contiguous(t: torch.Tensor) -> torch.Tensor:
    # Only the head dim must be unit-stride (vectorised loads); any other layout is used in place.
    return t if t.stride(-1) == 1 else t.contiguous()


def check_row_strides(varlen: bool, **tensors: torch.Tensor) -> None:
    """ValueError naming the tensor whose sequence (row) stride reaches MAX_ROW_STRIDE elements: the
    kernels' in-tile offsets are int32 and would wrap silently."""
    for name, t in tensors.items():
        stride = t.stride(0 if varlen else 1)
        if stride >= MAX_ROW_STRIDE:
            raise ValueError(f"{name} must have a sequence stride below 2**24 elements for the Triton attention "
                             f"kernels: got stride {stride} (pass {name}.contiguous())")


def layout(q: torch.Tensor, k: torch.Tensor, cu_seqlens_q, max_seqlen_q, max_seqlen_k):
    """(batch, max_sq, max_sk, heads_q, heads_kv, varlen) and a function giving (b, s, h) strides."""
    varlen = cu_seqlens_q is not None
    if varlen:
        batch = cu_seqlens_q.numel() - 1
        heads_q, heads_kv = q.shape[1], k.shape[1]
        strides = lambda t: (0, t.stride(0), t.stride(1))
        return batch, int(max_seqlen_q), int(max_seqlen_k), heads_q, heads_kv, True, strides
    batch, sq, heads_q = q.shape[0], q.shape[1], q.shape[2]
    sk, heads_kv = k.shape[1], k.shape[2]
    strides = lambda t: (t.stride(0), t.stride(1), t.stride(2))
    return batch, sq, sk, heads_q, heads_kv, False, strides


def lse_shape(q: torch.Tensor, varlen: bool) -> tuple[int, ...]:
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def dummy_cu(device: torch.device) -> torch.Tensor:
    return torch.empty(1, dtype=torch.int32, device=device)  # never read (VARLEN=False)


def precision(dtype: torch.dtype) -> str:
    # fp32 inputs stay fp32 (IEEE) in the dots: TF32 would silently drop to 10 mantissa bits.
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 arithmetic is wrong; compute in fp32 there (rounding P and dS to bf16 before
    # their dots, as the GPU path does: the kernels' ROUND_BF16 flag).
    return interpreting() and dtype == torch.bfloat16


def use_tma(tma: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether to load through tensor descriptors: `tma`, else PYSCALE_ATTN_TMA=1 on sm_90+; never for
    tensors that are not 16-byte aligned."""
    q = tensors[0]
    if tma is None:
        # Opt-in until measured on a Hopper GPU (PYSCALE_ATTN_TMA=1); the pointer path is the default.
        tma = (os.environ.get("PYSCALE_ATTN_TMA") == "1" and q.device.type == "cuda"
               and capability_of(q.device)[0] >= 9)
    return bool(tma) and tma_compatible(*tensors)
