"""The attention ops' tuning candidates, registered with `autotune` at import.

    op                 problem                        candidates (each checks when it is valid)
    attention.dense    exact attention; no mask, key  sdpa (the default dispatch), sdpa.math,
                       padding, or a dense mask of    sdpa.flash, sdpa.efficient, sdpa.cudnn,
                       uniform tiles                  triton.<config> (CUDA), reference, flex,
                                                      flash_attn (when installed);
                                                      triton = the launcher's own config
    attention.sparse   a BlockSparseMask (sparse      triton.<config> (CUDA), reference, flex
                       plans), optional key padding   (the same block mask as a FlexAttention
                                                      BlockMask, converted once per mask)
    attention.int8     8-bit attention (dense or      triton.<config> (CUDA), reference (the
                       block-sparse)                  kernel's emulation), sageattention (installed)

The default of each problem is what the plan's backend selects (`select.select_impl`): "sdpa" for
dense SDPA plans; for kernel plans "triton" (the launcher's own config choice) on CUDA and
"reference" on the CPU. Without a tuning result that default runs, exactly as
before the autotuner existed.

Validation (`autotune.tune_problem`): every candidate's output is compared, on up to 64 sampled
query rows, with float32 attention computed from the definition (scores + key bias + dense mask
+ block mask, softmax, P.V); relative L2 error within `tolerance` (fp32 1e-3, fp16 5e-3, bf16
2e-2, 8-bit 8e-2). Sageattention is 8-bit, so it is an `attention.int8` candidate only: a dense
plan promises exact attention.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend

from ..autotune import (Candidate, Choice, Tunable, TuneKey, autotuner, density_bucket, get_tunable, is_recording,
                        length_bucket, record_choice, register_tunable)
from ..geometry import BSHD, from_bhsd, heads_dim, seq_dim, to_bhsd
from ..kernels.attention.flash_fwd import (GPU_CANDIDATES, config_name, fitting_configs, sparse_flash_attention,
                                           unsupported_reason)
from ..kernels.attention.reference import int8_attention_reference, sparse_attention_reference
from ..kernels.block_mask import BlockSparseMask
from ..plans import AttentionPlan
from .impl.exact import sdpa
from .impl.masks import CallMask

DENSE, SPARSE, INT8 = "attention.dense", "attention.sparse", "attention.int8"
SDPA, TRITON, REFERENCE = "sdpa", "triton", "reference"
MAX_MATH_SCORE_BYTES = 4 << 30  # sdpa.math materialises the scores: above this it is not a candidate
VALIDATION_ROWS = 64


@dataclass(eq=False)
class AttentionProblem:
    """One attention call as the tuner sees it.

    q, k, v: [B, H, S, D] ("bhsd") or [B, S, H, D] ("bshd"); scale: softmax scale or None
    (1/sqrt(D)); is_causal: SDPA's flag; quant: "none" or "int8";
    call_mask: the call's attn_mask (`impl/masks.CallMask`: SDPA candidates take `attn_mask`, the
        kernels the key bias of a key-padding mask, built on first use);
    key_bias: float32 [B|1, Skv] overriding the call mask's (the sparse executor's permuted bias);
    block_mask: a BlockSparseMask (sparse plans, or a dense mask of uniform tiles), or None;
    default: the candidate the plan selects without tuning; sparse: block_mask is a sparse
    pattern (the "attention.sparse" op even when a dense mask was intersected into it).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    layout: str
    scale: Optional[float]
    is_causal: bool = False
    quant: str = "none"
    call_mask: CallMask = CallMask()
    block_mask: Optional[BlockSparseMask] = None
    key_bias_override: Optional[Tensor] = None
    default: str = SDPA
    sparse: bool = False
    """block_mask is a sparse pattern (possibly intersected with a dense mask), not merely the dense
    mask's own tiles: exact SDPA of the mask would compute something else, so it is no candidate."""

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def mask_kind(self) -> str:
        return self.call_mask.kind

    @property
    def attn_mask(self) -> Optional[Tensor]:
        return self.call_mask.attn_mask

    @property
    def key_bias(self) -> Optional[Tensor]:
        return self.key_bias_override if self.key_bias_override is not None else self.call_mask.key_bias

    @property
    def op(self) -> str:
        if self.quant == "int8":
            return INT8
        return SPARSE if self.block_mask is not None and (self.sparse or self.mask_kind != "dense") else DENSE

    def bhsd(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(to_bhsd(t, self.layout) for t in (self.q, self.k, self.v))  # type: ignore[return-value]


# ---------------------------------------------------------------- key, reference, error


_DENSITY: "weakref.WeakKeyDictionary[BlockSparseMask, float]" = weakref.WeakKeyDictionary()
_KEYS: dict = {}


def _density(mask: BlockSparseMask) -> float:
    """density_bucket(mask.density()), once per mask object (density reads the mask: a sync)."""
    value = _DENSITY.get(mask)
    if value is None:
        value = _DENSITY[mask] = density_bucket(mask.density())
    return value


def problem_key(p: AttentionProblem) -> TuneKey:
    """Op, device, dtype, layout, batch / heads / head dim, bucketed lengths, causal, mask kind,
    quant, and the block mask's block shape and density bucket (memoised per raw shape)."""
    sd, hd = seq_dim(p.layout), heads_dim(p.layout)
    mask = p.block_mask
    blocks = None if mask is None else (mask.block_m, mask.block_n, _density(mask))
    raw = (p.op, p.q.device, p.q.dtype, p.layout, p.q.shape[0], p.q.shape[hd], p.q.shape[-1], p.q.shape[sd],
           p.k.shape[sd], bool(p.is_causal), p.mask_kind, p.quant, blocks)
    key = _KEYS.get(raw)
    if key is None:
        key = TuneKey.make(
            p.op, p.q.device, dtype=p.q.dtype, layout=p.layout, batch=length_bucket(p.q.shape[0]),
            heads=p.q.shape[hd], head_dim=p.q.shape[-1], q_len=length_bucket(p.q.shape[sd]),
            kv_len=length_bucket(p.k.shape[sd]), causal=bool(p.is_causal), mask=p.mask_kind, quant=p.quant,
            blocks=None if mask is None else blocks[:2], density=None if mask is None else blocks[2])
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[raw] = key
    return key


def _sample_rows(q_len: int, device: torch.device) -> Tensor:
    n = min(q_len, VALIDATION_ROWS)
    return torch.linspace(0, q_len - 1, n, device=device).round().long().unique()  # [R]


def reference_rows(p: AttentionProblem) -> Tensor:
    """float32 attention of the sampled query rows from the definition: [B, H, R, Dv]."""
    q, k, v = p.bhsd()
    q_len, kv_len = q.shape[2], k.shape[2]
    rows = _sample_rows(q_len, q.device)
    cols = torch.arange(kv_len, device=q.device)
    scale = p.scale if p.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q[:, :, rows].float() @ k.float().transpose(-1, -2)) * scale  # [B, H, R, Skv]
    allowed = torch.ones(1, 1, rows.numel(), kv_len, dtype=torch.bool, device=q.device)
    if p.key_bias is not None:  # key padding (possibly permuted with the tokens)
        scores = scores + p.key_bias.float()[:, None, None, :]
    elif p.block_mask is None and p.attn_mask is not None:  # the mask as SDPA reads it
        m = p.call_mask.rows(rows)
        if m.dtype == torch.bool:
            allowed = allowed & m
        else:
            scores = scores + m.float()
    if p.block_mask is not None:  # a sparse pattern, or a dense mask of uniform tiles
        allowed = allowed & p.block_mask.allowed(rows, cols)
    if p.is_causal:  # SDPA's is_causal: the top-left triangle
        allowed = allowed & (rows[:, None] >= cols[None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows: 0 (as SDPA on the CPU)
    return weights @ v.float()  # [B, H, R, Dv]


def rows_error(out: Tensor, ref: Tensor, p: AttentionProblem) -> float:
    """Relative L2 error of `out` (the op's layout) on the sampled rows; NaN for non-finite."""
    got = to_bhsd(out, p.layout)[:, :, _sample_rows(out.shape[seq_dim(p.layout)], out.device)].float()
    if got.shape != ref.shape:
        return float("inf")
    if not bool(torch.isfinite(got).all()):
        return float("nan")
    return float((got - ref).norm() / ref.norm().clamp_min(1e-12))


def tolerance(p: AttentionProblem) -> float:
    if p.quant == "int8":
        return 8e-2
    return {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}.get(p.q.dtype, 2e-2)


# ---------------------------------------------------------------- SDPA


def _sdpa_run(backend: Optional[object]) -> Callable[[AttentionProblem], Tensor]:
    return lambda p: sdpa(p.q, p.k, p.v, p.layout, p.scale, p.is_causal, p.attn_mask, backend)


def _capability_reason(p: AttentionProblem, minimum: tuple[int, int]) -> Optional[str]:
    """Why q's CUDA device is too old for a kernel that needs compute capability `minimum`."""
    if p.q.is_cuda and torch.cuda.get_device_capability(p.q.device) < minimum:
        return f"needs compute capability sm{minimum[0]}{minimum[1]}+"
    return None


def _sdpa_check(cuda_only: bool, math_backend: bool = False,
                capability: tuple[int, int] = (0, 0)) -> Callable[[AttentionProblem], Optional[str]]:
    def check(p: AttentionProblem) -> Optional[str]:
        if p.quant != "none":
            return "exact attention (the plan is 8-bit)"
        if p.op == SPARSE:
            return "block-sparse mask"
        if cuda_only and not p.q.is_cuda:
            return "needs CUDA"
        too_old = _capability_reason(p, capability)
        if too_old:
            return too_old
        if math_backend:
            sd = seq_dim(p.layout)
            size = p.q.shape[0] * p.q.shape[heads_dim(p.layout)] * p.q.shape[sd] * p.k.shape[sd] * 4
            if size > MAX_MATH_SCORE_BYTES:
                return f"would materialise {size / 2**30:.1f} GiB of scores"
        return None
    return check


def _sdpa_candidates() -> list[Candidate]:
    out = [Candidate(SDPA, _sdpa_run(None), _sdpa_check(False)),
           Candidate("sdpa.math", _sdpa_run(SDPBackend.MATH), _sdpa_check(False, math_backend=True)),
           Candidate("sdpa.flash", _sdpa_run(SDPBackend.FLASH_ATTENTION), _sdpa_check(False, capability=(8, 0)))]
    out.append(Candidate("sdpa.efficient", _sdpa_run(SDPBackend.EFFICIENT_ATTENTION), _sdpa_check(True)))
    cudnn = getattr(SDPBackend, "CUDNN_ATTENTION", None)
    if cudnn is not None:
        out.append(Candidate("sdpa.cudnn", _sdpa_run(cudnn), _sdpa_check(True, capability=(8, 0))))
    return out


# ---------------------------------------------------------------- our kernel and its reference


def _kernel_mask_reason(p: AttentionProblem) -> Optional[str]:
    if p.mask_kind == "dense" and p.block_mask is None:
        return "a dense mask that is not made of uniform tiles"
    return None


_FITS: dict = {}


def _fitting(p: AttentionProblem) -> list:
    """The kernel configs that fit p (`flash_fwd.fitting_configs`), memoised per tuning key."""
    key = problem_key(p)
    fits = _FITS.get(key)
    if fits is None:
        if len(_FITS) > 4096:
            _FITS.clear()
        fits = _FITS[key] = fitting_configs(p.q, p.k, p.block_mask, p.layout, p.quant)
    return fits


def _triton_candidate(cfg) -> Candidate:
    name = f"triton.{config_name(cfg)}"

    def check(p: AttentionProblem) -> Optional[str]:
        if not p.q.is_cuda:
            return "needs CUDA"
        reason = unsupported_reason(p.q, p.k, p.v, p.is_causal) or _kernel_mask_reason(p)
        if reason is None and cfg not in _fitting(p):
            reason = "config does not fit (mask blocks, shared memory or registers)"
        return reason



    return Candidate(name, _kernel_run(cfg), check)


def _triton_auto_check(p: AttentionProblem) -> Optional[str]:
    if not p.q.is_cuda:
        return "needs CUDA"
    return unsupported_reason(p.q, p.k, p.v, p.is_causal) or _kernel_mask_reason(p)


def _kernel_run(config) -> Callable[[AttentionProblem], Tensor]:
    """Our Triton kernel with `config` (None: the launcher chooses its config)."""
    def run(p: AttentionProblem) -> Tensor:
        return sparse_flash_attention(p.q, p.k, p.v, p.block_mask, scale=p.scale, layout=p.layout, quant=p.quant,
                                      config=config, key_bias=p.key_bias)
    return run


TRITON_AUTO = Candidate(TRITON, _kernel_run(None), _triton_auto_check)
"""The kernel with the launcher's own config choice (its in-memory tuner): the default of kernel
plans on CUDA, as before the persistent cache existed."""


def _reference_check(p: AttentionProblem) -> Optional[str]:
    return "causal attention" if p.is_causal else _kernel_mask_reason(p)


def _reference_run(p: AttentionProblem) -> Tensor:
    if p.quant == "int8":
        return int8_attention_reference(p.q, p.k, p.v, p.block_mask, scale=p.scale, layout=p.layout,
                                        key_bias=p.key_bias)
    return sparse_attention_reference(p.q, p.k, p.v, p.block_mask, scale=p.scale, layout=p.layout,
                                      key_bias=p.key_bias).to(p.q.dtype)


# ---------------------------------------------------------------- FlexAttention


_FLEX_MASKS: "weakref.WeakKeyDictionary[BlockSparseMask, object]" = weakref.WeakKeyDictionary()
_FLEX_LOCK = threading.Lock()
_COMPILED_FLEX: list = []


def flex_block_mask(mask: BlockSparseMask):
    """`mask` as a FlexAttention BlockMask (full blocks, partial blocks with a mask_mod for ragged
    blocks and the dense text ranges), converted once per mask object."""
    with _FLEX_LOCK:
        cached = _FLEX_MASKS.get(mask)
    if cached is not None:
        return cached
    from torch.nn.attention.flex_attention import BlockMask
    listed = mask.to_dense_block_mask()  # [B|1, H|1, NQB, NKB]
    bm, bn = mask.block_m, mask.block_n
    dq, dk = mask.dense_q_range, mask.dense_kv_range
    nb, nh = listed.shape[:2]

    def mask_mod(b, h, q_idx, kv_idx):
        ok = listed[b if nb > 1 else 0, h if nh > 1 else 0, q_idx // bm, kv_idx // bn]
        if dq is not None:
            ok = ok | ((q_idx >= dq[0]) & (q_idx < dq[1]))
        if dk is not None:
            ok = ok | ((kv_idx >= dk[0]) & (kv_idx < dk[1]))
        return ok

    nkb = mask.num_kv_blocks

    def widen(idx: Tensor) -> Tensor:  # FlexAttention's index lists are [B, H, NQB, NKB]
        pad = nkb - idx.shape[-1]
        return F.pad(idx, (0, pad)) if pad > 0 else idx[..., :nkb]

    block_mask = BlockMask.from_kv_blocks(
        mask.partial_kv_num_blocks, widen(mask.partial_kv_indices).int(),
        mask.full_kv_num_blocks, widen(mask.full_kv_indices).int(),
        BLOCK_SIZE=(bm, bn), mask_mod=mask_mod, seq_lengths=(mask.q_len, mask.kv_len),
    )
    with _FLEX_LOCK:
        _FLEX_MASKS[mask] = block_mask
    return block_mask


def _flex_fn(device: torch.device) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda":
        return flex_attention  # eager on the CPU (compiling it there takes tens of seconds)
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


def _flex_check(p: AttentionProblem) -> Optional[str]:
    if p.quant != "none":
        return "8-bit"
    if p.is_causal:
        return "causal attention"
    if p.q.shape[-1] != p.v.shape[-1]:
        return "value head dim differs"
    return _kernel_mask_reason(p)


def _key_bias_score_mod(bias: Tensor) -> Callable:
    """FlexAttention score_mod adding the key bias [B|1, Skv] (key padding) to every score."""
    nb = bias.shape[0]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[b if nb > 1 else 0, kv_idx]
    return score_mod


def _flex_run(p: AttentionProblem) -> Tensor:
    q, k, v = p.bhsd()
    block_mask = flex_block_mask(p.block_mask) if p.block_mask is not None else None
    score_mod = None if p.key_bias is None else _key_bias_score_mod(p.key_bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is not compiled
        out = _flex_fn(q.device)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=p.scale)
    return from_bhsd(out, p.layout).contiguous()


# ---------------------------------------------------------------- installed libraries


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _half_cuda_reason(p: AttentionProblem, dims: tuple[int, ...]) -> Optional[str]:
    """flash_attn / sageattention: CUDA sm80+, fp16/bf16, listed head dims, no mask."""
    if not p.q.is_cuda:
        return "needs CUDA"
    too_old = _capability_reason(p, (8, 0))
    if too_old:
        return too_old
    if p.q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {p.q.dtype} (fp16/bf16 only)"
    if p.q.shape[-1] not in dims or p.v.shape[-1] != p.q.shape[-1]:
        return f"head dim {p.q.shape[-1]} (supported: {dims})"
    if p.mask_kind != "none" or p.block_mask is not None:
        return "masks"
    return None


def _flash_attn_check(p: AttentionProblem) -> Optional[str]:
    if p.quant != "none":
        return "8-bit"
    return _half_cuda_reason(p, tuple(range(8, 257, 8)))


def _flash_attn_run(p: AttentionProblem) -> Tensor:
    from flash_attn import flash_attn_func
    q, k, v = (t if p.layout == BSHD else t.transpose(1, 2) for t in (p.q, p.k, p.v))  # [B, S, H, D]
    out = flash_attn_func(q, k, v, softmax_scale=p.scale, causal=p.is_causal)
    return (out if p.layout == BSHD else out.transpose(1, 2)).contiguous()


def _sage_check(p: AttentionProblem) -> Optional[str]:
    if p.is_causal:
        return "causal attention (not offered)"
    return _half_cuda_reason(p, (64, 96, 128))


def _sage_run(p: AttentionProblem) -> Tensor:
    from sageattention import sageattn
    out = sageattn(p.q, p.k, p.v, tensor_layout="HND" if p.layout != BSHD else "NHD", is_causal=False,
                   sm_scale=p.scale)
    return out.contiguous()


# ---------------------------------------------------------------- registration


def _tunable(op: str, candidates: list[Candidate]) -> Tunable:
    return register_tunable(Tunable(
        op=op, candidates=tuple(candidates), key=problem_key, default=lambda p: p.default,
        reference=reference_rows, error=rows_error, tolerance=tolerance, inputs=lambda p: (p.q, p.k, p.v),
    ))


def _kernel_candidates() -> list[Candidate]:
    return [TRITON_AUTO, *(_triton_candidate(cfg) for cfg in GPU_CANDIDATES),
            Candidate(REFERENCE, _reference_run, _reference_check)]


FLEX = Candidate("flex", _flex_run, _flex_check)
TUNABLES = {
    DENSE: _tunable(DENSE, [*_sdpa_candidates(), *_kernel_candidates(), FLEX,
                            Candidate("flash_attn", _flash_attn_run, _flash_attn_check,
                                      available=_installed("flash_attn"))]),
    SPARSE: _tunable(SPARSE, [*_kernel_candidates(), FLEX]),
    INT8: _tunable(INT8, [*_kernel_candidates(),
                          Candidate("sageattention", _sage_run, _sage_check, available=_installed("sageattention"))]),
}

def clone_problem(p: AttentionProblem) -> AttentionProblem:
    """A copy of `p` whose tensors outlive the call (q/k/v, mask and key bias cloned)."""
    mask = p.call_mask
    call_mask = CallMask(mask.kind, mask.attn_mask.clone()) if mask.attn_mask is not None else mask
    bias = p.key_bias_override.clone() if p.key_bias_override is not None else None
    return dataclasses.replace(p, q=p.q.clone(), k=p.k.clone(), v=p.v.clone(), call_mask=call_mask,
                               key_bias_override=bias)


def run_tuned(problem: AttentionProblem, plan: AttentionPlan) -> Tensor:
    """Run `problem` with the candidate the autotuner picks under the plan's mode and cache dir
    (`autotune.lookup`), recorded per site for the explain report. Output: q's shape, dtype and
    layout."""
    tunable = get_tunable(problem.op)
    choice = autotuner(plan.autotune, plan.autotune_dir).choose(tunable, problem, plan.site_path)
    candidate = tunable.candidate(choice.name)
    if candidate is None:  # the default of a problem is always a candidate; be safe anyway
        candidate, choice = tunable.candidate(problem.default), Choice(problem.default, choice.source)
    record_choice(plan.site_path, tunable.op, choice)
    return candidate.run(problem)


class SdpaCheck(NamedTuple):
    """`sdpa_override`'s answer: `keep` is why another kernel than plain SDPA may run (the
    backend then keeps the site as `ditaccel::attention`), None when SDPA is what runs;
    `cached` says the tuning cache holds a fresh entry for the problem whose winner is SDPA."""
    keep: Optional[str]
    cached: bool = False


def sdpa_override(q: Tensor, k: Tensor, v: Tensor, layout: str, is_causal: bool, mask_kind: str,
                  plan: AttentionPlan) -> SdpaCheck:
    """Whether a dense SDPA plan may run another kernel than plain SDPA at run time.

    q, k, v: the site's example values (fake tensors; sizes may be symbolic); layout "bhsd" or
    "bshd". Reasons to keep the op: `recording()` is on (`ditaccel autotune` traces the op's
    calls); the plan's autotune mode is "online" (tuned at the first call); the tuning cache
    holds a fresh winner other than "sdpa" for this problem -- for symbolic lengths, for any
    value of the symbolic sizes (static sizes still have to match). Never raises: an
    unreadable cache reads as empty (the default, SDPA, is what would run)."""
    if is_recording():
        return SdpaCheck("kept as ditaccel::attention while `ditaccel autotune` records the calls")
    if plan.autotune == "off":
        return SdpaCheck(None)
    if plan.autotune == "online":
        return SdpaCheck("autotune.mode='online' picks the kernel at the first call")
    sd, hd = seq_dim(layout), heads_dim(layout)
    # a dense SDPA plan's calls carry no block mask: entries with blocks / density are another problem
    fields: dict = dict(dtype=q.dtype, layout=layout, causal=bool(is_causal), mask=mask_kind, quant="none",
                        blocks=None, density=None)
    for name, size in (("heads", q.shape[hd]), ("head_dim", q.shape[-1])):
        if isinstance(size, int):
            fields[name] = size
    lengths = {"batch": q.shape[0], "q_len": q.shape[sd], "kv_len": k.shape[sd]}
    static = all(isinstance(n, int) for n in lengths.values())
    fields.update({name: length_bucket(n) for name, n in lengths.items() if isinstance(n, int)})
    try:
        winners = autotuner(plan.autotune, plan.autotune_dir).cached_winners(TUNABLES[DENSE], q.device, **fields)
    except Exception:  # noqa: BLE001 -- a cache that cannot be read means the default (SDPA) runs
        return SdpaCheck(None)
    other = sorted({w for w in winners.values() if w != SDPA})
    if not other:
        return SdpaCheck(None, cached=static and bool(winners))
    where = "this shape" if static else "shapes like this one (dynamic shapes: chosen per call)"
    return SdpaCheck(f"the tuning cache picks {', '.join(other)} for {where}")


__all__ = ["run_tuned", "sdpa_override", "SdpaCheck", "clone_problem", "AttentionProblem", "TUNABLES", "DENSE", "SPARSE", "INT8", "SDPA", "REFERENCE", "problem_key",
           "reference_rows", "rows_error", "tolerance", "flex_block_mask", "TRITON"]
