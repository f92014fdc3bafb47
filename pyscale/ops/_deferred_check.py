"""Value checks that never stall the host: count bad values on the device, look at the counts later.

`submit(counts)` takes an int tensor of counts (one per message) that kernels computed on the device. On a
GPU it queues a copy to pinned host memory behind the work that produced them and records an event, then
returns at once; `poll()` raises a ValueError for the oldest earlier check whose copy has finished with a
nonzero count (never waiting for one still in flight); `wait()` waits for every pending check (a sync) and
raises the same way. On the CPU there is nothing to wait for: `submit` reads the counts at once.
The host reads happen inside `torch.profiler.record_function(READ_LABEL)`, so a profile shows them for what
they are. Checks are skipped while torch.compile traces or a CUDA graph is being captured (the pending list
is Python state).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

READ_LABEL = "pyscale.deferred_check.read"


def _skipped() -> bool:
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


class DeferredCheck:
    """A queue of device-side checks; `messages[i]` is formatted with `count=` the i-th count when nonzero."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = tuple(messages)
        self._pending: deque = deque()  # (event, pinned host counts)

    def _raise_if_bad(self, host: torch.Tensor) -> None:
        with torch.profiler.record_function(READ_LABEL):
            counts = host.tolist()
        for message, count in zip(self.messages, counts):
            if count:
                raise ValueError(message.format(count=count))

    def submit(self, counts: torch.Tensor) -> None:
        """Queue one check of `counts` (int, one entry per message) without waiting for the device."""
        if _skipped():
            return
        counts = counts.reshape(-1)
        if counts.numel() != len(self.messages):
            raise ValueError(f"counts must have one entry per message ({len(self.messages)}): got {counts.numel()}")
        if counts.device.type != "cuda":
            self._raise_if_bad(counts)
            return
        host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        host.copy_(counts, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(counts.device))
        self._pending.append((event, host))

    def poll(self) -> None:
        """Raise for finished checks that found bad values; leave the unfinished ones queued."""
        while self._pending and self._pending[0][0].query():
            self._raise_if_bad(self._pending.popleft()[1])

    def wait(self) -> None:
        """Wait for every queued check (a device sync) and raise for the first that found bad values."""
        while self._pending:
            event, host = self._pending.popleft()
            event.synchronize()
            self._raise_if_bad(host)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def __getstate__(self) -> dict:  # copies and pickles keep the messages, not in-flight device state
        return {"messages": self.messages}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["messages"])
