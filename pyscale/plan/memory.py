"""Does a training configuration fit in accelerator memory, and with which sharding?

Model states under mixed-precision Adam (Rajbhandari et al. 2020, ZeRO, section 3.1): bf16 weights (2 B)
and gradients (2 B) plus fp32 master weights, momentum and variance (12 B) = 16 bytes per parameter.
ZeRO stages shard them over n data-parallel ranks: stage 1 the optimizer states, stage 2 also the
gradients, stage 3 (FSDP full sharding) also the weights.

Activations per layer follow the accounting of Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", section 4: 34·s·b·h + 5·a·s²·b bytes for a GeLU block without
tensor parallelism), redone for this model's block: a fused attention kernel keeps no s x s scores, and
the SwiGLU MLP keeps its input and three d_ff-wide tensors per active expert. With full recomputation only
each layer's input is kept: 2·s·b·h. The logits add s·b·V·(2 + 4) bytes (bf16 logits and fp32 softmax for
the loss). These are estimates, stated as such in every plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MODEL_STATE_BYTES_PER_PARAM = 16
RECOMPUTE_POLICIES = ("none", "full")


@dataclass(frozen=True)
class MemoryFit:
    fits: bool
    zero_stage: int | None  # smallest stage that fits, None if none does
    recompute: str
    micro_batch: int  # sequences per device per micro-step
    bytes_per_device: float
    capacity_bytes: float | None
    model_state_bytes: float
    activation_bytes: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_state_bytes(n_params: float, zero_stage: int, n_devices: int) -> float:
    p, n = float(n_params), max(1, n_devices)
    return {0: 16 * p, 1: 4 * p + 12 * p / n, 2: 2 * p + 14 * p / n, 3: 16 * p / n}[zero_stage]


def activation_bytes(config: Any, micro_batch: int, recompute: str) -> float:
    """Bytes of activations kept for the backward pass of one micro-batch (bf16), an estimate."""
    s, b, h, layers = config.seq_len, micro_batch, config.d_model, config.n_layers
    if recompute == "full":
        per_layer = 2.0 * s * b * h
    elif recompute == "none":
        # Korthikanti et al.'s accounting redone for this block: attention 11·sbh with a fused kernel (no
        # scores), two RMSNorm inputs 4·sbh, and per active expert a SwiGLU MLP keeping its input (2·sbh)
        # and gate, up and silu(gate) outputs (3 x 2·sb·d_ff).
        k = config.top_k if getattr(config, "n_experts", 0) else 1
        d_ff = (config.d_ff_expert or config.d_ff) if config.n_experts else config.d_ff
        per_layer = s * b * (15.0 * h + k * (2.0 * h + 6.0 * d_ff))
    else:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_POLICIES)}: got {recompute!r}")
    logits = s * b * config.vocab_size * 6.0
    return layers * per_layer + logits


def fit_memory(config: Any, *, capacity_bytes: float | None, n_devices: int, recompute: str = "auto",
               max_micro_batch: int = 64, reserve_fraction: float = 0.1, micro_batch: int | None = None) -> MemoryFit:
    """The least intrusive setup that fits: lowest ZeRO stage, then no recompute before full, largest micro-batch
    (powers of two up to max_micro_batch; exactly `micro_batch` when given).

    reserve_fraction of the memory is kept free for the allocator, workspace and communication buffers.
    """
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 1):
        raise ValueError(f"micro_batch must be a positive int: got {micro_batch!r}")
    first_mb = 1 if micro_batch is None else micro_batch
    n = config.n_params()
    policies = RECOMPUTE_POLICIES if recompute == "auto" else (recompute,)
    for p in policies:
        if p not in RECOMPUTE_POLICIES:
            raise ValueError(f"recompute must be auto, none or full: got {recompute!r}")
    if capacity_bytes is None:
        states = model_state_bytes(n, 0, n_devices)
        act = activation_bytes(config, first_mb, policies[0])
        return MemoryFit(False, None, policies[0], first_mb, states + act, None, states, act,
                         "device memory unknown: the fit was not checked")
    usable = capacity_bytes * (1 - reserve_fraction)
    stages = (0, 1, 2, 3) if n_devices > 1 else (0,)
    for stage in stages:
        states = model_state_bytes(n, stage, n_devices)
        for policy in policies:
            best = None
            mb = first_mb
            while mb <= (first_mb if micro_batch is not None else max_micro_batch):
                act = activation_bytes(config, mb, policy)
                if states + act > usable:
                    break
                best = (mb, act)
                mb *= 2
            if best is not None:
                mb, act = best
                sharding = "no sharding (plain data parallel)" if stage == 0 else f"ZeRO stage {stage}"
                return MemoryFit(True, stage, policy, mb, states + act, capacity_bytes, states, act,
                                 f"fits with {sharding}, recompute={policy}, micro-batch {mb}")
    states = model_state_bytes(n, stages[-1], n_devices)
    act = activation_bytes(config, first_mb, policies[-1])
    return MemoryFit(False, None, policies[-1], first_mb, states + act, capacity_bytes, states, act,
                     f"does not fit even with ZeRO stage {stages[-1]}, {policies[-1]} recompute and micro-batch "
                     f"{first_mb} on {n_devices} device(s): needs {(states + act) / 2**30:.4g} GiB a device of "
                     f"{capacity_bytes * (1 - reserve_fraction) / 2**30:.4g} usable: more devices, tensor/pipeline "
                     "parallelism or offload")
