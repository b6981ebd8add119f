"""Attention kernels: `flash_fwd` (Triton), `quantize` (Triton, 8-bit path), `reference` (torch)."""
