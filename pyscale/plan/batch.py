"""Batch size (tokens per optimizer step) for a plan.

- DeepSeek LLM (DeepSeek-AI 2024, Eq. 1): B_opt = 0.2920 * C^0.3271 tokens with C = M*D, M the
  non-embedding FLOPs per token (not 6N).
- Kaplan et al. 2020 (section 5.1, Eq. 5.3): critical batch B_crit(L) = B* / L^(1/alpha_B),
  B* = 2e8 tokens, alpha_B = 0.21; calibrated on Kaplan's WebText2 loss scale, which a plan states as an
  assumption when it uses it with another law's loss. Training at batch B takes S = S_min (1 + B_crit/B)
  steps and C = C_min (1 + B/B_crit) compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyscale.scaling import presets

KAPLAN_B_STAR_TOKENS = 2e8
KAPLAN_ALPHA_B = 0.21
BATCH_LAWS = ("deepseek", "kaplan")
# A global batch is a whole number of this many sequences: 8 data-parallel ranks (a node) split it evenly, and
# it stays a multiple of data-parallel degree x micro-batch when those are known.
BATCH_SEQUENCE_MULTIPLE = 8


@dataclass(frozen=True)
class BatchChoice:
    tokens: int  # tokens per optimizer step (a whole number of sequences across all devices)
    sequences: int
    law: str
    raw_tokens: float
    assumption: str


def kaplan_critical_batch(loss: float) -> float:
    return KAPLAN_B_STAR_TOKENS / loss ** (1.0 / KAPLAN_ALPHA_B)


def choose_batch(*, law: str, seq_len: int, non_embedding_flops_per_token: float, tokens: float,
                 loss: float | None, multiple_of_sequences: int = 1) -> BatchChoice:
    """The batch law's tokens per step, rounded to a whole number of lcm(BATCH_SEQUENCE_MULTIPLE,
    multiple_of_sequences) sequences (at least one such group)."""
    if law == "deepseek":
        c = non_embedding_flops_per_token * tokens
        raw = presets.DEEPSEEK_BATCH_SIZE(c)
        why = (f"DeepSeek LLM batch law B = 0.2920 C^0.3271 at C = M*D = {c:.3g} "
               "(M = non-embedding FLOPs per token of the planned architecture)")
    elif law == "kaplan":
        if loss is None:
            raise ValueError("batch_law='kaplan' needs a predicted loss (an allocation law predicts none: use "
                             "batch_law='deepseek')")
        raw = kaplan_critical_batch(loss)
        why = (f"Kaplan critical batch B* / L^(1/alpha_B) at L = {loss:.4g}; calibrated on Kaplan's loss scale, "
               "applied here to this law's loss (an assumption)")
    else:
        raise ValueError(f"batch_law must be one of {', '.join(BATCH_LAWS)}: got {law!r}")
    multiple = math.lcm(BATCH_SEQUENCE_MULTIPLE, max(1, multiple_of_sequences))
    sequences = max(1, round(raw / (seq_len * multiple))) * multiple
    why += f"; {sequences} sequences, a whole number of groups of {multiple}"
    return BatchChoice(sequences * seq_len, sequences, law, float(raw), why)
