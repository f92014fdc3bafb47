"""Test setup shared by every test.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so it is decided here, at
collection start: the interpreter runs kernels on CPU tensors when no CUDA device is present.
"""

from __future__ import annotations

import os


def _cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if not _cuda_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

try:
    from hypothesis import settings

    settings.register_profile("pyscale", deadline=None, max_examples=25, derandomize=True)
    settings.load_profile("pyscale")
except ImportError:  # hypothesis is a dev dependency
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-benchmark is an optional test dependency (a GPU machine without a registry may lack it)
    if not config.pluginmanager.has_plugin("benchmark"):
        skip_bench = pytest.mark.skip(reason="needs pytest-benchmark (the `benchmark` fixture)")
        for item in items:
            if "benchmark" in getattr(item, "fixturenames", ()):
                item.add_marker(skip_bench)
    if _cuda_present():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
