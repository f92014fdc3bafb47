"""Every FLOP and byte formula of pyscale, in one place and torch-free (pure Python: no torch, no numpy).

The ops, the profiler's counter (`pyscale.profile.flops`), `models/config.py`, the planner's step model and
the benchmark all take their numbers from here, so a formula is written once.

Two FLOP numbers (DESIGN.md section 6):
- *executed*: what the kernels run. Attention counts the attended (query, key) pairs exactly (causal and
  windows included); fused attention backwards include the recompute of Q·Kᵀ; grouped GEMMs count the
  padding rows they compute.
- *model* (PaLM's MFU convention): every (query, key) pair, no recompute, backward = 2x forward, MoE on
  the T·k routed slots; per token 6·N + 12·L·H·Q·T for a whole transformer.
2 FLOPs per multiply-add; elementwise work (scaling, bias, norms, softmax) is not counted, except where
a fused kernel's formula says so (SwiGLU in the grouped GEMM, the routing overhead of moe_route).

Bytes are the compulsory traffic: every operand read once and every result written once (no cache model).

The registry maps a custom op's name (`"pyscale::attention_fwd"`) to its `OpFormulas(executed, model,
bytes)`, each `fn(args, kwargs, out) -> number` on the op's dispatched call; the profiler's `FlopCounter`
reads it. The built-in ops are listed at the bottom of this file; users add their own ops with
`register_flop_formula`. Registry formulas read only `.shape`, `.numel()`, `.element_size()` and
`.tolist()` of the tensors they get, which is why this module never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

Formula = Callable[[Sequence[Any], Mapping[str, Any], Any], float]

ALIGNMENTS = ("bottom_right", "top_left")
PASSES = ("fwd", "bwd", "fwd+bwd")
LSE_ITEMSIZE = 4  # attention's log-sum-exp (and the backward's delta) are fp32, one per query row and head
SCALE_ITEMSIZE = 4  # quantisation scales are fp32
INDEX_ITEMSIZE = 4  # int32 expert ids, slot ids, offsets, cu_seqlens
FP8_SCALE_BLOCK = 128  # block-wise FP8: a in 1x128 groups, b in 128x128 blocks


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# =========================================================================== attention: pairs

def causal_pairs(seq_q: int, seq_k: int, offset: int) -> int:
    """(query i, key j) pairs, 0 <= i < seq_q and 0 <= j < seq_k, with j <= i + offset.

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


def band_pairs(seq_q: int, seq_k: int, lo: int | None, hi: int | None) -> int:
    """Pairs with lo <= j - i <= hi (None: unbounded on that side): two causal counts subtracted."""
    if seq_q <= 0 or seq_k <= 0:
        return 0
    upper = seq_q * seq_k if hi is None else causal_pairs(seq_q, seq_k, hi)
    lower = 0 if lo is None else causal_pairs(seq_q, seq_k, lo - 1)
    return max(0, upper - lower)


def window_bounds(window: object) -> tuple[int, int]:
    """(left, right) of a sliding window, -1 for an unbounded side; None means no window."""
    if window is None:
        return -1, -1
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window)):
        raise TypeError(f"window must be None or a pair of ints (left, right): got {window!r}")
    left, right = window
    if left < -1 or right < -1:
        raise ValueError(f"window must hold sizes >= 0, or -1 for unbounded: got {tuple(window)}")
    return int(left), int(right)


def attention_pairs(seq_q: int, seq_k: int, *, causal: bool = False, window: tuple[int, int] | None = None,
                    align: str = "bottom_right") -> int:
    """Allowed (query, key) pairs of one head of one sequence, in closed form.

    Query i sees key j when -left <= j - i - offset <= right (a side of -1 is unbounded), with offset
    seq_k - seq_q for bottom-right alignment (pyscale, flash-attn) or 0 for top-left (torch's is_causal);
    causal caps right at 0. Rows with nothing to attend to count 0.
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}: got {align!r}")
    left, right = window_bounds(window)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    offset = seq_k - seq_q if align == "bottom_right" else 0
    return band_pairs(seq_q, seq_k, None if left < 0 else offset - left, None if right < 0 else offset + right)


# =========================================================================== attention: FLOPs

class AttentionFlops(NamedTuple):
    executed: int  # what the kernels run: allowed pairs counted exactly, backward with its recompute
    model: int  # PaLM MFU convention: every (query, key) pair, no recompute, backward = 2x forward


def attention_forward_flops(pairs: int, heads: int, head_dim: int, head_dim_v: int | None = None) -> int:
    """S = Q·Kᵀ and O = P·V over `pairs` pairs per head: 2·pairs·heads·(d_qk + d_v)."""
    d_v = head_dim if head_dim_v is None else head_dim_v
    return 2 * pairs * heads * (head_dim + d_v)


def attention_backward_flops(pairs: int, heads: int, head_dim: int, head_dim_v: int | None = None, *,
                             recompute: bool = True) -> int:
    """dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q, plus S = Q·Kᵀ again when the kernel recomputes it
    (fused kernels do; 2.5x the forward at d_qk = d_v, else 2x)."""
    d_v = head_dim if head_dim_v is None else head_dim_v
    return 2 * pairs * heads * ((3 if recompute else 2) * head_dim + 2 * d_v)


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {', '.join(PASSES)}: got {pass_!r}")


def _pass_flops(pairs: int, heads: int, d_qk: int, d_v: int, pass_: str, recompute: bool) -> int:
    fwd = attention_forward_flops(pairs, heads, d_qk, d_v) if pass_ != "bwd" else 0
    bwd = attention_backward_flops(pairs, heads, d_qk, d_v, recompute=recompute) if pass_ != "fwd" else 0
    return fwd + bwd


def attention_sequences_flops(seqs: Iterable[tuple[int, int]], heads: int, head_dim: int,
                              head_dim_v: int | None = None, *, causal: bool = False,
                              window: tuple[int, int] | None = None, align: str = "bottom_right",
                              pass_: str = "fwd") -> AttentionFlops:
    """Attention FLOPs summed over sequences given as (seq_q, seq_k), `heads` query heads each (GQA: kv
    heads change the bytes, not the FLOPs). Executed: allowed pairs, backward with the Q·Kᵀ recompute;
    model: seq_q·seq_k pairs, no recompute."""
    _check_pass(pass_)
    d_v = head_dim if head_dim_v is None else head_dim_v
    seqs = list(seqs)
    pairs = sum(attention_pairs(sq, sk, causal=causal, window=window, align=align) for sq, sk in seqs)
    dense = sum(max(sq, 0) * max(sk, 0) for sq, sk in seqs)
    return AttentionFlops(_pass_flops(pairs, heads, head_dim, d_v, pass_, recompute=True),
                          _pass_flops(dense, heads, head_dim, d_v, pass_, recompute=False))


def attention_flops(batch: int, seq_q: int, seq_k: int, heads_q: int, head_dim: int, *, causal: bool = False,
                    window: tuple[int, int] | None = None, pass_: str = "fwd") -> AttentionFlops:
    """FLOPs of `pyscale.ops.attention` on (batch, seq_q, heads_q, head_dim) queries and seq_k keys.

    executed = c_e * pairs * batch * heads_q * head_dim with c_e = 4 (fwd), 10 (bwd: QK^T recompute, dV,
    dP, dQ, dK), 14 (fwd+bwd); model = c_m * batch * seq_q * seq_k * heads_q * head_dim with c_m = 4, 8, 12.
    """
    return attention_sequences_flops([(seq_q, seq_k)], batch * heads_q, head_dim, causal=causal, window=window,
                                     pass_=pass_)


def attention_varlen_flops(seqlens_q: Sequence[int], seqlens_k: Sequence[int], heads_q: int, head_dim: int, *,
                           causal: bool = False, window: tuple[int, int] | None = None,
                           pass_: str = "fwd") -> AttentionFlops:
    """`attention_flops` summed over packed sequences with the given lengths."""
    return attention_sequences_flops(zip(seqlens_q, seqlens_k), heads_q, head_dim, causal=causal, window=window,
                                     pass_=pass_)


def seqlens(cu_seqlens: Any) -> list[int]:
    """Sequence lengths from varlen offsets (batch + 1,), a tensor or a list."""
    values = [int(v) for v in (cu_seqlens.tolist() if hasattr(cu_seqlens, "tolist") else cu_seqlens)]
    return [b - a for a, b in zip(values[:-1], values[1:])]  # tolist: a device sync on GPU, never timed


# =========================================================================== attention: bytes

def attention_io_bytes(q_elems: int, kv_elems: int, lse_elems: int, itemsize: int, *, pass_: str = "fwd",
                       grad_lse: bool = True, index_bytes: int = 0) -> int:
    """Compulsory bytes of the fused attention kernels (they never write the (seq_q, seq_k) matrix).

    q_elems: elements of q (= of out, dO, dq); kv_elems: of k (= of v, dk, dv); lse_elems: query rows x
    heads. Forward: reads q, k, v, writes out and lse. Backward: reads dO, q, k, v, out, lse and grad_lse,
    writes dq, dk, dv, and writes and reads delta (one fp32 per lse entry). grad_lse: autograd hands the
    backward a (zero) gradient of lse even when the caller ignores lse, and the kernel reads it.
    index_bytes: the cu_seqlens of a varlen call, read by each pass.
    """
    _check_pass(pass_)
    fwd = itemsize * (2 * q_elems + 2 * kv_elems) + LSE_ITEMSIZE * lse_elems + index_bytes
    bwd = (itemsize * (4 * q_elems + 4 * kv_elems) + LSE_ITEMSIZE * lse_elems * (4 if grad_lse else 3)
           + index_bytes)
    return (fwd if pass_ != "bwd" else 0) + (bwd if pass_ != "fwd" else 0)


def attention_bytes(batch: int, seq_q: int, seq_k: int, heads_q: int, heads_kv: int, head_dim: int, itemsize: int,
                    *, pass_: str = "fwd", grad_lse: bool = True) -> int:
    """`attention_io_bytes` of `pyscale.ops.attention` on (batch, seq, heads, head_dim) tensors."""
    return attention_io_bytes(batch * seq_q * heads_q * head_dim, batch * seq_k * heads_kv * head_dim,
                              batch * heads_q * seq_q, itemsize, pass_=pass_, grad_lse=grad_lse)


def attention_varlen_bytes(total_q: int, total_k: int, batch: int, heads_q: int, heads_kv: int, head_dim: int,
                           itemsize: int, *, pass_: str = "fwd", grad_lse: bool = True) -> int:
    """`attention_io_bytes` of `pyscale.ops.attention_varlen`: packed (total, heads, head_dim) tensors and two
    int32 cu_seqlens of batch + 1 entries."""
    return attention_io_bytes(total_q * heads_q * head_dim, total_k * heads_kv * head_dim, heads_q * total_q,
                              itemsize, pass_=pass_, grad_lse=grad_lse,
                              index_bytes=2 * (batch + 1) * INDEX_ITEMSIZE)


# =========================================================================== GEMM

def gemm_flops(m: int, n: int, k: int) -> int:
    """(M, K) x (K, N): 2·M·N·K (the products; bias and scaling epilogues are elementwise, not counted)."""
    return 2 * m * n * k


def gemm_bytes(m: int, n: int, k: int, itemsize: int, out_itemsize: int | None = None, *,
               b_itemsize: int | None = None, extra_bytes: int = 0) -> int:
    """a (M, K) and b (N, K) read once, c (M, N) written once, plus `extra_bytes` (scales, bias)."""
    b_size = itemsize if b_itemsize is None else b_itemsize
    out_size = itemsize if out_itemsize is None else out_itemsize
    return m * k * itemsize + n * k * b_size + m * n * out_size + extra_bytes


def batched_gemm_flops(batch: int, m: int, n: int, k: int) -> int:
    """bmm / baddbmm: `batch` independent GEMMs."""
    return batch * gemm_flops(m, n, k)


def grouped_mm_flops(shape_a: Sequence[int], shape_b: Sequence[int]) -> int:
    """torch._grouped_mm / _scaled_grouped_mm: every output element has K products, whichever side is grouped.

    (ΣM, K) x (G, K, N), (G, M, K) x (G, K, N), (G, M, K) x (K, ΣN); groups along K (weight-gradient form)
    (M, ΣK) x (ΣK, N)."""
    sa, sb = tuple(shape_a), tuple(shape_b)
    if len(sa) == 2 and len(sb) == 2:
        return gemm_flops(sa[0], sb[1], sa[1])
    if len(sa) == 2:
        return gemm_flops(sa[0], sb[-1], sa[1])
    if len(sb) == 2:
        return gemm_flops(sa[-2], sb[-1], sa[-1])
    return batched_gemm_flops(sa[0], sa[1], sb[-1], sa[2])


def conv_flops(x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool) -> int:
    """A convolution: each weight element meets every position of the "small" side (the output, or the input
    when transposed), 2 FLOPs each."""
    spatial = tuple(x_shape)[2:] if transposed else tuple(out_shape)[2:]
    return 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)


def fp8_scale_elems(granularity: str, m: int, n: int, k: int) -> tuple[int, int]:
    """Elements of scale_a and scale_b: tensor () (), row (M, 1) (N, 1), block (M, ⌈K/128⌉) (⌈N/128⌉, ⌈K/128⌉)."""
    kb = _ceil_div(k, FP8_SCALE_BLOCK)
    if granularity == "tensor":
        return 1, 1
    if granularity == "row":
        return m, n
    if granularity == "block":
        return m * kb, _ceil_div(n, FP8_SCALE_BLOCK) * kb
    raise ValueError(f"granularity must be one of tensor, row, block: got {granularity!r}")


def gemm_fp8_bytes(m: int, n: int, k: int, granularity: str, out_itemsize: int, bias_itemsize: int = 0) -> int:
    """pyscale::gemm_fp8: e4m3 a and b (1 byte each), fp32 scales of the granularity, the bias, c."""
    sa, sb = fp8_scale_elems(granularity, m, n, k)
    return gemm_bytes(m, n, k, 1, out_itemsize, extra_bytes=SCALE_ITEMSIZE * (sa + sb) + n * bias_itemsize)


def gemm_int8_bytes(m: int, n: int, k: int, out_itemsize: int, bias_itemsize: int = 0) -> int:
    """pyscale::gemm_int8: int8 a and b, fp32 per-token (M, 1) and per-channel (N, 1) scales, the bias, c."""
    return gemm_bytes(m, n, k, 1, out_itemsize, extra_bytes=SCALE_ITEMSIZE * (m + n) + n * bias_itemsize)


def gemm_w4a16_bytes(m: int, n: int, k: int, group_size: int, act_itemsize: int, *, zeros: bool = False,
                     bias: bool = False) -> int:
    """pyscale::gemm_w4a16: x and out in the activation dtype, qweight (N, K/2) uint8, scales (N, K/g) in the
    activation dtype, optional uint8 zero points (N, K/g) and bias (N,). For M <= 16 the weights dominate."""
    groups = n * (k // group_size)
    extra = groups * act_itemsize + (groups if zeros else 0) + (n * act_itemsize if bias else 0)
    return m * k * act_itemsize + n * (k // 2) + m * n * act_itemsize + extra


# =========================================================================== MoE

def grouped_gemm_flops(rows: int, n: int, k: int, *, swiglu: bool = False, backward: bool = False,
                       elementwise: bool = True) -> int:
    """pyscale::grouped_gemm over `rows` rows of (E, N, K) expert weights.

    Executed: rows = the padded rows n_pad (the kernel's row tiles cover each expert's padded segment; the
    upper bound's extra rows are skipped on the device), elementwise=True. Forward 2·rows·N·K
    per weight (SwiGLU: two, + 4·rows·N for the fused activation); backward 2x the GEMMs (dA and dW),
    + 8·rows·N for the SwiGLU backward. Model: rows = the T·k routed slots, elementwise=False (PaLM).
    """
    gemms = (2 if swiglu else 1) * gemm_flops(rows, n, k) * (2 if backward else 1)
    act = ((8 if backward else 4) * rows * n) if swiglu and elementwise else 0
    return gemms + act


def moe_route_flops(tokens: int, n_experts: int, top_k: int) -> int:
    """pyscale::moe_route, routing overhead: 5·T·E scoring (exp, sum, divide, compare, select), 2·T·E·k for
    the k max/argmax passes, T·k renormalisation."""
    return 5 * tokens * n_experts + 2 * tokens * n_experts * top_k + tokens * top_k


def moe_route_backward_flops(tokens: int, n_experts: int, top_k: int) -> int:
    """pyscale::moe_route_backward: 4·T·E + 2·T·E·k."""
    return 4 * tokens * n_experts + 2 * tokens * n_experts * top_k


def moe_route_bytes(tokens: int, n_experts: int, top_k: int, logits_itemsize: int, bias_itemsize: int = 0) -> int:
    """pyscale::moe_route: logits (T, E) and the optional bias (E,) read; fp32 weights and int32 ids (T, k)
    written."""
    return tokens * n_experts * logits_itemsize + n_experts * bias_itemsize + tokens * top_k * (4 + INDEX_ITEMSIZE)


def moe_align_rows(slots: int, n_experts: int, block_size: int) -> int:
    """Rows of moe_align's layout, allocated at the upper bound T·k + E·(block_size - 1) (DESIGN.md §8)."""
    return slots + n_experts * (block_size - 1)


def moe_align_bytes(tokens: int, top_k: int, n_experts: int, block_size: int) -> int:
    """pyscale::moe_align (no FLOPs: integer work): topk_ids read; sorted_ids, expert_ids, n_pad, slot_pos,
    offsets, tokens_per_expert, dropped and invalid_ids written, all int32 at their upper-bound sizes."""
    slots = tokens * top_k
    rows = moe_align_rows(slots, n_experts, block_size)
    written = rows + _ceil_div(rows, block_size) + 1 + slots + (n_experts + 1) + n_experts + 1 + 1
    return INDEX_ITEMSIZE * (slots + written)


def moe_combine_flops(tokens: int, top_k: int, d: int, *, backward: bool = False) -> int:
    """pyscale::moe_combine: 2·T·k·D (a weighted sum); its backward 3·T·k·D (scaled copy and dot products)."""
    return (3 if backward else 2) * tokens * top_k * d


def load_balancing_loss_flops(tokens: int, n_experts: int) -> int:
    """pyscale.ops.load_balancing_loss: ≈ 4·T·E (scores and their mean) + 2·E."""
    return 4 * tokens * n_experts + 2 * n_experts


def router_z_loss_flops(tokens: int, n_experts: int) -> int:
    """pyscale.ops.router_z_loss: ≈ 4·T·E (logsumexp) + 2·T."""
    return 4 * tokens * n_experts + 2 * tokens


def moe_layer_model_flops(tokens: int, d_model: int, d_ff: int, n_experts: int, top_k: int, *,
                          backward: bool = False) -> int:
    """Model FLOPs of one pyscale.nn.MoE call on active parameters: router 2·T·d·E + the top-k SwiGLU experts
    2·T·k·3·d·d_ff (gate, up, down); forward+backward is 3x the forward."""
    fwd = gemm_flops(tokens, n_experts, d_model) + 3 * gemm_flops(tokens * top_k, d_ff, d_model)
    return 3 * fwd if backward else fwd


def moe_layer_weight_bytes(d_model: int, d_ff: int, n_experts: int, itemsize: int, *, backward: bool = False) -> int:
    """The expert weights (gate, up, down: 3·E·d·d_ff) of an MoE layer, the traffic that dominates it: read
    by the forward; read again (dX) and their gradients written (dW) by the backward."""
    weights = 3 * n_experts * d_model * d_ff * itemsize
    return 3 * weights if backward else weights


# =========================================================================== the rest of a training step

# What a training step spends outside GEMMs and attention, each op counted over ONE forward and its backward
# (the optimizer: one step), as the built-in model runs it. FLOPs count one per elementwise arithmetic
# operation (transcendentals as one); bytes are the compulsory traffic at `itemsize` bytes per element.
# The cost model fits each op's rates from micro-benchmarks, so what matters is that benchmark and step
# prediction use the same formula.

def rmsnorm_flops(rows: int, dim: int) -> int:
    """RMSNorm forward (square, mean, rsqrt, two products: 4 per element) and backward (8 per element)."""
    return 12 * rows * dim


def rmsnorm_bytes(rows: int, dim: int, itemsize: int) -> int:
    """Forward reads x and the weight and writes y; backward reads dy, x and the weight, writes dx and dw."""
    return 5 * rows * dim * itemsize + 4 * dim * itemsize


def swiglu_flops(rows: int, width: int) -> int:
    """silu(gate) · up: forward 5 per element (exp, add, divide, two products), backward 10."""
    return 15 * rows * width


def swiglu_bytes(rows: int, width: int, itemsize: int) -> int:
    """Forward reads gate and up, writes h; backward reads dh, gate and up, writes dgate and dup."""
    return 8 * rows * width * itemsize


def rotary_flops(batch: int, seq: int, heads_q: int, heads_kv: int, head_dim: int) -> int:
    """Rotary embedding of one attention layer's q and k: x·cos + rotate(x)·sin (3 per element), both ways."""
    return 6 * batch * seq * (heads_q + heads_kv) * head_dim


def rotary_bytes(batch: int, seq: int, heads_q: int, heads_kv: int, head_dim: int, itemsize: int) -> int:
    """q and k read and written forward, their gradients read and written backward, fp32 cos and sin once."""
    return 4 * batch * seq * (heads_q + heads_kv) * head_dim * itemsize + 2 * seq * head_dim * 4


def add_flops(elements: int) -> int:
    """An out-of-place elementwise add (a residual add, or autograd summing a forked tensor's gradients)."""
    return elements


def add_bytes(elements: int, itemsize: int) -> int:
    """Two operands read, one result written."""
    return 3 * elements * itemsize


def cross_entropy_flops(rows: int, vocab: int) -> int:
    """Log-softmax over the vocabulary and the target's negative log-likelihood: forward 4 per logit (max,
    subtract, exp, sum) plus a log per row, backward 3 per logit (exp, subtract, scale)."""
    return 7 * rows * vocab + rows


def cross_entropy_bytes(rows: int, vocab: int, itemsize: int) -> int:
    """fp32 log-softmax written forward and read backward, the logits read and their gradient written (plus
    the fp32 copies both ways when the logits are narrower than fp32), int64 targets read."""
    cast = 2 * rows * vocab * (itemsize + 4) if itemsize != 4 else 0
    return 4 * rows * vocab * 4 + cast + 8 * rows


def embedding_flops(rows: int, dim: int) -> int:
    """Gather forward (no arithmetic); the backward adds each row's gradient into the table."""
    return rows * dim


def embedding_bytes(rows: int, vocab: int, dim: int, itemsize: int) -> int:
    """Forward reads the ids and the rows, writes the activations; backward fills the dense (vocab, dim)
    table gradient with zeros, then reads each row gradient and adds it in (read and write)."""
    return 16 * rows + 5 * rows * dim * itemsize + vocab * dim * itemsize


def embedding_rows_touched(tokens: int, vocab: int) -> float:
    """Expected distinct rows of a (vocab, d) table that `tokens` uniform random ids touch: vocab·(1-(1-1/V)^T).
    The others get zero gradients; a step repeated on one batch (as a profile repeats it) keeps their AdamW
    moments at zero, and some CPUs take the square root of zero far slower than of other numbers."""
    return vocab * (1.0 - (1.0 - 1.0 / vocab) ** tokens)


def adamw_flops(elements: int) -> int:
    """One AdamW step: decay, both moment updates, bias-corrected square root and the update (12 per element)."""
    return 12 * elements


def adamw_bytes(elements: int, itemsize: int) -> int:
    """Parameter, gradient and both moments read; parameter and both moments written."""
    return 7 * elements * itemsize


# =========================================================================== whole models

def matmul_flops_per_token(weights: int) -> int:
    """Forward FLOPs of one token through matmul weights: one multiply-add (2 FLOPs) per weight."""
    return 2 * weights


def training_flops_per_token(params: int) -> int:
    """C = 6·N·D per token: forward 2·N, backward 4·N (dgrad + wgrad)."""
    return 3 * matmul_flops_per_token(params)


def palm_model_flops_per_token(params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> int:
    """PaLM's model FLOPs per training token (appendix B; DESIGN.md §6): 6·N + 12·L·H·Q·T, with N the
    matmul parameters, H the query heads, Q the head dim and T the sequence length (no causal discount,
    backward = 2x forward)."""
    return training_flops_per_token(params) + 12 * n_layers * n_heads * head_dim * seq_len


def kaplan_flops_per_token(params: int, n_layers: int, d_attn: int, seq_len: int) -> int:
    """Kaplan et al. 2020 (Table 1, forward x3): 6·N + 6·L·T·d_attn, N the non-embedding parameters."""
    return training_flops_per_token(params) + 6 * n_layers * seq_len * d_attn


# =========================================================================== the registry

@dataclass(frozen=True)
class OpFormulas:
    """The formulas of one custom op, each `fn(args, kwargs, out) -> number` on its dispatched call.

    model defaults to executed; bytes defaults to the counter's generic inputs-plus-outputs estimate."""

    executed: Formula
    model: Formula | None = None
    bytes: Formula | None = None


def _nbytes(t: Any) -> int:
    return int(t.numel()) * int(t.element_size()) if hasattr(t, "element_size") else 0


def tensor_bytes(*values: Any) -> int:
    """Total bytes of the tensors among `values`, searching lists, tuples and dicts."""
    total = 0
    for v in values:
        if isinstance(v, (list, tuple)):
            total += tensor_bytes(*v)
        elif isinstance(v, dict):
            total += tensor_bytes(*v.values())
        else:
            total += _nbytes(v)
    return total


def io_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """Compulsory traffic of an elementwise op: every tensor argument read once and every output written once."""
    return tensor_bytes(*args, *kwargs.values(), out)


def _no_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    return 0


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


# ---------------------------------------------------------------- attention ops

_ATTN_FWD = ("q", "k", "v", "causal", "scale", "window_left", "window_right")
_ATTN_BWD = ("grad_out", "q", "k", "v", "out", "lse", "causal", "scale", "window_left", "window_right", "grad_lse")
_ATTN_VFWD = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "causal", "scale",
              "window_left", "window_right")
_ATTN_VBWD = ("grad_out", "q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
              "max_seqlen_k", "causal", "scale", "window_left", "window_right", "grad_lse")


def _attention_call(names: Sequence[str], pass_: str, varlen: bool, kind: str) -> Formula:
    def flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any = None) -> int:
        a = _bind(names, args, kwargs)
        q, k = a["q"], a["k"]
        window = (int(a["window_left"]), int(a["window_right"]))
        if varlen:
            f = attention_varlen_flops(seqlens(a["cu_seqlens_q"]), seqlens(a["cu_seqlens_k"]), q.shape[1],
                                       q.shape[2], causal=bool(a["causal"]), window=window, pass_=pass_)
        else:
            f = attention_flops(q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3], causal=bool(a["causal"]),
                                window=window, pass_=pass_)
        return getattr(f, kind)
    return flops


def _attention_call_bytes(names: Sequence[str], pass_: str, varlen: bool) -> Formula:
    def nbytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any = None) -> int:
        a = _bind(names, args, kwargs)
        q, k = a["q"], a["k"]
        index = tensor_bytes(a["cu_seqlens_q"], a["cu_seqlens_k"]) if varlen else 0
        return attention_io_bytes(int(q.numel()), int(k.numel()), int(q.numel()) // int(q.shape[-1]),
                                  int(q.element_size()), pass_=pass_, grad_lse=a.get("grad_lse") is not None,
                                  index_bytes=index)
    return nbytes


def _attention_op(names: Sequence[str], pass_: str, varlen: bool) -> OpFormulas:
    return OpFormulas(_attention_call(names, pass_, varlen, "executed"), _attention_call(names, pass_, varlen, "model"),
                      _attention_call_bytes(names, pass_, varlen))


# ---------------------------------------------------------------- GEMM ops

def _gemm_call_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """pyscale::gemm_fp8 / gemm_int8 / gemm_w4a16: a or x (M, K) first, b or qweight (N, ...) second."""
    m, k = args[0].shape
    return gemm_flops(int(m), int(args[1].shape[0]), int(k))


def _out_itemsize(out: Any) -> int:
    return int(out.element_size())


def _bias_itemsize(bias: Any) -> int:
    return int(bias.element_size()) if bias is not None else 0


def _gemm_fp8_call_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    a = _bind(("a", "b", "scale_a", "scale_b", "granularity", "out_dtype", "bias"), args, kwargs)
    (m, k), n = a["a"].shape, a["b"].shape[0]
    return gemm_fp8_bytes(int(m), int(n), int(k), a["granularity"], _out_itemsize(out), _bias_itemsize(a.get("bias")))


def _gemm_int8_call_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    a = _bind(("a", "b", "scale_a", "scale_b", "out_dtype", "bias"), args, kwargs)
    (m, k), n = a["a"].shape, a["b"].shape[0]
    return gemm_int8_bytes(int(m), int(n), int(k), _out_itemsize(out), _bias_itemsize(a.get("bias")))


def _gemm_w4a16_call_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    a = _bind(("x", "qweight", "scales", "zeros", "group_size", "bias"), args, kwargs)
    (m, k), n = a["x"].shape, a["qweight"].shape[0]
    return gemm_w4a16_bytes(int(m), int(n), int(k), int(a["group_size"]), int(a["x"].element_size()),
                            zeros=a.get("zeros") is not None, bias=a.get("bias") is not None)


# ---------------------------------------------------------------- MoE ops

def _padded_rows(n_pad: Any) -> int:
    return int(n_pad.reshape(-1)[0])  # a device sync on GPU: counting passes are not timed


def _grouped_gemm_call(backward: bool, model: bool) -> Formula:
    # forward: (a, w, w2, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align, activation, ...)
    # backward: (grad_out, a, w, w2, preact, sorted_ids, expert_ids, n_pad, offsets, slot_pos, gather_k, align,
    #            activation)
    w_at, n_pad_at, slot_pos_at, act_at = (2, 7, 9, 12) if backward else (1, 5, 7, 10)

    def flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
        w, activation = args[w_at], args[act_at]
        # model: T·k routed slots (no padding, no host sync); executed: the padded rows the kernel runs
        rows = int(args[slot_pos_at].shape[0]) if model else _padded_rows(args[n_pad_at])
        return grouped_gemm_flops(rows, int(w.shape[1]), int(w.shape[2]), swiglu=activation == "swiglu",
                                  backward=backward, elementwise=not model)
    return flops


def _moe_route_call_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    t, e = args[0].shape  # (logits, top_k, scoring, renormalize, n_group, topk_group, bias)
    return moe_route_flops(int(t), int(e), int(args[1]))


def _moe_route_call_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    a = _bind(("logits", "top_k", "scoring", "renormalize", "n_group", "topk_group", "bias"), args, kwargs)
    t, e = a["logits"].shape
    return moe_route_bytes(int(t), int(e), int(a["top_k"]), int(a["logits"].element_size()),
                           _bias_itemsize(a.get("bias")))


def _moe_route_backward_call_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    t, e = args[1].shape  # (grad_w, logits, weights, ids, scoring, renormalize)
    return moe_route_backward_flops(int(t), int(e), int(args[3].shape[1]))


def _moe_align_call_bytes(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    a = _bind(("topk_ids", "n_experts", "block_size", "capacity"), args, kwargs)
    t, k = a["topk_ids"].shape
    return moe_align_bytes(int(t), int(k), int(a["n_experts"]), int(a["block_size"]))


def _moe_combine_call_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    y, slot_pos, top_k = args[0], args[2], int(args[3])  # (y, weights, slot_pos, top_k)
    return moe_combine_flops(int(slot_pos.shape[0]) // top_k, top_k, int(y.shape[1]))


def _moe_combine_backward_call_flops(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    y, weights = args[1], args[2]  # (grad_out, y, weights, slot_pos, top_k)
    t, k = weights.shape
    return moe_combine_flops(int(t), int(k), int(y.shape[1]), backward=True)


# ---------------------------------------------------------------- built-in ops and user registrations

_GEMM = OpFormulas(_gemm_call_flops, _gemm_call_flops)
_ELEMENTWISE = OpFormulas(_no_flops, None, io_bytes)

#: Formulas of pyscale's own custom ops (read-only).
BUILTIN_FORMULAS: Mapping[str, OpFormulas] = MappingProxyType({
    "pyscale::attention_fwd": _attention_op(_ATTN_FWD, "fwd", varlen=False),
    "pyscale::attention_bwd": _attention_op(_ATTN_BWD, "bwd", varlen=False),
    "pyscale::attention_varlen_fwd": _attention_op(_ATTN_VFWD, "fwd", varlen=True),
    "pyscale::attention_varlen_bwd": _attention_op(_ATTN_VBWD, "bwd", varlen=True),
    "pyscale::gemm_fp8": OpFormulas(_GEMM.executed, _GEMM.model, _gemm_fp8_call_bytes),
    "pyscale::gemm_int8": OpFormulas(_GEMM.executed, _GEMM.model, _gemm_int8_call_bytes),
    "pyscale::gemm_w4a16": OpFormulas(_GEMM.executed, _GEMM.model, _gemm_w4a16_call_bytes),
    "pyscale::quantize_fp8": _ELEMENTWISE,
    "pyscale::quantize_int8": _ELEMENTWISE,
    "pyscale::fake_quantize": _ELEMENTWISE,
    "pyscale::grouped_gemm": OpFormulas(_grouped_gemm_call(False, False), _grouped_gemm_call(False, True)),
    "pyscale::grouped_gemm_backward": OpFormulas(_grouped_gemm_call(True, False), _grouped_gemm_call(True, True)),
    "pyscale::moe_route": OpFormulas(_moe_route_call_flops, None, _moe_route_call_bytes),
    "pyscale::moe_route_backward": OpFormulas(_moe_route_backward_call_flops),
    "pyscale::moe_align": OpFormulas(_no_flops, None, _moe_align_call_bytes),
    "pyscale::moe_combine": OpFormulas(_moe_combine_call_flops),
    "pyscale::moe_combine_backward": OpFormulas(_moe_combine_backward_call_flops),
})

_REGISTERED: dict[str, OpFormulas] = {}


def register_flop_formula(op: str, executed: Formula, model: Formula | None = None,
                          bytes: Formula | None = None) -> None:  # noqa: A002 - the documented keyword
    """Register the formulas of a custom op, e.g. `"mylib::fused_mlp"`: the profiler counts it with them.

    Each formula is `fn(args, kwargs, out) -> number` on the op's dispatched arguments and result.
    `model` defaults to `executed`; `bytes` defaults to the counter's inputs-plus-outputs estimate.
    A registration replaces an earlier one of the same op, a built-in one included.
    """
    if not isinstance(op, str) or "::" not in op:
        raise ValueError(f"op must be qualified as 'namespace::name': got {op!r}")
    for name, fn in (("executed", executed), ("model", model), ("bytes", bytes)):
        if not callable(fn) and not (fn is None and name != "executed"):
            raise ValueError(f"{name} must be a callable (args, kwargs, out) -> number: got {fn!r}")
    _REGISTERED[op] = OpFormulas(executed, model, bytes)


def unregister_flop_formula(op: str) -> None:
    """Forget a registration (a built-in op falls back to its built-in formulas)."""
    _REGISTERED.pop(op, None)


def registered_formulas() -> dict[str, OpFormulas]:
    """The user registrations (a copy), which win over the built-in formulas."""
    return dict(_REGISTERED)


def formulas_for(op: str) -> OpFormulas | None:
    """The formulas the profiler uses for `op`: a registration, else the built-in ones, else None."""
    return _REGISTERED.get(op) or BUILTIN_FORMULAS.get(op)
