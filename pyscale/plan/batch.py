"""Batch size (tokens per optimizer step) for a plan.

- DeepSeek LLM (DeepSeek-AI 2024, Eq. 1): B_opt = 0.2920 * C^0.3271 tokens with C = M*D, M the
  non-embedding FLOPs per token (not 6N).
- Kaplan et al. 2020 (section 5.1, Eq. 5.3): critical batch B_crit(L) = B* / L^(1/alpha_B),
  B* = 2e8 tokens, alpha_B = 0.21; calibrated on Kaplan's WebText2 loss scale, which a plan states as an
  assumption when it uses it with another law's loss. Training at batch B takes S = S_min (1 + B_crit/B)
  steps and C = C_min (1 + B/B_crit) compute.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyscale.scaling import presets

KAPLAN_B_STAR_TOKENS = 2e8
KAPLAN_ALPHA_B = 0.21
BATCH_LAWS = ("deepseek", "kaplan")


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
    if law == "deepseek":
        c = non_embedding_flops_per_token * tokens
        raw = presets.DEEPSEEK_BATCH_SIZE(c)
        why = (f"DeepSeek LLM batch law B = 0.2920 C^0.3271 at C = M*D = {c:.3g} "
               "(M = non-embedding FLOPs per token of the planned architecture)")
    elif law == "kaplan":
        if loss is None:
            raise ValueError("batch_law='kaplan' needs a predicted loss")
        raw = kaplan_critical_batch(loss)
        why = (f"Kaplan critical batch B* / L^(1/alpha_B) at L = {loss:.4g}; calibrated on Kaplan's loss scale, "
               "applied here to this law's loss (an assumption)")
    else:
        raise ValueError(f"batch_law must be one of {', '.join(BATCH_LAWS)}: got {law!r}")
    unit = seq_len * max(1, multiple_of_sequences)
    sequences = max(1, round(raw / unit)) * max(1, multiple_of_sequences)
    return BatchChoice(sequences * seq_len, sequences, law, float(raw), why)
