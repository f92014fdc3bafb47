"""Per-family benchmark cases: `cases(shape_set, device) -> list[Case]`, `workload(case, device) -> Workload`."""

from __future__ import annotations


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
