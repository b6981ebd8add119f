"""Plans: frozen, versioned dataclasses passed to ditaccel's ops as arguments (the pass <-> op contract).

    attention.py   AttentionPlan (site_path, backend, quant, sparse: SparseSpec | None, mask)
                   with to_json() (canonical, versioned)
    codec.py       parse_plan (cached); also reads ditaccel 0.1's flat plans
"""
from .attention import BACKENDS, DENSE_MASK_NOTE, PLAN_VERSION, QUANTS, SPARSE_MASK_NOTE, AttentionPlan, SparseSpec
from .codec import parse_plan

__all__ = ["AttentionPlan", "SparseSpec", "DENSE_MASK_NOTE", "SPARSE_MASK_NOTE", "BACKENDS", "QUANTS", "PLAN_VERSION", "parse_plan"]
