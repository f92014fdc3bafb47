"""pyscale.ops._deferred_check: device-side value checks read back without stalling the host."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from pyscale.ops._deferred_check import DeferredCheck

MESSAGES = ("{count} NaN value(s)", "{count} id(s) out of range")


def test_cpu_counts_are_read_at_once():
    check = DeferredCheck(MESSAGES)
    check.submit(torch.tensor([0, 0], dtype=torch.int32))
    assert check.pending == 0
    with pytest.raises(ValueError, match="^3 id\\(s\\) out of range$"):
        check.submit(torch.tensor([0, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="^2 NaN value"):  # the first nonzero count names the error
        check.submit(torch.tensor([2, 5], dtype=torch.int32))
    check.poll()
    check.wait()  # nothing pending: no-ops


def test_counts_must_match_the_messages():
    with pytest.raises(ValueError, match="one entry per message \\(2\\): got 3"):
        DeferredCheck(MESSAGES).submit(torch.zeros(3, dtype=torch.int32))


def test_copies_keep_messages_not_device_state():
    check = DeferredCheck(MESSAGES)
    check._pending.append(("in-flight event", torch.zeros(2)))  # what a CUDA submit leaves behind
    for other in (copy.deepcopy(check), pickle.loads(pickle.dumps(DeferredCheck(MESSAGES)))):
        assert other.messages == MESSAGES and other.pending == 0


def test_skipped_under_torch_compile():
    check = DeferredCheck(MESSAGES)

    @torch.compile(fullgraph=True, backend="eager")
    def f(x):
        check.submit(x)
        return x + 1

    torch._dynamo.reset()
    assert torch.equal(f(torch.tensor([1, 1])), torch.tensor([2, 2]))  # traced: the check is left out


@pytest.mark.gpu
def test_cuda_submit_does_not_wait():
    check = DeferredCheck(MESSAGES)
    counts = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        check.submit(counts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert check.pending == 1
    with pytest.raises(ValueError, match="4 id"):
        check.wait()
    assert check.pending == 0
