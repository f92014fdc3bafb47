"""Fixtures of the cost-model tests; the synthetic data live in synth_costmodel.py."""

from __future__ import annotations

import pytest
from synth_costmodel import SYNTH_GPU, Truth, synth_spec

from pyscale import hw


@pytest.fixture
def synth_gpu():
    hw.register(synth_spec(), replace=True)
    yield hw.lookup(SYNTH_GPU)
    hw._unregister(SYNTH_GPU)


@pytest.fixture
def truth() -> Truth:
    return Truth()
