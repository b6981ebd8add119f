"""Kernels: Triton kernels with their launchers, config spaces and pure-torch references.

    block_mask.py            BlockSparseMask: FlexAttention-style block lists + dense text ranges,
                             and the full/partial tile schedule the kernel walks
    attention/flash_fwd.py   block-sparse flash attention forward (dense, block-sparse, int8 QK /
                             FP8 P.V), its config space, pruning, launcher and limits
    attention/quantize.py    the int8 / FP8 quantization kernels of the 8-bit path
    attention/reference.py   pure-torch references of all of the above (ground truth, CPU path)
    triton_support.py        Triton when installed, else a stand-in (the references still run)

Kernels import only `geometry` and `autotune` from the package: they know nothing of plans,
passes or run-time state. Which kernel runs a plan is decided in `ditcompile.ops`.
"""
