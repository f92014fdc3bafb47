"""Launched by torchrun from test_torchrun_profile.py: two ranks, gloo on CPU.

Each rank does different work (rank r multiplies matrices of size 16·(r+1)) under its own constant-power
meter (40·(r+1) W), so the reduction rank 0 writes can be told apart from either rank's own figures. Every
rank also dumps what its profiler returned to OUT_DIR/rank<r>.json for the test to compare with the store.
Usage: two_rank_profile.py STORE OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pyscale.profile import power
from pyscale.profile import profiler as pr


class ConstantPowerMeter(power.PowerMeter):
    """Energy = watts x elapsed monotonic time, as an integer millijoule counter (like NVML's)."""

    name = "constant"

    def __init__(self, watts: float) -> None:
        self.watts = watts

    def _read(self) -> power.MeterSnapshot:
        t = power.base.now_s()
        mj = int(self.watts * t * 1000)
        return power.MeterSnapshot(t, mj / 1000, power_w=self.watts, counter=mj,
                                   unavailable_reasons={"sm_clock_mhz": "test meter"})

    def energy_delta_j(self, start: power.MeterSnapshot, end: power.MeterSnapshot) -> float:
        return (end.counter - start.counter) / 1000


def step_flops(n: int) -> float:
    return 6.0 * n**3  # a matmul forward + backward (2 n^3 each for the two gradients)


def main(store: str, out_dir: str) -> None:
    dist.init_process_group("gloo")  # env:// rendezvous from torchrun's RANK, WORLD_SIZE, MASTER_*
    rank = dist.get_rank()
    n = 16 * (rank + 1)
    gen = torch.Generator().manual_seed(rank)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen, requires_grad=True)

    def train_step() -> None:
        (a @ b).square().mean().backward()

    try:
        with pr.Profiler(store=store, meter=ConstantPowerMeter(40.0 * (rank + 1)), min_window_s=0.05,
                         idle_s=0.01, repeats=5, max_warmup_s=0.2, command="torchrun-test") as prof:
            # FLOPs given: counting them costs seconds of imports in each fresh process.
            mm = prof.window("mm", torch.mm, a, b.detach(), flops=2.0 * n**3, model_flops=2.0 * n**3,
                             bytes=12.0 * n * n)
            step = prof.profile_step(train_step, steps=3, warmup=1, name="step", model_flops=step_flops(n))
        result = {"rank": rank, "world_size": dist.get_world_size(), "mm": mm.to_dict(),
                  "step": step.summary.to_dict()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result, default=str))
        dist.barrier()  # no rank tears gloo down while another is still in a collective or writing the store
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Skip interpreter finalisation: gloo's worker threads can still hold Python objects then, and releasing
    # them with the interpreter half torn down aborts the process (seen once in CI: SIGABRT on rank 1,
    # "terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
