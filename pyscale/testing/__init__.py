"""Helpers for pyscale's own tests (and for users checking their kernels): ahead-of-time Triton
compiles for GPUs this machine does not have, and numeric error metrics."""
