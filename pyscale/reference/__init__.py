"""Pure-PyTorch references of every pyscale op: the test oracle and the CPU fallback."""
