"""Plain shape-set data for benchmarks, one module per op family, keyed by model name (DESIGN.md section 5)."""
