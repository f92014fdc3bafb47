"""Benchmark shapes (DESIGN.md section 5): one registry entry per model, from which every op family's
shapes derive, and the list of shape-set names (`SHAPE_SETS`) that `pyscale bench --shapes` offers.

Each model entry holds its published sizes: attention heads and head dim, every linear layer's (N, K) =
(out_features, in_features), and its MoE layer (None for a dense model). From an entry:
- attention: causal, sequences 512 -> 16k at a constant 16k tokens per step (batch = 16384 // seq);
- GEMM: each layer at decode and prefill token counts M (for MoE models, M is the token count routed to
  one expert's GEMM);
- MoE: the layer at the entry's token counts (batch x sequence flattened).
- step (what a training step spends outside GEMMs and attention: norms, activation, rotary, residual adds,
  the loss over the vocabulary, the embedding, the optimizer): at 4096 and 16384 tokens (the loss at 4096).
Two sets are not models: `quick` (tiny shapes of every family, for CPU smoke runs) and `grid` (attention's
model-free coverage sweep: head dim 64 and 128, MHA and GQA 8:1, causal and not).
The `gpt-*` sets are the built-in GPT at the sizes whose training steps are profiled and predicted
(`GPT_STEPS`: `gpt-cpu` on this kind of CPU machine, `gpt-gpu` on one GPU): every GEMM of their steps (each
linear layer forward, input gradient and weight gradient), their attention and their step ops. `quick` has
tiny GPT steps too, for the step family and CPU dry runs.
Plain data: no torch; the GPT sizes are completed by `pyscale.models.config` and `pyscale.formulas` (pure
Python).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyscale.formulas import embedding_rows_touched


@dataclass(frozen=True)
class MoELayer:
    d_model: int
    d_ff: int  # per expert
    n_experts: int
    top_k: int
    scoring: str  # "softmax" or "sigmoid"
    tokens: tuple[int, ...]  # token counts to sweep
    n_group: int | None = None  # group-limited routing (DeepSeek-V3)
    topk_group: int | None = None


@dataclass(frozen=True)
class ModelShapes:
    heads_q: int
    heads_kv: int
    head_dim: int
    layers: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # linear layer -> (N, K)
    moe: MoELayer | None = None  # None: a dense model
    vocab: int = 32000  # vocabulary size (the loss and the embedding table)


MODELS: dict[str, ModelShapes] = {
    # hidden 4096, intermediate 14336, 32 heads, 8 kv heads, head dim 128
    "llama3-8b": ModelShapes(
        32, 8, 128, {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
        vocab=128256),
    # hidden 8192, intermediate 28672, 64 heads, 8 kv heads, head dim 128
    "llama3-70b": ModelShapes(
        64, 8, 128, {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)},
        vocab=128256),
    # hidden 4096, 32 heads, 8 kv heads (no sliding window in 8x7B), 8 experts of intermediate 14336, top-2
    "mixtral-8x7b": ModelShapes(
        32, 8, 128, {"qkv": (6144, 4096), "o": (4096, 4096), "expert_gate_up": (28672, 4096),
                     "expert_down": (4096, 14336)},
        MoELayer(4096, 14336, 8, 2, "softmax", tokens=(4096, 16384, 32768))),
    # Qwen3-30B-A3B: hidden 2048, 32 heads, 4 kv heads, head dim 128, 128 experts of intermediate 768, top-8
    "qwen3-moe": ModelShapes(
        32, 4, 128, {"qkv": (5120, 2048), "o": (2048, 4096), "expert_gate_up": (1536, 2048),
                     "expert_down": (2048, 768)},
        MoELayer(2048, 768, 128, 8, "softmax", tokens=(4096, 16384, 32768)), vocab=151936),
    # hidden 7168, dense intermediate 18432, 256 routed experts of intermediate 2048 (top-8, sigmoid, 8 groups,
    # top-4 groups), 128 heads, q_lora_rank 1536, q head dim 128 + 64 (rope), v head dim 128.
    # MLA in training: pyscale's kernel takes one head dim, so attention runs at 192 with v padded to it
    # (as FlashAttention-2 MLA ports do).
    "deepseek-v3": ModelShapes(
        128, 128, 192, {"q_b": (24576, 1536), "o": (7168, 16384), "dense_gate_up": (36864, 7168),
                        "dense_down": (7168, 18432), "expert_gate_up": (4096, 7168), "expert_down": (7168, 2048)},
        # the MoE issue's 4k-32k tokens (bf16 weights 22.5 GB, + grads)
        MoELayer(7168, 2048, 256, 8, "sigmoid", tokens=(4096, 8192, 16384, 32768), n_group=8, topk_group=4),
        vocab=129280),
}



class GPTStep(NamedTuple):
    """One training step of the built-in GPT (pyscale.models): its size, sequence length and batch."""

    n_layers: int
    d_model: int
    n_heads: int
    seq: int
    batch: int
    vocab: int

    def config(self) -> Any:
        """The `pyscale.models.config.GPTConfig` (pure Python) with these sizes and its defaults elsewhere."""
        from pyscale.models.config import GPTConfig

        return GPTConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, seq_len=self.seq,
                         vocab_size=self.vocab)

    def profile_arguments(self) -> list[str]:
        """The `pyscale profile --model gpt` arguments of this step."""
        return ["--layers", str(self.n_layers), "--d-model", str(self.d_model), "--heads", str(self.n_heads),
                "--seq", str(self.seq), "--batch", str(self.batch), "--vocab", str(self.vocab)]

    def __str__(self) -> str:
        return f"L{self.n_layers} d{self.d_model} H{self.n_heads} S{self.seq} B{self.batch} V{self.vocab}"


#: The built-in GPT steps whose time the cost model predicts and `costmodel validate` checks, per set. Each
#: set spans models where GEMMs dominate and ones where the rest of the step does (a small width with a
#: 32000-token vocabulary: the loss, the embedding and the optimizer over its tables).
GPT_STEPS: dict[str, tuple[GPTStep, ...]] = {
    "quick": (GPTStep(1, 32, 2, 32, 2, 512), GPTStep(2, 64, 2, 64, 2, 1024), GPTStep(2, 64, 4, 64, 2, 32000),
              GPTStep(3, 96, 3, 32, 4, 2048), GPTStep(2, 128, 4, 128, 1, 4096)),
    # one CPU thread, fp32: each step 10 ms to 0.5 s
    "gpt-cpu": (GPTStep(2, 64, 2, 64, 2, 32000), GPTStep(2, 128, 4, 128, 2, 32000), GPTStep(4, 256, 4, 128, 2, 32000),
                GPTStep(4, 384, 6, 256, 2, 8192), GPTStep(6, 512, 8, 256, 1, 32000), GPTStep(2, 768, 12, 512, 1, 4096)),
    # one GPU, bf16: 4k-8k tokens a step, 30M to 950M parameters
    "gpt-gpu": (GPTStep(2, 256, 4, 512, 8, 32000), GPTStep(4, 512, 8, 1024, 8, 32000),
                GPTStep(8, 1024, 16, 1024, 8, 32000), GPTStep(12, 1536, 12, 2048, 4, 32000),
                GPTStep(16, 2048, 16, 2048, 4, 32000)),
}

SHAPE_SETS = ("quick", *MODELS, *(name for name in GPT_STEPS if name != "quick"), "grid")
FAMILIES = ("attention", "gemm", "moe", "step")  # the op families a shape set gives shapes for
STEP_TOKENS = (4096, 16384)  # token counts of the step family at a model's sizes

SEQS = (512, 1024, 2048, 4096, 8192, 16384)
TOKENS_PER_STEP = 16384
PASSES = ("fwd", "bwd", "fwd+bwd")
DECODE_M = (1, 4, 16, 64)
PREFILL_M = (1024, 4096, 8192)
QUICK_M = (1, 16, 64)


def check_shape_set(shape_set: str) -> str:
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape_set must be one of {', '.join(SHAPE_SETS)}: got {shape_set!r}")
    return shape_set


# --------------------------------------------------------------------------- attention

class AttentionShape(NamedTuple):
    model: str
    batch: int
    seq: int  # seq_q == seq_k
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool

    def __str__(self) -> str:
        mask = "causal" if self.causal else "full"
        return (f"{self.model}:B{self.batch}S{self.seq}H{self.heads_q}/{self.heads_kv}D{self.head_dim}:{mask}")


QUICK_ATTENTION = (AttentionShape("quick", 1, 64, 4, 4, 32, True), AttentionShape("quick", 2, 128, 4, 1, 64, True),
                   AttentionShape("quick", 1, 128, 2, 2, 64, False))


def _grid() -> list[AttentionShape]:
    shapes = []
    for d in (64, 128):
        heads = 2048 // d  # constant width 2048
        for hkv in (heads, heads // 8):
            for causal in (True, False):
                shapes += [AttentionShape("grid", max(1, TOKENS_PER_STEP // s), s, heads, hkv, d, causal)
                           for s in SEQS]
    return shapes


def attention_shapes(shape_set: str) -> list[AttentionShape]:
    """Every attention case of one shape set, shortest sequences first."""
    if check_shape_set(shape_set) == "quick":
        return list(QUICK_ATTENTION)
    if shape_set == "grid":
        return _grid()
    if shape_set in GPT_STEPS:
        shapes = []
        for step in GPT_STEPS[shape_set]:
            c = step.config()
            shape = AttentionShape(shape_set, step.batch, step.seq, c.n_heads, c.n_kv_heads, c.head_dim, True)
            if shape not in shapes:
                shapes.append(shape)
        return shapes
    m = MODELS[shape_set]
    return [AttentionShape(shape_set, max(1, TOKENS_PER_STEP // s), s, m.heads_q, m.heads_kv, m.head_dim, True)
            for s in SEQS]


# --------------------------------------------------------------------------- GEMM

class GemmShape(NamedTuple):
    model: str
    layer: str
    m: int
    n: int
    k: int

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}:M{self.m}N{self.n}K{self.k}"


QUICK_LAYERS = {"a": (128, 128), "b": (256, 96)}


def training_gemms(m: int, n: int, k: int) -> tuple[tuple[str, int, int, int], ...]:
    """The three GEMMs of a linear layer (N, K) over M rows in training: (pass, M, N, K) of the forward, the
    input gradient and the weight gradient."""
    return (("fwd", m, n, k), ("dgrad", m, k, n), ("wgrad", n, k, m))


def _gpt_gemm_shapes(shape_set: str) -> list[GemmShape]:
    """Every distinct GEMM of the sets' GPT steps (the first layer that runs a shape names it)."""
    seen: set[tuple[int, int, int]] = set()
    out = []
    for step in GPT_STEPS[shape_set]:
        tokens = step.batch * step.seq
        for matrix in step.config().matrices():
            if matrix.name == "embed.weight":
                continue  # a gather, not a GEMM
            layer = matrix.name.removesuffix(".weight").rsplit(".", 1)[-1]
            for pass_, m, n, k in training_gemms(tokens, matrix.out_features, matrix.in_features):
                if (m, n, k) not in seen:
                    seen.add((m, n, k))
                    out.append(GemmShape(shape_set, f"{layer}:{pass_}", m, n, k))
    return out


def gemm_shapes(shape_set: str) -> list[GemmShape]:
    """Every (layer, M) of one shape set, decode sizes first (none in `grid`); a `gpt-*` set's training GEMMs."""
    if check_shape_set(shape_set) == "grid":
        return []
    if shape_set in GPT_STEPS and shape_set != "quick":
        return _gpt_gemm_shapes(shape_set)
    layers, ms = (QUICK_LAYERS, QUICK_M) if shape_set == "quick" else (MODELS[shape_set].layers,
                                                                       DECODE_M + PREFILL_M)
    return [GemmShape(shape_set, layer, m, n, k) for layer, (n, k) in layers.items() for m in ms]


# --------------------------------------------------------------------------- MoE

QUICK_MOE = MoELayer(64, 128, 4, 2, "softmax", tokens=(64,))


def moe_shapes(shape_set: str) -> list[dict[str, Any]]:
    """The MoE cases of one shape set, one dict per token count (none for dense models, `gpt-*` and `grid`):
    d_model, d_ff (per expert), n_experts, top_k, scoring, tokens, and n_group/topk_group where set."""
    if check_shape_set(shape_set) == "grid" or (shape_set in GPT_STEPS and shape_set != "quick"):
        return []
    layer = QUICK_MOE if shape_set == "quick" else MODELS[shape_set].moe
    if layer is None:
        return []
    base = {"d_model": layer.d_model, "d_ff": layer.d_ff, "n_experts": layer.n_experts, "top_k": layer.top_k,
            "scoring": layer.scoring}
    if layer.n_group is not None:
        base.update(n_group=layer.n_group, topk_group=layer.topk_group)
    return [{**base, "tokens": t} for t in layer.tokens]



# --------------------------------------------------------------------------- the rest of a training step

STEP_OPS = ("rmsnorm", "swiglu", "rotary", "add", "cross_entropy", "embedding", "adamw")


def _step_op_shapes(tokens: int, batch: int, seq: int, d: int, d_ff: int, heads: int, heads_kv: int,
                    head_dim: int, vocab: int, loss: bool = True) -> list[tuple[str, dict[str, Any]]]:
    out = [("rmsnorm", {"rows": tokens, "dim": d}), ("swiglu", {"rows": tokens, "width": d_ff}),
           ("rotary", {"batch": batch, "seq": seq, "heads": heads, "heads_kv": heads_kv, "head_dim": head_dim}),
           ("add", {"rows": tokens, "dim": d}), ("embedding", {"rows": tokens, "vocab": vocab, "dim": d})]
    if loss:
        out.append(("cross_entropy", {"rows": tokens, "vocab": vocab}))
    return out


def adamw_groups(matrices: list[int], vectors: list[int], zero: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """AdamW shapes of a model with these weight matrices and vectors (element counts, one per tensor): each
    tensor alone (`tensors` 1: what the one-tensor-at-a-time implementation runs, whose cost per element
    depends on the tensor's size against the caches) and each parameter group at once (the matrices, decayed,
    and the vectors, not: what a multi-tensor implementation runs). `zero`: matrix index -> elements whose
    gradient and moments stay zero (the embedding rows a repeated batch never touches), as `zero_fraction`."""
    zero = zero or {}

    def fraction(z: int, n: int) -> float:
        return round(z / n, 4) if n else 0.0

    out = [{"elements": n, "tensors": 1, "matrix": True, "zero_fraction": fraction(zero.get(i, 0), n)}
           for i, n in enumerate(matrices)]
    out += [{"elements": n, "tensors": 1, "matrix": False, "zero_fraction": 0.0} for n in vectors]
    for group, matrix, z in ((matrices, True, sum(zero.values())), (vectors, False, 0)):
        if len(group) > 1:
            out.append({"elements": sum(group), "tensors": len(group), "matrix": matrix,
                        "zero_fraction": fraction(z, sum(group))})
    return out


def step_shapes(shape_set: str) -> list[tuple[str, dict[str, Any]]]:
    """(op, params) of the step family for one shape set, without duplicates (none in `grid`).

    GPT sets: each step's own sizes (tokens = batch · seq), and AdamW over its parameters. Model sets: the
    model's widths at `STEP_TOKENS` tokens (the loss over its vocabulary at the smaller count), and AdamW
    over one block's matrices and norm weights."""
    if check_shape_set(shape_set) == "grid":
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    if shape_set in GPT_STEPS:
        for step in GPT_STEPS[shape_set]:
            c = step.config()
            tokens = step.batch * step.seq
            out += _step_op_shapes(tokens, step.batch, step.seq, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads,
                                   c.head_dim, c.vocab_size)
            matrices = [m.out_features * m.in_features for m in c.matrices() for _ in range(m.count)]
            vectors = [v.size for v in c.vectors() for _ in range(v.count)]
            untouched = c.vocab_size - embedding_rows_touched(tokens, c.vocab_size)  # a profile repeats one batch
            out += [("adamw", p) for p in adamw_groups(matrices, vectors, {0: round(untouched * c.d_model)})]
    else:
        m = MODELS[shape_set]
        d = m.layers["o"][0]
        d_ff = next(m.layers[name][1] for name in ("down", "dense_down", "expert_down") if name in m.layers)
        seq = SEQS[3]
        for tokens in STEP_TOKENS:
            out += _step_op_shapes(tokens, tokens // seq, seq, d, d_ff, m.heads_q, m.heads_kv, m.head_dim, m.vocab,
                                   loss=tokens == STEP_TOKENS[0])
        out += [("adamw", p) for p in adamw_groups([n * k for n, k in m.layers.values()], [d, d])]
    unique: list[tuple[str, dict[str, Any]]] = []
    for item in out:
        if item not in unique:
            unique.append(item)
    return unique
