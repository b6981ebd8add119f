"""Implementations the attention op runs: `dense` (SDPA, the Triton kernel, its reference) and
`sparse` (the block-sparse executor: patterns, permutations, warm-up, fidelity guard)."""
