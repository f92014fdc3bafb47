"""pyscale's Triton kernels (installed as pyscale.kernels). Pure Triton: nothing here imports pyscale."""
